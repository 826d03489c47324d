"""What the heartbeats say about the inventory: full lists, deltas, and request counts.

Theory of operation
-------------------
*Inventory.* The appliance numbers the versions of the set of paths it serves: the
*epoch* is drawn at supervisor start (the boot id) and the generation ``gen`` grows by
one whenever the set changes (:class:`InventoryLog`). Each steering replica keeps its
own copy of the set, built from what it acknowledged, so the appliance tracks per
replica the generation and set that replica last acknowledged (:class:`ReplicaBase`)
and sends (:func:`inventory_payload`):

- a full list when the replica has no base yet (first heartbeat after start) or asked
  for one (``send-full``: it restarted or lost our base);
- nothing when the replica's base is the current generation;
- otherwise the delta from its base to now, computed as a set difference (so several
  changes between two heartbeats, or a heartbeat that failed, fold into one delta);
  when the delta would be longer than the full list, the full list instead.

A replica acknowledges with HTTP 200; only then does its base move
(:func:`acknowledged`). A heartbeat that failed in flight leaves the base alone: if the
replica did apply it, the next delta's ``base_gen`` no longer matches its own, it
answers ``send-full``, and the next heartbeat repairs it, so the two never silently
diverge.

*Request counts.* Workers count requests per object in memory and merge them into the
disks' indexes every ``storage.access_stats_flush_seconds`` as the ``hits`` column.
The reporter turns those totals into per-heartbeat counts (:func:`request_counts`) by
keeping a high-water mark per path and reporting growth above it. The mark is what
makes tier moves safe: a moved object's record on its new disk starts at 0 hits and
gets the old total back at the next flush, which must not count twice. A path first
seen on a disk that has just (re)joined (the reporter's start, a disk coming back
from a failure) starts at its current total and counts nothing, since those requests
were made long ago; any other new path (a miss installed, a fill) counts from 0.
Counts therefore lag requests by up to one flush interval, and reach each steering
replica at most once: a heartbeat that fails loses its counts for that replica rather
than risk counting them twice.

This module is pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass, field

from oca.health.heartbeat import DeltaInventoryJSON, FullInventoryJSON, InventoryJSON

__all__ = [
    "InventoryLog",
    "InventoryVersion",
    "ReplicaBase",
    "acknowledged",
    "inventory_payload",
    "request_counts",
]


@dataclass(frozen=True, slots=True)
class InventoryVersion:
    """One generation of the served set (immutable; shared by every replica's base)."""

    epoch: str
    gen: int
    paths: frozenset[str]
    ordered: tuple[str, ...] = field(default=(), compare=False)  # sorted paths


class InventoryLog:
    """The current generation; :meth:`update` starts a new one when the set changed."""

    __slots__ = ("current",)

    def __init__(self, epoch: str) -> None:
        self.current = InventoryVersion(epoch, 0, frozenset())

    def update(self, paths: frozenset[str]) -> bool:
        """Record the served set; True if it differs from the current generation's."""
        cur = self.current
        if cur.gen > 0 and paths == cur.paths:
            return False
        self.current = InventoryVersion(cur.epoch, cur.gen + 1, paths, tuple(sorted(paths)))
        return True


@dataclass(frozen=True, slots=True)
class ReplicaBase:
    """What one steering replica acknowledged: a generation and its set."""

    version: InventoryVersion


def _full(cur: InventoryVersion) -> FullInventoryJSON:
    return {"kind": "full", "epoch": cur.epoch, "gen": cur.gen, "objects": list(cur.ordered)}


def inventory_payload(
    cur: InventoryVersion, base: ReplicaBase | None, *, need_full: bool
) -> InventoryJSON | None:
    """What to send a replica whose acknowledged base is ``base`` (see the docstring)."""
    if need_full or base is None or base.version.epoch != cur.epoch:
        return _full(cur)
    old = base.version
    if old.gen == cur.gen:
        return None
    added = cur.paths - old.paths
    removed = old.paths - cur.paths
    if len(added) + len(removed) > len(cur.paths):
        return _full(cur)
    delta: DeltaInventoryJSON = {
        "kind": "delta",
        "epoch": cur.epoch,
        "base_gen": old.gen,
        "gen": cur.gen,
        "added": sorted(added),
        "removed": sorted(removed),
    }
    return delta


def acknowledged(
    base: ReplicaBase | None, sent: InventoryVersion, payload: InventoryJSON | None
) -> ReplicaBase | None:
    """The replica's base after it accepted a heartbeat that carried ``payload``
    (built from ``sent``) without asking for a full list."""
    if payload is None:
        return base
    return ReplicaBase(sent)


def request_counts(
    marks: Mapping[str, int] | None,
    totals: Mapping[str, int],
    baseline: Container[str] = frozenset(),
) -> tuple[dict[str, int], dict[str, int]]:
    """(requests since ``marks``, the new marks) from the per-path ``totals``.

    ``marks`` None means this is the first look: everything is baseline. Paths in
    ``baseline`` that ``marks`` does not know start at their total (see the docstring).
    Paths absent from ``totals`` are forgotten.
    """
    if marks is None:
        return {}, dict(totals)
    counts: dict[str, int] = {}
    new: dict[str, int] = {}
    for path, total in totals.items():
        mark = marks.get(path)
        if mark is None:
            mark = total if path in baseline else 0
        if total > mark:
            counts[path] = total - mark
            new[path] = total
        else:
            new[path] = mark
    return counts, new
