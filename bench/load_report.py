"""Results of ``oca bench load``: per-run and per-cycle records, the checks, the printout.

Throughput is in requests and 1e6 bytes per second (headers included), latency in
milliseconds, CPU in percent of one core over the run; descriptors and RSS are summed
over the supervisor and its workers. Medians are quoted with min-max, as runs on a
shared machine vary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.holder import HolderStats
from bench.measure import CpuUsage, Spread, spread

MiB = 1 << 20
RATIO_TARGET = 0.90
HELD_SHARE = 0.99
FD_SLACK = 64  # the open-file cache may hold a few more objects after than before
RSS_PLATEAU_BYTES = 32 * MiB
# A header timeout fires at the worker's next once-a-second deadline sweep: the median
# slowloris lifetime is within this of the timeout (single ones are later on a busy box).
LIFETIME_SLACK_S = 2.0


@dataclass(frozen=True)
class LoadRun:
    state: str  # "unloaded" or "loaded"
    cycle: int
    attempt: int  # 2 when the first attempt was noisy and retried
    req_per_s: float
    mb_per_s: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]  # wrk's, by kind (only kinds that happened)
    cpu: CpuUsage
    holder_pct: float  # the holder's CPU (0 unloaded)
    other_pct: float  # other processes, the holder excluded
    noisy: bool


@dataclass(frozen=True)
class ServerSample:
    at: str  # "before", "during", "during-after-run", "after"
    fds: int
    fds_by_pid: dict[int, int]
    rss_bytes: int
    held: int  # ESTABLISHED client connections in the workers' descriptor tables
    held_by_worker: dict[int, int]
    closing: int  # sockets on the server's port in a closing state, any process
    open_connections_metric: float | None  # oca_open_connections (1 s snapshots)


@dataclass
class Cycle:
    index: int
    unloaded: LoadRun
    loaded: LoadRun | None = None
    samples: list[ServerSample] = field(default_factory=list)
    ramp_s: float = 0.0  # holder start to all connections open
    holder: HolderStats | None = None  # at the release

    def sample(self, at: str) -> ServerSample:
        return next(s for s in self.samples if s.at == at)


@dataclass(frozen=True)
class Expect:
    """What the checks compare with."""

    connections: int
    slowloris: int
    header_timeout_s: float
    keepalive_timeout_s: float
    duration_s: float


@dataclass
class LoadReport:
    title: str
    expect: Expect
    settings: dict[str, object]
    server: dict[str, str]  # printed as "key: value" lines
    cycles: list[Cycle] = field(default_factory=list)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)  # (what, ok, detail)
    warnings: list[str] = field(default_factory=list)

    def loaded_cycles(self) -> list[Cycle]:
        return [c for c in self.cycles if c.loaded is not None]


def _ratio(rep: LoadReport, key: str) -> float:
    cyc = rep.loaded_cycles()
    u = spread([getattr(c.unloaded, key) for c in rep.cycles]).median
    lo = spread([getattr(c.loaded, key) for c in cyc]).median
    return lo / u if u else 0.0


def evaluate(rep: LoadReport, pids_before: list[int], pids_after: list[int], restarts: int) -> None:
    """Fill ``rep.checks``."""
    cyc, e = rep.loaded_cycles(), rep.expect
    if not cyc:
        return
    ratio = _ratio(rep, "mb_per_s")
    rep.checks.append(
        (
            f"throughput loaded/unloaded (MB/s medians) >= {RATIO_TARGET:.2f}",
            ratio >= RATIO_TARGET,
            f"{ratio:.3f}",
        )
    )
    held = [min(c.sample("during").held, c.sample("during-after-run").held) for c in cyc]
    rep.checks.append(
        (
            f"connections held at the server >= {HELD_SHARE:.0%} of {e.connections:,}",
            min(held) >= int(e.connections * HELD_SHARE),
            f"lowest sample {min(held):,}",
        )
    )
    fd_ok = all(c.sample("after").fds <= c.sample("before").fds + FD_SLACK for c in cyc)
    fd_text = "; ".join(f"{c.sample('before').fds} -> {c.sample('after').fds}" for c in cyc)
    rep.checks.append(
        (f"descriptors back to their level before the hold (+{FD_SLACK})", fd_ok, fd_text)
    )
    afters = [c.sample("after").rss_bytes for c in cyc]
    grew = afters[-1] - afters[0]
    rep.checks.append(
        (
            f"RSS after the last release within {RSS_PLATEAU_BYTES // MiB} MiB of after the first",
            grew <= RSS_PLATEAU_BYTES,
            f"{grew / MiB:+.1f} MiB over {len(afters)} cycle(s)",
        )
    )
    if e.slowloris:
        ok, parts = True, []
        for c in cyc:
            h = c.holder
            if h is None:
                continue
            n408, life = h["slow_statuses"].get("408", 0), h["slow_lifetime"]
            ok = ok and (
                h["slow_closed"] > 0
                and n408 == h["slow_closed"]
                and life["min_s"] >= e.header_timeout_s - 0.5
                and life["median_s"] <= e.header_timeout_s + LIFETIME_SLACK_S
            )
            parts.append(
                f"{n408:,}/{h['slow_closed']:,} after {life['min_s']:.1f} / "
                f"{life['median_s']:.1f} / {life['max_s']:.1f} s"
            )
        rep.checks.append(
            (
                "slowloris answered 408 and closed at the header timeout "
                f"({e.header_timeout_s:g} s; min / median / max lifetime)",
                ok,
                "; ".join(parts),
            )
        )
    rep.checks.append(
        (
            "no worker restarted",
            pids_before == pids_after and restarts == 0,
            f"worker PIDs {pids_before} -> {pids_after}, {restarts} restart(s) logged",
        )
    )


def server_s_per_gb(r: LoadRun) -> float:
    """Server CPU seconds per GB served in a run."""
    return r.cpu.server_pct / 100 / (r.mb_per_s / 1000) if r.mb_per_s else 0.0


def _spread(values: Sequence[float], fmt: str) -> str:
    s: Spread = spread(values)
    one = format(s.median, fmt)
    return one if s.min == s.max else f"{one} [{format(s.min, fmt)}-{format(s.max, fmt)}]"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "      "
        + "  ".join(c.ljust(widths[i]) if not i else c.rjust(widths[i]) for i, c in enumerate(r))
        for r in rows
    ]


def format_report(rep: LoadReport) -> str:
    e, cyc = rep.expect, rep.loaded_cycles()
    out = [f"oca bench load: {rep.title}"]
    out += [f"    {k}: {v}" for k, v in rep.server.items()]
    out.append(
        f"    {len(rep.cycles)} cycle(s), each: a {e.duration_s:g} s wrk run unloaded; the "
        "holder connects and waits out one header timeout; a run loaded; the holder lets go"
    )
    out.append("\n    throughput (median [min-max] over the cycles)")
    rows: list[tuple[str, ...]] = [
        ("", "req/s", "MB/s", "p50 ms", "p99 ms", "srv CPU s/GB", "CPU server", "wrk",
         "holder", "irq", "other")
    ]  # fmt: skip
    for name, runs in (
        ("unloaded", [c.unloaded for c in rep.cycles]),
        ("loaded", [c.loaded for c in cyc if c.loaded]),
    ):
        if runs:
            rows.append(
                (
                    name,
                    _spread([r.req_per_s for r in runs], ",.0f"),
                    _spread([r.mb_per_s for r in runs], ",.0f"),
                    _spread([r.p50_ms for r in runs], ".2f"),
                    _spread([r.p99_ms for r in runs], ".2f"),
                    _spread([server_s_per_gb(r) for r in runs], ".3f"),
                    *(
                        f"{spread(v).median:.0f}%"
                        for v in (
                            [r.cpu.server_pct for r in runs],
                            [r.cpu.client_pct for r in runs],
                            [r.holder_pct for r in runs],
                            [r.cpu.irq_pct for r in runs],
                            [r.other_pct for r in runs],
                        )
                    ),
                )
            )
    out += _table(rows)
    if cyc:
        for key, label in (("req_per_s", "req/s"), ("mb_per_s", "MB/s")):
            pairs = ", ".join(
                f"{getattr(c.loaded, key) / getattr(c.unloaded, key):.3f}"
                for c in cyc
                if getattr(c.unloaded, key)
            )
            out.append(
                f"      loaded/unloaded {label}: {_ratio(rep, key):.3f} of the medians "
                f"(per cycle {pairs}); target >= {RATIO_TARGET:.2f}"
            )
    if cyc:
        u = spread([server_s_per_gb(c.unloaded) for c in rep.cycles]).median
        lo = spread([server_s_per_gb(c.loaded) for c in cyc if c.loaded]).median
        out.append(
            f"      server CPU per GB loaded/unloaded: {lo / u if u else 0:.3f} (when the "
            "server's core is the bottleneck, the throughput ratio tends to its inverse)"
        )
    out.append(
        "      srv CPU s/GB: seconds of server CPU per GB served, the cost of serving "
        "whatever the client's or\n      the machine's pace; CPU in % of one core; irq: "
        "interrupts and softirqs (loopback TCP),\n      all CPUs; other: every process but "
        "the server, wrk and the holder: high means a busy machine"
    )
    out.append("\n    connections held at the server (ESTABLISHED, in the workers' fd tables)")
    for c in cyc:
        d, d2 = c.sample("during"), c.sample("during-after-run")
        by = " + ".join(f"{v:,}" for v in d.held_by_worker.values())
        metric = d.open_connections_metric
        out.append(
            f"      cycle {c.index}: {d.held:,} ({by} by worker) before the loaded run, "
            f"{d2.held:,} after it (oca_open_connections said "
            f"{'?' if metric is None else f'{metric:,.0f}'}); all {e.connections:,} were "
            f"open {c.ramp_s:.1f} s after the holder started"
        )
    out.append(
        "\n    server descriptors and RSS (supervisor + workers): "
        "before the hold / while held / after the release"
    )
    for c in cyc:
        b, d, a = c.sample("before"), c.sample("during"), c.sample("after")
        per_fd = (d.fds - b.fds) / d.held if d.held else 0.0
        per_kib = (d.rss_bytes - b.rss_bytes) / d.held / 1024 if d.held else 0.0
        out.append(
            f"      cycle {c.index}: fds {b.fds:,} / {d.fds:,} / {a.fds:,}; RSS "
            f"{b.rss_bytes / MiB:.0f} / {d.rss_bytes / MiB:.0f} / {a.rss_bytes / MiB:.0f} "
            f"MiB ({per_fd:.2f} fds, {per_kib:.1f} KiB per held connection)"
        )
    out.append(
        f"\n    what the server did to the held connections (holder's view; header "
        f"timeout {e.header_timeout_s:g} s, keep-alive timeout {e.keepalive_timeout_s:g} s)"
    )
    for c in cyc:
        h = c.holder
        if h is None:
            continue
        life = h["slow_lifetime"]
        out.append(
            f"      cycle {c.index}: slowloris: {h['slow_closed']:,} closed by the server, "
            f"answers {h['slow_statuses'] or 'none'}, {h['slow_closed_silently']} without an "
            f"answer, {h['slow_reset']} reset; connect to close {life['min_s']:.1f} / "
            f"{life['median_s']:.1f} / {life['max_s']:.1f} s (min / median / max)"
        )
        out.append(
            f"      {'':9}idle: answers {h['idle_statuses']}, {h['idle_closed']} closed by the "
            f"server ({h['idle_closed_refused']} after a 503); holder: {h['connects']:,} "
            f"connects, {h['reconnects']:,} reconnects, connect errors "
            f"{h['connect_errors'] or 'none'}, {h['cpu_s']:.1f} s CPU"
        )
    out.append("\n    checks")
    out += [
        f"      {'PASS' if ok else 'FAIL'}  {what}: {detail}" for what, ok, detail in rep.checks
    ]
    out += [f"      ! {w}" for w in rep.warnings]
    return "\n".join(out)
