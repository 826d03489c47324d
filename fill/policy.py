"""Popularity-weighted LRU: which objects an appliance keeps (pure; the clock is an argument).

Theory of operation
-------------------
An appliance is a hybrid cache (DESIGN.md): the nightly fill pushes what the control
plane predicts the region will watch, misses during the day pull through, and one
policy decides what stays. Both signals feed one priority per object::

    priority(o) = L + f(o, t) + w * p(o)

- ``f(o, t)`` is the object's request count on this box, each request weighted by
  ``2 ** (-(t - t_i) / half_life)``: a continuous form of LRU-K's "recency of the last K
  references" (O'Neil, O'Neil & Weikum, SIGMOD 1993), as in LRFU (Lee et al., IEEE
  ToC 2001). Recent and frequent objects score high; a burst fades with the half-life.
- ``p(o)`` is the forecast: the manifest's predicted requests per day for the object,
  turned into requests per half-life so it is in the same unit as ``f``. Predictions
  are also pooled per *title* (the object's group, e.g. its rendition directory): an
  object the manifest does not list but whose title it does (a later segment, another
  episode's file in the same group) gets the title's mean, because players that start a
  hot title go on to request its other segments. This is the popularity-ranked placement
  of Open Connect's nightly fill, applied to eviction as well as to fill.
- ``L`` is the inflation value of GDSF (Cherkasova, HP Labs 1998) and LFU-DA (Arlitt et
  al., 2000): when an object is evicted, ``L`` becomes its priority. An object's
  priority is set when it is touched, so objects nobody asks for fall behind the rising
  ``L`` and go, however hot they once were; a title predicted hot keeps ``w * p`` above
  the floor and survives a quiet hour.

There is no size term. GDSF divides by size to maximise *object* hit ratio; a video
cache is judged by *byte* hit ratio (the bytes it keeps off the backbone), and the value
of keeping an object per byte of space is then its expected request rate alone (GDSF with
cost = size).

Admission: an object that is not resident is admitted when it would not be the first
victim, i.e. its priority is at least the lowest resident priority, or when there is free
room. One-off requests to unforecast objects therefore do not push out a predicted
title, while an object asked for repeatedly earns its place.

Objects being served or filled are *pinned* by the caller and never chosen as victims;
used bytes never exceed capacity because :meth:`PopularityLRU.insert` refuses what does
not fit.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

DAY_SECONDS = 86400.0


@dataclass(frozen=True, slots=True)
class PolicyParams:
    """Tuning of :class:`PopularityLRU` (defaults from the cache-policy benchmark)."""

    half_life_seconds: float = 72 * 3600.0
    """How fast requests seen on the box fade. Tuned with ``oca bench cache-policy`` on
    its video trace (seeds 11 and 12, not the reported seed): 72 h instead of 6 h raised
    the day-two byte hit ratio by 23-45% at the 1% cache and 6-7% at 10%; longer
    changed little, and the Zipf trace moved by under 0.01."""
    forecast_weight: float = 1.0
    """Weight of the forecast against requests seen on the box (0 ignores it)."""

    def __post_init__(self) -> None:
        if not (self.half_life_seconds > 0 and math.isfinite(self.half_life_seconds)):
            raise ValueError(f"half_life_seconds must be > 0, not {self.half_life_seconds}")
        if not (self.forecast_weight >= 0 and math.isfinite(self.forecast_weight)):
            raise ValueError(f"forecast_weight must be >= 0, not {self.forecast_weight}")


def parent_group(path: str) -> str:
    """The default title of an object: its directory (``/t/tos/v720/s1.m4s`` -> ``/t/tos/v720``)."""
    return path.rsplit("/", 1)[0]


class _Entry:
    __slots__ = ("freq", "last", "priority", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.freq = 0.0
        self.last = 0.0
        self.priority = 0.0


class PopularityLRU:
    """The policy state of one cache (a tier, a disk or a whole box) of ``capacity_bytes``."""

    def __init__(
        self,
        capacity_bytes: int,
        params: PolicyParams | None = None,
        group_of: Callable[[str], str] = parent_group,
    ) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, not {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self.params = params or PolicyParams()
        self.group_of = group_of
        self.used_bytes = 0
        self.inflation = 0.0  # L
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, str]] = []  # (priority, key); stale items skipped
        self._forecast: dict[str, float] = {}  # key -> requests per half-life
        self._group_forecast: dict[str, float] = {}  # group -> mean per object

    # ------------------------------------------------------------------ forecast
    def set_forecast(self, requests_per_day: Mapping[str, float]) -> None:
        """Replace the forecast: predicted requests per day for each listed object.

        Resident objects keep their current priority until they are next touched; the
        planner recomputes priorities explicitly (:meth:`reprioritise`).
        """
        scale = self.params.forecast_weight * self.params.half_life_seconds / DAY_SECONDS
        per_key: dict[str, float] = {}
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for key, value in requests_per_day.items():
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"forecast for {key!r} must be a finite number >= 0, not {value}")
            v = value * scale
            per_key[key] = v
            g = self.group_of(key)
            sums[g] = sums.get(g, 0.0) + v
            counts[g] = counts.get(g, 0) + 1
        self._forecast = per_key
        self._group_forecast = {g: sums[g] / counts[g] for g in sums}

    def forecast(self, key: str) -> float:
        """``w * p(key)`` in requests per half-life: the object's own, else its title's mean."""
        v = self._forecast.get(key)
        if v is not None:
            return v
        return self._group_forecast.get(self.group_of(key), 0.0)

    # ------------------------------------------------------------------ queries
    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> Iterable[str]:
        return self._entries.keys()

    def size_of(self, key: str) -> int:
        return self._entries[key].size

    def priority(self, key: str) -> float:
        return self._entries[key].priority

    def free_bytes(self) -> int:
        return self.capacity_bytes - self.used_bytes

    def candidate_priority(self, key: str, now: float) -> float:
        """The priority ``key`` would have if it were requested (or filled) at ``now``."""
        e = self._entries.get(key)
        freq = 1.0 if e is None else self._decayed(e, now) + 1.0
        return self.inflation + freq + self.forecast(key)

    # ------------------------------------------------------------------ updates
    def touch(self, key: str, now: float) -> None:
        """A request for a resident object."""
        e = self._entries[key]
        e.freq = self._decayed(e, now) + 1.0
        e.last = max(e.last, now)
        self._set_priority(key, e)

    def insert(
        self, key: str, size: int, now: float, *, hits: float = 0.0, last_access: float = 0.0
    ) -> bool:
        """Make ``key`` resident (after a fill or an admitted miss); False if it does not fit.

        ``hits`` and ``last_access`` seed the request history (an inventory loaded at
        start); a plain insert counts as one request at ``now`` when ``hits`` is 0.
        """
        if size < 0:
            raise ValueError(f"size must be >= 0, not {size}")
        old = self._entries.get(key)
        room = self.free_bytes() + (old.size if old is not None else 0)
        if size > room:
            return False
        if old is not None:
            self.used_bytes -= old.size
        e = _Entry(size)
        if hits > 0:
            e.freq = hits * self._decay(now - last_access) if last_access else hits
            e.last = last_access or now
        else:
            e.freq = 1.0
            e.last = now
        self._entries[key] = e
        self.used_bytes += size
        self._set_priority(key, e)
        return True

    def remove(self, key: str) -> None:
        """Forget ``key`` without counting it as an eviction (deleted, failed, moved away)."""
        e = self._entries.pop(key, None)
        if e is not None:
            self.used_bytes -= e.size

    def evict(self, key: str) -> None:
        """Remove ``key`` as the policy's victim: ``L`` rises to its priority."""
        e = self._entries.get(key)
        if e is None:
            return
        self.inflation = max(self.inflation, e.priority)
        self.remove(key)

    def reprioritise(self, now: float) -> None:
        """Recompute every resident priority from its history and the current forecast."""
        for key, e in self._entries.items():
            if now > e.last:
                e.freq = self._decayed(e, now)
                e.last = now
            e.priority = self.inflation + e.freq + self.forecast(key)
        self._heap = [(e.priority, k) for k, e in self._entries.items()]
        heapq.heapify(self._heap)

    # ------------------------------------------------------------------ decisions
    def admit(self, key: str, size: int, now: float, pinned: frozenset[str] = frozenset()) -> bool:
        """Whether a miss for ``key`` should be kept (see the module docstring)."""
        if size > self.capacity_bytes:
            return False
        if size <= self.free_bytes():
            return True
        lowest = self._lowest(pinned)
        return lowest is not None and self.candidate_priority(key, now) >= lowest

    def choose_victims(self, nbytes: int, pinned: frozenset[str] = frozenset()) -> list[str] | None:
        """Resident keys, lowest priority first, whose removal frees ``nbytes`` beyond the
        free room; None when even evicting every unpinned object would not make room.

        Ties go to the key that sorts first, so the choice is deterministic. Nothing is
        changed: the caller evicts what it actually deleted (:meth:`evict`).
        """
        need = nbytes - self.free_bytes()
        if need <= 0:
            return []
        chosen: list[str] = []
        popped: list[tuple[float, str]] = []
        seen: set[str] = set()
        heap = self._heap
        while need > 0 and heap:
            item = heapq.heappop(heap)
            prio, key = item
            e = self._entries.get(key)
            if e is None or e.priority != prio or key in seen:
                continue  # stale, or a duplicate of a re-pushed item
            seen.add(key)
            popped.append(item)
            if key in pinned:
                continue
            chosen.append(key)
            need -= e.size
        for item in popped:
            heapq.heappush(heap, item)
        return chosen if need <= 0 else None

    def make_room(
        self, key: str, size: int, now: float, pinned: frozenset[str] = frozenset()
    ) -> list[str] | None:
        """Admit-and-evict for a miss: the victims evicted so ``key`` fits (and is inserted),
        or None when it is not admitted or cannot fit."""
        if not self.admit(key, size, now, pinned):
            return None
        victims = self.choose_victims(size, pinned)
        if victims is None:
            return None
        for v in victims:
            self.evict(v)
        inserted = self.insert(key, size, now)
        assert inserted
        return victims

    # ------------------------------------------------------------------ internals
    def _decay(self, age: float) -> float:
        if age <= 0:
            return 1.0
        return float(0.5 ** (age / self.params.half_life_seconds))

    def _decayed(self, e: _Entry, now: float) -> float:
        return e.freq * self._decay(now - e.last)

    def _set_priority(self, key: str, e: _Entry) -> None:
        e.priority = self.inflation + e.freq + self.forecast(key)
        heapq.heappush(self._heap, (e.priority, key))
        if len(self._heap) > 4 * len(self._entries) + 64:
            self._heap = [(x.priority, k) for k, x in self._entries.items()]
            heapq.heapify(self._heap)

    def _lowest(self, pinned: frozenset[str]) -> float | None:
        heap = self._heap
        while heap:
            prio, key = heap[0]
            e = self._entries.get(key)
            if e is None or e.priority != prio:
                heapq.heappop(heap)
                continue
            if key in pinned:
                victims = self.choose_victims(self.free_bytes() + 1, pinned)
                if not victims:
                    return None
                return self._entries[victims[0]].priority
            return prio
        return None
