"""``oca bench load``: served throughput while 10,000 idle and slowloris connections are held.

Theory of operation. The appliance serves the benchmark's generated content (the store
and server setup of ``oca bench serve``: :mod:`bench.content`, :mod:`bench.servers`),
pinned to one set of CPUs; wrk (one thread, W1-W3 of :mod:`bench.runner`) and the
connection holder (:mod:`bench.holder`, one event loop in its own process) share the
other. Each cycle measures wrk's throughput unloaded, then opens ``--connections``
connections from the holder (most of them idle keep-alive connections that made one
small request; ``--slowloris-share`` of them slowloris clients trickling one header byte
every ``--trickle`` seconds), started at random instants over one header timeout so
that their timeouts are spread out too. Once all are open and the first slowloris
clients have been through a header timeout (the measurement then sees their steady
churn of 408s and reconnects), it measures again, and lets go. Cycles alternate
unloaded and loaded runs (A B A B ...); medians are quoted with min-max, and a run
during which processes other than the server, wrk and the holder used more than
``--max-other-cpu`` of a core is run once more.

Around every loaded run it reads from ``/proc`` (:mod:`bench.procfs`): the client
connections the workers really hold (ESTABLISHED sockets on the server's port in their
descriptor tables), the descriptors and RSS of the supervisor and workers before the
holder connects, while it holds, and after it lets go, and the worker PIDs (a restart
would change them). The holder reports how the server treated the slowloris clients.

Checks printed at the end (exit status 1 when one fails): loaded/unloaded MB/s median
>= 0.90; held connections >= 99% of the target; descriptors back to their level before
the hold (within a small slack for the open-file cache); RSS after the last release
within 32 MiB of RSS after the first; slowloris connections answered 408 and closed by
the server at its header timeout (none sooner; the median within 2 s of it, as the
deadline sweep runs once a second); no worker restarted.

Exit codes: 0 every check passed, 1 a check failed or the benchmark failed (the server
exited, wrk gave no result), 2 bad usage, 3 cannot start (no wrk, the server did not
come up, the holder cannot get enough descriptors).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
import psutil  # type: ignore[import-untyped, unused-ignore]

from bench import content as content_mod
from bench.content import FULL_SPEC, SMALL_SPEC
from bench.holder import HolderError, HolderProcess, HolderSpec
from bench.load_report import (
    Cycle,
    Expect,
    LoadReport,
    LoadRun,
    MiB,
    ServerSample,
    evaluate,
    format_report,
)
from bench.measure import CpuWindow, rss_bytes
from bench.procfs import fd_count, held_connections, port_sockets
from bench.report import NOISY_OTHER_PCT
from bench.runner import WORKLOADS, BenchError, size_label
from bench.serve import _cpu_sets, _on_sigterm, _work_dir, _wrk_binary
from bench.servers import (
    ServerError,
    ServerProcess,
    check_range_response,
    import_content,
    start_oca,
    stored_files,
    write_oca_config,
)
from bench.wrk import WrkBinary, lua_script, parse_result, wrk_command
from oca.config import ServerConfig

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STARTUP = 0, 1, 2, 3
_DEFAULTS = ServerConfig()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="oca bench load",
        description="Served throughput with thousands of idle keep-alive and slowloris "
        "connections held, against the same server unloaded (how it works: bench/load.py).",
    )
    ap.add_argument(
        "--connections",
        type=int,
        default=10_000,
        help="connections the holder keeps open (default 10000)",
    )
    ap.add_argument(
        "--slowloris-share",
        type=float,
        default=0.1,
        help="share of them that are slowloris clients (default 0.1)",
    )
    ap.add_argument(
        "--trickle",
        type=float,
        default=3.0,
        help="slowloris: seconds between header bytes (default 3)",
    )
    ap.add_argument(
        "--workload",
        default="W1",
        choices=["W1", "W2", "W3"],
        help="what wrk requests (default W1: whole 2 MiB segments)",
    )
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    ap.add_argument("--wrk-connections", type=int, default=64, help="wrk connections (default 64)")
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="cycles, each one unloaded and one loaded run (default 3)",
    )
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds (default 2)")
    ap.add_argument(
        "--workers",
        type=int,
        default=0,
        help="server.workers (default 0: the config default, one per core)",
    )
    ap.add_argument(
        "--header-timeout",
        type=float,
        default=_DEFAULTS.header_timeout_seconds,
        help="server.header_timeout_seconds (default: the config default)",
    )
    ap.add_argument(
        "--keepalive-timeout",
        type=float,
        default=_DEFAULTS.keepalive_timeout_seconds,
        help="server.keepalive_timeout_seconds (default: the config default)",
    )
    ap.add_argument("--small", action="store_true", help="tiny generated content (smoke tests)")
    ap.add_argument("--work-dir", help="content, configs and logs (default: a temp dir)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    ap.add_argument("--server-cpus", help="taskset CPUs for the server (default: all but last)")
    ap.add_argument("--client-cpus", help="taskset CPUs for wrk and the holder (default: last)")
    ap.add_argument(
        "--max-other-cpu",
        type=float,
        default=NOISY_OTHER_PCT,
        help="retry a run once when other processes used more than this %% of "
        "a core (default %(default)s)",
    )
    ap.add_argument("--wrk", help="use this wrk binary instead of the patched build")
    ap.add_argument("--no-build-wrk", action="store_true", help="never build wrk")
    ap.add_argument("--json", help="write the full report as JSON to this path")
    return ap


# ---------------------------------------------------------------------- measuring


@dataclass
class _Ctx:
    args: argparse.Namespace
    wrk: WrkBinary
    server: ServerProcess
    url: str
    port: int
    list_path: str
    client_cpus: str | None
    work: Path

    def pids(self) -> list[int]:
        return [self.server.proc.pid, *self.server.worker_pids()]


def _say(text: str) -> None:
    print(text, flush=True)


def _cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


def _wrk_once(
    ctx: _Ctx, state: str, cycle: int, attempt: int, duration: float, holder_pid: int | None
) -> LoadRun:
    wl = WORKLOADS[ctx.args.workload]
    script_args = [ctx.list_path]
    if wl.script == "ranges.lua":
        script_args += [str(wl.range_bytes), "1"]
    cmd = wrk_command(
        ctx.wrk,
        ctx.url,
        script=lua_script(wl.script),
        script_args=script_args,
        connections=ctx.args.wrk_connections,
        duration_s=duration,
        cpus=ctx.client_cpus,
    )
    pids = ctx.pids()
    window = CpuWindow(pids)
    h0 = _cpu_seconds(holder_pid)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    cpu = window.finish(ctx.pids())
    holder_pct = round(100 * (_cpu_seconds(holder_pid) - h0) / cpu.wall_s, 1)
    try:
        r = parse_result(proc.stdout)
    except ValueError:
        raise BenchError(
            f"wrk exited {proc.returncode} without a result: "
            f"{(proc.stderr or proc.stdout).strip()[-1500:]}"
        ) from None
    other = round(max(0.0, cpu.other_pct - holder_pct), 1)
    errors = {
        "connect": r.errors_connect,
        "read": r.errors_read,
        "write": r.errors_write,
        "status>=400": r.errors_status,
        "timeout": r.errors_timeout,
    }
    dur = max(r.duration_s, 1e-6)
    return LoadRun(
        state,
        cycle,
        attempt,
        round(r.requests / dur, 1),
        round(r.bytes / dur / 1e6, 1),
        round(r.latency_p50_us / 1000, 2),
        round(r.latency_p99_us / 1000, 2),
        {k: v for k, v in errors.items() if v},
        cpu,
        holder_pct,
        other,
        other > ctx.args.max_other_cpu,
    )


def _measure(ctx: _Ctx, state: str, cycle: int, holder_pid: int | None = None) -> LoadRun:
    kept: LoadRun | None = None
    for attempt in (1, 2):
        r = _wrk_once(ctx, state, cycle, attempt, ctx.args.duration, holder_pid)
        _say(f"  cycle {cycle} {state:8}: {_describe(r)}")
        if not ctx.server.alive():
            raise BenchError(f"the server exited during a run:\n{ctx.server.log_tail()}")
        if kept is None or r.other_pct < kept.other_pct:
            kept = r
        if not r.noisy:
            break
        if attempt == 1:
            _say(f"    other processes used {r.other_pct:.0f}% of a core: running it again")
    assert kept is not None
    return kept


def _describe(r: LoadRun) -> str:
    text = (
        f"{r.req_per_s:,.0f} req/s, {r.mb_per_s:,.0f} MB/s, p50 {r.p50_ms:.2f} ms, "
        f"p99 {r.p99_ms:.2f} ms; CPU server {r.cpu.server_pct:.0f}% wrk "
        f"{r.cpu.client_pct:.0f}% holder {r.holder_pct:.0f}% other {r.other_pct:.0f}%"
    )
    if r.errors:
        text += f"; wrk errors {r.errors}"
    return text


def _metric(url: str, name: str) -> float | None:
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def _sample(ctx: _Ctx, at: str) -> ServerSample:
    pids = ctx.pids()
    workers = pids[1:]
    held = held_connections(workers, ctx.port)
    fds = {p: fd_count(p) for p in pids}
    return ServerSample(
        at,
        sum(fds.values()),
        fds,
        rss_bytes(pids),
        sum(held.values()),
        held,
        len(port_sockets(pids[0], ctx.port).other),
        _metric(ctx.url, "oca_open_connections"),
    )


def _settle(ctx: _Ctx, before: ServerSample, timeout: float = 30.0) -> ServerSample:
    """After the release: sample once the connections are gone (lingering closes last up
    to 2 s), or at the timeout; the check allows ``load_report.FD_SLACK`` over before."""
    deadline = time.monotonic() + timeout
    while True:
        s = _sample(ctx, "after")
        if (s.held <= before.held and s.fds <= before.fds + 8) or time.monotonic() > deadline:
            return s
        time.sleep(0.5)


def _cycle(ctx: _Ctx, index: int) -> Cycle:
    a = ctx.args
    cyc = Cycle(index, _measure(ctx, "unloaded", index))
    before = _sample(ctx, "before")  # after the unloaded run: the open-file cache is warm
    cyc.samples.append(before)
    n_slow = round(a.connections * a.slowloris_share)
    spec = HolderSpec(
        host=ctx.url.split("://", 1)[1].rsplit(":", 1)[0].strip("[]"),
        port=ctx.port,
        idle=a.connections - n_slow,
        slowloris=n_slow,
        path=ctx.args.probe_path,
        trickle_s=a.trickle,
        spread_s=a.header_timeout,
    )
    t0 = time.monotonic()
    holder = HolderProcess(spec, cpus=ctx.client_cpus, log_path=ctx.work / f"holder-{index}.log")
    try:
        holder.wait_open(a.connections, timeout=max(120.0, a.connections / 50))
        cyc.ramp_s = round(time.monotonic() - t0, 1)
        # the first slowloris clients have been through one header timeout and the
        # others keep arriving at it, spread out: steady churn
        settle = max(2.0, a.header_timeout + a.trickle + 1.0 - cyc.ramp_s)
        _say(
            f"  cycle {index}: {a.connections:,} connections open after {cyc.ramp_s:.1f} s "
            f"(started over {a.header_timeout:g} s); measuring in {settle:.0f} s"
        )
        time.sleep(settle)
        cyc.samples.append(_sample(ctx, "during"))
        cyc.loaded = _measure(ctx, "loaded", index, holder.pid)
        cyc.samples.append(_sample(ctx, "during-after-run"))
        cyc.holder = holder.release()
    finally:
        holder.stop()
    cyc.samples.append(_settle(ctx, before))
    d, s = cyc.sample("during"), cyc.sample("after")
    _say(
        f"  cycle {index}: held {d.held:,} at the server; fds {before.fds:,} -> {d.fds:,} -> "
        f"{s.fds:,}; RSS {before.rss_bytes / MiB:.0f} -> {d.rss_bytes / MiB:.0f} -> "
        f"{s.rss_bytes / MiB:.0f} MiB"
    )
    return cyc


def _limits(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return f"soft {soft}, hard {hard}"
    except OSError:
        pass
    return "unknown"


# ---------------------------------------------------------------------- main


def _check_args(args: argparse.Namespace) -> str | None:
    if args.connections < 1 or args.repeats < 1 or args.duration < 1 or args.workers < 0:
        return "--connections, --repeats and --duration must be >= 1, --workers >= 0"
    if not 0 <= args.slowloris_share <= 1 or args.trickle <= 0:
        return "--slowloris-share must be in 0..1 and --trickle > 0"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    problem = _check_args(args)
    if problem:
        print(f"oca bench load: {problem}", file=sys.stderr)
        return EXIT_USAGE
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM)
    if in_main:
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _main(args)
    except KeyboardInterrupt:
        print("oca bench load: interrupted; server and holder stopped", file=sys.stderr)
        return 130
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _main(args: argparse.Namespace) -> int:
    wrk = _wrk_binary(args)
    if wrk is None:
        print("oca bench load: wrk is not installed (`make system-deps`)", file=sys.stderr)
        return EXIT_STARTUP
    _say(f"wrk: {wrk.describe()}")
    server_cpus, client_cpus, pinning = _cpu_sets(args)
    pinning = pinning.replace("wrk", "wrk and the holder")
    _say(f"pinning: {pinning}")
    with _work_dir(args.work_dir) as work, contextlib.ExitStack() as stack:
        spec = SMALL_SPEC if args.small else FULL_SPEC
        data = content_mod.generate(work / "content", spec, log=_say)
        files = data.segments if WORKLOADS[args.workload].files == "segments" else data.renditions
        store = work / "store" / "ssd0"
        store.mkdir(parents=True, exist_ok=True)
        config = write_oca_config(
            work / "oca.toml",
            host="127.0.0.1",
            workers=args.workers,
            state_dir=work / "state",
            store_dirs=[store],
            tls=None,
        )
        text = config.read_text().replace(
            "[server]\n",
            (
                "[server]\n"
                f"header_timeout_seconds = {args.header_timeout}\n"
                f"keepalive_timeout_seconds = {args.keepalive_timeout}\n"
            ),
            1,
        )
        config.write_text(text)
        _say(f"oca store import: {import_content(config, data.root).splitlines()[0]}")
        served = stored_files(config)
        try:
            server = start_oca(config, work, cpus=server_cpus)
        except ServerError as exc:
            print(f"oca bench load: cannot start the server: {exc}", file=sys.stderr)
            return EXIT_STARTUP
        stack.callback(server.stop)
        url = server.urls["http"]
        args.probe_path = files[0].url_path
        ctx = _Ctx(
            args,
            wrk,
            server,
            url,
            int(url.rsplit(":", 1)[1]),
            content_mod.write_list(work / "list.txt", files),
            client_cpus,
            work,
        )
        wrong = check_range_response(url, files[0], data.root)
        if wrong:
            print(f"oca bench load: wrong bytes from the server: {wrong}", file=sys.stderr)
            return EXIT_FAILED
        content_mod.warm(list(served.values()), int(psutil.virtual_memory().available * 0.5))
        return _run(ctx, size_label(files), pinning)


def _run(ctx: _Ctx, size: str, pinning: str) -> int:
    args = ctx.args
    pids0 = ctx.server.worker_pids()
    n_slow = round(args.connections * args.slowloris_share)
    wl = WORKLOADS[args.workload]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    rep = LoadReport(
        title=f"{wl.name} {wl.what.format(size=size)}, wrk {args.wrk_connections} connections; "
        f"loaded: {args.connections:,} connections held ({args.connections - n_slow:,} idle "
        f"keep-alive after one request, {n_slow:,} slowloris sending one header byte every "
        f"{args.trickle:g} s)",
        expect=Expect(
            args.connections, n_slow, args.header_timeout, args.keepalive_timeout, args.duration
        ),
        settings={k: v for k, v in vars(args).items() if k != "probe_path"},
        server={
            "server": f"{len(pids0)} worker(s) (server.workers = {args.workers}"
            + (", the default: one per core)" if args.workers == 0 else ")")
            + f", PIDs {pids0}; open-file limit of a worker "
            + (_limits(pids0[0]) if pids0 else "unknown"),
            "pinning": pinning,
            "machine": f"{os.cpu_count()} CPUs, load average {load} at the start",
        },
    )
    code = EXIT_OK
    try:
        if args.warmup > 0:
            _wrk_once(ctx, "warmup", 0, 1, args.warmup, None)
        for i in range(1, args.repeats + 1):
            rep.cycles.append(_cycle(ctx, i))
    except (BenchError, HolderError) as exc:
        print(f"oca bench load: {exc}", file=sys.stderr)
        rep.warnings.append(str(exc))
        code = EXIT_FAILED
    restarts = ctx.server.log_tail(1 << 30).count("restarting in")
    evaluate(rep, pids0, ctx.server.worker_pids(), restarts)
    errs = sum(sum(c.loaded.errors.values()) for c in rep.loaded_cycles() if c.loaded)
    if errs:
        rep.warnings.append(f"wrk saw {errs} errors during the loaded runs")
    print("\n" + format_report(rep), flush=True)
    if args.json:
        Path(args.json).write_bytes(
            orjson.dumps(rep, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
        )
        _say(f"report written to {args.json}")
    if code == EXIT_OK and not all(ok for _, ok, _ in rep.checks):
        code = EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
