"""Running the serving workloads: alternated wrk runs against each server, measured.

Each workload runs the servers in turn (oca, nginx, oca, nginx, ...) so that slow drift
on a shared machine hits both alike. Every run records wrk's summary (bytes, requests,
errors, latency percentiles) together with the CPU used by the server's workers, by wrk
and by everything else; a run during which other processes used more than
``max_other_pct`` of a core is run once more and the second attempt is kept.

W5 runs two wrk processes side by side: one over the hot objects with 90% of the
connections and one over the cold objects (half of the segments), whose pages a thread
evicts from the page cache every 100 ms, with the rest. As wrk keeps each connection
busy, slower cold responses mean the cold share of requests ends up below 10%; the
report gives the share measured. wrk's latency statistics are per process, so each class gets
its own percentiles; the run's p50/p99 are the hot class's.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bench.content import ContentFile, ContentSet, PageCacheDropper, write_list
from bench.measure import CpuUsage, CpuWindow, RssSampler, rss_bytes
from bench.report import (
    NOISY_OTHER_PCT,
    ClassResult,
    RssCheck,
    RunResult,
    ServerName,
    WorkloadReport,
    summarize,
    workload_notes,
)
from bench.servers import ServerProcess
from bench.wrk import WrkBinary, WrkResult, lua_script, parse_result, wrk_command

KiB = 1024
MiB = 1024 * KiB
COLD_FRACTION = 0.1  # W5: share of the connections (so, roughly, of requests) that go cold
COLD_SET_FRACTION = 0.5  # W5: share of the objects kept cold; large, so that few cold
# requests find a file that another cold request read since the last eviction
DROP_INTERVAL_S = 0.1
RSS_GROWTH_LIMIT_BYTES = 10 * MiB
RSS_MIN_SAMPLES = 3  # after warm-up, for a verdict
SERVER_ORDER: tuple[ServerName, ...] = ("oca", "nginx")

Log = Callable[[str], None]


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


@dataclass(frozen=True)
class WorkloadDef:
    name: str
    what: str  # printed title, with {size} for the objects' size
    script: Literal["whole.lua", "ranges.lua"]
    files: Literal["segments", "renditions"]
    range_bytes: int = 0
    https: bool = False
    cold_fraction: float = 0.0


WORKLOADS: dict[str, WorkloadDef] = {
    w.name: w
    for w in (
        WorkloadDef("W1", "whole {size} segments, a random object per request", "whole.lua",
                    "segments"),
        WorkloadDef("W2", "random 64 KiB ranges inside {size} segments", "ranges.lua",
                    "segments", range_bytes=64 * KiB),
        WorkloadDef("W3", "random 1 MiB ranges inside {size} renditions", "ranges.lua",
                    "renditions", range_bytes=1 * MiB),
        WorkloadDef("W4", "whole {size} segments over HTTPS", "whole.lua", "segments",
                    https=True),
        WorkloadDef("W5", "whole {size} segments, 10% of requests to objects evicted from "
                    "the page cache (p50/p99: hot requests)", "whole.lua", "segments",
                    cold_fraction=COLD_FRACTION),
    )
}  # fmt: skip


def size_label(files: Sequence[ContentFile]) -> str:
    sizes = {f.size for f in files}
    mean = sum(f.size for f in files) / max(1, len(files))
    label = f"{mean / MiB:g} MiB" if mean >= MiB else f"{mean / KiB:g} KiB"
    return label if len(sizes) == 1 else f"~{label} (mean)"


@dataclass
class RunContext:
    """Everything a run needs; built once by the CLI shell."""

    wrk: WrkBinary
    content: ContentSet
    servers: dict[ServerName, ServerProcess]
    work_dir: Path
    duration_s: float
    connections: int
    repeats: int
    warmup_s: float
    client_cpus: str | None
    align: int
    max_other_pct: float = NOISY_OTHER_PCT
    log: Log = print
    active: list[subprocess.Popen[str]] = field(default_factory=list)

    def files_for(self, wl: WorkloadDef) -> tuple[ContentFile, ...]:
        return self.content.segments if wl.files == "segments" else self.content.renditions

    def kill_active(self) -> None:
        for p in self.active:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                p.wait()
        self.active.clear()


@dataclass(frozen=True)
class _Job:
    label: str  # "all", "hot" or "cold"
    list_path: str
    connections: int


def _split(wl: WorkloadDef, ctx: RunContext) -> tuple[list[_Job], list[ContentFile]]:
    """wrk jobs for a workload and the files whose pages must be kept cold."""
    files = ctx.files_for(wl)
    lists = ctx.work_dir / "lists"
    lists.mkdir(parents=True, exist_ok=True)
    if not wl.cold_fraction:
        return [_Job("all", write_list(lists / f"{wl.name}.txt", files), ctx.connections)], []
    if len(files) < 2 or ctx.connections < 2:
        raise BenchError(f"{wl.name} needs at least 2 objects and 2 connections")
    n_cold = max(1, round(len(files) * COLD_SET_FRACTION))
    cold, hot = list(files[-n_cold:]), list(files[:-n_cold])
    cold_conns = max(1, round(ctx.connections * wl.cold_fraction))
    return [
        _Job("hot", write_list(lists / f"{wl.name}-hot.txt", hot), ctx.connections - cold_conns),
        _Job("cold", write_list(lists / f"{wl.name}-cold.txt", cold), cold_conns),
    ], cold


def _script_args(wl: WorkloadDef, list_path: str, align: int) -> list[str]:
    if wl.script == "ranges.lua":
        return [list_path, str(wl.range_bytes), str(align)]
    return [list_path]


def run_wrk_jobs(
    ctx: RunContext,
    wl: WorkloadDef,
    server: ServerProcess,
    jobs: Sequence[_Job],
    duration_s: float,
) -> tuple[dict[str, WrkResult], CpuUsage]:
    """Run the jobs' wrk processes concurrently; their results and the CPU used."""
    url = server.urls["https" if wl.https else "http"]
    procs: list[tuple[_Job, subprocess.Popen[str]]] = []
    window = CpuWindow(server.worker_pids())
    try:
        for job in jobs:
            cmd = wrk_command(
                ctx.wrk,
                url,
                script=lua_script(wl.script),
                script_args=_script_args(wl, job.list_path, ctx.align),
                connections=job.connections,
                duration_s=duration_s,
                cpus=ctx.client_cpus,
            )
            p = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )
            ctx.active.append(p)
            procs.append((job, p))
        outputs: dict[str, tuple[str, str, int]] = {}
        for job, p in procs:
            try:
                out, err = p.communicate(timeout=duration_s + 60)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
            outputs[job.label] = (out, err, p.returncode)
    finally:
        ctx.kill_active()
    cpu = window.finish(server.worker_pids())
    results: dict[str, WrkResult] = {}
    for label, (out, err, code) in outputs.items():
        try:
            results[label] = parse_result(out)
        except ValueError:
            raise BenchError(
                f"wrk ({label}) against {server.name} exited {code} without a result:\n"
                f"{(err or out).strip()[-1500:]}"
            ) from None
    return results, cpu


