"""``oca bench cache-policy``: hit ratios of our eviction/admission policy beside libcachesim's.

Theory of operation: generate the synthetic two-day traces (:mod:`bench.traces`), then
replay each through our hybrid policy and through libcachesim's reference policies
(:mod:`bench.policy_replay`) at cache sizes given as percentages of the trace's
footprint. Day one warms every cache; day two is scored. Each replay runs in its own
forked process, as many at a time as ``--jobs``, so that a policy that crashes inside
the C library is reported with its reason instead of ending the benchmark, and so that
both cores are used. The output is a table per trace and size (object and byte hit ratio
of every policy, ours marked, our rank among the online policies) and one verdict line
per target of the issue. docs/cache-policy.md explains the traces, the protocol and how
to read the output.

Exit codes: 0 done (whether or not the targets are met), 2 bad usage.
"""

from __future__ import annotations

import argparse
import faulthandler
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import orjson

from bench.policy_replay import (
    OFFLINE_REFERENCES,
    OURS,
    OURS_PULL_ONLY,
    POLICIES,
    Outcome,
    libcachesim_version,
    replay_ours,
    replay_reference,
)
from bench.policy_report import (
    PolicyRow,
    Report,
    TraceReport,
    format_report,
    policy_row,
    size_report,
    verdicts,
)
from bench.traces import (
    VIDEO_DEFAULT,
    VIDEO_SMALL,
    VIDEO_TINY,
    ZIPF_DEFAULT,
    ZIPF_SMALL,
    ZIPF_TINY,
    Trace,
    video_trace,
    zipf_churn_trace,
)
from fill.policy import PolicyParams

EXIT_OK, EXIT_USAGE = 0, 2
TRACES: tuple[str, ...] = ("video", "zipf")
Scale = Literal["default", "small", "tiny"]


# ---------------------------------------------------------------------------- jobs


@dataclass(frozen=True, slots=True)
class Job:
    trace: str
    percent: float
    cache_bytes: int
    policy: str


@dataclass(slots=True)
class _Running:
    job: Job
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    log: int  # fd of the child's captured stdout/stderr
    result: Outcome | None = None


_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")


