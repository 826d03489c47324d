"""Synthetic two-day request traces for the cache-policy benchmark (pure and seeded).

Theory of operation
-------------------
A trace is two days of requests on one appliance. Day one warms the caches and is the
"yesterday" whose per-object request counts become the forecast a manifest would carry;
day two is scored. Both generators are pure functions of their parameters and a seed:
the same inputs give the same trace, request for request (``random.Random`` seeded with
a string, whose stream Python keeps stable across releases).

Each object appears in :attr:`Trace.paths` only if it is requested, so the trace's
*footprint* (the cache sizes are percentages of it) is the sum of :attr:`Trace.sizes`.

**Video** (:func:`video_trace`): a catalogue of titles, each a DASH package of a few
renditions cut into fixed-duration segments, one object per segment at
``/titles/tNNNNN/rKBPS/seg-NNNNN.m4s`` (the title's rendition directory is the group
:func:`fill.policy.parent_group` pools forecasts over). Viewing sessions arrive as a
Poisson process whose rate follows a diurnal profile; a session picks a title by Zipf
popularity and a rendition by a fixed share, starts at segment 0, requests one segment
per segment duration and stops after a geometric number of segments (or at the end of
the title). On day two the popularity drifts (each title's weight is multiplied by a
log-normal factor) and new releases, absent on day one, take popularities from the top
of the ranking. The parameters and the studies they come from are in
docs/cache-policy.md and on :class:`VideoTraceParams`.

**Zipf with churn** (:func:`zipf_churn_trace`): a classic independent-reference trace of
fixed-size objects whose Zipf ranks are reshuffled a little every interval (swaps of
nearby ranks) while new objects enter near the top, so that yesterday's ranking is a
good but imperfect predictor of today's.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

DAY_SECONDS = 86400.0
NO_NEXT_ACCESS = (1 << 63) - 1  # what libcachesim's Belady variants expect for "never again"

# Relative session arrival rate per hour of the local day (0 = midnight): an evening peak
# and an early-morning trough about an eighth of it, the shape of residential video
# traffic. The trace starts at START_HOUR, at the trough, so the day boundary (where the
# forecast and the overnight fill happen) falls in the off-peak window.
HOURLY_PROFILE: tuple[float, ...] = (
    0.55, 0.35, 0.22, 0.15, 0.12, 0.12, 0.17, 0.25, 0.33, 0.40, 0.45, 0.50,
    0.55, 0.57, 0.57, 0.60, 0.66, 0.75, 0.85, 0.95, 1.00, 1.00, 0.92, 0.75,
)  # fmt: skip
START_HOUR = 5


@dataclass(frozen=True, slots=True)
class Trace:
    """Requests in time order; objects are indices into ``paths`` and ``sizes``."""

    name: str
    description: str
    times: array[float]  # seconds since the start of day one, non-decreasing
    objects: array[int]  # object index of each request
    paths: tuple[str, ...]  # object index -> URL path
    sizes: array[int]  # object index -> bytes
    day2_start: int  # index of the first request of day two (the scored part)
    facts: dict[str, float] = field(default_factory=dict)  # generator statistics
    catalog: Catalog | None = None  # every object that exists, requested or not (video)
    segments: tuple[tuple[int, int, int], ...] = ()  # video: object -> (title, rendition, index)

    def __len__(self) -> int:
        return len(self.objects)

    @property
    def footprint_bytes(self) -> int:
        """Bytes of all distinct objects the trace requests."""
        return sum(self.sizes)

    @property
    def day2_boundary_seconds(self) -> float:
        return DAY_SECONDS

    def day_counts(self, day: int) -> dict[int, int]:
        """Requests per object on ``day`` (1 or 2)."""
        lo, hi = (0, self.day2_start) if day == 1 else (self.day2_start, len(self.objects))
        counts: dict[int, int] = {}
        objects = self.objects
        for i in range(lo, hi):
            o = objects[i]
            counts[o] = counts.get(o, 0) + 1
        return counts

    def next_access(self) -> array[int]:
        """For each request, the index of the next request for the same object
        (:data:`NO_NEXT_ACCESS` if none): the oracle the offline Belady policies use."""
        n = len(self.objects)
        nxt = array("q", bytes(8 * n))
        last: dict[int, int] = {}
        objects = self.objects
        for i in range(n - 1, -1, -1):
            o = objects[i]
            nxt[i] = last.get(o, NO_NEXT_ACCESS)
            last[o] = i
        return nxt


# ---------------------------------------------------------------------------- video


_MASK64 = (1 << 64) - 1


def _unit_hash(*parts: int) -> float:
    """A uniform number in [0, 1) from integers (splitmix64 finalizer): a segment's
    size is a pure function of its identity, so the catalogue knows the sizes of
    segments nobody requested."""
    x = 0
    for part in parts:
        x = (x * 0x9E3779B97F4A7C15 + part + 0x632BE59BD9B4E019) & _MASK64
        x ^= x >> 30
        x = (x * 0xBF58476D1CE4E5B9) & _MASK64
        x ^= x >> 27
        x = (x * 0x94D049BB133111EB) & _MASK64
        x ^= x >> 31
    return x / 18446744073709551616.0


@dataclass(frozen=True, slots=True)
class Catalog:
    """The titles of a video trace as the control plane's catalogue knows them: every
    rendition of every title, and every segment's path and size, requested or not."""

    lengths: tuple[int, ...]  # title -> segments per rendition
    renditions_kbps: tuple[int, ...]
    segment_seconds: float
    size_jitter: float
    seed: int
    released: int  # titles below this id exist on day one; the rest are day-two releases

    def path(self, title: int, rendition: int, index: int) -> str:
        kbps = self.renditions_kbps[rendition]
        return f"/titles/t{title:05d}/r{kbps}/seg-{index:05d}.m4s"

    def size(self, title: int, rendition: int, index: int) -> int:
        mean = self.renditions_kbps[rendition] * 1000 / 8 * self.segment_seconds
        u = _unit_hash(self.seed, title, rendition, index)
        return max(1, round(mean * (1.0 + self.size_jitter * (2.0 * u - 1.0))))


