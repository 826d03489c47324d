"""``oca bench serve``: serving throughput of the appliance side by side with nginx.

Theory of operation: generate (or take) a content set, import it into an appliance
store, start ``oca serve`` and an equivalent nginx on the same files' filesystem, pin
the servers to one set of cores and the load generator to another, then run each
workload as alternated wrk runs (oca, nginx, oca, nginx, ...) and quote medians with
min-max. See docs/benchmarks.md for the workloads, the options and how to read the
output; :mod:`bench.runner` runs and measures, :mod:`bench.wrk` builds the client.

Exit codes: 0 done, 1 the benchmark failed (a server died, wrk gave no result),
2 bad usage, 3 cannot start (no wrk, a server did not come up).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

import orjson
import psutil  # type: ignore[import-untyped, unused-ignore]

from bench import content as content_mod
from bench.content import FULL_SPEC, SMALL_SPEC, ContentSet
from bench.report import NOISY_OTHER_PCT, Report, ServerName, format_rss, format_workload
from bench.runner import WORKLOADS, BenchError, RunContext, rss_check, run_workload
from bench.servers import (
    ServerError,
    ServerProcess,
    check_range_response,
    import_content,
    make_certificate,
    nginx_binary,
    nginx_version,
    start_nginx,
    start_oca,
    stored_files,
    write_oca_config,
)
from bench.wrk import WrkBinary, ensure_wrk, lua_script, wrk_command

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STARTUP = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="oca bench serve",
        description="Serving throughput of the appliance side by side with nginx "
        "(see docs/benchmarks.md).",
    )
    ap.add_argument(
        "--workloads",
        default="W1,W2,W3,W4,W5",
        help="comma-separated subset of W1..W5 (default: all)",
    )
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per server (default 3)")
    ap.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="unmeasured seconds per server before each workload (default 1)",
    )
    ap.add_argument(
        "--workers", type=int, default=1, help="worker processes of both servers (default 1)"
    )
    ap.add_argument(
        "--work-dir",
        help="where content, configs and logs go (default: a temp "
        "dir, removed afterwards; a given one is kept and reused)",
    )
    ap.add_argument("--content-dir", help="serve this tree instead of generated content")
    ap.add_argument(
        "--store-dir",
        action="append",
        default=[],
        help="appliance store disk (repeatable; default WORK/store/ssd0); put it "
        "on the same filesystem as the content",
    )
    ap.add_argument("--small", action="store_true", help="tiny generated content (for smoke tests)")
    ap.add_argument(
        "--listen-host",
        default="127.0.0.1",
        help="address both servers bind and wrk targets (default 127.0.0.1)",
    )
    ap.add_argument("--no-nginx", action="store_true", help="benchmark the appliance only")
    ap.add_argument("--no-pin", action="store_true", help="do not pin servers and wrk to CPUs")
    ap.add_argument(
        "--server-cpus", help="taskset CPU list for the servers (default: all but the last CPU)"
    )
    ap.add_argument("--client-cpus", help="taskset CPU list for wrk (default: the last CPU)")
    ap.add_argument(
        "--align",
        type=int,
        default=1,
        help="W2/W3 range offsets are multiples of this (default 1: any)",
    )
    ap.add_argument(
        "--max-other-cpu",
        type=float,
        default=NOISY_OTHER_PCT,
        help="retry a run once when other processes used more than this %% of a "
        "core (default %(default)s)",
    )
    ap.add_argument(
        "--rss-check",
        type=float,
        default=0.0,
        metavar="GB",
        help="after the workloads, serve GB of --rss-workload from oca and check its "
        "workers' RSS stays flat (default off)",
    )
    ap.add_argument(
        "--rss-workload",
        default="W1",
        choices=["W1", "W2", "W3", "W4"],
        help="the workload the RSS check serves (default W1)",
    )
    ap.add_argument("--wrk", help="use this wrk binary instead of the patched build")
    ap.add_argument(
        "--no-build-wrk",
        action="store_true",
        help="never build wrk (use a cached build or stock wrk)",
    )
    ap.add_argument(
        "--serve-only",
        action="store_true",
        help="start both servers, print URLs and wrk commands, wait for Ctrl-C",
    )
    ap.add_argument("--json", help="write the full report as JSON to this path")
    return ap


def _say(text: str) -> None:
    print(text, flush=True)


def _warn(text: str) -> None:
    print(f"WARNING: {text}", file=sys.stderr, flush=True)


def _cpu_sets(args: argparse.Namespace) -> tuple[str | None, str | None, str]:
    """(server cpus, client cpus, how) for taskset; None means unpinned."""
    if args.no_pin:
        return None, None, "not pinned (--no-pin)"
    if shutil.which("taskset") is None:
        _warn("taskset not found: servers and wrk are not pinned")
        return None, None, "not pinned (no taskset)"
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 and not (args.server_cpus and args.client_cpus):
        _warn("one CPU only: servers and wrk share it, figures are the pair's")
        return None, None, "not pinned (one CPU)"
    server = args.server_cpus or ",".join(str(c) for c in cpus[:-1])
    client = args.client_cpus or str(cpus[-1])
    return server, client, f"servers on CPU {server}, wrk on CPU {client}"


def _check_args(args: argparse.Namespace) -> str | None:
    names = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown:
        return f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}"
    args.workload_names = names
    if args.duration < 1 or args.connections < 1 or args.repeats < 1 or args.workers < 1:
        return "--duration, --connections, --repeats and --workers must be at least 1"
    if args.warmup < 0 or args.rss_check < 0 or args.align < 1:
        return "--warmup and --rss-check must be >= 0, --align >= 1"
    if args.content_dir and not os.path.isdir(args.content_dir):
        return f"--content-dir {args.content_dir} is not a directory"
    return None


def _wrk_binary(args: argparse.Namespace) -> WrkBinary | None:
    if args.wrk:
        return WrkBinary(args.wrk, 0, False, "given with --wrk")
    return ensure_wrk(build=not args.no_build_wrk, log=_say)


def _machine(wrk: WrkBinary, nginx: str | None) -> dict[str, object]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    from oca import __version__

    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_bytes": int(psutil.virtual_memory().total),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "oca": __version__,
        "nginx": nginx_version(nginx) if nginx else None,
        "wrk": {
            "path": wrk.path,
            "recvbuf_bytes": wrk.recvbuf_bytes,
            "patched": wrk.built,
            "note": wrk.note,
        },
    }


def _content(args: argparse.Namespace, work: Path) -> ContentSet:
    if args.content_dir:
        found = content_mod.scan(Path(args.content_dir).resolve())
        _say(
            f"content: {args.content_dir}: {len(found.segments)} segments, "
            f"{len(found.renditions)} renditions (>= 16 MiB), {found.total_bytes / 1e9:.2f} GB"
        )
        return found
    spec = SMALL_SPEC if args.small else FULL_SPEC
    made = content_mod.generate(work / "content", spec, log=_say)
    _say(
        f"content: {spec.segment_count} x {spec.segment_bytes // 1024} KiB segments, "
        f"{spec.rendition_count} x {spec.rendition_bytes // (1024 * 1024)} MiB renditions "
        f"in {made.root}"
    )
    return made


def _warm_page_cache(data: ContentSet, servers: dict[ServerName, ServerProcess]) -> None:
    paths = [str(data.root / f.rel) for f in (*data.segments, *data.renditions)]
    if "oca" in servers:
        paths += list(servers["oca"].files.values())
    budget = int(psutil.virtual_memory().available * 0.5)
    total = content_mod.warm(paths, budget)
    _say(f"page cache: read {total / 1e9:.2f} GB of both servers' files")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _work_dir(given: str | None) -> Iterator[Path]:
    if given:
        path = Path(given).resolve()
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="oca-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    problem = _check_args(args)
    if problem:
        print(f"oca bench serve: {problem}", file=sys.stderr)
        return EXIT_USAGE
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM)
    if in_main_thread:  # SIGTERM unwinds like Ctrl-C, so the servers are stopped
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _main(args)
    except KeyboardInterrupt:
        print("oca bench serve: interrupted; servers stopped", file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _main(args: argparse.Namespace) -> int:
    wrk = _wrk_binary(args)
    if wrk is None:
        print("oca bench serve: wrk is not installed (`make system-deps`)", file=sys.stderr)
        return EXIT_STARTUP
    _say(f"wrk: {wrk.describe()}")
    if not wrk.built and not args.wrk:
        _warn(
            f"using stock wrk ({wrk.note}); it reads 8 KiB at a time and tops out near "
            "2 GB/s on loopback: the client may be the bottleneck"
        )
    nginx = None if args.no_nginx else nginx_binary()
    if not args.no_nginx and nginx is None:
        _warn("nginx not found (`make system-deps`): benchmarking the appliance only")
    server_cpus, client_cpus, pinning = _cpu_sets(args)
    _say(f"pinning: {pinning}")
    report = Report(
        settings={k: v for k, v in vars(args).items() if k != "workload_names"}
        | {"workloads": args.workload_names, "pinning": pinning},
        machine=_machine(wrk, nginx),
    )
    if not wrk.built and not args.wrk:
        report.warnings.append(f"stock wrk: the client may be the bottleneck ({wrk.note})")
    with _work_dir(args.work_dir) as work, contextlib.ExitStack() as stack:
        data = _content(args, work)
        need_tls = args.serve_only or any(
            WORKLOADS[w].https for w in [*args.workload_names, args.rss_workload]
        )
        tls = make_certificate(work / "tls") if need_tls else None
        store_dirs = [Path(p).resolve() for p in args.store_dir] or [work / "store" / "ssd0"]
        for d in store_dirs:
            d.mkdir(parents=True, exist_ok=True)
        config = write_oca_config(
            work / "oca.toml",
            host=args.listen_host,
            workers=args.workers,
            state_dir=work / "state",
            store_dirs=store_dirs,
            tls=tls,
        )
        _say(f"oca store import: {import_content(config, data.root).splitlines()[0]}")
        files = stored_files(config)
        servers: dict[ServerName, ServerProcess] = {}
        try:
            oca = start_oca(config, work, cpus=server_cpus)
            stack.callback(oca.stop)
            oca.files = files
            servers["oca"] = oca
            if nginx is not None:
                ngx = start_nginx(
                    data.root,
                    work / "nginx",
                    host=args.listen_host,
                    workers=args.workers,
                    tls=tls,
                    cpus=server_cpus,
                    binary=nginx,
                )
                stack.callback(ngx.stop)
                servers["nginx"] = ngx
        except ServerError as exc:
            print(f"oca bench serve: cannot start a server: {exc}", file=sys.stderr)
            return EXIT_STARTUP
        for name, s in servers.items():
            _say(f"{name}: {', '.join(s.urls.values())} (workers {s.worker_pids()})")
        if args.serve_only:
            return _serve_only(servers, wrk, data, work, args)
        try:
            return _run(args, report, wrk, data, servers, work, client_cpus)
        finally:
            for s in servers.values():
                if not s.alive():
                    _warn(f"{s.name} had exited ({s.proc.returncode}); log: {s.log_path}")


def _run(
    args: argparse.Namespace,
    report: Report,
    wrk: WrkBinary,
    data: ContentSet,
    servers: dict[ServerName, ServerProcess],
    work: Path,
    client_cpus: str | None,
) -> int:
    probe = data.segments[0] if data.segments else data.renditions[0]
    for name, s in servers.items():
        for scheme in s.urls:
            if scheme in ("http", "https"):
                wrong = check_range_response(s.urls[scheme], probe, data.root)
                if wrong:
                    _warn(f"{name}: {wrong}")
                    report.warnings.append(f"{name}: {wrong}")
    _warm_page_cache(data, servers)
    ctx = RunContext(
        wrk=wrk,
        content=data,
        servers=servers,
        work_dir=work,
        duration_s=args.duration,
        connections=args.connections,
        repeats=args.repeats,
        warmup_s=args.warmup,
        client_cpus=client_cpus,
        align=args.align,
        max_other_pct=args.max_other_cpu,
        log=_say,
    )
    code = EXIT_OK
    try:
        for name in args.workload_names:
            wl = WORKLOADS[name]
            if not ctx.files_for(wl):
                msg = f"{name} skipped: the content has no {wl.files}"
                _warn(msg)
                report.warnings.append(msg)
                continue
            report.workloads[name] = run_workload(ctx, wl)
        _w5_ratio(report)
        if args.rss_check > 0:
            wl = WORKLOADS[args.rss_workload]
            if not ctx.files_for(wl):
                report.warnings.append(f"RSS check skipped: the content has no {wl.files}")
            else:
                _say(f"RSS check: serving {args.rss_check:g} GB of {wl.name} from oca")
                report.rss_check = rss_check(ctx, int(args.rss_check * 1e9), wl.name)
    except BenchError as exc:
        print(f"oca bench serve: {exc}", file=sys.stderr)
        report.warnings.append(str(exc))
        code = EXIT_FAILED
    finally:
        ctx.kill_active()
    _print_report(report)
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        _say(f"report written to {args.json}")
    return code


def _w5_ratio(report: Report) -> None:
    w5, w1 = report.workloads.get("W5"), report.workloads.get("W1")
    if w5 is None:
        return
    if w1 is None:
        w5.notes.append("run W1 too to compare the hot p99 with an all-hot p99")
        return
    for name, s in w5.summary.items():
        base = w1.summary.get(name)
        if s.hot_p99_us is not None and base is not None and base.p99_us.median > 0:
            w5.hot_p99_vs_all_hot[name] = round(s.hot_p99_us.median / base.p99_us.median, 3)


def _print_report(report: Report) -> None:
    print()
    for w in report.workloads.values():
        print(format_workload(w))
        print()
    if report.rss_check is not None:
        print(format_rss(report.rss_check))
        print()
    for text in report.warnings:
        print(f"! {text}")
    sys.stdout.flush()


def _serve_only(
    servers: dict[ServerName, ServerProcess],
    wrk: WrkBinary,
    data: ContentSet,
    work: Path,
    args: argparse.Namespace,
) -> int:
    seg_list = content_mod.write_list(work / "segments.txt", data.segments)
    _say("\nservers are up; example load (run from a client host with the lists copied):")
    for name, s in servers.items():
        cmd = wrk_command(
            wrk,
            s.urls["http"],
            script=lua_script("whole.lua"),
            script_args=[seg_list],
            connections=args.connections,
            duration_s=args.duration,
        )
        _say(f"  {name}: {' '.join(cmd)}")
    _say("Ctrl-C stops both servers.")
    while all(s.alive() for s in servers.values()):
        time.sleep(1)
    dead = [n for n, s in servers.items() if not s.alive()]
    print(f"oca bench serve: {', '.join(dead)} exited", file=sys.stderr)
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