def _run_result(
    wl: WorkloadDef,
    name: ServerName,
    index: int,
    attempt: int,
    results: dict[str, WrkResult],
    cpu: CpuUsage,
    rss: int,
    max_other_pct: float,
) -> RunResult:
    main = results.get("all") or results["hot"]
    total_requests = sum(r.requests for r in results.values())
    total_bytes = sum(r.bytes for r in results.values())
    req_per_s = sum(r.requests / max(r.duration_s, 1e-6) for r in results.values())
    gb_per_s = sum(r.bytes / max(r.duration_s, 1e-6) for r in results.values()) / 1e9
    detail: dict[str, int] = {}
    for r in results.values():
        for k, v in (
            ("connect", r.errors_connect),
            ("read", r.errors_read),
            ("write", r.errors_write),
            ("status>=400", r.errors_status),
            ("timeout", r.errors_timeout),
        ):
            detail[k] = detail.get(k, 0) + v
    classes = {
        label: ClassResult(r.requests, r.bytes, r.errors, r.latency_p50_us, r.latency_p99_us)
        for label, r in results.items()
        if label != "all"
    }
    return RunResult(
        server=name,
        workload=wl.name,
        run=index,
        duration_s=round(max(r.duration_s for r in results.values()), 3),
        requests=total_requests,
        bytes=total_bytes,
        req_per_s=round(req_per_s, 1),
        gb_per_s=round(gb_per_s, 4),
        p50_us=main.latency_p50_us,
        p90_us=main.latency_p90_us,
        p99_us=main.latency_p99_us,
        max_us=main.latency_max_us,
        errors=sum(r.errors for r in results.values()),
        errors_detail=detail,
        cpu=cpu,
        server_rss_bytes=rss,
        attempt=attempt,
        noisy=cpu.other_pct > max_other_pct,
        classes=classes,
    )


