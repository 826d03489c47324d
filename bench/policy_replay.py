"""Replaying a two-day trace through one cache policy (ours or a libcachesim reference).

Theory of operation
-------------------
Every policy sees the same request sequence. Day one warms the cache and is not scored;
day two is scored: a request is a hit when the object is resident when it is asked for,
and hits are counted per request (object hit ratio) and per byte (byte hit ratio).

Our policy (:class:`fill.policy.PopularityLRU`) is replayed as the appliance runs it, a
hybrid of push and pull:

1. Day one: a hit touches the object; a miss pulls it through and the policy's admission
   and eviction decide whether it stays (:meth:`~fill.policy.PopularityLRU.make_room`).
2. At the day boundary (the off-peak trough): the manifest's forecast is fitted to day
   one's counts (:func:`forecast_of`: per title over the catalogue when the trace has
   one, else per object), and every priority is recomputed. The overnight push fill
   is then planned as the fill planner plans it (:func:`push_fill`): held and forecast
   objects compete for the capacity less a headroom by priority; held losers are
   evicted, forecast winners inserted. Filled bytes come from the origin off-peak and
   are *not* counted as misses; the report prints them so they can be judged.
3. Day two: as day one, scored.

``fill=False`` replays the same policy without step 2's fill (forecast only), to show
what the fill contributes.

Reference policies run in libcachesim 0.3.5: each request is fed to ``cache.get`` in
order (a miss inserts, evicting as the policy decides) and only day-two answers count.
The offline policies get each request's next-access index as their oracle.
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bench.traces import Trace
from fill.policy import PolicyParams, PopularityLRU
from steering import forecast

OURS = "ours"
OURS_PULL_ONLY = "ours-pull-only"
FILL_HEADROOM = 0.05  # the share of capacity the planner leaves free (fill.planner)
ONLINE_REFERENCES: tuple[str, ...] = ("LRU", "LFU", "GDSF", "ARC", "S3-FIFO", "W-TinyLFU", "LRB")
OFFLINE_REFERENCES: tuple[str, ...] = ("Belady", "BeladySize")
REFERENCES = ONLINE_REFERENCES + OFFLINE_REFERENCES
POLICIES: tuple[str, ...] = (OURS, OURS_PULL_ONLY, *REFERENCES)

Status = Literal["ok", "unavailable", "crashed"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """Day-two counts of one policy at one cache size."""

    policy: str
    status: Status = "ok"
    reason: str = ""  # why a policy is unavailable or crashed
    requests: int = 0
    request_bytes: int = 0
    hits: int = 0
    hit_bytes: int = 0
    fill_objects: int = 0  # objects pushed overnight (ours only)
    fill_bytes: int = 0
    seconds: float = 0.0  # replay time, both days
    notes: tuple[str, ...] = ()  # how the policy was configured, when it matters
    hit_flags: bytes = field(default=b"", repr=False)  # per day-two request, if asked for

    @property
    def object_hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def byte_hit_ratio(self) -> float:
        return self.hit_bytes / self.request_bytes if self.request_bytes else 0.0


# ------------------------------------------------------------------------ ours


MANIFEST_CAPACITY_FACTOR = 2.0
"""A catalogue-based manifest lists the hottest segments up to this many times the
cache's capacity: what the fill can place, and a forecast for misses beyond it."""


def forecast_of(trace: Trace, capacity_bytes: int) -> tuple[dict[str, float], dict[str, int]]:
    """The manifest the control plane would send at the day boundary: predicted requests
    per day and size of each listed object, keyed by path.

    With a catalogue (the video trace), the prediction is :mod:`steering.forecast` fitted
    to day one's counts: per title, spread over every segment of the title (requested
    or not) along the observed abandonment curve, hottest first up to
    :data:`MANIFEST_CAPACITY_FACTOR` x the capacity. Without one (the Zipf trace), it is
    day one's request count of every object requested on day one.
    """
    catalog = trace.catalog
    day1 = trace.day_counts(1)
    if catalog is None:
        paths, sizes = trace.paths, trace.sizes
        return {paths[o]: float(c) for o, c in day1.items()}, {paths[o]: sizes[o] for o in day1}
    segments = trace.segments
    counts = {segments[o]: float(c) for o, c in day1.items()}
    lengths = dict(enumerate(catalog.lengths[: catalog.released]))
    model = forecast.fit(counts, lengths)
    budget = capacity_bytes * MANIFEST_CAPACITY_FACTOR
    predicted: dict[str, float] = {}
    size_of: dict[str, int] = {}
    for value, title, rendition, index in model.ranked():
        if budget <= 0:
            break
        path = catalog.path(title, rendition, index)
        size = catalog.size(title, rendition, index)
        predicted[path] = value
        size_of[path] = size
        budget -= size
    return predicted, size_of


