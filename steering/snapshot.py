"""Fleet snapshots: the immutable view of the fleet that ranking and handlers read.

Theory of operation
-------------------
A :class:`Snapshot` is published by :class:`steering.fleet.Fleet` and never changes
afterwards, so request handlers read it without locks while heartbeats keep arriving.
It is cheap to publish because it shares, copy-on-write, what the fleet keeps:

- per appliance *slot* (a small integer), the :class:`ApplianceView` and the flags
  ranking tests per candidate (``eligible``, ``alive``, ``load``);
- the inventories, one bitmap per slot over interned object ids;
- per title, two bitmasks over slots (holders of every object, of at least one), in
  buckets of a fixed count keyed by the title id's hash;
- the :class:`Topology`: ids, sites, locations and announced prefixes, which changes
  only when an appliance joins, leaves or moves, and on which ranking caches its
  per-location and per-title orders.

Announced prefixes sit in one dict per prefix length (IPv4 and IPv6 apart): the
longest match of an address probes the lengths present, longest first, with the
address masked to each, as a router's FIB does with a hash per length (Waldvogel et
al., "Scalable high speed IP routing lookups", SIGCOMM 1997, without the binary
search: a fleet announces few distinct lengths).

Slots are internal: replicas fed the same heartbeats in another order may number
appliances differently, and nothing a snapshot answers depends on the numbering.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from steering.heartbeat import HealthState, Heartbeat, IPNetwork

if TYPE_CHECKING:
    from steering.catalog import Catalog

__all__ = [
    "BUCKETS",
    "Announcement",
    "ApplianceView",
    "IPAddress",
    "Location",
    "PrefixMatch",
    "Snapshot",
    "Topology",
    "as_address",
    "has_bit",
    "iter_bits",
    "mask_members",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

BUCKETS: Final = 1024  # title-mask buckets (a power of two)
_BITS: Final = tuple(tuple(b for b in range(8) if v >> b & 1) for v in range(256))
_NONZERO: Final = re.compile(rb"[^\x00]+")


# --------------------------------------------------------------------------- bits


def iter_bits(data: bytes | bytearray) -> Iterator[int]:
    """The positions of the set bits of a little-endian bitmap, in increasing order."""
    bits = _BITS
    for run in _NONZERO.finditer(data):
        base = run.start() << 3
        for byte in run.group():
            for b in bits[byte]:
                yield base + b
            base += 8


def mask_members(mask: int) -> list[int]:
    """The positions of the set bits of ``mask``, in increasing order."""
    if not mask:
        return []
    return list(iter_bits(mask.to_bytes((mask.bit_length() + 7) >> 3, "little")))


def has_bit(bitmap: bytearray | None, oid: int) -> bool:
    if bitmap is None:
        return False
    i = oid >> 3
    return i < len(bitmap) and bool(bitmap[i] >> (oid & 7) & 1)


# --------------------------------------------------------------------------- views


@dataclass(frozen=True, slots=True)
class ApplianceView:
    """One appliance as of a snapshot: its last heartbeat and what steering made of it."""

    id: str
    site: str
    region: str
    lat: float | None
    lon: float | None
    urls: tuple[str, ...]
    https_urls: tuple[str, ...]
    prefixes: tuple[IPNetwork, ...]
    state: HealthState
    reasons: tuple[str, ...]
    draining: bool
    serving: bool
    load_fraction: float
    connections: int
    capacity_bytes: int
    used_bytes: int
    last_seen: float
    interval_seconds: float
    stale_after_seconds: float
    fresh: bool  # at the snapshot's time
    objects: int  # inventory size
    heartbeat: Heartbeat  # the last one applied, without its inventory and requests


@dataclass(frozen=True, slots=True)
class Location:
    """Where appliances stand: those with equal site, region and coordinates share one."""

    site: str
    region: str
    lat: float | None
    lon: float | None


class Announcement:
    """One announced prefix and the slots of the appliances announcing it (by id)."""

    __slots__ = ("network", "slots")

    def __init__(self, network: IPNetwork, slots: tuple[int, ...]) -> None:
        self.network = network
        self.slots = slots


@dataclass(frozen=True, slots=True)
class PrefixMatch:
    """The longest announced prefix containing an address, and who announces it."""

    network: IPNetwork
    appliances: tuple[str, ...]


class Topology:
    """Who and where the appliances are: ids, sites, locations, announced prefixes.

    Lists are indexed by appliance slot (``None`` or empty for a free slot). Shared by
    every snapshot until an appliance joins, leaves or changes site, region,
    coordinates or prefixes.
    """

    __slots__ = (
        "__weakref__",
        "_v4",
        "_v6",
        "id_bytes",
        "ids",
        "index",
        "loc_members",
        "loc_of",
        "locs",
        "multi_loc_sites",
        "order",
        "region_of",
        "site_locs",
        "site_of",
        "sites",
    )

    def __init__(self, members: Iterable[tuple[int, Heartbeat]], size: int) -> None:
        ranked = sorted(members, key=lambda m: m[1].appliance_id)
        self.ids: list[str | None] = [None] * size
        self.id_bytes: list[bytes] = [b""] * size
        self.site_of: list[str] = [""] * size
        self.region_of: list[str] = [""] * size
        self.loc_of: list[int] = [-1] * size
        self.index: dict[str, int] = {}
        self.order: tuple[int, ...] = tuple(slot for slot, _ in ranked)
        locs: dict[Location, int] = {}
        loc_members: list[list[int]] = []
        sites: dict[str, list[int]] = {}
        announced: dict[IPNetwork, list[int]] = {}
        for slot, hb in ranked:
            self.ids[slot] = hb.appliance_id
            self.id_bytes[slot] = hb.appliance_id.encode()
            self.index[hb.appliance_id] = slot
            self.site_of[slot] = hb.site
            self.region_of[slot] = hb.region
            where = Location(hb.site, hb.region, hb.lat, hb.lon)
            loc = locs.setdefault(where, len(locs))
            if loc == len(loc_members):
                loc_members.append([])
            loc_members[loc].append(slot)
            self.loc_of[slot] = loc
            sites.setdefault(hb.site, []).append(slot)
            for net in hb.prefixes:
                announced.setdefault(net, []).append(slot)
        self.locs: tuple[Location, ...] = tuple(locs)
        self.loc_members: tuple[tuple[int, ...], ...] = tuple(tuple(m) for m in loc_members)
        self.sites: dict[str, tuple[int, ...]] = {s: tuple(m) for s, m in sorted(sites.items())}
        self.site_locs: dict[str, tuple[int, ...]] = {
            s: tuple(sorted({self.loc_of[i] for i in m})) for s, m in self.sites.items()
        }
        # sites whose appliances report different regions or coordinates (rare)
        self.multi_loc_sites = frozenset(s for s, locs in self.site_locs.items() if len(locs) > 1)
        v4: dict[int, dict[int, Announcement]] = {}
        v6: dict[int, dict[int, Announcement]] = {}
        for net, slots in announced.items():
            table, width = (v4, 32) if net.version == 4 else (v6, 128)
            key = int(net.network_address) >> (width - net.prefixlen)
            table.setdefault(net.prefixlen, {})[key] = Announcement(net, tuple(slots))
        self._v4 = tuple(sorted(v4.items(), reverse=True))
        self._v6 = tuple(sorted(v6.items(), reverse=True))

    def announcements(self, addr: IPAddress) -> list[Announcement]:
        """Every announced prefix containing ``addr``, longest first.

        Announced prefixes containing one address are nested, so they are also every
        announced prefix containing the first (longest) of them.
        """
        table, width = (self._v4, 32) if addr.version == 4 else (self._v6, 128)
        value = int(addr)
        found = []
        for plen, nets in table:
            hit = nets.get(value >> (width - plen))
            if hit is not None:
                found.append(hit)
        return found

    def longest(self, addr: IPAddress) -> Announcement | None:
        """The longest announced prefix containing ``addr``."""
        table, width = (self._v4, 32) if addr.version == 4 else (self._v6, 128)
        value = int(addr)
        for plen, nets in table:
            hit = nets.get(value >> (width - plen))
            if hit is not None:
                return hit
        return None


def as_address(addr: str | IPAddress) -> IPAddress:
    """``addr`` as an address; an IPv4-mapped IPv6 address becomes the IPv4 one."""
    if isinstance(addr, str):
        addr = ipaddress.ip_address(addr)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


# --------------------------------------------------------------------------- snapshot


class Snapshot:
    """The fleet as of ``taken_at``: immutable, safe to read from any thread.

    Besides the documented queries it carries the per-slot arrays ranking reads
    (``views``, ``eligible``, ``alive``, ``load`` and ``topology``): ``eligible`` is
    fresh, not unhealthy, not draining and serving; ``alive`` is fresh and not
    unhealthy (able to serve its site-mates).
    """

    __slots__ = (
        "_appliances",
        "_bitmaps",
        "_buckets",
        "_intern",
        "_oid_title",
        "_paths",
        "alive",
        "catalog",
        "catalog_version",
        "eligible",
        "load",
        "taken_at",
        "topology",
        "views",
    )

    def __init__(
        self,
        taken_at: float,
        catalog: Catalog | None,
        topology: Topology,
        views: list[ApplianceView | None],
        eligible: list[bool],
        alive: list[bool],
        load: list[float],
        bitmaps: list[bytearray | None],
        buckets: tuple[dict[str, tuple[int, int]], ...],
        intern: Mapping[str, int],
        paths: list[str],
        oid_title: list[str | None],
    ) -> None:
        self.taken_at = taken_at
        self.catalog = catalog
        self.catalog_version = catalog.version if catalog is not None else 0
        self.topology = topology
        self.views = views
        self.eligible = eligible
        self.alive = alive
        self.load = load
        self._bitmaps = bitmaps
        self._buckets = buckets
        self._intern = intern
        self._paths = paths  # append-only, shared with the fleet: oid -> path
        self._oid_title = oid_title
        self._appliances: Mapping[str, ApplianceView] | None = None

    @property
    def appliances(self) -> Mapping[str, ApplianceView]:
        """Every known appliance (fresh or not), by id, sorted by id."""
        if self._appliances is None:
            views = self.views
            by_id = {}
            for slot in self.topology.order:
                view = views[slot]
                assert view is not None
                by_id[view.id] = view
            self._appliances = MappingProxyType(by_id)
        return self._appliances

    def __len__(self) -> int:
        return len(self.topology.order)

    def holds(self, appliance_id: str, path: str) -> bool:
        """Whether the appliance's last inventory lists ``path``."""
        slot = self.topology.index.get(appliance_id)
        oid = self._intern.get(path)
        return slot is not None and oid is not None and has_bit(self._bitmaps[slot], oid)

    def title_masks(self, title_id: str) -> tuple[int, int]:
        """Bitmasks over slots: (holders of every object of the title, of at least one)."""
        return self._buckets[hash(title_id) & (BUCKETS - 1)].get(title_id, (0, 0))

    def object_mask(self, path: str) -> tuple[str | None, int]:
        """The catalog title of ``path`` (None when not a catalog object) and the
        bitmask of the slots holding it."""
        oid = self._intern.get(path)
        if oid is None:
            return None, 0
        title = self._oid_title[oid] if oid < len(self._oid_title) else None
        bitmaps = self._bitmaps
        mask = 0
        if title is not None:
            complete, anyone = self.title_masks(title)
            mask = complete
            for slot in mask_members(anyone & ~complete):
                if has_bit(bitmaps[slot], oid):
                    mask |= 1 << slot
        else:
            for slot in self.topology.order:
                if has_bit(bitmaps[slot], oid):
                    mask |= 1 << slot
        return title, mask

    def _ids(self, mask: int) -> frozenset[str]:
        ids = self.topology.ids
        return frozenset(i for i in (ids[s] for s in mask_members(mask)) if i is not None)

    def holders(self, path: str) -> frozenset[str]:
        """The appliances whose inventory lists ``path``."""
        return self._ids(self.object_mask(path)[1])

    def title_holders(self, title_id: str) -> frozenset[str]:
        """The appliances holding every object of the title (as the catalog lists it)."""
        return self._ids(self.title_masks(title_id)[0])

    def inventory(self, appliance_id: str) -> frozenset[str]:
        """Every path the appliance's last inventory lists."""
        slot = self.topology.index.get(appliance_id)
        bitmap = self._bitmaps[slot] if slot is not None else None
        if bitmap is None:
            return frozenset()
        paths = self._paths
        return frozenset(paths[oid] for oid in iter_bits(bitmap))

    def site_members(self, site: str) -> tuple[str, ...]:
        """The appliances of ``site``, by id."""
        ids = self.topology.ids
        return tuple(i for i in (ids[s] for s in self.topology.sites.get(site, ())) if i)

    def longest_match(self, addr: str | IPAddress) -> PrefixMatch | None:
        """The longest prefix announced by any known appliance that contains ``addr``."""
        found = self.topology.announcements(as_address(addr))
        if not found:
            return None
        ids = self.topology.ids
        return PrefixMatch(
            found[0].network, tuple(i for i in map(ids.__getitem__, found[0].slots) if i)
        )
