"""The report of ``oca bench cache-policy``: rows, per-size tables, targets, the text.

Every count in the JSON report is in base units (requests, bytes, seconds); ratios are in
0..1 (``None`` when a policy did not run). Ranks count ours and the online references
that ran; the offline Belady variants are bounds, not competitors. The two targets are
the issue's, both on the video trace: our byte hit ratio at least the best online
reference's at every size, and within :data:`BELADY_MARGIN` (relative) of the higher
Belady variant's at the 10% size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypedDict

from bench.policy_replay import OFFLINE_REFERENCES, OURS, OURS_PULL_ONLY, POLICIES, Outcome
from oca.storage.commands import format_bytes

Kind = Literal["ours", "online", "offline"]
BELADY_MARGIN = 0.10  # "within 10% of Belady": ours >= (1 - margin) * bound


class PolicyRow(TypedDict):
    policy: str
    kind: Kind
    status: str  # ok | unavailable | crashed
    reason: str
    notes: list[str]
    requests: int
    request_bytes: int
    hits: int
    hit_bytes: int
    object_hit_ratio: float | None
    byte_hit_ratio: float | None
    fill_objects: int
    fill_bytes: int
    seconds: float


class SizeReport(TypedDict):
    percent: float
    cache_bytes: int
    policies: list[PolicyRow]
    our_rank_bhr: int | None  # 1 = best, among ours and the online references that ran
    our_rank_ohr: int | None
    ranked: int


class TraceReport(TypedDict):
    name: str
    description: str
    requests: int
    day2_requests: int
    objects: int
    footprint_bytes: int
    facts: dict[str, float]
    sizes: list[SizeReport]


class Verdict(TypedDict):
    target: str
    met: bool | None  # None: not evaluated
    detail: str


class Report(TypedDict):
    benchmark: str
    scale: str
    seed: int
    libcachesim: str | None
    half_life_seconds: float
    forecast_weight: float
    probation_fraction: float
    belady_bound: str
    traces: list[TraceReport]
    verdicts: list[Verdict]


def _kind(policy: str) -> Kind:
    if policy in (OURS, OURS_PULL_ONLY):
        return "ours"
    return "offline" if policy in OFFLINE_REFERENCES else "online"


def policy_row(outcome: Outcome, notes: Sequence[str] = ()) -> PolicyRow:
    ok = outcome.status == "ok"
    return PolicyRow(
        policy=outcome.policy,
        kind=_kind(outcome.policy),
        status=outcome.status,
        reason=outcome.reason,
        notes=[*outcome.notes, *notes],
        requests=outcome.requests,
        request_bytes=outcome.request_bytes,
        hits=outcome.hits,
        hit_bytes=outcome.hit_bytes,
        object_hit_ratio=outcome.object_hit_ratio if ok else None,
        byte_hit_ratio=outcome.byte_hit_ratio if ok else None,
        fill_objects=outcome.fill_objects,
        fill_bytes=outcome.fill_bytes,
        seconds=round(outcome.seconds, 3),
    )


def _rank(
    rows: Sequence[PolicyRow], key: Literal["byte_hit_ratio", "object_hit_ratio"]
) -> int | None:
    ours = next((r for r in rows if r["policy"] == OURS and r["status"] == "ok"), None)
    if ours is None:
        return None
    mine = ours[key] or 0.0
    better = sum(
        1 for r in rows if r["kind"] == "online" and r["status"] == "ok" and (r[key] or 0.0) > mine
    )
    return 1 + better


def size_report(percent: float, cache_bytes: int, rows: list[PolicyRow]) -> SizeReport:
    order = {name: i for i, name in enumerate(POLICIES)}
    rows = sorted(rows, key=lambda r: order.get(r["policy"], len(order)))
    ranked = 1 + sum(1 for r in rows if r["kind"] == "online" and r["status"] == "ok")
    return SizeReport(
        percent=percent,
        cache_bytes=cache_bytes,
        policies=rows,
        our_rank_bhr=_rank(rows, "byte_hit_ratio"),
        our_rank_ohr=_rank(rows, "object_hit_ratio"),
        ranked=ranked,
    )


def _row(size: SizeReport, policy: str) -> PolicyRow | None:
    return next((r for r in size["policies"] if r["policy"] == policy), None)


def _bhr(row: PolicyRow | None) -> float | None:
    return row["byte_hit_ratio"] if row is not None and row["status"] == "ok" else None


def verdicts(traces: Sequence[TraceReport]) -> list[Verdict]:
    """The issue's two targets, both on the video trace."""
    t1 = "video: our byte hit ratio >= the best libcachesim online policy's at every size"
    t2 = f"video: our byte hit ratio within {BELADY_MARGIN:.0%} of Belady's at the 10% size"
    video = next((t for t in traces if t["name"] == "video"), None)
    if video is None:
        skipped = "not evaluated: the video trace was not run"
        return [
            Verdict(target=t1, met=None, detail=skipped),
            Verdict(target=t2, met=None, detail=skipped),
        ]
    parts: list[str] = []
    met1: bool | None = True
    for size in video["sizes"]:
        ours = _bhr(_row(size, OURS))
        online = [(r["byte_hit_ratio"] or 0.0, r["policy"]) for r in size["policies"]
                  if r["kind"] == "online" and r["status"] == "ok"]  # fmt: skip
        missing = [
            r["policy"] for r in size["policies"] if r["kind"] == "online" and r["status"] != "ok"
        ]
        label = f"{size['percent']:g}%"
        if ours is None or not online:
            parts.append(f"{label}: not comparable")
            met1 = None
            continue
        best, name = max(online)
        ok = ours >= best
        if met1 is not None:
            met1 = met1 and ok
        note = f" ({', '.join(missing)} not compared)" if missing else ""
        parts.append(f"{label}: ours {ours:.3f} {'>=' if ok else '<'} {name} {best:.3f}{note}")
    v1 = Verdict(target=t1, met=met1, detail="; ".join(parts))
    at10 = next((s for s in video["sizes"] if abs(s["percent"] - 10.0) < 1e-9), None)
    if at10 is None:
        return [v1, Verdict(target=t2, met=None, detail="not evaluated: 10 is not in --sizes")]
    ours = _bhr(_row(at10, OURS))
    bounds = [(b, name) for name in OFFLINE_REFERENCES if (b := _bhr(_row(at10, name))) is not None]
    if ours is None or not bounds:
        return [
            v1,
            Verdict(target=t2, met=None, detail="not evaluated: no result for ours or Belady"),
        ]
    bound, name = max(bounds)
    need = (1.0 - BELADY_MARGIN) * bound
    gap = (bound - ours) / bound if bound else 0.0
    detail = f"ours {ours:.3f} vs {name} {bound:.3f}: {gap:.1%} below (needs >= {need:.3f})"
    return [v1, Verdict(target=t2, met=ours >= need, detail=detail)]


