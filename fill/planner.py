"""Fill planning: what to fetch, in what order, where to put it and what to evict (pure).

Theory of operation
-------------------
Inputs are the manifest, what the appliance holds (the inventory, with each object's
request history), the disks with their capacity and health, the objects that must not
move (being served or filled: *pinned*), a headroom watermark and the current time.
No I/O and no clock: the same inputs always give the same plan.

1. Every candidate (held or listed) gets one priority from :class:`fill.policy.
   PopularityLRU`: requests seen on the box (decayed by age) plus the manifest's
   forecast, pooled per title. Ties are broken by path, so the order is total.
2. Candidates are placed greedily, highest priority first, into a budget per disk of
   ``capacity * (1 - headroom)``:

   - a pinned held object keeps its place whatever its priority (placed first);
   - another held object keeps its place if its disk's budget still has room for it;
     that is the only place it can have (moving between tiers is the mover's job);
   - a listed object that is not held (or held with other bytes) goes to its preferred
     tier if the manifest names one, then to the other tiers fastest first, and within
     a tier to the disks in rendezvous order (:func:`oca.storage.placement.rank_disks`,
     the order the store itself uses), onto the first with budget left.

3. What was placed but not held is fetched, hottest first. Held objects that lost their
   budget to hotter ones are evicted; nothing else is. Listed objects that found no
   budget are reported as not fitting, with the reason.

Every listed object therefore ends up exactly once in ``fetches``, ``held`` or
``not_fitting``; and on every disk, what is kept plus what is fetched never exceeds the
budget (pinned objects excepted: they are never evicted, even over the watermark).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fill.manifest import Manifest, ManifestObject
from fill.policy import PolicyParams, PopularityLRU, parent_group
from oca.storage.placement import rank_disks


@dataclass(frozen=True, slots=True)
class HeldObject:
    path: str
    size: int
    sha256: str
    tier: str
    disk: str
    hits: int = 0
    last_access: float = 0.0


@dataclass(frozen=True, slots=True)
class DiskSpace:
    id: str
    tier: str
    capacity_bytes: int
    healthy: bool = True


@dataclass(frozen=True, slots=True)
class Fetch:
    path: str
    size: int
    sha256: str
    tier: str
    disk: str
    priority: float
    sources: tuple[str, ...]
    replaces: bool = False  # the appliance holds other bytes under this path


@dataclass(frozen=True, slots=True)
class Eviction:
    path: str
    size: int
    tier: str
    disk: str
    priority: float
    reason: str


@dataclass(frozen=True, slots=True)
class NotFitting:
    path: str
    size: int
    priority: float
    reason: str


@dataclass(frozen=True, slots=True)
class DiskBudget:
    disk: str
    tier: str
    budget_bytes: int
    kept_bytes: int
    fetch_bytes: int


@dataclass(frozen=True, slots=True)
class FillPlan:
    fetches: tuple[Fetch, ...]  # hottest first
    evictions: tuple[Eviction, ...]  # coldest first
    held: tuple[str, ...]  # listed objects already held with the right bytes
    not_fitting: tuple[NotFitting, ...]
    budgets: tuple[DiskBudget, ...] = field(default=())

    @property
    def fetch_bytes(self) -> int:
        return sum(f.size for f in self.fetches)

    @property
    def evict_bytes(self) -> int:
        return sum(e.size for e in self.evictions)


def title_grouping(manifest: Manifest) -> dict[str, str]:
    """Object path -> title for the objects whose manifest entry names one."""
    return {o.path: o.title for o in manifest.objects if o.title is not None}


def plan_fill(
    manifest: Manifest,
    held: Mapping[str, HeldObject],
    disks: Sequence[DiskSpace],
    tier_order: Sequence[str],
    now: float,
    *,
    headroom_fraction: float = 0.05,
    pinned: frozenset[str] = frozenset(),
    params: PolicyParams | None = None,
) -> FillPlan:
    """The plan for one fill cycle (see the module docstring)."""
    if not 0 <= headroom_fraction < 1:
        raise ValueError(f"headroom_fraction must be in [0, 1), not {headroom_fraction}")
    titles = title_grouping(manifest)
    parents: dict[str, str] = {}

    def group_of(path: str) -> str:
        t = titles.get(path)
        if t is not None:
            return t
        # An unlisted object belongs to the title of a listed sibling, if any.
        g = parent_group(path)
        return parents.get(g, g)

    for mo in manifest.objects:
        if mo.title is not None:
            parents.setdefault(parent_group(mo.path), mo.title)

    policy = PopularityLRU(1 << 62, params, group_of)
    policy.set_forecast({o.path: o.popularity for o in manifest.objects})
    listed = manifest.by_path()

    prio: dict[str, float] = {}
    for path, rec in held.items():
        policy.insert(path, rec.size, now, hits=rec.hits, last_access=rec.last_access)
        prio[path] = policy.priority(path)
    for path in listed:
        if path not in prio:
            prio[path] = policy.candidate_priority(path, now) - 1.0  # never requested here

    budget: dict[str, int] = {}
    tier_disks: dict[str, list[str]] = {}
    for d in disks:
        if d.healthy:
            budget[d.id] = int(d.capacity_bytes * (1 - headroom_fraction))
            tier_disks.setdefault(d.tier, []).append(d.id)
    full_budget = dict(budget)
    kept: dict[str, int] = {d: 0 for d in budget}
    fetched: dict[str, int] = {d: 0 for d in budget}

    fetches: list[Fetch] = []
    kept_held: set[str] = set()
    not_fitting: list[NotFitting] = []
    same_bytes: list[str] = []

    # Pinned held objects first: they stay whatever their priority.
    for path in sorted(pinned):
        ph = held.get(path)
        if ph is not None and ph.disk in budget:
            budget[ph.disk] -= ph.size
            kept[ph.disk] += ph.size
            kept_held.add(path)

    order = sorted(prio, key=lambda p: (-prio[p], p))
    for path in order:
        h: HeldObject | None = held.get(path)
        o: ManifestObject | None = listed.get(path)
        if path in kept_held:
            if o is not None and h is not None and o.sha256 == h.sha256:
                same_bytes.append(path)
            elif o is not None:
                not_fitting.append(NotFitting(path, o.size, prio[path], "pinned with other bytes"))
            continue
        if h is not None and (o is None or o.sha256 == h.sha256):
            if h.disk in budget and budget[h.disk] >= h.size:
                budget[h.disk] -= h.size
                kept[h.disk] += h.size
                kept_held.add(path)
                if o is not None:
                    same_bytes.append(path)
                continue
            if o is not None:
                why = "held, but hotter objects take its disk's budget"
                not_fitting.append(NotFitting(path, o.size, prio[path], why))
            continue  # evicted below
        if o is None:
            continue
        disk = _place(o, tier_order, tier_disks, budget)
        if disk is None:
            not_fitting.append(NotFitting(path, o.size, prio[path], _why_not(o, full_budget)))
            continue
        budget[disk] -= o.size
        fetched[disk] += o.size
        tier = next(t for t, ds in tier_disks.items() if disk in ds)
        replaces = h is not None and h.sha256 != o.sha256
        fetches.append(Fetch(path, o.size, o.sha256, tier, disk, prio[path], o.sources, replaces))

    evictions = [
        Eviction(
            p,
            h.size,
            h.tier,
            h.disk,
            prio[p],
            "lower priority than what fills its disk"
            if h.disk in budget
            else f"its disk {h.disk} is not healthy",
        )
        for p, h in held.items()
        if p not in kept_held and h.disk in budget
    ]
    evictions.sort(key=lambda e: (e.priority, e.path))
    budgets = tuple(
        DiskBudget(
            d,
            next(t for t, ds in tier_disks.items() if d in ds),
            full_budget[d],
            kept[d],
            fetched[d],
        )
        for d in sorted(full_budget)
    )
    return FillPlan(
        tuple(fetches), tuple(evictions), tuple(sorted(same_bytes)), tuple(not_fitting), budgets
    )


def _place(
    o: ManifestObject,
    tier_order: Sequence[str],
    tier_disks: Mapping[str, list[str]],
    budget: Mapping[str, int],
) -> str | None:
    tiers = list(tier_order)
    if o.tier is not None and o.tier in tier_disks:
        if o.tier in tiers:
            tiers.remove(o.tier)
        tiers.insert(0, o.tier)
    for tier in tiers:
        ids = tier_disks.get(tier)
        if not ids:
            continue
        for disk in rank_disks(o.path, ids):
            if budget[disk] >= o.size:
                return disk
    return None


def _why_not(o: ManifestObject, full_budget: Mapping[str, int]) -> str:
    if not full_budget:
        return "no healthy disk"
    biggest = max(full_budget.values())
    if o.size > biggest:
        return f"{o.size} bytes is more than any disk's budget ({biggest} bytes)"
    return "no room left: hotter objects fill every disk's budget"