@contextlib.contextmanager
def _cold(ctx: RunContext, cold: Sequence[ContentFile]) -> Iterator[None]:
    """Keep both servers' copies of the cold files out of the page cache."""
    if not cold:
        yield
        return
    paths: list[str] = []
    for f in cold:
        paths.append(str(ctx.content.root / f.rel))
        for s in ctx.servers.values():
            if f"/{f.rel}" in s.files:
                paths.append(s.files[f"/{f.rel}"])
    with PageCacheDropper(sorted(set(paths)), DROP_INTERVAL_S) as dropper:
        yield
    if dropper.error is not None:
        raise BenchError(f"the page-cache dropper failed: {dropper.error!r}")


def _describe(r: RunResult) -> str:
    text = (
        f"{r.req_per_s:,.0f} req/s, {r.gb_per_s:.2f} GB/s, p50 {r.p50_us / 1000:.2f} ms, "
        f"p99 {r.p99_us / 1000:.2f} ms, CPU server {r.cpu.server_pct:.0f}% "
        f"client {r.cpu.client_pct:.0f}% other {r.cpu.other_pct:.0f}%, "
        f"RSS {r.server_rss_bytes / MiB:.0f} MiB"
    )
    if "cold" in r.classes:
        text += f", cold p99 {r.classes['cold'].p99_us / 1000:.2f} ms"
    if r.errors:
        text += f", {r.errors} ERRORS"
    return text


def run_workload(ctx: RunContext, wl: WorkloadDef) -> WorkloadReport:
    files = ctx.files_for(wl)
    title = wl.what.format(size=size_label(files))
    jobs, cold = _split(wl, ctx)
    order = [s for s in SERVER_ORDER if s in ctx.servers]
    runs: list[RunResult] = []
    ctx.log(f"{wl.name}: {title}")
    with _cold(ctx, cold):
        if ctx.warmup_s > 0:
            for name in order:
                run_wrk_jobs(ctx, wl, ctx.servers[name], jobs, ctx.warmup_s)
        for index in range(1, ctx.repeats + 1):
            for name in order:
                server = ctx.servers[name]
                kept: RunResult | None = None
                for attempt in (1, 2):
                    results, cpu = run_wrk_jobs(ctx, wl, server, jobs, ctx.duration_s)
                    rss = rss_bytes(server.worker_pids())
                    r = _run_result(wl, name, index, attempt, results, cpu, rss, ctx.max_other_pct)
                    ctx.log(f"  {name:5} run {index}/{ctx.repeats}: {_describe(r)}")
                    if not server.alive():
                        raise BenchError(f"{name} exited during {wl.name}:\n{server.log_tail()}")
                    if kept is None or r.cpu.other_pct < kept.cpu.other_pct:
                        kept = r  # a retry that was even noisier does not replace the first
                    if not r.noisy:
                        break
                    if attempt == 1:
                        ctx.log(
                            f"  other processes used {r.cpu.other_pct:.0f}% of a core: retrying"
                        )
                assert kept is not None
                runs.append(kept)
    summary = {name: summarize([r for r in runs if r.server == name]) for name in order}
    ratio = None
    if "oca" in summary and "nginx" in summary and summary["nginx"].gb_per_s.median > 0:
        ratio = round(summary["oca"].gb_per_s.median / summary["nginx"].gb_per_s.median, 3)
    return WorkloadReport(
        name=wl.name,
        title=title,
        scheme="https" if wl.https else "http",
        connections=ctx.connections,
        duration_s=ctx.duration_s,
        runs=runs,
        summary=summary,
        ratio_gb_per_s=ratio,
        notes=workload_notes(summary, runs),
    )