def push_fill(
    policy: PopularityLRU,
    forecast: dict[str, float],
    size_of: dict[str, int],
    now: float,
    headroom_fraction: float = FILL_HEADROOM,
) -> tuple[int, int]:
    """The overnight fill, planned as :func:`fill.planner.plan_fill` plans it; returns the
    (objects, bytes) pushed.

    Every held object (its priority after :meth:`~PopularityLRU.reprioritise`) and every
    forecast object not held (the priority it would have with no request on the box)
    competes for ``capacity * (1 - headroom_fraction)``, highest priority first, ties by
    path. Held objects that lose their place are evicted, coldest first (``L`` rises as
    for any eviction); the forecast objects that won one are inserted.
    """
    held = list(policy.keys())
    ranked = [(policy.priority(k), k) for k in held]
    ranked += [(policy.candidate_priority(k, now) - 1.0, k) for k in forecast if k not in policy]
    ranked.sort(key=lambda pk: (-pk[0], pk[1]))
    budget = int(policy.capacity_bytes * (1.0 - headroom_fraction))
    keep: set[str] = set()
    fetch: list[str] = []
    for _, key in ranked:
        size = policy.size_of(key) if key in policy else size_of[key]
        if size <= budget:
            budget -= size
            if key in policy:
                keep.add(key)
            else:
                fetch.append(key)
    losers = sorted((k for k in held if k not in keep), key=lambda k: (policy.priority(k), k))
    for key in losers:  # coldest first
        policy.evict(key)
    nbytes = 0
    for key in fetch:
        inserted = policy.insert(key, size_of[key], now)
        assert inserted
        nbytes += size_of[key]
    return len(fetch), nbytes


def replay_ours(
    trace: Trace,
    capacity_bytes: int,
    params: PolicyParams | None = None,
    *,
    fill: bool = True,
    record_hits: bool = False,
) -> Outcome:
    """Replay ``trace`` through :class:`PopularityLRU` as the hybrid appliance runs it."""
    started = time.perf_counter()
    policy = PopularityLRU(capacity_bytes, params)
    paths, sizes, times, objects = trace.paths, trace.sizes, trace.times, trace.objects
    d2 = trace.day2_start
    contains = policy.__contains__
    touch = policy.touch
    make_room = policy.make_room
    for i in range(d2):
        o = objects[i]
        key = paths[o]
        if contains(key):
            touch(key, times[i])
        else:
            make_room(key, sizes[o], times[i])
    boundary = trace.day2_boundary_seconds
    predicted, size_of = forecast_of(trace, capacity_bytes)
    policy.set_forecast(predicted)
    policy.reprioritise(boundary)
    fill_objects = fill_bytes = 0
    if fill:
        fill_objects, fill_bytes = push_fill(policy, predicted, size_of, boundary)
    hits = hit_bytes = request_bytes = 0
    flags = bytearray(len(objects) - d2) if record_hits else bytearray()
    for i in range(d2, len(objects)):
        o = objects[i]
        key = paths[o]
        size = sizes[o]
        request_bytes += size
        if contains(key):
            touch(key, times[i])
            hits += 1
            hit_bytes += size
            if record_hits:
                flags[i - d2] = 1
        else:
            make_room(key, size, times[i])
    assert policy.used_bytes <= policy.capacity_bytes
    return Outcome(
        policy=OURS if fill else OURS_PULL_ONLY,
        requests=len(objects) - d2,
        request_bytes=request_bytes,
        hits=hits,
        hit_bytes=hit_bytes,
        fill_objects=fill_objects,
        fill_bytes=fill_bytes,
        seconds=time.perf_counter() - started,
        hit_flags=bytes(flags),
    )


# ------------------------------------------------------------------ references


