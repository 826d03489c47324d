"""The status report of one appliance: two samples in, one document out (pure core).

Theory of operation
-------------------
A :class:`Sample` is what ``oca status`` read from a running appliance at one instant
(:mod:`oca.status` does the reading): its ``/metrics`` parsed into a flat table, the
answering worker's ``/status`` document, and the state files the drain flag, the fill
and the heartbeat reporter leave in ``state_dir``. :func:`build_document` turns the
latest sample, and optionally an earlier one, into one :class:`StatusJSON`:

- *rates* are counter increases between the two samples divided by the time between
  them; a counter that went down means the appliance restarted and counts from zero.
  Workers publish their counters once a second, so a rate is exact to within about one
  second's worth of traffic;
- *throughput* counts content bodies only: ``oca_sent_bytes_total`` by tier, where a
  storage tier (``ssd``, ``hdd``, ...) is a hit and ``peer``/``origin`` a miss served
  while it is fetched (:mod:`oca.peering.transfer`); error bodies and the internal
  endpoints' answers (tier ``none``) are left out. The *byte hit ratio* is the hit
  tiers' share of those bytes;
- requests/s leave out the requests the caller says it made itself, and the open
  connections leave out its own;
- the health *state* is :func:`oca.health.verdict.evaluate` over the worker's disks,
  the live workers, the fill, the drain flag and whether content is refused: the same
  rules the heartbeat reporter applies.

No I/O and no clock: every time comes in with the samples.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from prometheus_client.parser import text_string_to_metric_families

from oca.config import Config, appliance_id
from oca.health.flags import DrainState, SteeringStatusJSON
from oca.health.verdict import DiskHealth, FillHealth, HealthState, WorkerHealth, evaluate

if TYPE_CHECKING:
    from oca.health.flags import SteeringURLJSON
    from oca.server.worker import DiskStatusJSON

__all__ = [
    "Endpoint",
    "MetricKey",
    "Sample",
    "StatusJSON",
    "build_document",
    "parse_metrics",
]

MISS_TIERS = ("peer", "origin")  # sent_bytes labels of misses (oca.peering.transfer)

MetricKey = tuple[str, tuple[tuple[str, str], ...]]


# --------------------------------------------------------------------------- the document


class ApplianceJSON(TypedDict):
    id: str
    site: str
    region: str
    url: str  # the listener read
    pid: int | None  # the supervisor's
    started_at: float | None
    uptime_seconds: float | None
    state: HealthState
    reasons: list[str]
    serving: bool  # false while content is refused
    ready: bool  # as /readyz of the answering worker
    ready_reason: str
    draining: bool
    draining_since: float | None
    workers_configured: int
    workers_running: int
    worker: int  # the worker whose view /status gave


class TrafficJSON(TypedDict):
    bits_per_second: float | None  # content bodies sent; None with a single sample
    requests_per_second: float | None
    requests_per_second_by_class: dict[str, float]  # "2xx", "3xx", "4xx", "5xx"
    requests_total: int
    sent_bytes_total: int  # content bodies since the start
    open_connections: int


class TierJSON(TypedDict):
    tier: str  # a storage tier, "peer" or "origin"
    kind: Literal["hit", "miss"]
    bits_per_second: float | None
    share: float | None  # of the content bytes sent during the interval
    sent_bytes_total: int
    share_total: float | None  # of the content bytes sent since the start


class HitsJSON(TypedDict):
    ratio: float | None  # byte hit ratio during the interval: local tiers / all content
    ratio_total: float | None  # the same since the start
    tiers: list[TierJSON]
    miss_requests_total: dict[str, int]  # by outcome: started, coalesced, negative, cut
    peer_requests_total: dict[str, int]  # by result: ok, not-found, error
    origin_requests_total: dict[str, int]
    upstream_bytes_total: dict[str, int]  # by source: peer, origin


class FillJSON(TypedDict):
    state: str  # "running" or "idle"
    reason: str  # e.g. the last fill stopped without finishing
    window: str
    last_run_at: float | None
    last_success_at: float | None  # when the fill last stored an object
    remaining_bytes: int  # as the running (or last) fill published it
    bits_per_second: float | None  # fill bytes received during the interval
    bytes_total: dict[str, int]  # by source: peer, origin
    objects_total: dict[str, int]  # by result: done, failed
    evicted_bytes_total: int


class PeerJSON(TypedDict):
    url: str
    appliance: str | None
    site: str | None
    state: str  # "up", "backoff" or "unknown"
    reason: str
    objects: int | None
    summary_age_seconds: float | None
    failures: int
    hits: int
    misses: int


class SteeringJSON(TypedDict):
    configured: bool
    # "off" (no [steering] urls), "unknown" (no report from this run yet), else the
    # reporter's: "up", "lost" (every URL failing, within the grace), "over" (past it)
    contact: str
    contacted: bool
    last_ok_at: float | None
    grace_seconds: float
    policy: str
    refusing: str
    reported_at: float | None
    urls: list[SteeringURLJSON]


class StatusJSON(TypedDict):
    sampled_at: float
    interval_seconds: float | None  # between the two samples; None with one
    appliance: ApplianceJSON
    traffic: TrafficJSON
    hits: HitsJSON
    disks: list[DiskStatusJSON]
    fill: FillJSON
    peers: list[PeerJSON]
    steering: SteeringJSON


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str  # base URL of the listener to read
    pid: int | None  # the supervisor's, from listeners.json
    started_at: float | None  # the supervisor's start
    source: str  # where the address came from (for messages)
    pid_alive: bool = True


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # monotonic
    wall: float
    metrics: Mapping[MetricKey, float]
    worker: Mapping[str, Any]  # the /status document
    drain: DrainState
    fill: FillHealth
    steering: SteeringStatusJSON | None


def parse_metrics(text: str) -> dict[MetricKey, float]:
    out: dict[MetricKey, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


# --------------------------------------------------------------------------- evaluation


def _by_label(m: Mapping[MetricKey, float], name: str, label: str) -> dict[str, float]:
    return {dict(labels).get(label, ""): v for (n, labels), v in m.items() if n == name}


def _value(m: Mapping[MetricKey, float], name: str) -> float | None:
    return m.get((name, ()))


def _delta(first: Mapping[str, float], last: Mapping[str, float]) -> dict[str, float]:
    """Counter increase per label; a decrease is a restart, counted from zero."""
    out: dict[str, float] = {}
    for k, v in last.items():
        d = v - first.get(k, 0.0)
        out[k] = v if d < 0 else d
    return out


def _ints(d: Mapping[str, float]) -> dict[str, int]:
    return {k: int(v) for k, v in sorted(d.items())}


def _share(part: float, whole: float) -> float | None:
    return part / whole if whole > 0 else None


def _tier_order(cfg: Config, labels: set[str]) -> list[str]:
    configured = [t.name for t in cfg.storage.tiers]
    other = sorted(labels - set(configured) - set(MISS_TIERS) - {"none"})
    return [*configured, *other, *MISS_TIERS]


def _hits(
    cfg: Config, first: Sample | None, last: Sample, dt: float | None
) -> tuple[HitsJSON, float | None, int]:
    """The hits block, the content bits/s and the content bytes since the start."""
    m = last.metrics
    sent = _by_label(m, "oca_sent_bytes_total", "tier")
    before = _by_label(first.metrics, "oca_sent_bytes_total", "tier") if first else None
    moved = _delta(before, sent) if before is not None else None
    order = _tier_order(cfg, set(sent))
    total = sum(sent.get(t, 0.0) for t in order)
    moved_total = sum(moved.get(t, 0.0) for t in order) if moved is not None else 0.0
    tiers: list[TierJSON] = []
    for t in order:
        d = moved.get(t, 0.0) if moved is not None else None
        tiers.append({
            "tier": t,
            "kind": "miss" if t in MISS_TIERS else "hit",
            "bits_per_second": d * 8 / dt if d is not None and dt else None,
            "share": _share(d, moved_total) if d is not None else None,
            "sent_bytes_total": int(sent.get(t, 0.0)),
            "share_total": _share(sent.get(t, 0.0), total),
        })  # fmt: skip
    local = [t for t in order if t not in MISS_TIERS]
    hits: HitsJSON = {
        "ratio": (
            _share(sum(moved.get(t, 0.0) for t in local), moved_total)
            if moved is not None
            else None
        ),
        "ratio_total": _share(sum(sent.get(t, 0.0) for t in local), total),
        "tiers": tiers,
        "miss_requests_total": _ints(_by_label(m, "oca_miss_requests_total", "outcome")),
        "peer_requests_total": _ints(_by_label(m, "oca_peer_requests_total", "result")),
        "origin_requests_total": _ints(_by_label(m, "oca_origin_requests_total", "result")),
        "upstream_bytes_total": _ints(_by_label(m, "oca_upstream_bytes_total", "source")),
    }
    bits = moved_total * 8 / dt if moved is not None and dt else None
    return hits, bits, int(total)


def _traffic(
    first: Sample | None,
    last: Sample,
    dt: float | None,
    own: tuple[int, int],
    bits: float | None,
    sent: int,
) -> TrafficJSON:
    codes = _by_label(last.metrics, "oca_http_requests_total", "code")
    by_class: dict[str, float] = {}
    rps: float | None = None
    if first is not None and dt:
        moved = _delta(_by_label(first.metrics, "oca_http_requests_total", "code"), codes)
        counts: dict[str, float] = {}
        for code, n in moved.items():
            key = f"{code[:1]}xx"
            counts[key] = counts.get(key, 0.0) + n
        counts["2xx"] = max(counts.get("2xx", 0.0) - own[0], 0.0)  # the caller's own
        by_class = {k: v / dt for k, v in sorted(counts.items()) if v > 0}
        rps = sum(counts.values()) / dt
    return {
        "bits_per_second": bits,
        "requests_per_second": rps,
        "requests_per_second_by_class": by_class,
        "requests_total": int(sum(codes.values())),
        "sent_bytes_total": sent,
        "open_connections": max(int(_value(last.metrics, "oca_open_connections") or 0) - own[1], 0),
    }


def _fill(cfg: Config, first: Sample | None, last: Sample, dt: float | None) -> FillJSON:
    m = last.metrics
    got = _by_label(m, "oca_fill_bytes_total", "source")
    bits = None
    if first is not None and dt:
        moved = _delta(_by_label(first.metrics, "oca_fill_bytes_total", "source"), got)
        bits = sum(moved.values()) * 8 / dt
    success = _value(m, "oca_fill_last_success_timestamp_seconds")
    return {
        "state": last.fill.state,
        "reason": last.fill.reason,
        "window": cfg.fill.window,
        "last_run_at": last.fill.last_run_at,
        "last_success_at": success or None,
        "remaining_bytes": int(_value(m, "oca_fill_remaining_bytes") or 0),
        "bits_per_second": bits,
        "bytes_total": _ints(got),
        "objects_total": _ints(_by_label(m, "oca_fill_objects_total", "result")),
        "evicted_bytes_total": int(_value(m, "oca_fill_evicted_bytes_total") or 0),
    }


def _opt_int(v: Any) -> int | None:
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _opt_float(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _peers(worker: Mapping[str, Any]) -> list[PeerJSON]:
    out: list[PeerJSON] = []
    for p in worker["peers"]:
        if not isinstance(p, dict):
            continue
        out.append({
            "url": str(p.get("url", "")),
            "appliance": p.get("appliance") if isinstance(p.get("appliance"), str) else None,
            "site": p.get("site") if isinstance(p.get("site"), str) else None,
            "state": str(p.get("state", "unknown")),
            "reason": str(p.get("reason", "")),
            "objects": _opt_int(p.get("objects")),
            "summary_age_seconds": _opt_float(p.get("summary_age_seconds")),
            "failures": _opt_int(p.get("failures")) or 0,
            "hits": _opt_int(p.get("hits")) or 0,
            "misses": _opt_int(p.get("misses")) or 0,
        })  # fmt: skip
    return out


def _disks(worker: Mapping[str, Any]) -> list[DiskStatusJSON]:
    out: list[DiskStatusJSON] = []
    for d in worker["disks"]:
        if not isinstance(d, dict):
            continue
        out.append({
            "tier": str(d.get("tier", "")),
            "path": str(d.get("path", "")),
            "state": "ok" if d.get("state") == "ok" else "failed",
            "reason": str(d.get("reason", "")),
            "since": _opt_float(d.get("since")),
            "objects": _opt_int(d.get("objects")) or 0,
            "used_bytes": _opt_int(d.get("used_bytes")) or 0,
            "capacity_bytes": _opt_int(d.get("capacity_bytes")) or 0,
        })  # fmt: skip
    return out


def _steering(cfg: Config, where: Endpoint, last: Sample) -> SteeringJSON:
    s = cfg.steering
    doc = last.steering
    if doc is not None and where.pid is not None and doc["pid"] != where.pid:
        doc = None  # left by an earlier run
    if not s.urls or doc is None:
        return {
            "configured": bool(s.urls),
            "contact": "unknown" if s.urls else "off",
            "contacted": False,
            "last_ok_at": None,
            "grace_seconds": s.grace_seconds,
            "policy": s.unreachable_policy,
            "refusing": "",
            "reported_at": None,
            "urls": [
                {
                    "url": u.rstrip("/"),
                    "state": "unknown",
                    "reason": "no report yet",
                    "last_ok_at": None,
                    "last_attempt_at": None,
                }
                for u in s.urls
            ],
        }
    return {
        "configured": True,
        "contact": doc["contact"],
        "contacted": doc["contacted"],
        "last_ok_at": doc["last_ok_at"] if doc["contacted"] else None,
        "grace_seconds": doc["grace_seconds"],
        "policy": doc["policy"],
        "refusing": doc["refusing"],
        "reported_at": doc["updated_at"],
        "urls": doc["urls"],
    }


def build_document(
    cfg: Config,
    where: Endpoint,
    first: Sample | None,
    last: Sample,
    *,
    own_requests: int = 0,
    own_connections: int = 0,
) -> StatusJSON:
    """The status from ``last``, with rates since ``first`` (see the module docstring).
    ``own_requests`` is how many requests the caller sent between the two samples, and
    ``own_connections`` how many connections it held open when ``last`` was taken."""
    dt = last.at - first.at if first is not None else None
    w = last.worker
    disks = _disks(w)
    running = int(_value(last.metrics, "oca_workers") or 0)
    refusing = w.get("refusing") if isinstance(w.get("refusing"), str) else None
    verdict = evaluate(
        [
            DiskHealth(
                d["tier"],
                d["path"],
                "ok" if d["state"] == "ok" else "failed",
                d["reason"],
                d["capacity_bytes"],
                d["used_bytes"],
                d["objects"],
            )
            for d in disks
        ],
        WorkerHealth(int(w["workers"]), running),
        last.fill,
        draining=last.drain.draining,
        refusing=refusing,
    )
    hits, bits, sent = _hits(cfg, first, last, dt)
    appliance: ApplianceJSON = {
        "id": str(w.get("appliance") or appliance_id(cfg)),
        "site": str(w.get("site") or cfg.peering.site),
        "region": cfg.steering.region,
        "url": where.url,
        "pid": where.pid,
        "started_at": where.started_at,
        "uptime_seconds": last.wall - where.started_at if where.started_at else None,
        "state": verdict.state,
        "reasons": list(verdict.reasons),
        "serving": verdict.serving,
        "ready": bool(w["ready"]),
        "ready_reason": str(w.get("reason", "")),
        "draining": last.drain.draining,
        "draining_since": last.drain.since if last.drain.draining else None,
        "workers_configured": int(w["workers"]),
        "workers_running": running,
        "worker": int(w.get("worker", 0)),
    }
    return {
        "sampled_at": last.wall,
        "interval_seconds": dt,
        "appliance": appliance,
        "traffic": _traffic(first, last, dt, (own_requests, own_connections), bits, sent),
        "hits": hits,
        "disks": disks,
        "fill": _fill(cfg, first, last, dt),
        "peers": _peers(w),
        "steering": _steering(cfg, where, last),
    }
