"""Results of ``oca bench serve``: per-run records, per-workload summaries, the table.

Every figure in the JSON report is in base units (bytes, seconds, microseconds for
latency, percent of one core for CPU); the printed table rounds for reading. Summaries
quote the median of the runs with their min and max, as runs on a shared machine vary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from bench.measure import CpuUsage, Spread, spread

ServerName = Literal["oca", "nginx"]
CLIENT_BOUND_PCT = 90.0
NOISY_OTHER_PCT = 15.0


@dataclass(frozen=True)
class ClassResult:
    """One request class of a run (W5: ``hot`` or ``cold``), from its own wrk."""

    requests: int
    bytes: int
    errors: int
    p50_us: float
    p99_us: float


@dataclass(frozen=True)
class RunResult:
    server: ServerName
    workload: str
    run: int
    duration_s: float
    requests: int
    bytes: int
    req_per_s: float
    gb_per_s: float  # 1e9 bytes per second, headers included
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float
    errors: int
    errors_detail: dict[str, int]
    cpu: CpuUsage
    server_rss_bytes: int  # summed RSS of the server's workers right after the run
    attempt: int  # 1, or 2 when the first attempt was noisy and retried
    noisy: bool  # other CPU was high on the attempt kept
    classes: dict[str, ClassResult] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerSummary:
    runs: int
    req_per_s: Spread
    gb_per_s: Spread
    p50_us: Spread
    p99_us: Spread
    server_cpu_pct: Spread
    client_cpu_pct: Spread
    other_cpu_pct: Spread
    errors: int
    noisy_runs: int
    hot_p99_us: Spread | None = None  # W5
    cold_p99_us: Spread | None = None  # W5
    cold_request_share: float | None = None  # W5: cold requests / all requests


@dataclass(frozen=True)
class WorkloadReport:
    name: str
    title: str
    scheme: str
    connections: int
    duration_s: float
    runs: list[RunResult]
    summary: dict[ServerName, ServerSummary]
    ratio_gb_per_s: float | None  # oca median / nginx median
    hot_p99_vs_all_hot: dict[ServerName, float] = field(default_factory=dict)  # W5, per server
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RssCheck:
    workload: str
    target_bytes: int
    served_bytes: int
    seconds: float
    start_rss_bytes: int
    warm_rss_bytes: int  # after the warm-up chunk
    peak_rss_bytes: int
    end_rss_bytes: int
    growth_after_warmup_bytes: int
    samples_after_warmup: int
    flat: bool | None  # None: too few samples after warm-up to judge
    limit_bytes: int
    samples: list[tuple[float, int]]
    errors: int


@dataclass
class Report:
    settings: dict[str, object]
    machine: dict[str, object]
    workloads: dict[str, WorkloadReport] = field(default_factory=dict)
    rss_check: RssCheck | None = None
    warnings: list[str] = field(default_factory=list)


def summarize(runs: Sequence[RunResult]) -> ServerSummary:
    hot = [r.classes["hot"].p99_us for r in runs if "hot" in r.classes]
    cold = [r.classes["cold"].p99_us for r in runs if "cold" in r.classes]
    cold_reqs = sum(r.classes["cold"].requests for r in runs if "cold" in r.classes)
    all_reqs = sum(r.requests for r in runs)
    return ServerSummary(
        runs=len(runs),
        req_per_s=spread([r.req_per_s for r in runs]),
        gb_per_s=spread([r.gb_per_s for r in runs]),
        p50_us=spread([r.p50_us for r in runs]),
        p99_us=spread([r.p99_us for r in runs]),
        server_cpu_pct=spread([r.cpu.server_pct for r in runs]),
        client_cpu_pct=spread([r.cpu.client_pct for r in runs]),
        other_cpu_pct=spread([r.cpu.other_pct for r in runs]),
        errors=sum(r.errors for r in runs),
        noisy_runs=sum(1 for r in runs if r.noisy),
        hot_p99_us=spread(hot) if hot else None,
        cold_p99_us=spread(cold) if cold else None,
        cold_request_share=(cold_reqs / all_reqs) if cold and all_reqs else None,
    )


# ---------------------------------------------------------------------- the table


def _fmt(s: Spread, unit: Literal["int", "gb", "ms", "pct"], single: bool) -> str:
    def one(v: float) -> str:
        if unit == "int":
            return f"{v:,.0f}"
        if unit == "gb":
            return f"{v:.2f}"
        if unit == "ms":
            return f"{v / 1000:.2f}"
        return f"{v:.0f}%"

    if single or s.min == s.max:
        return one(s.median)
    lo, hi = one(s.min), one(s.max)
    return f"{one(s.median)} [{lo}-{hi}]"


def format_workload(w: WorkloadReport) -> str:
    runs_each = max((s.runs for s in w.summary.values()), default=0)
    single = runs_each <= 1
    lines = [
        f"{w.name}  {w.title}",
        f"    {w.scheme.upper()}, {w.connections} connections, {w.duration_s:g} s per run, "
        f"{runs_each} run(s) per server, alternated" + ("" if single else "; median [min-max]"),
    ]
    header = ("server", "req/s", "GB/s", "p50 ms", "p99 ms", "srv CPU", "cli CPU", "other")
    rows: list[tuple[str, ...]] = [header]
    for name, s in w.summary.items():
        rows.append(
            (
                name,
                _fmt(s.req_per_s, "int", single),
                _fmt(s.gb_per_s, "gb", single),
                _fmt(s.p50_us, "ms", single),
                _fmt(s.p99_us, "ms", single),
                _fmt(s.server_cpu_pct, "pct", True),
                _fmt(s.client_cpu_pct, "pct", True),
                _fmt(s.other_cpu_pct, "pct", True),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [c.rjust(widths[i]) for i, c in enumerate(r) if i]
        lines.append("    " + "  ".join(cells))
    if w.ratio_gb_per_s is not None:
        lines.append(f"    oca/nginx GB/s (medians): {w.ratio_gb_per_s:.2f}x")
    for name, s in w.summary.items():
        if s.hot_p99_us is not None and s.cold_p99_us is not None:
            share = f"{100 * s.cold_request_share:.1f}%" if s.cold_request_share else "?"
            text = (
                f"    {name}: hot p99 {s.hot_p99_us.median / 1000:.2f} ms, "
                f"cold p99 {s.cold_p99_us.median / 1000:.2f} ms ({share} of requests cold)"
            )
            ratio = w.hot_p99_vs_all_hot.get(name)
            if ratio is not None:
                text += f"; hot p99 / all-hot (W1) p99 = {ratio:.2f}x"
            lines.append(text)
    lines += [f"    ! {n}" for n in w.notes]
    return "\n".join(lines)


def workload_notes(
    summary: dict[ServerName, ServerSummary], runs: Sequence[RunResult]
) -> list[str]:
    notes: list[str] = []
    for name, s in summary.items():
        if s.client_cpu_pct.median >= CLIENT_BOUND_PCT:
            notes.append(
                f"{name}: the client (wrk) used {s.client_cpu_pct.median:.0f}% of its core: "
                "the figure may be the client's limit, not the server's"
            )
        if s.errors:
            kinds: dict[str, int] = {}
            for r in runs:
                if r.server == name:
                    for k, v in r.errors_detail.items():
                        kinds[k] = kinds.get(k, 0) + v
            detail = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()) if v)
            notes.append(f"{name}: {s.errors} errors ({detail})")
        if s.noisy_runs:
            notes.append(
                f"{name}: {s.noisy_runs} run(s) kept with other CPU > {NOISY_OTHER_PCT:.0f}% "
                "of a core after a retry: the machine was busy"
            )
    for r in runs:
        if r.cpu.workers_changed:
            notes.append(f"{r.server} run {r.run}: a worker process exited or was replaced")
    return notes


def format_rss(c: RssCheck) -> str:
    mib = 1024 * 1024
    if c.flat is None:
        verdict = "too short to judge (ask for more GB)"
    else:
        verdict = "flat" if c.flat else "GREW"
    return "\n".join(
        [
            f"RSS check: {c.served_bytes / 1e9:.1f} GB of {c.workload} served by oca "
            f"in {c.seconds:.0f} s",
            f"    worker RSS start {c.start_rss_bytes / mib:.1f} MiB, after warm-up "
            f"{c.warm_rss_bytes / mib:.1f} MiB, peak {c.peak_rss_bytes / mib:.1f} MiB, "
            f"end {c.end_rss_bytes / mib:.1f} MiB",
            f"    growth after warm-up {c.growth_after_warmup_bytes / mib:.1f} MiB over "
            f"{c.samples_after_warmup} samples (limit {c.limit_bytes / mib:.0f} MiB): {verdict}"
            + (f"; {c.errors} errors" if c.errors else ""),
        ]
    )