def libcachesim_version() -> str | None:
    """The installed libcachesim's version, or None when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version("libcachesim")
    except metadata.PackageNotFoundError:
        return None


def _hashpower(objects: int) -> int:
    """libcachesim's hash table size (log2 of buckets): room for the trace's objects."""
    return max(16, min(26, math.ceil(math.log2(max(2, objects))) + 1))


def make_reference(name: str, capacity_bytes: int, objects: int) -> Any:
    """A libcachesim cache of ``capacity_bytes`` implementing ``name``.

    Raises ImportError when libcachesim (or, for LRB, its LightGBM build) is missing.
    """
    import libcachesim as lcs

    kw: dict[str, Any] = {"hashpower": _hashpower(objects)}
    if name == "LRU":
        return lcs.LRU(capacity_bytes, **kw)
    if name == "LFU":
        return lcs.LFU(capacity_bytes, **kw)
    if name == "GDSF":
        return lcs.GDSF(capacity_bytes, **kw)
    if name == "ARC":
        return lcs.ARC(capacity_bytes, **kw)
    if name == "S3-FIFO":
        return lcs.S3FIFO(capacity_bytes, **kw)
    if name == "W-TinyLFU":
        return lcs.WTinyLFU(capacity_bytes, **kw)
    if name == "LRB":
        # The Python binding accepts only the objective; the rest are LRB's defaults.
        return lcs.LRB(capacity_bytes, objective="byte-miss-ratio", **kw)
    if name == "Belady":
        return lcs.Belady(capacity_bytes, **kw)
    if name == "BeladySize":
        return lcs.BeladySize(capacity_bytes, **kw)
    raise ValueError(f"unknown reference policy {name!r}")


def size_unit(name: str, capacity_bytes: int, sizes: Sequence[int] = ()) -> int:
    """Bytes per size unit fed to libcachesim's ``name`` (1 except for W-TinyLFU).

    libcachesim's W-TinyLFU counts its capacity in size units, which it takes to be
    objects: its count-min sketch gets one entry per unit, in a C ``int`` (above 2 GiB
    of capacity in bytes that overflows and the sketch collapses to a few counters; the
    library prints "CBF ... has too few counters"), and it halves its counters every
    32 units' worth of requests. When every object has the same size, that size is the
    unit (exact, and the capacity in units is the capacity in objects, as TinyLFU is
    designed). Otherwise the unit is the smallest power of two that keeps the capacity
    within :data:`_SKETCH_ENTRIES` units, object sizes rounded up; the sketch is then
    never halved within a trace.
    """
    if name != "W-TinyLFU":
        return 1
    if sizes and min(sizes) == max(sizes) and min(sizes) > 0:
        return int(sizes[0])
    unit = 1
    while capacity_bytes // unit > _SKETCH_ENTRIES:
        unit *= 2
    return unit


_SKETCH_ENTRIES = 1 << 22


def replay_reference(
    trace: Trace,
    name: str,
    capacity_bytes: int,
    next_access: Any = None,
    *,
    record_hits: bool = False,
) -> Outcome:
    """Feed ``trace`` to libcachesim's ``name`` one request at a time; score day two.

    ``next_access`` (from :meth:`Trace.next_access`) is required by the offline policies.
    """
    started = time.perf_counter()
    try:
        import libcachesim as lcs

        unit = size_unit(name, capacity_bytes, trace.sizes)
        cache = make_reference(name, capacity_bytes // unit, len(trace.paths))
    except ImportError as exc:
        return Outcome(policy=name, status="unavailable", reason=str(exc).strip())
    notes: list[str] = []
    sizes, times, objects = trace.sizes, trace.times, trace.objects
    fed = sizes if unit == 1 else array("q", (-(-s // unit) for s in sizes))
    if unit > 1:
        exact = all(size % unit == 0 for size in sizes)
        how = "" if exact else " (rounded up)"
        notes.append(f"sizes fed in units of {human_unit(unit)}{how}: see docs")
    if name == "W-TinyLFU" and max(fed, default=0) > (capacity_bytes // unit) // 100:
        notes.append("objects larger than its 1% window are never cached")
    offline = name in OFFLINE_REFERENCES
    if offline and next_access is None:
        next_access = trace.next_access()
    d2 = trace.day2_start
    req = lcs.Request()
    req.op = lcs.ReqOp.OP_GET
    get = cache.get
    hits = hit_bytes = request_bytes = 0
    flags = bytearray(len(objects) - d2) if record_hits else bytearray()
    for i in range(len(objects)):
        o = objects[i]
        size = sizes[o]
        req.obj_id = o + 1
        req.obj_size = fed[o]
        req.clock_time = int(times[i])
        if offline:
            req.next_access_vtime = next_access[i]
        hit = get(req)
        if i >= d2:
            request_bytes += size
            if hit:
                hits += 1
                hit_bytes += size
                if record_hits:
                    flags[i - d2] = 1
    return Outcome(
        policy=name,
        requests=len(objects) - d2,
        request_bytes=request_bytes,
        hits=hits,
        hit_bytes=hit_bytes,
        seconds=time.perf_counter() - started,
        hit_flags=bytes(flags),
        notes=tuple(notes),
    )


def human_unit(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}"
        n //= 1024
    raise AssertionError  # pragma: no cover