def _captured(fd: int) -> list[str]:
    """What a child printed (libcachesim's warnings), addresses masked, de-duplicated."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 1 << 16).decode("utf-8", "replace")
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # colour codes
    out: list[str] = []
    for line in text.splitlines():
        line = _ADDRESS.sub("0x...", line.strip())[:240]
        if line and line not in out:
            out.append(line)
    return out[:5]


def _child(
    job: Job,
    trace: Trace,
    next_access: object,
    params: PolicyParams,
    conn: multiprocessing.connection.Connection,
    log: int,
) -> None:
    faulthandler.disable()  # the reason is what the library printed, not a Python stack
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    try:
        if job.policy in (OURS, OURS_PULL_ONLY):
            outcome = replay_ours(trace, job.cache_bytes, params, fill=job.policy == OURS)
        else:
            outcome = replay_reference(trace, job.policy, job.cache_bytes, next_access)
    except Exception as exc:
        outcome = Outcome(
            policy=job.policy, status="crashed", reason=f"{type(exc).__name__}: {exc}"
        )
    conn.send(outcome)
    conn.close()


def _cost(job: Job, sizes: dict[str, int]) -> float:
    weight = {"LRB": 20.0, OURS: 5.0, OURS_PULL_ONLY: 4.0, "S3-FIFO": 2.0, "W-TinyLFU": 1.5}
    return sizes[job.trace] * weight.get(job.policy, 1.0)


def run_jobs(
    jobs: Sequence[Job],
    traces: dict[str, Trace],
    params: PolicyParams,
    workers: int,
    progress: Callable[[str], None],
) -> dict[Job, PolicyRow]:
    """Run every job in a forked child, ``workers`` at a time, longest first."""
    ctx = multiprocessing.get_context("fork")
    next_access = {
        name: trace.next_access()
        for name, trace in traces.items()
        if any(j.trace == name and j.policy in OFFLINE_REFERENCES for j in jobs)
    }
    lengths = {name: len(t) for name, t in traces.items()}
    pending = sorted(jobs, key=lambda j: -_cost(j, lengths))
    running: list[_Running] = []
    rows: dict[Job, PolicyRow] = {}
    total = len(pending)
    while pending or running:
        while pending and len(running) < workers:
            job = pending.pop(0)
            recv, send = ctx.Pipe(duplex=False)
            with tempfile.TemporaryFile() as log:
                fd = os.dup(log.fileno())  # outlives the file object; closed in _finish
            args = (job, traces[job.trace], next_access.get(job.trace), params, send, fd)
            proc = ctx.Process(target=_child, args=args, daemon=True)
            proc.start()
            send.close()
            running.append(_Running(job, proc, recv, fd))
        ready = multiprocessing.connection.wait([r.conn for r in running])
        for r in [r for r in running if r.conn in ready]:
            try:
                r.result = r.conn.recv()
            except EOFError:  # the child died before it could answer
                r.result = None
            r.process.join()
            running.remove(r)
            _finish(r, rows, progress, total)
    return rows


def _finish(
    r: _Running, rows: dict[Job, PolicyRow], progress: Callable[[str], None], total: int
) -> None:
    captured = _captured(r.log)
    os.close(r.log)
    r.conn.close()
    job = r.job
    outcome = r.result
    if outcome is None:
        code = r.process.exitcode
        if code is not None and code < 0:
            why = f"killed by {signal.Signals(-code).name}"
        else:
            why = f"exited with status {code}"
        last = f": {captured[-1]}" if captured else ""
        outcome = Outcome(policy=job.policy, status="crashed", reason=f"{why}{last}")
        captured = captured[:-1]
    rows[job] = policy_row(outcome, captured)
    bhr = f"BHR {outcome.byte_hit_ratio:.3f}" if outcome.status == "ok" else outcome.status
    progress(f"[{len(rows)}/{total}] {job.trace} {job.percent:g}% {job.policy}: {bhr} "
             f"({outcome.seconds:.1f} s)")  # fmt: skip


# ---------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="oca bench cache-policy",
        description="Object and byte hit ratios of our cache policy beside libcachesim's "
        "reference policies on synthetic two-day traces (see docs/cache-policy.md).",
    )
    ap.add_argument(
        "--sizes",
        default="1,5,10",
        help="cache sizes in percent of each trace's footprint (default 1,5,10)",
    )
    ap.add_argument("--trace", choices=(*TRACES, "all"), default="all", help="default all")
    ap.add_argument("--seed", type=int, default=1, help="trace generator seed (default 1)")
    scale = ap.add_mutually_exclusive_group()
    scale.add_argument("--small", action="store_true", help="smaller traces, a quick run")
    scale.add_argument("--tiny", action="store_true", help="tiny traces, for smoke tests")
    ap.add_argument("--policies", default=",".join(POLICIES),
                    help="comma-separated subset of: " + ", ".join(POLICIES))  # fmt: skip
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="replays run at once, each in its own process (default 2)")  # fmt: skip
    ap.add_argument("--half-life-hours", type=float,
                    help="override PolicyParams.half_life_seconds (in hours)")  # fmt: skip
    ap.add_argument("--forecast-weight", type=float, help="override PolicyParams.forecast_weight")
    ap.add_argument("--probation", type=float, metavar="FRACTION",
                    help="override PolicyParams.probation_fraction")  # fmt: skip
    ap.add_argument("--json", metavar="PATH", help="also write the full report as JSON")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return ap


def make_trace(name: str, scale: Scale, seed: int) -> Trace:
    if name == "video":
        video = {"default": VIDEO_DEFAULT, "small": VIDEO_SMALL, "tiny": VIDEO_TINY}[scale]
        return video_trace(video, seed)
    zipf = {"default": ZIPF_DEFAULT, "small": ZIPF_SMALL, "tiny": ZIPF_TINY}[scale]
    return zipf_churn_trace(zipf, seed)


def _parse_sizes(text: str) -> list[float] | None:
    try:
        sizes = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        return None
    return sizes if sizes and all(0 < s <= 100 for s in sizes) else None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    sizes = _parse_sizes(args.sizes)
    if sizes is None:
        print("oca bench cache-policy: --sizes takes percentages in (0, 100], e.g. 1,5,10",
              file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        print(f"oca bench cache-policy: unknown policies {unknown}; choose from "
              f"{', '.join(POLICIES)}", file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    if args.jobs < 1:
        print("oca bench cache-policy: --jobs must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        params = PolicyParams()
        if args.half_life_hours is not None:
            params = replace(params, half_life_seconds=args.half_life_hours * 3600.0)
        if args.forecast_weight is not None:
            params = replace(params, forecast_weight=args.forecast_weight)
        if args.probation is not None:
            params = replace(params, probation_fraction=args.probation)
    except ValueError as exc:
        print(f"oca bench cache-policy: {exc}", file=sys.stderr)
        return EXIT_USAGE
    scale: Scale = "tiny" if args.tiny else "small" if args.small else "default"
    quiet = args.quiet

    def progress(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    report = run(TRACES if args.trace == "all" else (args.trace,), sizes, policies, scale,
                 args.seed, params, args.jobs, progress)  # fmt: skip
    sys.stdout.write(format_report(report))
    if args.json:
        with open(args.json, "wb") as fh:
            fh.write(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return EXIT_OK


def run(
    trace_names: Sequence[str],
    sizes: Sequence[float],
    policies: Sequence[str],
    scale: Scale,
    seed: int,
    params: PolicyParams,
    jobs: int,
    progress: Callable[[str], None],
) -> Report:
    """Generate the traces, replay every (trace, size, policy) and build the report."""
    traces: dict[str, Trace] = {}
    for name in trace_names:
        started = time.perf_counter()
        traces[name] = make_trace(name, scale, seed)
        t = traces[name]
        took = time.perf_counter() - started
        progress(f"{name} trace: {len(t):,} requests, {len(t.paths):,} objects ({took:.1f} s)")
    work = [
        Job(name, pct, int(trace.footprint_bytes * pct / 100.0), policy)
        for name, trace in traces.items()
        for pct in sizes
        for policy in policies
    ]
    rows = run_jobs(work, traces, params, jobs, progress)
    reports: list[TraceReport] = []
    for name, trace in traces.items():
        size_reports = []
        for pct in sizes:
            cache_bytes = int(trace.footprint_bytes * pct / 100.0)
            mine = [rows[j] for j in work if j.trace == name and j.percent == pct]
            size_reports.append(size_report(pct, cache_bytes, mine))
        reports.append(
            TraceReport(
                name=name,
                description=trace.description,
                requests=len(trace),
                day2_requests=len(trace) - trace.day2_start,
                objects=len(trace.paths),
                footprint_bytes=trace.footprint_bytes,
                facts=dict(trace.facts),
                sizes=size_reports,
            )
        )
    return Report(
        benchmark="cache-policy",
        scale=scale,
        seed=seed,
        libcachesim=libcachesim_version(),
        half_life_seconds=params.half_life_seconds,
        forecast_weight=params.forecast_weight,
        probation_fraction=params.probation_fraction,
        belady_bound=(
            "the higher BHR of libcachesim's Belady (evicts the object re-requested "
            "furthest in the future) and BeladySize (evicts the largest size x distance of "
            "128 sampled objects); neither is a proven bound for variable sizes"
        ),
        traces=reports,
        verdicts=verdicts(reports),
    )


if __name__ == "__main__":
    sys.exit(main())
