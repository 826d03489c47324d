"""Ranking: which appliances a client should use for a title, best first, with reasons.

Theory of operation
-------------------
:func:`rank` is a pure function of a fleet :class:`~steering.snapshot.Snapshot`, the
client's address, the title (or one object) and a :class:`RankPolicy`: replicas fed the
same heartbeats give the same answer.

**Candidates** are the appliances that are fresh, not unhealthy, not draining, serving,
and hold every object of the title (or the object asked for); with ``site_peering``
also those with a site-mate that holds it and is fresh and not unhealthy (the candidate
fetches it from that peer on a miss). With ``allow_miss``, when no such candidate
exists, every eligible appliance is one: it will fetch from upstream.

**Order.** Candidates sort on this key, each element breaking the ties of the ones
before it:

1. not overloaded before overloaded (``load_fraction >= overload_threshold``): an
   overloaded appliance is *passed over*, still listed after every other one;
2. the longest prefix the candidate announces that contains the client, longer first
   and none last: the ISP's own appliance for its subscribers, as Open Connect does
   with BGP-announced prefixes;
3. same site as the client's *home*, then same region: the home is the site(s) and
   region(s) of the appliances announcing the longest prefix containing the client,
   among all known appliances (unhealthy or stale ones too: where the client is does
   not depend on who is up);
4. great-circle distance (haversine) from the home's coordinates, nearer first,
   unknown last;
5. holder before peering-only candidate;
6. rendezvous (highest random weight) of (title, appliance), highest first, with the
   weight of :mod:`steering.hashing`: a title concentrates on the same few appliances
   of a site, the ones the fill plan put it on, so their caches stay hot;
7. appliance id, so the order is total.

**Speed.** A decision never scans the fleet (explain mode does). Keys 3 and 4 depend
only on the appliance's *location* (site, region, coordinates) and the client's home,
so per home the locations are ordered once into groups of equal (tier, distance),
cached on the snapshot's :class:`~steering.snapshot.Topology` (shared by snapshots until
an appliance joins, leaves or moves). Per title, an entry holds the locations of its
holders and their site-mates and, filled in as decisions visit them, each location's
candidates in (holder first, weight, id) order; entries are kept for the most
recently used titles and checked against the title's holder mask, so a change in who
holds it is never served stale. A decision takes the few prefix-matched candidates,
then walks the location groups nearest first, skipping ineligible appliances and
setting overloaded ones aside, until ``n`` are found. Explain mode computes the key of
every known appliance directly and sorts; it is the reference the fast path is tested
against, and lists every appliance not chosen with its reason.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Final, NamedTuple

from steering.heartbeat import IPNetwork
from steering.snapshot import (
    Announcement,
    ApplianceView,
    Location,
    Snapshot,
    Topology,
    as_address,
)
from steering.snapshot import mask_members as _mask_members

__all__ = [
    "DEFAULT_POLICY",
    "Choice",
    "Exclusion",
    "Home",
    "RankContext",
    "RankPolicy",
    "Ranking",
    "great_circle_km",
    "rank",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_EARTH_RADIUS_KM: Final = 6371.0088
_MAX_ENTRIES: Final = 32768  # titles whose candidates are cached per topology (LRU)
_MAX_ORDERS: Final = 4096  # location groups whose order is cached per title
_NO_MATCH: Final[Mapping[int, IPNetwork]] = {}


@dataclass(frozen=True, slots=True)
class RankPolicy:
    """How many appliances to return, and the rules that are configurable."""

    n: int = 10
    overload_threshold: float = 0.85
    site_peering: bool = True
    allow_miss: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be an integer >= 1, got {self.n!r}")
        if not (math.isfinite(self.overload_threshold) and self.overload_threshold > 0):
            raise ValueError(
                f"overload_threshold must be a number above 0, got {self.overload_threshold!r}"
            )


DEFAULT_POLICY: Final = RankPolicy()


@dataclass(frozen=True, slots=True)
class Home:
    """Where the client is: the longest announced prefix containing it and who
    announces it (empty when no appliance's prefix contains the client)."""

    prefix: IPNetwork | None
    appliances: tuple[str, ...]
    sites: tuple[str, ...]
    regions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Exclusion:
    """A known appliance that was not chosen, and why."""

    appliance_id: str
    reason: str


class Choice(NamedTuple):
    """A chosen appliance. ``holder`` is False for a peering-only or miss candidate;
    ``prefix`` is its longest announced prefix containing the client; ``reasons``
    says why it is where it is (computed on demand from ``context``, which the
    ranking shares among its choices).

    A named tuple rather than a dataclass: a decision builds up to ``n`` of them, and a
    tuple is built in half the time of a frozen dataclass.
    """

    appliance: ApplianceView
    holder: bool
    prefix: IPNetwork | None
    overloaded: bool
    context: RankContext

    @property
    def reasons(self) -> tuple[str, ...]:
        return self.context.reasons(self)

    def __repr__(self) -> str:
        return (
            f"Choice(appliance={self.appliance.id!r}, holder={self.holder}, "
            f"prefix={self.prefix}, overloaded={self.overloaded})"
        )


@dataclass(frozen=True, slots=True)
class Ranking:
    """The answer: ``chosen`` best first (at most ``n``); ``excluded`` (explain mode
    only) every other known appliance with its reason; ``miss`` when no eligible
    appliance holds the title and ``allow_miss`` let every eligible one be a candidate."""

    client: IPAddress
    title: str | None
    path: str | None
    home: Home
    chosen: tuple[Choice, ...]
    excluded: tuple[Exclusion, ...] = ()
    miss: bool = False


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Distance on the sphere (haversine formula), in kilometres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def _weight(head: bytes, appliance: bytes) -> int:
    """steering.hashing.rendezvous_weight, from the title's and appliance's bytes."""
    return int.from_bytes(hashlib.blake2b(head + appliance, digest_size=8).digest(), "big")


# --------------------------------------------------------------------------- caches


class _Place:
    """A client's home and every location's (tier, distance) from it, in groups."""

    __slots__ = ("coords", "grank", "groups", "keys", "regions", "sites")

    def __init__(self, locs: tuple[Location, ...], home: tuple[int, ...]) -> None:
        self.sites = frozenset(locs[h].site for h in home)
        self.regions = frozenset(locs[h].region for h in home)
        coords = set()
        for h in home:
            lat, lon = locs[h].lat, locs[h].lon
            if lat is not None and lon is not None:
                coords.add((lat, lon))
        self.coords = tuple(sorted(coords))
        self.keys = [self.key(loc) for loc in locs]
        keys = self.keys
        self.grank = [0] * len(locs)
        groups: list[list[int]] = []
        previous: tuple[int, float] | None = None
        for loc in sorted(range(len(locs)), key=lambda i: (keys[i], i)):
            if keys[loc] != previous:
                groups.append([])
                previous = keys[loc]
            groups[-1].append(loc)
            self.grank[loc] = len(groups) - 1
        self.groups = tuple(tuple(g) for g in groups)

    def key(self, loc: Location) -> tuple[int, float]:
        """(0 same site, 1 same region, 2 other; km from the home, inf when unknown)."""
        tier = 0 if loc.site in self.sites else 1 if loc.region in self.regions else 2
        if loc.lat is None or loc.lon is None or not self.coords:
            return tier, math.inf
        return tier, min(great_circle_km(a, b, loc.lat, loc.lon) for a, b in self.coords)


class _Entry:
    """One title's (or object's) candidates for one holder mask (a bitmask of slots).

    Kept small (thousands are cached): the locations of holders and of their
    site-mates, and, filled as decisions visit them, each location's candidates in
    (holder first, weight, id) order.
    """

    __slots__ = ("_locbits", "head", "locs", "mask", "misses", "orders")

    def __init__(self, topo: Topology, key: str, mask: int) -> None:
        self.mask = mask
        self.head = key.encode() + b"\0"
        slots = _mask_members(mask)
        loc_of, site_of = topo.loc_of, topo.site_of
        holder_locs = tuple(sorted({loc_of[s] for s in slots}))
        sites = {site_of[s] for s in slots}
        peer_locs = holder_locs
        if not topo.multi_loc_sites.isdisjoint(sites):
            peer_locs = tuple(sorted({loc for site in sites for loc in topo.site_locs[site]}))
        self.locs = (holder_locs, peer_locs)  # by site_peering
        self._locbits: tuple[bytes, bytes] | None = None
        self.orders: dict[int | tuple[int, ...], tuple[tuple[int, ...], int]] = {}
        self.misses: dict[tuple[int, ...], tuple[int, ...]] | None = None

    def locbits(self, topo: Topology, mode: int) -> bytes:
        """``locs[mode]`` as a bitmap over locations (built when first needed)."""
        if self._locbits is None:
            bits = []
            for locs in self.locs:
                b = bytearray(len(topo.locs))
                for loc in locs:
                    b[loc] = 1
                bits.append(bytes(b))
            self._locbits = (bits[0], bits[1] if self.locs[1] is not self.locs[0] else bits[0])
        return self._locbits[mode]

    def weight(self, topo: Topology, slot: int) -> int:
        return _weight(self.head, topo.id_bytes[slot])

    def has_holder(self, topo: Topology, site: str) -> bool:
        mask = self.mask
        return any(mask >> s & 1 for s in topo.sites.get(site, ()))

    def holders_at(self, topo: Topology, site: str) -> list[int]:
        mask = self.mask
        return [s for s in topo.sites.get(site, ()) if mask >> s & 1]

    def order(self, topo: Topology, locs: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        """The slots at ``locs`` (locations of sites where some appliance holds it),
        sorted by (holder first, -weight, id), and how many of them are holders."""
        key: int | tuple[int, ...] = locs[0] if len(locs) == 1 else locs
        got = self.orders.get(key)
        if got is None:
            mask, ids, id_bytes = self.mask, topo.ids, topo.id_bytes
            rows = []
            base = hashlib.blake2b(self.head, digest_size=8)  # the weight's common prefix
            for loc in locs:
                for s in topo.loc_members[loc]:
                    h = base.copy()
                    h.update(id_bytes[s])
                    w = int.from_bytes(h.digest(), "big")
                    rows.append((not mask >> s & 1, -w, ids[s] or "", s))
            rows.sort()
            if len(self.orders) >= _MAX_ORDERS:
                self.orders.clear()
            holders = sum(1 for row in rows if not row[0])
            got = self.orders[key] = (tuple(row[3] for row in rows), holders)
        return got

    def miss_order(self, topo: Topology, locs: tuple[int, ...]) -> tuple[int, ...]:
        """Every slot at ``locs``, sorted by (-weight, id)."""
        if self.misses is None:
            self.misses = {}
        got = self.misses.get(locs)
        if got is None:
            head, ids, id_bytes = self.head, topo.ids, topo.id_bytes
            rows = sorted(
                (-_weight(head, id_bytes[s]), ids[s] or "", s)
                for loc in locs
                for s in topo.loc_members[loc]
            )
            if len(self.misses) >= _MAX_ORDERS:
                self.misses.clear()
            got = self.misses[locs] = tuple(row[2] for row in rows)
        return got


class _Index:
    """Ranking caches for one topology (so shared by every snapshot that has it)."""

    __slots__ = ("__weakref__", "entries", "homes", "places", "topo")

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.places: dict[tuple[int, ...], _Place] = {}
        self.homes: dict[Announcement | None, tuple[Home, _Place, Mapping[int, IPNetwork]]] = {}
        self.entries: dict[str, _Entry] = {}

    def home(self, best: Announcement | None) -> tuple[Home, _Place, Mapping[int, IPNetwork]]:
        got = self.homes.get(best)
        if got is not None:
            return got
        topo = self.topo
        if best is None:
            home = Home(None, (), (), ())
            locs: tuple[int, ...] = ()
            matched: Mapping[int, IPNetwork] = _NO_MATCH
        else:
            ids = tuple(i for i in (topo.ids[s] for s in best.slots) if i)
            locs = tuple(sorted({topo.loc_of[s] for s in best.slots}))
            home = Home(
                best.network,
                ids,
                tuple(sorted({topo.site_of[s] for s in best.slots})),
                tuple(sorted({topo.region_of[s] for s in best.slots})),
            )
            found: dict[int, IPNetwork] = {}
            for ann in topo.announcements(best.network.network_address):
                if ann.network.prefixlen > best.network.prefixlen:
                    continue  # a longer prefix inside ``best`` need not contain the client
                for s in ann.slots:
                    found.setdefault(s, ann.network)
            matched = found
        place = self.places.get(locs)
        if place is None:
            place = self.places[locs] = _Place(topo.locs, locs)
        got = self.homes[best] = (home, place, matched)
        return got

    def entry(self, cache_key: str, key: str, mask: int) -> _Entry:
        """The cached entry, least recently used evicted first (in batches)."""
        entries = self.entries
        entry = entries.pop(cache_key, None)
        if entry is None or entry.mask != mask:
            if len(entries) >= _MAX_ENTRIES:
                for old in list(islice(entries, _MAX_ENTRIES // 8)):
                    del entries[old]
            previous, entry = entry, _Entry(self.topo, key, mask)
            if previous is not None:
                self._carry(previous, entry)
        entries[cache_key] = entry  # now the most recently used
        return entry

    def _carry(self, old: _Entry, new: _Entry) -> None:
        """Keep the orders of locations whose site's holders did not change: holders
        come and go one fill or eviction at a time, and weights never change."""
        topo = self.topo
        changed: set[int] = set()
        for s in _mask_members(old.mask ^ new.mask):
            changed.update(topo.site_locs.get(topo.site_of[s], ()))
        for key, order in old.orders.items():
            if key not in changed if isinstance(key, int) else changed.isdisjoint(key):
                new.orders[key] = order
        new.misses = old.misses


_INDEXES: weakref.WeakKeyDictionary[Topology, _Index] = weakref.WeakKeyDictionary()


def _index(topo: Topology) -> _Index:
    index = _INDEXES.get(topo)
    if index is None:
        index = _INDEXES[topo] = _Index(topo)
    return index


# --------------------------------------------------------------------------- reasons


class RankContext:
    """What a ranking's reasons are computed from, on demand."""

    __slots__ = ("addr", "entry", "home", "miss", "path", "place", "policy", "snapshot", "title")

    def __init__(
        self,
        snapshot: Snapshot,
        addr: IPAddress,
        home: Home,
        place: _Place,
        entry: _Entry,
        policy: RankPolicy,
        title: str | None,
        path: str | None,
    ) -> None:
        self.snapshot = snapshot
        self.addr = addr
        self.home = home
        self.place = place
        self.entry = entry
        self.policy = policy
        self.title = title
        self.path = path
        self.miss = False

    def label(self) -> str:
        if self.path is not None:
            return self.path
        catalog = self.snapshot.catalog
        title = catalog.get(self.title) if catalog is not None and self.title else None
        return title.prefix if title is not None else f"title {self.title}"

    def not_held(self, view: ApplianceView) -> str:
        label = self.label()
        if not self.policy.site_peering:
            return f"does not hold {label} (site peering off)"
        if self.entry.has_holder(self.snapshot.topology, view.site):
            return f"does not hold {label}, and its site-mates that do are stale or unhealthy"
        return f"does not hold {label} and no site-mate does"

    def reasons(self, choice: Choice) -> tuple[str, ...]:
        v = choice.appliance
        topo = self.snapshot.topology
        out = []
        if choice.overloaded:
            threshold = self.policy.overload_threshold
            out.append(f"overloaded: load {v.load_fraction:.2f} >= {threshold:.2f}, passed over")
        if choice.prefix is not None:
            net = choice.prefix
            out.append(f"prefix {net} contains {self.addr} (/{net.prefixlen})")
        else:
            out.append(f"announces no prefix containing {self.addr}")
        home = self.home
        if home.prefix is None:
            out.append(
                f"client's home unknown: no appliance announces a prefix containing {self.addr}"
            )
        elif v.site in home.sites:
            out.append(f"site {v.site} = client's home")
        elif v.region in home.regions:
            out.append(f"region {v.region} = client's home region")
        else:
            out.append(
                f"region {v.region} is not the client's home region ({', '.join(home.regions)})"
            )
        slot = topo.index[v.id]
        km = self.place.keys[topo.loc_of[slot]][1]
        out.append(
            "distance from the client's home unknown"
            if math.isinf(km)
            else f"{km:.0f} km from the client's home"
        )
        label = self.label()
        if self.miss:
            out.append(f"no eligible appliance holds {label}: fetches it on a miss")
        elif choice.holder:
            out.append(f"holds {label}")
        else:
            alive = self.snapshot.alive
            mates = [topo.ids[h] for h in self.entry.holders_at(topo, v.site) if alive[h]]
            out.append(f"site-mate {mates[0] if mates else '?'} holds {label} (site peering)")
        entry = self.entry
        mine = (-entry.weight(topo, slot), v.id)
        members = topo.sites.get(v.site, ())
        position = 1 + sum(1 for s in members if (-entry.weight(topo, s), topo.ids[s] or "") < mine)
        out.append(f"rendezvous rank {position} at site {v.site}")
        return tuple(out)


def _unavailable(view: ApplianceView, now: float) -> str | None:
    if not view.fresh:
        return (
            f"stale: last heartbeat {now - view.last_seen:.1f} s ago "
            f"(limit {view.stale_after_seconds:.1f} s)"
        )
    if view.state == "unhealthy":
        return "unhealthy: " + "; ".join(view.reasons) if view.reasons else "unhealthy"
    if view.draining:
        return "draining"
    if not view.serving:
        return "not serving"
    return None


# --------------------------------------------------------------------------- ranking


def rank(
    snapshot: Snapshot,
    client: str | IPAddress,
    *,
    title: str | None = None,
    path: str | None = None,
    policy: RankPolicy = DEFAULT_POLICY,
    explain: bool = False,
) -> Ranking:
    """The appliances ``client`` should use for ``title`` (every object of it) or for
    the object ``path``, best first (see the module docstring).

    With ``path`` the candidates are the holders of that object; the rendezvous weight
    is the title's (``title``, else the object's title in the catalog, else the path).
    ``explain`` adds every known appliance not chosen, with its reason.
    """
    addr = as_address(client)
    topo = snapshot.topology
    index = _index(topo)
    if path is not None:
        object_title, mask = snapshot.object_mask(path)
        key = title if title is not None else object_title if object_title is not None else path
        shared = object_title == key and mask == snapshot.title_masks(key)[0]
        cache_key = key if shared else f"\0{key}\0{path}"
    elif title is not None:
        key = cache_key = title
        mask = snapshot.title_masks(title)[0]
    else:
        raise ValueError("rank: give a title or a path")
    home, place, matched = index.home(topo.longest(addr))
    entry = index.entry(cache_key, key, mask)
    why = RankContext(snapshot, addr, home, place, entry, policy, title, path)
    if explain:
        return _explained(snapshot, why, matched)

    n = policy.n
    threshold = policy.overload_threshold
    peering = policy.site_peering
    eligible, load, alive = snapshot.eligible, snapshot.load, snapshot.alive
    site_of, loc_of = topo.site_of, topo.loc_of
    mask = entry.mask
    chosen: list[tuple[int, bool, IPNetwork | None]] = []
    over: list[tuple[int, bool, IPNetwork | None]] = []
    site_ok: dict[str, bool] = {}
    site_holds: dict[str, bool] = {}

    def site_has(site: str) -> bool:
        """Whether a site-mate holds it."""
        has = site_holds.get(site)
        if has is None:
            has = site_holds[site] = entry.has_holder(topo, site)
        return has

    def peer_ok(site: str) -> bool:
        """Whether a site-mate that holds it can serve it (fresh and not unhealthy)."""
        ok = site_ok.get(site)
        if ok is None:
            ok = site_ok[site] = any(mask >> h & 1 and alive[h] for h in topo.sites[site])
        return ok

    if matched:
        # Ties after the prefix length and the location are broken as in the walk: by
        # the position in the candidates' order of the location group.
        rows = []
        for s, net in matched.items():
            holder = bool(mask >> s & 1)
            if not holder and not (peering and site_has(site_of[s])):
                continue
            loc = loc_of[s]
            grank = place.grank[loc]
            group = place.groups[grank]
            if len(group) > 1:
                locbits = entry.locbits(topo, 1)
                group = tuple(g for g in group if locbits[g])
            position = entry.order(topo, group)[0].index(s)
            rows.append((-net.prefixlen, grank, position, s, holder, net))
        rows.sort()
        for _, _, _, s, holder, net in rows:
            if eligible[s] and (holder or peer_ok(site_of[s])):
                (over if load[s] >= threshold else chosen).append((s, holder, net))
    if len(chosen) < n:
        mode = 1 if peering else 0
        for group in _groups(topo, place, entry, mode):
            slots, holders = entry.order(topo, group)
            for i in range(len(slots) if peering else holders):  # holders come first
                s = slots[i]
                if s in matched or not eligible[s]:
                    continue
                holder = i < holders
                if not holder:
                    ok = site_ok.get(site_of[s])
                    if not (peer_ok(site_of[s]) if ok is None else ok):
                        continue
                if load[s] >= threshold:
                    over.append((s, holder, None))
                    continue
                chosen.append((s, holder, None))
                if len(chosen) >= n:
                    break
            if len(chosen) >= n:
                break
    if not chosen and not over and policy.allow_miss:
        _miss(snapshot, entry, place, matched, threshold, n, chosen, over)
        why.miss = bool(chosen or over)
    views = snapshot.views
    new = tuple.__new__  # Choice(...) without the named tuple's Python-level __new__
    picked = [new(Choice, (views[s], holder, net, False, why)) for s, holder, net in chosen[:n]]
    picked.extend(
        new(Choice, (views[s], holder, net, True, why))
        for s, holder, net in over[: n - len(picked)]
    )
    return Ranking(addr, title, path, home, tuple(picked), (), why.miss)


def _groups(topo: Topology, place: _Place, entry: _Entry, mode: int) -> Iterator[tuple[int, ...]]:
    """The candidate locations in groups of equal (tier, distance), nearest first."""
    grank = place.grank
    locs = entry.locs[mode]
    if len(locs) * 4 < len(place.groups):
        ordered = sorted(locs, key=grank.__getitem__)
        i, end = 0, len(ordered)
        while i < end:
            r = grank[ordered[i]]
            j = i + 1
            while j < end and grank[ordered[j]] == r:
                j += 1
            yield tuple(ordered[i:j])
            i = j
    else:
        locbits = entry.locbits(topo, mode)
        for group in place.groups:
            if len(group) == 1:
                if locbits[group[0]]:
                    yield group
            else:
                sub = tuple(loc for loc in group if locbits[loc])
                if sub:
                    yield sub


def _miss(
    snapshot: Snapshot,
    entry: _Entry,
    place: _Place,
    matched: Mapping[int, IPNetwork],
    threshold: float,
    n: int,
    chosen: list[tuple[int, bool, IPNetwork | None]],
    over: list[tuple[int, bool, IPNetwork | None]],
) -> None:
    """Every eligible appliance is a candidate: the same walk over all locations."""
    topo = snapshot.topology
    eligible, load = snapshot.eligible, snapshot.load
    rows = sorted(
        (
            -net.prefixlen,
            place.grank[topo.loc_of[s]],
            -entry.weight(topo, s),
            topo.ids[s] or "",
            s,
            net,
        )
        for s, net in matched.items()
    )
    for *_, s, net in rows:
        if eligible[s]:
            (over if load[s] >= threshold else chosen).append((s, False, net))
    if len(chosen) >= n:
        return
    for group in place.groups:
        for s in entry.miss_order(topo, group):
            if s in matched or not eligible[s]:
                continue
            if load[s] >= threshold:
                over.append((s, False, None))
                continue
            chosen.append((s, False, None))
            if len(chosen) >= n:
                return


def _explained(snapshot: Snapshot, why: RankContext, matched: Mapping[int, IPNetwork]) -> Ranking:
    """The reference ranking: every known appliance's key, computed directly."""
    topo = snapshot.topology
    views = snapshot.views
    entry, place, policy = why.entry, why.place, why.policy
    now = snapshot.taken_at
    excluded: list[tuple[str, str]] = []
    candidates: list[tuple[int, bool]] = []
    not_holding: list[int] = []
    for s in topo.order:
        v = views[s]
        assert v is not None
        reason = _unavailable(v, now)
        if reason is not None:
            excluded.append((v.id, reason))
        elif entry.mask >> s & 1:
            candidates.append((s, False))
        elif policy.site_peering and any(snapshot.alive[h] for h in entry.holders_at(topo, v.site)):
            candidates.append((s, True))
        else:
            not_holding.append(s)
    if not candidates and policy.allow_miss and not_holding:
        why.miss = True
        candidates = [(s, False) for s in not_holding]
    else:
        for s in not_holding:
            v = views[s]
            assert v is not None
            excluded.append((v.id, why.not_held(v)))
    keyed = []
    for s, peer in candidates:
        v = views[s]
        assert v is not None
        net = matched.get(s)
        tier, km = place.key(topo.locs[topo.loc_of[s]])
        keyed.append(
            (
                v.load_fraction >= policy.overload_threshold,
                -net.prefixlen if net is not None else 0,
                tier,
                km,
                peer,
                -entry.weight(topo, s),
                v.id,
                s,
                net,
            )
        )
    keyed.sort()
    chosen = tuple(
        Choice(views[k[7]], not k[4] and not why.miss, k[8], k[0], why)  # type: ignore[arg-type]
        for k in keyed[: policy.n]
    )
    excluded.sort()
    beyond = [Exclusion(k[6], f"beyond the first {policy.n}") for k in keyed[policy.n :]]
    return Ranking(
        why.addr,
        why.title,
        why.path,
        why.home,
        chosen,
        tuple(Exclusion(i, r) for i, r in excluded) + tuple(beyond),
        why.miss,
    )
