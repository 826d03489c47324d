"""Fleet state: soft state rebuilt from appliance heartbeats, published as snapshots.

Theory of operation
-------------------
Every appliance reports itself in a heartbeat (:mod:`steering.heartbeat`) every
``interval_seconds``. :class:`Fleet` keeps the last one of each appliance and nothing
else that cannot be rebuilt from the next ones: a steering replica that restarts, or a
second replica started beside it, knows the fleet again one interval later (sooner
with :meth:`Fleet.save` / :meth:`Fleet.load`). It follows the poll -> evaluate ->
publish shape of Apache Traffic Control's monitor: :meth:`Fleet.apply` takes one
heartbeat in, :meth:`Fleet.snapshot` publishes an immutable :class:`Snapshot` that
request handlers and the ranking (:mod:`steering.ranking`) read without locks.

- **Ordering.** Within one ``boot_id`` a heartbeat whose ``seq`` is not above the last
  one applied is a retry or arrived late: it is ignored (its request counts are not
  counted twice) and answered as the state it would have produced. A new ``boot_id``
  is a restart and is always accepted.
- **Inventories.** A full inventory replaces the appliance's set; a delta applies only
  on top of exactly its base: the same ``epoch`` and ``base_gen`` equal to the stored
  generation (or is recognised as already applied when the stored generation is its
  ``gen``). Otherwise the heartbeat's health, load and requests still apply and the
  answer is ``send-full``; so is the answer to a heartbeat without an inventory from an
  appliance this replica has none of (after a restart), which is how a replica refills.
  An inventory loaded from a saved state is used at once but is not trusted to be the
  appliance's latest until a full inventory or a delta from its exact generation
  arrives ("unchanged" could mean unchanged since a later generation).
- **Freshness.** An appliance is fresh while ``now - last_seen <= missed_heartbeats *
  interval_seconds`` (its own interval); a stale one stays known, excluded from
  ranking, and is forgotten ``forget_after_seconds`` after its last heartbeat. The
  deadlines sit in a heap, so taking a snapshot does not scan the fleet.
- **Compact inventories.** Object paths are interned to integers (every catalog path,
  and any other path an appliance reports, since the catalog may list it later). An
  inventory is a bitmap over those integers: 1,000 appliances over 400,000 objects
  take 50 MB whatever they hold. Per title the fleet keeps two bitmasks over appliance
  slots: the *complete* holders (every object of the title) and *any* holders (at least
  one), maintained incrementally from per-appliance counts of partially held titles,
  so ``title_holders`` never scans inventories. When the catalog's version changes the
  titles that changed are recounted (or everything, when that is cheaper). Interned
  paths are kept while the process runs (a path that comes back keeps its number); a
  restart compacts the table.
- **Snapshots** (:mod:`steering.snapshot`) share the inventories and title masks with
  the fleet, copy-on-write: the first change after a publish copies the bitmap of that
  appliance, or the bucket (one of 1,024) of the titles it touches, so publishing is
  O(appliances) pointer copies whatever the inventories hold. A snapshot is cached
  until a heartbeat, a catalog change or a freshness deadline makes it out of date.
  The slowly changing part (ids, sites, locations, announced prefixes) is a
  :class:`~steering.snapshot.Topology` shared by every snapshot until an appliance
  joins, leaves or moves; ranking hangs its caches on it.

Appliance *slots* (small integers) are internal and may differ between replicas fed the
same heartbeats in another order; nothing a snapshot answers depends on them.
"""

from __future__ import annotations

import heapq
import math
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final, Literal, cast

import orjson

from steering.files import write_atomic
from steering.heartbeat import (
    DeltaInventory,
    FullInventory,
    Heartbeat,
    HeartbeatError,
    parse_heartbeat,
    parse_inventory,
)
from steering.snapshot import (
    BUCKETS,
    Announcement,
    ApplianceView,
    Location,
    PrefixMatch,
    Snapshot,
    Topology,
    has_bit,
    iter_bits,
)

