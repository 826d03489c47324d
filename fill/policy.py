"""Popularity-weighted LRU: which objects an appliance keeps (pure; the clock is an argument).

Theory of operation
-------------------
An appliance is a hybrid cache (DESIGN.md): the nightly fill pushes what the control
plane predicts the region will watch, misses during the day pull through, and one
policy decides what stays. Both signals feed one priority per object::

    priority(o) = f(o, t) + w * p(o)

- ``f(o, t)`` is the object's request count on this box, each request weighted by
  ``2 ** (-(t - t_i) / half_life)``: a continuous form of LRU-K's "recency of the last K
  references" (O'Neil, O'Neil & Weikum, SIGMOD 1993), as in LRFU (Lee et al., IEEE
  ToC 2001). Recent and frequent objects score high; a burst fades with the half-life.
  Priorities are recomputed for the current time at every :meth:`reprioritise` (the
  planner's) and every 1/16 of a half-life of misses, so stale objects fall behind.
- ``p(o)`` is the forecast: the manifest's predicted requests per day for the object,
  turned into requests per half-life so it is in the same unit as ``f``. Predictions
  are also pooled per *title* (the object's group, e.g. its rendition directory): an
  object the manifest does not list but whose title it does gets the title's mean,
  because players that start a hot title go on to request its other segments. This is
  the popularity-ranked placement of Open Connect's nightly fill, applied to eviction.

The priority estimates the object's request rate, which is its value per byte of
space when the cache is judged by *byte* hit ratio (the bytes it keeps off the
backbone); hence no size term (GDSF, Cherkasova 1998, divides by size to maximise the
object hit ratio; with cost = size, size cancels).

Probation: ranking by request rate alone lets a flood of one-off requests (the
sessions of the many rarely watched titles) push out objects that are requested again.
As in S3-FIFO (Yang et al., SOSP 2023), a miss without a forecast or a remembered
history, or whose priority does not beat the main cache's lowest, enters a small FIFO
(``probation_fraction`` of the capacity). Making room takes the FIFO's oldest while the
FIFO holds its share (promoting it into the main cache instead if it was requested
again meanwhile), else the main cache's lowest priority. Evicted objects are remembered
(their decayed count, for as many objects as are resident): a remembered object that is
requested again enters the main cache with its history.

Objects being served or filled are *pinned* by the caller and never chosen as victims;
used bytes never exceed capacity because nothing is inserted that does not fit.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass

DAY_SECONDS = 86400.0
REFRESHES_PER_HALF_LIFE = 16  # how often make_room re-bases priorities on the clock


@dataclass(frozen=True, slots=True)
class PolicyParams:
    """Tuning of :class:`PopularityLRU` (defaults from the cache-policy benchmark)."""

    half_life_seconds: float = 24 * 3600.0
    """How fast requests seen on the box fade. Tuned with ``oca bench cache-policy``
    (seeds 11 and 12, not the reported seed; docs/cache-policy.md): 24 h did better than
    72 h and 168 h on both traces at every size, by 0.001-0.013 of byte hit ratio."""
    forecast_weight: float = 1.0
    """Weight of the forecast against requests seen on the box (0 ignores it)."""
    probation_fraction: float = 0.05
    """Share of the capacity for the probationary FIFO that misses without a forecast
    or a remembered history enter. S3-FIFO uses 10%; 5% did 0.001-0.005 better here,
    20% worse (same tuning runs)."""

    def __post_init__(self) -> None:
        if not (self.half_life_seconds > 0 and math.isfinite(self.half_life_seconds)):
            raise ValueError(f"half_life_seconds must be > 0, not {self.half_life_seconds}")
        if not (self.forecast_weight >= 0 and math.isfinite(self.forecast_weight)):
            raise ValueError(f"forecast_weight must be >= 0, not {self.forecast_weight}")
        if not 0 < self.probation_fraction < 1:
            raise ValueError(f"probation_fraction must be in (0, 1), not {self.probation_fraction}")


def parent_group(path: str) -> str:
    """The default title of an object: its directory (``/t/tos/v720/s1.m4s`` -> ``/t/tos/v720``)."""
    return path.rsplit("/", 1)[0]


class _Entry:
    __slots__ = ("freq", "last", "priority", "probation", "reused", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.freq = 0.0
        self.last = 0.0
        self.priority = 0.0
        self.probation = False  # in the probationary FIFO, not (yet) in the main cache
        self.reused = False  # requested again while on probation


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
        self._entries: dict[str, _Entry] = {}
        # the main cache, lowest first: (priority, last access, key); stale items skipped
        self._heap: list[tuple[float, float, str]] = []
        self._refreshed = 0.0  # when the priorities were last brought to a common time
        self._probation: OrderedDict[str, None] = OrderedDict()  # FIFO, oldest first
        self._probation_bytes = 0
        self._probation_limit = int(capacity_bytes * self.params.probation_fraction)
        self._ghosts: OrderedDict[str, tuple[float, float]] = OrderedDict()  # (freq, last)
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

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def keys(self) -> Iterable[str]:
        return self._entries.keys()

    def size_of(self, key: str) -> int:
        return self._entries[key].size

    def priority(self, key: str) -> float:
        return self._entries[key].priority

    def on_probation(self, key: str) -> bool:
        """Whether ``key`` is in the probationary FIFO rather than the main cache."""
        return self._entries[key].probation

    def free_bytes(self) -> int:
        return self.capacity_bytes - self.used_bytes

    def candidate_priority(self, key: str, now: float) -> float:
        """The priority ``key`` would have if it were requested (or filled) at ``now``:
        its history on the box (resident, or remembered since its eviction) plus one."""
        e = self._entries.get(key)
        freq = self._decayed(e, now) if e is not None else self._remembered(key, now)
        return freq + 1.0 + self.forecast(key)

    # ------------------------------------------------------------------ updates
    def touch(self, key: str, now: float) -> None:
        """A request for a resident object."""
        e = self._entries[key]
        e.freq = self._decayed(e, now) + 1.0
        e.last = max(e.last, now)
        if e.probation:
            e.reused = True
        self._set_priority(key, e)

    def insert(
        self, key: str, size: int, now: float, *, hits: float = 0.0, last_access: float = 0.0
    ) -> bool:
        """Make ``key`` resident in the main cache (after a fill, or loaded from the
        inventory at start); False if it does not fit.

        ``hits`` and ``last_access`` seed the request history (an inventory loaded at
        start); a plain insert counts as one request at ``now`` when ``hits`` is 0.
        """
        if size < 0:
            raise ValueError(f"size must be >= 0, not {size}")
        old = self._entries.get(key)
        room = self.free_bytes() + (old.size if old is not None else 0)
        if size > room:
            return False
        if hits > 0:
            freq = hits * self._decay(now - last_access) if last_access else hits
            last = last_access or now
        else:
            freq, last = 1.0, now
        self.remove(key)
        self._add(key, size, freq, last, probation=False)
        return True

    def remove(self, key: str) -> None:
        """Forget ``key`` without counting it as an eviction (deleted, failed, moved away)."""
        e = self._entries.pop(key, None)
        if e is None:
            return
        self.used_bytes -= e.size
        if e.probation:
            del self._probation[key]
            self._probation_bytes -= e.size

    def evict(self, key: str) -> None:
        """Remove ``key`` as the policy's victim and remember its request history."""
        e = self._entries.get(key)
        if e is None:
            return
        self.remove(key)
        ghosts = self._ghosts
        ghosts[key] = (e.freq, e.last)
        ghosts.move_to_end(key)
        while len(ghosts) > len(self._entries) + 64:
            ghosts.popitem(last=False)

    def reprioritise(self, now: float) -> None:
        """Recompute every resident priority from its history and the current forecast."""
        for key, e in self._entries.items():
            if now > e.last:
                e.freq = self._decayed(e, now)
                e.last = now
            e.priority = e.freq + self.forecast(key)
        self._refreshed = now
        self._heap = [(e.priority, e.last, k) for k, e in self._entries.items() if not e.probation]
        heapq.heapify(self._heap)

    # ------------------------------------------------------------------ decisions
    def admit(self, key: str, size: int, now: float, pinned: frozenset[str] = frozenset()) -> bool:
        """Whether a miss for ``key`` may go straight into the main cache (see the module
        docstring); otherwise :meth:`make_room` puts it on probation."""
        if size > self.capacity_bytes:
            return False
        if size <= self.free_bytes():
            return True
        lowest = self._lowest_main(pinned)
        return lowest is None or self.candidate_priority(key, now) >= lowest

    def choose_victims(self, nbytes: int, pinned: frozenset[str] = frozenset()) -> list[str] | None:
        """Resident keys whose removal frees ``nbytes`` beyond the free room, in eviction
        order: the probationary FIFO oldest first, then the main cache lowest priority
        first; None when even evicting every unpinned object would not make room.

        Ties go to the key that sorts first, so the choice is deterministic. Nothing is
        changed: the caller evicts what it actually deleted (:meth:`evict`).
        """
        need = nbytes - self.free_bytes()
        if need <= 0:
            return []
        chosen: list[str] = []
        for key in self._probation:
            if need <= 0:
                break
            if key not in pinned:
                chosen.append(key)
                need -= self._entries[key].size
        with closing(self._main_in_order(pinned)) as lowest_first:
            for key in lowest_first:
                if need <= 0:
                    break
                chosen.append(key)
                need -= self._entries[key].size
        return chosen if need <= 0 else None

    def make_room(
        self, key: str, size: int, now: float, pinned: frozenset[str] = frozenset()
    ) -> list[str] | None:
        """A miss for ``key``: make it resident and return the objects evicted for it, or
        None when it cannot fit without evicting a pinned object.

        A miss enters the main cache when it has a forecast or a remembered history and
        its priority beats the main cache's lowest (:meth:`admit`); otherwise it enters
        the probationary FIFO. Room is made S3-FIFO style: while the FIFO holds its share
        or more, its oldest object leaves it (into the main cache if it was requested
        again meanwhile, else evicted); otherwise the main cache's lowest priority goes.
        """
        if size > self.capacity_bytes:
            return None
        if key in self._entries:
            return []
        if now - self._refreshed > self.params.half_life_seconds / REFRESHES_PER_HALF_LIFE:
            self.reprioritise(now)
        pinned_bytes = sum(self._entries[k].size for k in pinned if k in self._entries)
        if size > self.capacity_bytes - pinned_bytes:
            return None
        main = (self.forecast(key) > 0 or key in self._ghosts) and self.admit(
            key, size, now, pinned
        )
        victims: list[str] = []
        while self.free_bytes() < size:
            victim = self._next_victim(pinned)
            if victim is not None:
                victims.append(victim)
                self.evict(victim)
        freq = self._remembered(key, now) + 1.0
        self._ghosts.pop(key, None)
        self._add(key, size, freq, now, probation=not main)
        return victims

    # ------------------------------------------------------------------ internals
    def _add(self, key: str, size: int, freq: float, last: float, *, probation: bool) -> None:
        e = _Entry(size)
        e.freq, e.last, e.probation = freq, last, probation
        self._entries[key] = e
        self.used_bytes += size
        if probation:
            self._probation[key] = None
            self._probation_bytes += size
        self._set_priority(key, e)

    def _next_victim(self, pinned: frozenset[str]) -> str | None:
        """One step of making room: promote or pick the probationary FIFO's oldest
        unpinned object, or pick the main cache's lowest; None after a promotion."""
        if self._probation_bytes >= self._probation_limit or self._lowest_main(pinned) is None:
            for key in self._probation:
                if key in pinned:
                    continue
                e = self._entries[key]
                if not e.reused:
                    return key
                del self._probation[key]  # requested again: into the main cache
                self._probation_bytes -= e.size
                e.probation = False
                self._set_priority(key, e)
                return None
        with closing(self._main_in_order(pinned)) as lowest_first:
            for key in lowest_first:
                return key
        raise AssertionError("make_room checked that unpinned objects can free the room")

    def _main_in_order(self, pinned: frozenset[str]) -> Generator[str, None, None]:
        """Unpinned main-cache keys, lowest priority first (ties by last access, then
        key); the heap is restored when the generator is closed (use ``closing``)."""
        heap = self._heap
        popped: list[tuple[float, float, str]] = []
        seen: set[str] = set()
        try:
            while heap:
                item = heapq.heappop(heap)
                prio, last, key = item
                e = self._entries.get(key)
                if e is None or e.probation or e.priority != prio or e.last != last or key in seen:
                    continue  # stale, or a duplicate of a re-pushed item
                seen.add(key)
                popped.append(item)
                if key not in pinned:
                    yield key
        finally:
            for item in popped:
                heapq.heappush(heap, item)

    def _lowest_main(self, pinned: frozenset[str]) -> float | None:
        with closing(self._main_in_order(pinned)) as lowest_first:
            for key in lowest_first:
                return self._entries[key].priority
        return None

    def _remembered(self, key: str, now: float) -> float:
        """The decayed request count of an evicted ``key`` (0 if it is not remembered)."""
        ghost = self._ghosts.get(key)
        return 0.0 if ghost is None else ghost[0] * self._decay(now - ghost[1])

    def _decay(self, age: float) -> float:
        if age <= 0:
            return 1.0
        return float(0.5 ** (age / self.params.half_life_seconds))

    def _decayed(self, e: _Entry, now: float) -> float:
        return e.freq * self._decay(now - e.last)

    def _set_priority(self, key: str, e: _Entry) -> None:
        e.priority = e.freq + self.forecast(key)
        if e.probation:
            return
        heapq.heappush(self._heap, (e.priority, e.last, key))
        if len(self._heap) > 4 * len(self._entries) + 64:
            self._heap = [
                (x.priority, x.last, k) for k, x in self._entries.items() if not x.probation
            ]
            heapq.heapify(self._heap)