@dataclass(frozen=True, slots=True)
class VideoTraceParams:
    """The video-like trace; defaults and their sources are in docs/cache-policy.md."""

    titles: int = 4000
    """Titles in the catalogue on day one (an episode is a title)."""
    zipf_alpha: float = 0.8
    """Zipf exponent of title popularity (VoD in Fricker et al., 2012)."""
    sessions_per_day: int = 4000
    """Mean viewing sessions per day."""
    segment_seconds: float = 6.0
    """Media duration of one segment (the HLS authoring specification's target)."""
    renditions_kbps: tuple[int, ...] = (750, 1750, 3000, 5800)
    """Bitrates of the renditions (rungs of Netflix's fixed bitrate ladder)."""
    rendition_shares: tuple[float, ...] = (0.15, 0.25, 0.35, 0.25)
    """Share of sessions played at each rendition (an assumption)."""
    median_session_minutes: float = 10.0
    """Half of the sessions stop within this many minutes (Yu et al., EuroSys 2006)."""
    episode_share: float = 0.5
    """Share of titles that are episodes; the rest are films (an assumption)."""
    episode_minutes: tuple[float, float] = (22.0, 60.0)
    film_minutes: tuple[float, float] = (85.0, 140.0)
    segment_size_jitter: float = 0.25
    """Segment sizes vary uniformly within +-this share of the rendition's mean (VBR)."""
    day2_drift_sigma: float = 0.5
    """Day-two popularity: each weight times exp(N(0, sigma)) (an assumption)."""
    new_titles: int = 40
    """Titles released on day two (e.g. four ten-episode seasons)."""
    new_title_top_rank: int = 100
    """A new release is as popular as a title of a rank drawn from 1..this on day one."""

    def __post_init__(self) -> None:
        if self.titles < 1 or self.sessions_per_day < 1:
            raise ValueError("titles and sessions_per_day must be >= 1")
        if len(self.renditions_kbps) != len(self.rendition_shares) or not self.renditions_kbps:
            raise ValueError("renditions_kbps and rendition_shares must have the same length")
        if not 0 <= self.segment_size_jitter < 1:
            raise ValueError("segment_size_jitter must be in [0, 1)")


VIDEO_DEFAULT = VideoTraceParams()
VIDEO_SMALL = VideoTraceParams(titles=600, sessions_per_day=600, new_titles=6)
VIDEO_TINY = VideoTraceParams(
    titles=40,
    sessions_per_day=30,
    episode_minutes=(3.0, 6.0),
    film_minutes=(6.0, 10.0),
    median_session_minutes=3.0,
    new_titles=2,
    new_title_top_rank=5,
)


def _cumulative(weights: Sequence[float]) -> list[float]:
    return list(itertools.accumulate(weights))


def _pick(rng: random.Random, cumulative: list[float]) -> int:
    return bisect.bisect_right(cumulative, rng.random() * cumulative[-1])