if TYPE_CHECKING:
    from steering.catalog import Catalog, Title

__all__ = [
    "FLEET_STATE_SCHEMA",
    "Announcement",
    "ApplianceView",
    "Fleet",
    "FleetStateError",
    "HeartbeatError",
    "HeartbeatResult",
    "Location",
    "PrefixMatch",
    "Snapshot",
    "Topology",
]

FLEET_STATE_SCHEMA: Final = "oca.fleet-state"
FLEET_STATE_VERSION: Final = 1
_STALE: Final = 0
_FORGET: Final = 1


class FleetStateError(ValueError):
    """A saved fleet state cannot be loaded (the fleet stays as it was)."""


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    """What :meth:`Fleet.apply` did with one heartbeat.

    ``inventory`` is the answer for the appliance: ``send-full`` when this replica has
    no base for its inventory. ``applied`` is False for a retry or a late heartbeat
    (then ``requests`` is empty, so nothing is counted twice); ``detail`` says why.
    """

    appliance_id: str
    region: str
    inventory: Literal["ok", "send-full"]
    applied: bool
    detail: str
    requests: Mapping[str, int]


# --------------------------------------------------------------------------- fleet


class _Member:
    __slots__ = (
        "beats",
        "confirmed",
        "count",
        "epoch",
        "fresh",
        "gen",
        "has_inventory",
        "hb",
        "last_seen",
        "partial",
        "place",
        "slot",
        "stale_at",
    )

    def __init__(self, slot: int, hb: Heartbeat) -> None:
        self.slot = slot
        self.hb = hb
        self.place: tuple[object, ...] = ()
        self.last_seen = 0.0
        self.stale_at = 0.0
        self.fresh = False
        self.beats = 0
        self.epoch = ""
        self.gen = 0
        self.has_inventory = False
        self.confirmed = False  # the appliance's acknowledged base is this inventory
        self.count = 0
        self.partial: dict[str, int] = {}  # title -> objects held, for titles held in part


RequestsCallback = Callable[[str, str, Mapping[str, int]], None]