# ---------------------------------------------------------------------- formatting


def human_bytes(n: float) -> str:
    return format_bytes(int(n))


def _ratio(x: float | None) -> str:
    return "   -  " if x is None else f"{x:6.3f}"


def format_trace(trace: TraceReport) -> list[str]:
    f = trace["facts"]
    lines = [
        f"== {trace['description']}",
        f"   {trace['requests']:,} requests ({trace['day2_requests']:,} on day 2, "
        f"{human_bytes(f.get('bytes_day2', 0.0))}), {trace['objects']:,} objects, "
        f"footprint {human_bytes(trace['footprint_bytes'])}",
        f"   day 2: {f.get('day2_requests_unseen_on_day1', 0.0):.0%} of requests and "
        f"{f.get('day2_bytes_unseen_on_day1', 0.0):.0%} of bytes are for objects not "
        "requested on day 1",
    ]
    if "new_release_sessions_day2" in f:
        share = f["new_release_sessions_day2"] / max(1.0, f.get("sessions_day2", 1.0))
        lines.append(f"   day 2: {share:.1%} of sessions watch a new release")
    for size in trace["sizes"]:
        lines.append("")
        lines.append(f"-- {trace['name']}, cache {size['percent']:g}% of footprint "
                     f"({human_bytes(size['cache_bytes'])}), day 2 scored")  # fmt: skip
        lines.append(f"     {'policy':<24} {'OHR':>6} {'BHR':>6}")
        for row in size["policies"]:
            mark = " *" if row["policy"] == OURS else "  "
            label = row["policy"] + (" (offline)" if row["kind"] == "offline" else "")
            if row["status"] != "ok":
                lines.append(f"  {mark} {label:<24} {row['status']}: {row['reason']}")
                continue
            extra = ""
            if row["policy"] == OURS:
                share = row["fill_bytes"] / max(1, row["request_bytes"])
                extra = (
                    f"  overnight fill {row['fill_objects']:,} objects, "
                    f"{human_bytes(row['fill_bytes'])} ({share:.1%} of day-2 bytes), "
                    "not counted as misses"
                )
            lines.append(
                f"  {mark} {label:<24} {_ratio(row['object_hit_ratio'])} "
                f"{_ratio(row['byte_hit_ratio'])}{extra}"
            )
            lines.extend(f"       note: {n}" for n in row["notes"])
        if size["our_rank_bhr"] is not None:
            best = max(
                ((r["byte_hit_ratio"] or 0.0, r["policy"]) for r in size["policies"]
                 if r["kind"] == "online" and r["status"] == "ok"),
                default=None,
            )  # fmt: skip
            best_txt = f" (best online: {best[1]} {best[0]:.3f})" if best else ""
            lines.append(
                f"     ours: rank {size['our_rank_bhr']} of {size['ranked']} by BHR{best_txt}, "
                f"rank {size['our_rank_ohr']} of {size['ranked']} by OHR"
            )
    return lines


def format_report(report: Report) -> str:
    lines = [
        f"oca bench cache-policy: scale {report['scale']}, seed {report['seed']}, "
        f"libcachesim {report['libcachesim'] or 'not installed'}",
        f"ours = fill.policy.PopularityLRU(half_life_seconds={report['half_life_seconds']:g}, "
        f"forecast_weight={report['forecast_weight']:g}, "
        f"probation_fraction={report['probation_fraction']:g}), forecast fitted to day 1's "
        "counts (video: per title over the catalogue, steering.forecast), overnight push "
        "fill; * marks it",
        f"Belady bound: {report['belady_bound']}",
        "OHR / BHR = object / byte hit ratio of day 2 (day 1 warms every cache)",
    ]
    for trace in report["traces"]:
        lines.append("")
        lines.extend(format_trace(trace))
    lines.append("")
    for v in report["verdicts"]:
        state = {True: "MET", False: "NOT MET", None: "NOT EVALUATED"}[v["met"]]
        lines.append(f"target: {v['target']}: {state} ({v['detail']})")
    return "\n".join(lines) + "\n"