def _arrivals(rng: random.Random, per_day: float, day: int) -> list[float]:
    """Poisson arrivals over one day at a rate following :data:`HOURLY_PROFILE`
    (thinning: draw at the peak rate, keep each with probability rate/peak)."""
    profile = HOURLY_PROFILE
    peak = max(profile)
    mean = sum(profile) / len(profile)
    peak_rate = per_day / DAY_SECONDS * peak / mean
    t = day * DAY_SECONDS
    end = t + DAY_SECONDS
    out: list[float] = []
    while True:
        t += rng.expovariate(peak_rate)
        if t >= end:
            return out
        hour = (START_HOUR + int((t % DAY_SECONDS) // 3600)) % 24
        if rng.random() * peak < profile[hour]:
            out.append(t)


def video_trace(params: VideoTraceParams = VIDEO_DEFAULT, seed: int = 1) -> Trace:
    """Two days of DASH segment requests (see the module docstring)."""
    p = params
    rng = random.Random(f"oca-video-trace:{seed}")
    n_old, n_all = p.titles, p.titles + p.new_titles
    seg_s = p.segment_seconds

    lengths: list[int] = []  # segments per title
    for _ in range(n_all):
        lo, hi = p.episode_minutes if rng.random() < p.episode_share else p.film_minutes
        lengths.append(max(1, round(rng.uniform(lo, hi) * 60.0 / seg_s)))
    ranks = list(range(n_old))
    rng.shuffle(ranks)  # title ids say nothing about popularity
    day1 = [0.0] * n_all
    for title, rank in enumerate(ranks):
        day1[title] = (rank + 1) ** -p.zipf_alpha
    day2 = [w * math.exp(rng.gauss(0.0, p.day2_drift_sigma)) for w in day1]
    for title in range(n_old, n_all):
        day2[title] = rng.randint(1, max(1, p.new_title_top_rank)) ** -p.zipf_alpha
    cum = (_cumulative(day1), _cumulative(day2))
    cum_rendition = _cumulative(p.rendition_shares)
    # Geometric session length: continue after each segment with probability q, so that
    # P(length <= median) = 1/2.
    q = 0.5 ** (seg_s / (p.median_session_minutes * 60.0))
    log_q = math.log(q)

    catalog = Catalog(
        tuple(lengths), tuple(p.renditions_kbps), seg_s, p.segment_size_jitter, seed, n_old
    )
    index: dict[tuple[int, int, int], int] = {}
    paths: list[str] = []
    sizes = array("q")
    events: list[tuple[float, int]] = []
    end = 2 * DAY_SECONDS
    sessions = [0, 0]
    new_release_sessions = 0
    for day in (0, 1):
        for start in _arrivals(rng, p.sessions_per_day, day):
            title = _pick(rng, cum[day])
            rendition = _pick(rng, cum_rendition)
            watched = 1 + int(math.log(1.0 - rng.random()) / log_q)
            watched = min(watched, lengths[title])
            sessions[day] += 1
            new_release_sessions += title >= n_old
            for seg in range(watched):
                t = start + seg * seg_s
                if t >= end:
                    break
                key = (title, rendition, seg)
                obj = index.get(key)
                if obj is None:
                    obj = len(paths)
                    index[key] = obj
                    paths.append(catalog.path(title, rendition, seg))
                    sizes.append(catalog.size(title, rendition, seg))
                events.append((t, obj))
    events.sort()  # stable: simultaneous requests keep session order
    times = array("d", (t for t, _ in events))
    objects = array("q", (o for _, o in events))
    day2_start = bisect.bisect_left(times, DAY_SECONDS)
    desc = (
        f"video: {n_old} titles (Zipf {p.zipf_alpha}) + {p.new_titles} new on day 2, "
        f"{p.sessions_per_day} sessions/day, {len(p.renditions_kbps)} renditions, "
        f"{seg_s:g} s segments, median session {p.median_session_minutes:g} min"
    )
    facts = {
        "sessions_day1": float(sessions[0]),
        "sessions_day2": float(sessions[1]),
        "new_release_sessions_day2": float(new_release_sessions),
    }
    _add_day2_facts(facts, objects, sizes, day2_start)
    segments = tuple(sorted(index, key=index.__getitem__))
    return Trace(
        "video", desc, times, objects, tuple(paths), sizes, day2_start, facts, catalog, segments
    )


# ------------------------------------------------------------------------ zipf churn


@dataclass(frozen=True, slots=True)
class ZipfTraceParams:
    """The Zipf-with-churn trace; defaults are discussed in docs/cache-policy.md."""

    objects: int = 100_000
    """Objects ranked on day one."""
    zipf_alpha: float = 0.8
    """Zipf exponent (web-like; Breslau et al., INFOCOM 1999 report 0.64-0.83)."""
    requests_per_day: int = 400_000
    object_bytes: int = 1 << 20
    """Every object has this size (so Belady is optimal for bytes too)."""
    churn_interval_seconds: float = 3600.0
    churn_swap_share: float = 0.02
    """Per interval, this share of ranks swaps with a rank within a factor of 4."""
    new_objects_per_interval: int = 20
    """Per interval, new objects replace the objects at ranks drawn from 1..top rank."""
    new_object_top_rank: int = 2000

    def __post_init__(self) -> None:
        if self.objects < 2 or self.requests_per_day < 1 or self.object_bytes < 1:
            raise ValueError("objects >= 2, requests_per_day >= 1, object_bytes >= 1")


ZIPF_DEFAULT = ZipfTraceParams()
ZIPF_SMALL = ZipfTraceParams(objects=20_000, requests_per_day=60_000, new_objects_per_interval=4)
ZIPF_TINY = ZipfTraceParams(
    objects=2000, requests_per_day=3000, new_objects_per_interval=2, new_object_top_rank=50
)


def zipf_churn_trace(params: ZipfTraceParams = ZIPF_DEFAULT, seed: int = 1) -> Trace:
    """Two days of independent Zipf requests with gradual rank churn."""
    p = params
    rng = random.Random(f"oca-zipf-trace:{seed}")
    n = p.objects
    cum = _cumulative([(r + 1) ** -p.zipf_alpha for r in range(n)])
    by_rank = list(range(n))  # rank -> object id
    rng.shuffle(by_rank)
    next_id = n
    rate = p.requests_per_day / DAY_SECONDS
    end = 2 * DAY_SECONDS
    index: dict[int, int] = {}
    times = array("d")
    objects = array("q")
    t = 0.0
    next_churn = p.churn_interval_seconds
    swaps = round(p.churn_swap_share * n)
    top = max(1, min(p.new_object_top_rank, n))
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            break
        while t >= next_churn:
            for _ in range(swaps):
                a = rng.randrange(n)
                b = round((a + 1) * math.exp(rng.uniform(-math.log(4), math.log(4)))) - 1
                b = min(max(b, 0), n - 1)
                by_rank[a], by_rank[b] = by_rank[b], by_rank[a]
            for _ in range(p.new_objects_per_interval):
                by_rank[rng.randrange(top)] = next_id
                next_id += 1
            next_churn += p.churn_interval_seconds
        oid = by_rank[min(_pick(rng, cum), n - 1)]
        obj = index.get(oid)
        if obj is None:
            obj = index[oid] = len(index)
        times.append(t)
        objects.append(obj)
    path_list = [""] * len(index)
    for oid, obj in index.items():
        path_list[obj] = f"/zipf/o{oid:07d}/object"  # one group per object: no pooling
    sizes = array("q", [p.object_bytes]) * len(index)
    day2_start = bisect.bisect_left(times, DAY_SECONDS)
    desc = (
        f"zipf: {n} objects (Zipf {p.zipf_alpha}), {p.requests_per_day} requests/day, "
        f"{p.object_bytes} B each, {p.churn_swap_share:.0%} of ranks swapped and "
        f"{p.new_objects_per_interval} new objects every {p.churn_interval_seconds:g} s"
    )
    facts = {"new_objects": float(next_id - n)}
    _add_day2_facts(facts, objects, sizes, day2_start)
    return Trace("zipf", desc, times, objects, tuple(path_list), sizes, day2_start, facts)


def _add_day2_facts(
    facts: dict[str, float], objects: array[int], sizes: array[int], day2_start: int
) -> None:
    """How much of day two's traffic day one could have predicted at all."""
    seen = set(objects[:day2_start])
    day2_bytes = unseen_bytes = 0
    day2_requests = unseen_requests = 0
    for i in range(day2_start, len(objects)):
        o = objects[i]
        s = sizes[o]
        day2_requests += 1
        day2_bytes += s
        if o not in seen:
            unseen_requests += 1
            unseen_bytes += s
    facts["requests_day1"] = float(day2_start)
    facts["requests_day2"] = float(day2_requests)
    facts["bytes_day2"] = float(day2_bytes)
    facts["day2_requests_unseen_on_day1"] = unseen_requests / max(1, day2_requests)
    facts["day2_bytes_unseen_on_day1"] = unseen_bytes / max(1, day2_bytes)