class Fleet:
    """Soft state of the appliance fleet (see the module docstring).

    ``missed_heartbeats`` times an appliance's own ``interval_seconds`` is how long it
    stays fresh after a heartbeat; ``forget_after_seconds`` after its last heartbeat it
    is dropped. Request counts of applied heartbeats (never of a retry) go to
    ``on_requests(appliance_id, region, counts)`` when given (called after the state is
    updated, outside the lock), and are summed per region for :meth:`drain_requests`
    when ``collect_requests`` is set; :attr:`HeartbeatResult.requests` carries them
    too. ``catalog`` is the catalog title holders follow until :meth:`snapshot` is
    given another. Thread-safe: one lock guards the mutable state (:meth:`save` may run
    in another thread); snapshots are immutable.
    """

    def __init__(
        self,
        *,
        missed_heartbeats: float = 3.0,
        forget_after_seconds: float = 3600.0,
        catalog: Catalog | None = None,
        on_requests: RequestsCallback | None = None,
        collect_requests: bool = False,
    ) -> None:
        if not (math.isfinite(missed_heartbeats) and missed_heartbeats > 0):
            raise ValueError(f"missed_heartbeats must be above 0, got {missed_heartbeats!r}")
        if not (math.isfinite(forget_after_seconds) and forget_after_seconds > 0):
            raise ValueError(f"forget_after_seconds must be above 0, got {forget_after_seconds!r}")
        self.missed_heartbeats = float(missed_heartbeats)
        self.forget_after_seconds = float(forget_after_seconds)
        self._on_requests = on_requests
        self._collect = collect_requests
        self._requests: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()
        self._members: dict[str, _Member] = {}
        self._slots: list[_Member | None] = []
        self._free: list[int] = []
        self._views: list[ApplianceView | None] = []
        self._eligible: list[bool] = []
        self._alive: list[bool] = []
        self._load: list[float] = []
        self._bitmaps: list[bytearray | None] = []
        self._owned_bitmaps: set[int] = set()
        self._buckets: list[dict[str, tuple[int, int]]] = [{} for _ in range(BUCKETS)]
        self._owned_buckets: set[int] = set(range(BUCKETS))
        self._intern: dict[str, int] = {}
        self._paths: list[str] = []
        self._oid_title: list[str | None] = []
        self._oid_title_owned = True
        self._title_len: dict[str, int] = {}
        self._title_oids: dict[str, tuple[int, ...]] = {}
        self._installed: dict[str, Title] = {}
        self._catalog: Catalog | None = None
        self._catalog_version = 0
        self._deadlines: list[tuple[float, int, int, int]] = []
        self._now = -math.inf
        self._topology: Topology | None = None
        self._topology_dirty = True
        self._snapshot: Snapshot | None = None
        self._dirty = True
        if catalog is not None:
            self._sync_catalog(catalog)

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, appliance_id: object) -> bool:
        return appliance_id in self._members

    # ------------------------------------------------------------------ heartbeats

    def apply(self, payload: object, now: float) -> HeartbeatResult:
        """Validate one decoded heartbeat and apply it as received at ``now``.

        Raises :class:`HeartbeatError` (naming the field) for a malformed one; the
        state is then unchanged.
        """
        hb = parse_heartbeat(payload)
        with self._lock:
            result = self._apply(hb, now)
        if result.requests and self._on_requests is not None:
            self._on_requests(result.appliance_id, result.region, result.requests)
        return result

    def _apply(self, hb: Heartbeat, now: float) -> HeartbeatResult:
        m = self._members.get(hb.appliance_id)
        if m is None:
            m = self._add_member(hb)
        elif hb.boot_id == m.hb.boot_id and hb.seq <= m.hb.seq:
            return HeartbeatResult(
                hb.appliance_id,
                m.hb.region,
                self._answer(m, hb.inventory),
                False,
                f"seq {hb.seq} of boot {hb.boot_id} is not after {m.hb.seq}: ignored",
                {},
            )
        place = (hb.site, hb.region, hb.lat, hb.lon, hb.prefixes)
        if place != m.place:
            m.place = place
            self._topology_dirty = True
        m.last_seen = now
        m.stale_at = now + self.missed_heartbeats * hb.interval_seconds
        m.beats += 1
        m.fresh = True
        heapq.heappush(self._deadlines, (m.stale_at, _STALE, m.slot, m.beats))

        answer: Literal["ok", "send-full"] = "ok"
        detail = ""
        inv = hb.inventory
        if inv is None:
            if not m.has_inventory:
                answer, detail = "send-full", "no inventory of this appliance: send a full one"
            elif not m.confirmed:
                answer = "send-full"
                detail = "inventory loaded from a saved state, generation unknown: send a full one"
        elif isinstance(inv, FullInventory):
            self._set_full(m, inv)
            m.confirmed = True
        elif m.has_inventory and m.epoch == inv.epoch and m.gen == inv.base_gen:
            self._apply_delta(m, inv)
            m.confirmed = True
        elif not (m.has_inventory and m.epoch == inv.epoch and m.gen == inv.gen):
            held = f"gen {m.gen} of epoch {m.epoch}" if m.has_inventory else "no inventory"
            answer = "send-full"
            detail = (
                f"delta from gen {inv.base_gen} of epoch {inv.epoch}, but this replica holds "
                f"{held}: send a full inventory"
            )
        m.hb = replace(hb, inventory=None, requests={}) if inv is not None or hb.requests else hb
        self._publish_member(m)
        if hb.requests and self._collect:
            counts = self._requests.setdefault(hb.region, {})
            for path, n in hb.requests.items():
                counts[path] = counts.get(path, 0) + n
        return HeartbeatResult(hb.appliance_id, hb.region, answer, True, detail, hb.requests)

    def _answer(
        self, m: _Member, inv: FullInventory | DeltaInventory | None
    ) -> Literal["ok", "send-full"]:
        """The inventory answer to a heartbeat that is not applied (a retry)."""
        if not m.has_inventory or (inv is None and not m.confirmed):
            return "send-full"
        if inv is None or (inv.epoch == m.epoch and inv.gen <= m.gen):
            return "ok"
        return "send-full"

    def _add_member(self, hb: Heartbeat) -> _Member:
        if self._free:
            slot = heapq.heappop(self._free)
        else:
            slot = len(self._slots)
            self._slots.append(None)
            self._views.append(None)
            self._eligible.append(False)
            self._alive.append(False)
            self._load.append(0.0)
            self._bitmaps.append(None)
        m = _Member(slot, hb)
        self._slots[slot] = m
        self._members[hb.appliance_id] = m
        self._topology_dirty = True
        return m

    def _publish_member(self, m: _Member) -> None:
        hb = m.hb
        slot = m.slot
        self._views[slot] = ApplianceView(
            id=hb.appliance_id,
            site=hb.site,
            region=hb.region,
            lat=hb.lat,
            lon=hb.lon,
            urls=hb.urls,
            https_urls=hb.https_urls,
            prefixes=hb.prefixes,
            state=hb.state,
            reasons=hb.reasons,
            draining=hb.draining,
            serving=hb.serving,
            load_fraction=hb.load_fraction,
            connections=hb.connections,
            capacity_bytes=hb.capacity_bytes,
            used_bytes=hb.used_bytes,
            last_seen=m.last_seen,
            interval_seconds=hb.interval_seconds,
            stale_after_seconds=self.missed_heartbeats * hb.interval_seconds,
            fresh=m.fresh,
            objects=m.count,
            heartbeat=hb,
        )
        alive = m.fresh and hb.state != "unhealthy"
        self._alive[slot] = alive
        self._eligible[slot] = alive and not hb.draining and hb.serving
        self._load[slot] = hb.load_fraction
        self._dirty = True

    # ------------------------------------------------------------------ inventories

    def _intern_path(self, path: str) -> int:
        oid = len(self._paths)
        self._paths.append(path)
        self._intern[path] = oid
        self._oid_title.append(None)
        return oid

    def _bucket(self, title: str) -> dict[str, tuple[int, int]]:
        """The writable bucket of ``title``'s masks (copied if a snapshot shares it)."""
        b = hash(title) & (BUCKETS - 1)
        if b not in self._owned_buckets:
            self._buckets[b] = dict(self._buckets[b])
            self._owned_buckets.add(b)
        return self._buckets[b]

    def _title_add(self, m: _Member, oid: int, bit: int) -> None:
        title = self._oid_title[oid]
        if title is None:
            return
        bucket = self._bucket(title)
        complete, anyone = bucket.get(title, (0, 0))
        held = m.partial.get(title, 0) + 1
        if held >= self._title_len[title]:
            m.partial.pop(title, None)
            complete |= bit
        else:
            m.partial[title] = held
        bucket[title] = (complete, anyone | bit)

    def _title_remove(self, m: _Member, oid: int, bit: int) -> None:
        title = self._oid_title[oid]
        if title is None:
            return
        bucket = self._bucket(title)
        complete, anyone = bucket.get(title, (0, 0))
        if complete & bit:
            complete ^= bit
            held = self._title_len[title] - 1
        else:
            held = m.partial.get(title, 0) - 1
        if held <= 0:
            m.partial.pop(title, None)
            anyone &= ~bit
        else:
            m.partial[title] = held
        if complete or anyone:
            bucket[title] = (complete, anyone)
        else:
            bucket.pop(title, None)

    def _set_full(self, m: _Member, inv: FullInventory) -> None:
        """Replace the appliance's set; title masks are updated once per title touched."""
        get = self._intern.get
        oids = list(map(get, inv.objects))
        if None in oids:  # paths seen for the first time
            for i, path in enumerate(inv.objects):
                if oids[i] is None:
                    oid = get(path)
                    oids[i] = self._intern_path(path) if oid is None else oid
        new = cast("set[int]", set(oids))
        slot = m.slot
        bit = 1 << slot
        oid_title = self._oid_title
        old_bitmap = self._bitmaps[slot]
        if old_bitmap:  # withdraw the old set's contributions
            for title in {oid_title[oid] for oid in iter_bits(old_bitmap)}:
                if title is not None:
                    bucket = self._bucket(title)
                    complete, anyone = bucket.get(title, (0, 0))
                    complete &= ~bit
                    anyone &= ~bit
                    if complete or anyone:
                        bucket[title] = (complete, anyone)
                    else:
                        bucket.pop(title, None)
        m.partial = {}
        bitmap = bytearray((len(self._paths) + 7) >> 3)
        for oid in new:
            bitmap[oid >> 3] |= 1 << (oid & 7)
        counts = Counter(map(oid_title.__getitem__, new))
        counts.pop(None, None)
        title_len = self._title_len
        for title, held in counts.items():
            assert title is not None
            bucket = self._bucket(title)
            complete, anyone = bucket.get(title, (0, 0))
            if held >= title_len[title]:
                complete |= bit
            else:
                m.partial[title] = held
            bucket[title] = (complete, anyone | bit)
        self._bitmaps[slot] = bitmap
        self._owned_bitmaps.add(slot)
        m.epoch, m.gen, m.has_inventory, m.count = inv.epoch, inv.gen, True, len(new)

    def _writable_bitmap(self, slot: int) -> bytearray:
        bitmap = self._bitmaps[slot]
        if bitmap is None or slot not in self._owned_bitmaps:
            bitmap = bytearray(bitmap) if bitmap is not None else bytearray()
            self._bitmaps[slot] = bitmap
            self._owned_bitmaps.add(slot)
        return bitmap

    def _apply_delta(self, m: _Member, inv: DeltaInventory) -> None:
        bitmap = self._writable_bitmap(m.slot)
        bit = 1 << m.slot
        intern = self._intern
        for path in inv.removed:
            oid = intern.get(path)
            if oid is not None and has_bit(bitmap, oid):
                bitmap[oid >> 3] &= ~(1 << (oid & 7))
                m.count -= 1
                self._title_remove(m, oid, bit)
        for path in inv.added:
            oid = intern.get(path)
            if oid is None:
                oid = self._intern_path(path)
            i = oid >> 3
            if i >= len(bitmap):
                bitmap.extend(bytes(max(i + 1 - len(bitmap), len(bitmap) >> 3)))
            elif bitmap[i] >> (oid & 7) & 1:
                continue
            bitmap[i] |= 1 << (oid & 7)
            m.count += 1
            self._title_add(m, oid, bit)
        m.gen = inv.gen

    # ------------------------------------------------------------------ catalog

    def _sync_catalog(self, catalog: Catalog | None) -> None:
        """Recount title holders for the titles that changed since the last catalog."""
        if catalog is self._catalog and (
            catalog is None or catalog.version == self._catalog_version
        ):
            return
        titles: Mapping[str, Title] = catalog.titles if catalog is not None else {}
        installed = self._installed
        remove: list[str] = []
        add: list[str] = []
        for tid, old in installed.items():
            new = titles.get(tid)
            if new is None:
                remove.append(tid)
            elif new is not old:
                if new == old:
                    installed[tid] = new
                else:
                    remove.append(tid)
                    add.append(tid)
        add.extend(tid for tid in titles if tid not in installed)
        holding = sum(1 for m in self._members.values() if m.has_inventory)
        incremental = holding * (sum(len(titles[t].objects) for t in add) + len(remove))
        full = sum(m.count for m in self._members.values()) + sum(
            len(t.objects) for t in titles.values()
        )
        if incremental <= full:
            if remove or add:
                self._own_oid_title()
            for tid in remove:
                self._uninstall(tid)
            for tid in add:
                self._install(tid, titles[tid])
        else:
            self._recount(titles)
        self._catalog = catalog
        self._catalog_version = catalog.version if catalog is not None else 0
        self._dirty = True

    def _own_oid_title(self) -> None:
        if not self._oid_title_owned:
            self._oid_title = list(self._oid_title)
            self._oid_title_owned = True

    def _uninstall(self, tid: str) -> None:
        for oid in self._title_oids.pop(tid, ()):
            if self._oid_title[oid] == tid:
                self._oid_title[oid] = None
        self._title_len.pop(tid, None)
        self._installed.pop(tid, None)
        self._bucket(tid).pop(tid, None)
        for m in self._members.values():
            m.partial.pop(tid, None)

    def _install(self, tid: str, title: Title) -> None:
        intern = self._intern
        oids = []
        for obj in title.objects:
            oid = intern.get(obj.path)
            oids.append(self._intern_path(obj.path) if oid is None else oid)
        oids = sorted(set(oids))
        for oid in oids:
            self._oid_title[oid] = tid
        self._title_len[tid] = len(oids)
        self._title_oids[tid] = tuple(oids)
        self._installed[tid] = title
        if not oids:
            return
        complete = anyone = 0
        for m in self._members.values():
            bitmap = self._bitmaps[m.slot]
            if bitmap is None:
                continue
            held = sum(1 for oid in oids if has_bit(bitmap, oid))
            if not held:
                continue
            anyone |= 1 << m.slot
            if held == len(oids):
                complete |= 1 << m.slot
            else:
                m.partial[tid] = held
        if anyone:
            self._bucket(tid)[tid] = (complete, anyone)

    def _recount(self, titles: Mapping[str, Title]) -> None:
        """Rebuild every title's holders from the inventories (a large catalog change)."""
        self._oid_title = [None] * len(self._paths)
        self._oid_title_owned = True
        self._title_len, self._title_oids, self._installed = {}, {}, {}
        intern = self._intern
        for tid, title in titles.items():
            oids = set()
            for obj in title.objects:
                oid = intern.get(obj.path)
                oids.add(self._intern_path(obj.path) if oid is None else oid)
            for oid in oids:
                self._oid_title[oid] = tid
            self._title_len[tid] = len(oids)
            self._title_oids[tid] = tuple(sorted(oids))
            self._installed[tid] = title
        masks: dict[str, list[int]] = {}
        oid_title, title_len = self._oid_title, self._title_len
        for m in self._members.values():
            m.partial = {}
            bitmap = self._bitmaps[m.slot]
            if bitmap is None:
                continue
            counts: dict[str, int] = {}
            for oid in iter_bits(bitmap):
                owner = oid_title[oid] if oid < len(oid_title) else None
                if owner is not None:
                    counts[owner] = counts.get(owner, 0) + 1
            bit = 1 << m.slot
            for tid, held in counts.items():
                entry = masks.get(tid)
                if entry is None:
                    entry = masks[tid] = [0, 0]
                entry[1] |= bit
                if held >= title_len[tid]:
                    entry[0] |= bit
                else:
                    m.partial[tid] = held
        self._buckets = [{} for _ in range(BUCKETS)]
        self._owned_buckets = set(range(BUCKETS))
        for tid, (complete, anyone) in masks.items():
            self._buckets[hash(tid) & (BUCKETS - 1)][tid] = (complete, anyone)

    # ------------------------------------------------------------------ time

    def _advance(self, now: float) -> None:
        """Apply the freshness and forget deadlines up to ``now``."""
        if now < self._now:
            self._rewind(now)
        self._now = now
        heap = self._deadlines
        while heap and heap[0][0] < now:
            _, kind, slot, beats = heapq.heappop(heap)
            m = self._slots[slot]
            if m is None or m.beats != beats:
                continue  # superseded by a later heartbeat, or forgotten
            if kind == _STALE:
                if m.fresh:
                    m.fresh = False
                    self._publish_member(m)
                    forget_at = m.last_seen + self.forget_after_seconds
                    heapq.heappush(heap, (forget_at, _FORGET, slot, beats))
            else:
                self._forget(m)

    def _rewind(self, now: float) -> None:
        """The clock went back: recompute every freshness and deadline from scratch."""
        self._deadlines = []
        for m in self._members.values():
            fresh = now <= m.stale_at
            if fresh != m.fresh:
                m.fresh = fresh
                self._publish_member(m)
            due = m.stale_at if fresh else m.last_seen + self.forget_after_seconds
            self._deadlines.append((due, _STALE if fresh else _FORGET, m.slot, m.beats))
        heapq.heapify(self._deadlines)

    def _forget(self, m: _Member) -> None:
        slot = m.slot
        bitmap = self._bitmaps[slot]
        if bitmap:
            bit = 1 << slot
            oid_title = self._oid_title
            for tid in {oid_title[oid] for oid in iter_bits(bitmap)}:
                if tid is None:
                    continue
                bucket = self._bucket(tid)
                complete, anyone = bucket.get(tid, (0, 0))
                complete &= ~bit
                anyone &= ~bit
                if complete or anyone:
                    bucket[tid] = (complete, anyone)
                else:
                    bucket.pop(tid, None)
        del self._members[m.hb.appliance_id]
        self._slots[slot] = None
        self._views[slot] = None
        self._eligible[slot] = self._alive[slot] = False
        self._load[slot] = 0.0
        self._bitmaps[slot] = None
        self._owned_bitmaps.discard(slot)
        heapq.heappush(self._free, slot)
        self._topology_dirty = True
        self._dirty = True

    # ------------------------------------------------------------------ snapshots

    def snapshot(self, now: float, catalog: Catalog | None = None) -> Snapshot:
        """The fleet as of ``now``; title holders follow ``catalog``'s titles (None: the
        catalog given last, to this method or the constructor). The same object is
        returned until a heartbeat, a catalog change or a freshness deadline."""
        with self._lock:
            if catalog is not None:
                self._sync_catalog(catalog)
            self._advance(now)
            snap = self._snapshot
            if snap is not None and not self._dirty:
                return snap
            topology = self._topology
            if topology is None or self._topology_dirty:
                members = [(m.slot, m.hb) for m in self._members.values()]
                topology = self._topology = Topology(members, len(self._slots))
                self._topology_dirty = False
            snap = Snapshot(
                now,
                self._catalog,
                topology,
                list(self._views),
                list(self._eligible),
                list(self._alive),
                list(self._load),
                list(self._bitmaps),
                tuple(self._buckets),
                self._intern,
                self._paths,
                self._oid_title,
            )
            self._owned_bitmaps = set()
            self._owned_buckets = set()
            self._oid_title_owned = False
            self._snapshot = snap
            self._dirty = False
            return snap

    def drain_requests(self) -> dict[str, dict[str, int]]:
        """Request counts per region and path since the last call (``collect_requests``)."""
        with self._lock:
            out, self._requests = self._requests, {}
            return out

    # ------------------------------------------------------------------ warm start

    def save(self, path: str) -> None:
        """Write the fleet's state to ``path`` atomically (temp file, fsync, rename)."""
        with self._lock:
            rows = [
                (
                    m.hb,
                    m.last_seen,
                    m.epoch,
                    m.gen,
                    m.has_inventory,
                    bytes(self._bitmaps[m.slot] or b""),
                )
                for m in sorted(self._members.values(), key=lambda m: m.hb.appliance_id)
            ]
            paths = self._paths  # append-only: safe to read after the lock
        out_paths: list[str] = []
        renumber: dict[int, int] = {}
        appliances = []
        for hb, last_seen, epoch, gen, has_inventory, bitmap in rows:
            inventory = None
            if has_inventory:
                objects = []
                for oid in iter_bits(bitmap):
                    new = renumber.get(oid)
                    if new is None:
                        new = renumber[oid] = len(out_paths)
                        out_paths.append(paths[oid])
                    objects.append(new)
                inventory = {"epoch": epoch, "gen": gen, "objects": objects}
            appliances.append(
                {"heartbeat": hb.to_json(), "last_seen": last_seen, "inventory": inventory}
            )
        data = orjson.dumps(
            {
                "schema": FLEET_STATE_SCHEMA,
                "version": FLEET_STATE_VERSION,
                "paths": out_paths,
                "appliances": appliances,
            }
        )
        write_atomic(path, data, prefix=".fleet-")

    def load(self, path: str, now: float) -> int:
        """Load a state written by :meth:`save` into this (empty) fleet; returns how
        many appliances it knows. Appliances keep their ``last_seen``, so they go stale
        and are forgotten as if no restart had happened. Raises
        :class:`FleetStateError` for a corrupt file (nothing is loaded) and
        :class:`OSError` when it cannot be read."""
        with open(path, "rb") as f:
            raw = f.read()
        rows = _parse_state(raw, path)
        with self._lock:
            if self._members:
                raise FleetStateError(f"{path}: the fleet already knows appliances")
            for hb, last_seen in rows:
                self._apply(hb, last_seen)
                # The appliance may have moved past the saved generation and send no
                # inventory ("unchanged"): only a full one or a delta from exactly the
                # saved generation confirms it.
                self._members[hb.appliance_id].confirmed = False
            self._advance(now)
            return len(self._members)