def rss_check(ctx: RunContext, target_bytes: int, workload: str = "W1") -> RssCheck:
    """Serve ``target_bytes`` of a workload (W1-W4) from oca, sampling its workers' RSS.

    RSS is sampled every second.

    A 1 s probe estimates the rate; warm-up lasts until 10% of the target was served
    (at least the probe); the rest is served in runs of at most 2 s, each followed by a
    sample too. Growth is the highest sample after warm-up minus the RSS at its end;
    with fewer than :data:`RSS_MIN_SAMPLES` samples after warm-up there is no verdict.
    """
    server = ctx.servers["oca"]
    wl = WORKLOADS[workload]
    if wl.cold_fraction:
        raise BenchError(f"the RSS check cannot run {workload}; choose one of W1-W4")
    jobs, _ = _split(wl, ctx)
    served = errors = 0
    t0 = time.monotonic()

    def chunk(seconds: float) -> float:
        nonlocal served, errors
        results, _ = run_wrk_jobs(ctx, wl, server, jobs, seconds)
        r = results["all"]
        served += r.bytes
        errors += r.errors
        if not server.alive():
            raise BenchError(f"oca exited during the RSS check:\n{server.log_tail()}")
        return max(r.bytes / max(r.duration_s, 1e-6), 1e6)

    with RssSampler(server.worker_pids, 1.0) as sampler:
        start_rss = sampler.samples[0][1]
        rate = chunk(1)
        deadline = t0 + max(120.0, 5 * target_bytes / rate)
        warm_target = 0.1 * target_bytes
        if served < warm_target:
            rate = chunk(math.ceil((warm_target - served) / rate))
        warm_rss = sampler.sample()
        warm_at = len(sampler.snapshot())
        while served < target_bytes and time.monotonic() < deadline:
            rate = chunk(min(2, max(1, math.ceil((target_bytes - served) / rate))))
            sampler.sample()
            ctx.log(f"  RSS check: {served / 1e9:.1f}/{target_bytes / 1e9:.1f} GB served")
    samples = sampler.snapshot()
    after = [v for _, v in samples[warm_at:]]
    growth = max(after, default=warm_rss) - warm_rss
    return RssCheck(
        workload=workload,
        target_bytes=target_bytes,
        served_bytes=served,
        seconds=round(time.monotonic() - t0, 1),
        start_rss_bytes=start_rss,
        warm_rss_bytes=warm_rss,
        peak_rss_bytes=max(v for _, v in samples),
        end_rss_bytes=samples[-1][1],
        growth_after_warmup_bytes=growth,
        samples_after_warmup=len(after),
        flat=(growth < RSS_GROWTH_LIMIT_BYTES) if len(after) >= RSS_MIN_SAMPLES else None,
        limit_bytes=RSS_GROWTH_LIMIT_BYTES,
        samples=samples,
        errors=errors,
    )