def _parse_state(raw: bytes, path: str) -> list[tuple[Heartbeat, float]]:
    def bad(name: str, detail: str) -> FleetStateError:
        return FleetStateError(f"{path}: {name}: {detail}")

    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad("file", f"not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("schema") != FLEET_STATE_SCHEMA:
        raise bad("schema", f"expected {FLEET_STATE_SCHEMA!r}")
    if doc.get("version") != FLEET_STATE_VERSION:
        raise bad("version", f"expected {FLEET_STATE_VERSION}")
    paths = doc.get("paths")
    if not isinstance(paths, list) or not all(type(p) is str and p.startswith("/") for p in paths):
        raise bad("paths", "expected a list of paths starting with '/'")
    items = doc.get("appliances")
    if not isinstance(items, list):
        raise bad("appliances", "expected a list")
    rows = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        at = f"appliances[{i}]"
        if not isinstance(item, dict) or set(item) != {"heartbeat", "last_seen", "inventory"}:
            raise bad(at, "expected an object with heartbeat, last_seen and inventory")
        try:
            hb = parse_heartbeat(item["heartbeat"])
        except HeartbeatError as exc:
            raise bad(f"{at}.heartbeat.{exc.field}", exc.detail) from None
        if hb.inventory is not None or hb.requests:
            raise bad(f"{at}.heartbeat", "carries an inventory or requests")
        if hb.appliance_id in seen:
            raise bad(f"{at}.heartbeat.appliance.id", f"{hb.appliance_id} appears twice")
        seen.add(hb.appliance_id)
        last_seen = item["last_seen"]
        if isinstance(last_seen, bool) or not isinstance(last_seen, int | float):
            raise bad(f"{at}.last_seen", "expected a number")
        if not math.isfinite(last_seen):
            raise bad(f"{at}.last_seen", "expected a finite number")
        inv = item["inventory"]
        if inv is not None:
            if not isinstance(inv, dict) or set(inv) != {"epoch", "gen", "objects"}:
                raise bad(f"{at}.inventory", "expected null or {epoch, gen, objects}")
            objects = inv["objects"]
            if (
                not isinstance(objects, list)
                or not set(map(type, objects)) <= {int}
                or (objects and not 0 <= min(objects) <= max(objects) < len(paths))
            ):
                raise bad(f"{at}.inventory.objects", "expected indexes into paths")
            try:  # the paths were checked once above: only epoch and gen are left
                shell = parse_inventory({**inv, "kind": "full", "objects": []})
            except HeartbeatError as exc:
                raise bad(f"{at}.{exc.field}", exc.detail) from None
            assert isinstance(shell, FullInventory)
            objs = tuple(map(paths.__getitem__, objects))
            hb = replace(hb, inventory=FullInventory(shell.epoch, shell.gen, objs))
        rows.append((hb, float(last_seen)))
    return rows
