"""Fill plans: which titles each appliance of a site should hold, and its fill manifest.

Theory of operation
-------------------
A site (the appliances racked together in one ISP location) should hold its region's
most popular titles, the hottest of them on several appliances so their load spreads,
and each title on the *same* appliances from one night to the next so the fill only
moves what changed. :func:`plan_site` decides, purely from the site's members and their
capacities, the catalog and the region's title scores (predicted requests per day,
steering/popularity.py):

1. Titles with a score above zero are taken in descending score (ties by title id).
   Titles nobody asked for and nobody boosted are never placed.
2. A title wants ``r`` replicas (:class:`ReplicaPolicy`)::

       r = clamp(ceil(score / requests_per_replica), min_replicas, min(max_replicas, n))

   with ``n`` the members of the site: one replica per ``requests_per_replica``
   requests per day, so ``r`` never decreases with the score and a hotter title has at
   least as many replicas as a colder one.
3. The members are tried in the title's rendezvous order (steering/hashing.py, the order
   ranking steers players by), and the title goes, whole, to each of the first members
   whose budget still has room for it, until it has ``r`` replicas or no member is left.
   A member that has no room is skipped for the next one in the order; a member's
   budget is ``capacity_bytes * (1 - headroom_fraction)`` (the headroom leaves room
   for what misses pull through during the day and for the fill's own per-disk
   headroom).
4. Planning stops once no member has room for any remaining title.

Because a title's order depends only on its id and the appliance ids, a re-plan with
the same capacities puts every title where it was, and adding an appliance to a site
moves a title only where the new appliance ranks among its first ``r`` members
(about ``r / (n + 1)`` of the titles, when capacity is not the limit) (Thaler and
Ravishankar, IEEE/ACM ToN 1998).

:func:`manifest_from_plan` turns an appliance's share of the plan into the fill manifest
(docs/fill.md, schema ``oca.fill-manifest`` version 1): every object of each of its
titles with the title's score spread over the objects (an object share from
:meth:`steering.popularity.Popularity.object_share`, or the positional prior), the
origin URLs, and the title's prefix without its trailing slash as the group the
appliance pools forecasts by. :func:`manifest_for` does both steps for one appliance.

Pure: no I/O; the time the manifest is generated at is an argument.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NotRequired, TypedDict

from steering.hashing import rendezvous_order
from steering.popularity import positional_prior

if TYPE_CHECKING:
    from steering.catalog import Catalog
    from steering.popularity import Popularity

__all__ = [
    "MANIFEST_SCHEMA",
    "MANIFEST_VERSION",
    "ManifestDoc",
    "ManifestObjectDoc",
    "ReplicaPolicy",
    "SiteMember",
    "SitePlan",
    "TitlePlacement",
    "manifest_for",
    "manifest_from_plan",
    "plan_site",
]

MANIFEST_SCHEMA: Final = "oca.fill-manifest"
MANIFEST_VERSION: Final = 1
DEFAULT_HEADROOM_FRACTION: Final = 0.05


# ------------------------------------------------------------------ inputs
@dataclass(frozen=True, slots=True)
class SiteMember:
    """An appliance as fill planning sees it."""

    appliance_id: str
    site: str
    region: str
    capacity_bytes: int


@dataclass(frozen=True, slots=True)
class ReplicaPolicy:
    """How many appliances of a site hold a title (see the module docstring)."""

    requests_per_replica: float = 5000.0
    """Requests per day (the region's score) each replica is planned to carry."""
    min_replicas: int = 1
    max_replicas: int = 0
    """Upper bound; 0: every member of the site."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.requests_per_replica) and self.requests_per_replica > 0):
            raise ValueError(
                f"requests_per_replica must be a finite number > 0, not {self.requests_per_replica}"
            )
        if self.min_replicas < 1:
            raise ValueError(f"min_replicas must be >= 1, not {self.min_replicas}")
        if self.max_replicas < 0:
            raise ValueError(f"max_replicas must be >= 0 (0: no limit), not {self.max_replicas}")
        if self.max_replicas and self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})"
            )

    def replicas(self, score: float, members: int) -> int:
        """Replicas wanted for a title of ``score`` at a site of ``members`` appliances."""
        if members <= 0:
            return 0
        cap = min(self.max_replicas, members) if self.max_replicas else members
        wanted = math.ceil(score / self.requests_per_replica) if score > 0 else 0
        return max(min(self.min_replicas, cap), min(wanted, cap))


# ------------------------------------------------------------------ the plan
@dataclass(frozen=True, slots=True)
class TitlePlacement:
    title_id: str
    score: float
    """Predicted requests per day in the region."""
    wanted: int
    """Replicas the policy asks for."""
    appliances: tuple[str, ...]
    """Where it goes, in rendezvous order; fewer than ``wanted`` when room ran out."""
    reason: str


@dataclass(frozen=True, slots=True)
class SitePlan:
    site: str
    titles: tuple[TitlePlacement, ...]
    """Every title examined, hottest first, placed or not (with the reason)."""
    by_appliance: Mapping[str, tuple[str, ...]]
    """Appliance id -> the titles it should hold, hottest first (every member listed)."""
    budget_bytes: Mapping[str, int]
    planned_bytes: Mapping[str, int]
    not_examined: int
    """Titles with a score left out because no member had room for any of them."""

    def placement(self, title_id: str) -> TitlePlacement | None:
        for tp in self.titles:
            if tp.title_id == title_id:
                return tp
        return None


def plan_site(
    members: Sequence[SiteMember],
    catalog: Catalog,
    scores: Mapping[str, float],
    *,
    policy: ReplicaPolicy | None = None,
    headroom_fraction: float = DEFAULT_HEADROOM_FRACTION,
) -> SitePlan:
    """Split the site's capacity over the titles of ``scores`` (see the module docstring).

    ``members`` are the appliances of one site, ``scores`` the predicted requests per day
    of its region's titles. Raises ValueError on members of several sites, a repeated
    appliance id, a negative capacity or a bad ``headroom_fraction``.
    """
    policy = policy or ReplicaPolicy()
    if not 0 <= headroom_fraction < 1:
        raise ValueError(f"headroom_fraction must be in [0, 1), not {headroom_fraction}")
    site = members[0].site if members else ""
    budget: dict[str, int] = {}
    for i, m in enumerate(members):
        if m.site != site:
            raise ValueError(f"members[{i}].site: {m.site!r}, but members[0] is at {site!r}")
        if m.appliance_id in budget:
            raise ValueError(f"members[{i}].appliance_id: {m.appliance_id!r} is listed twice")
        if m.capacity_bytes < 0:
            raise ValueError(f"members[{i}].capacity_bytes: must be >= 0, not {m.capacity_bytes}")
        budget[m.appliance_id] = int(m.capacity_bytes * (1 - headroom_fraction))
    ids = sorted(budget)
    left = dict(budget)
    held: dict[str, list[str]] = {a: [] for a in ids}

    ranked = sorted(
        ((s, t) for t, s in scores.items() if math.isfinite(s) and s > 0),
        key=lambda st: (-st[0], st[1]),
    )
    placements: list[TitlePlacement] = []
    candidates: list[tuple[str, float, int]] = []  # (title, score, size) in the catalog
    for score, title_id in ranked:
        title = catalog.get(title_id)
        if title is None:
            placements.append(TitlePlacement(title_id, score, 0, (), "not in the catalog"))
        else:
            candidates.append((title_id, score, title.size))
    # smallest title size from position i on: when no member has that much room, stop
    smallest_after = [c[2] for c in candidates]
    for i in range(len(candidates) - 2, -1, -1):
        smallest_after[i] = min(smallest_after[i], smallest_after[i + 1])

    not_examined = 0
    for i, (title_id, score, size) in enumerate(candidates):
        if not ids or max(left.values()) < smallest_after[i]:
            not_examined = len(candidates) - i
            break
        wanted = policy.replicas(score, len(ids))
        chosen: list[str] = []
        no_room: list[str] = []
        for a in rendezvous_order(title_id, ids):
            if len(chosen) >= wanted:
                break
            if left[a] >= size:
                left[a] -= size
                chosen.append(a)
                held[a].append(title_id)
            else:
                no_room.append(f"{a} ({left[a]} bytes left)")
        reason = (
            f"{len(chosen)} of {wanted} replicas: {score:.6g} requests/day, "
            f"{policy.requests_per_replica:.6g} per replica"
        )
        if no_room:
            shown = ", ".join(no_room[:3]) + (
                f" and {len(no_room) - 3} more" if len(no_room) > 3 else ""
            )
            reason += f"; {size} bytes do not fit on {shown}"
        placements.append(TitlePlacement(title_id, score, wanted, tuple(chosen), reason))

    placements.sort(key=lambda tp: (-tp.score, tp.title_id))
    return SitePlan(
        site=site,
        titles=tuple(placements),
        by_appliance={a: tuple(held[a]) for a in ids},
        budget_bytes=budget,
        planned_bytes={a: budget[a] - left[a] for a in ids},
        not_examined=not_examined,
    )


# ------------------------------------------------------------------ the manifest
class ManifestObjectDoc(TypedDict):
    path: str
    size: int
    sha256: str
    popularity: float
    sources: list[str]
    title: str
    tier: NotRequired[str]


class ManifestDoc(TypedDict):
    schema: str
    version: int
    generated_at: float
    appliance: str
    objects: list[ManifestObjectDoc]


def manifest_for(
    appliance_id: str,
    members: Sequence[SiteMember],
    catalog: Catalog,
    scores: Mapping[str, float],
    *,
    now: float,
    popularity: Popularity | None = None,
    policy: ReplicaPolicy | None = None,
    requests_per_replica: float | None = None,
    headroom_fraction: float = DEFAULT_HEADROOM_FRACTION,
) -> ManifestDoc:
    """Plan the site of ``members`` (:func:`plan_site`) and return the fill manifest of
    ``appliance_id`` (:func:`manifest_from_plan`), generated at ``now``.

    ``popularity`` spreads each title's score over its objects
    (:meth:`~steering.popularity.Popularity.object_share`); without it the positional
    prior does. ``requests_per_replica`` is short for
    ``policy=ReplicaPolicy(requests_per_replica=...)``; give one or the other.
    """
    if requests_per_replica is not None:
        if policy is not None:
            raise ValueError("give policy or requests_per_replica, not both")
        policy = ReplicaPolicy(requests_per_replica=requests_per_replica)
    plan = plan_site(members, catalog, scores, policy=policy, headroom_fraction=headroom_fraction)
    share: Callable[[str], Mapping[str, float]] | None = None
    if popularity is not None:
        share = functools.partial(popularity.object_share, now=now, catalog=catalog)
    return manifest_from_plan(appliance_id, plan, catalog, generated_at=now, object_share=share)


def manifest_from_plan(
    appliance_id: str,
    plan: SitePlan,
    catalog: Catalog,
    *,
    generated_at: float,
    object_share: Callable[[str], Mapping[str, float]] | None = None,
) -> ManifestDoc:
    """The fill manifest of ``appliance_id`` (a member of ``plan``'s site).

    ``object_share(title_id)`` gives the share of the title's requests per object path
    (e.g. ``lambda t: popularity.object_share(t, now, catalog)``); without it the positional
    prior is used. Objects are listed title by title, hottest title first, each title's
    objects in path order. Titles the catalog no longer holds are left out, and a path
    is listed once. Raises ValueError when the appliance is not in the plan.
    """
    if appliance_id not in plan.by_appliance:
        raise ValueError(f"appliance {appliance_id!r} is not a member of site {plan.site!r}")
    if not (math.isfinite(generated_at) and generated_at >= 0):
        raise ValueError(f"generated_at must be a finite number >= 0, not {generated_at}")
    scores = {tp.title_id: tp.score for tp in plan.titles}
    objects: list[ManifestObjectDoc] = []
    seen: set[str] = set()
    for title_id in plan.by_appliance[appliance_id]:
        title = catalog.get(title_id)
        if title is None:
            continue
        score = scores.get(title_id, 0.0)
        shares = object_share(title_id) if object_share is not None else positional_prior(title)
        group = title.prefix.rstrip("/") or "/"
        origins = [o.rstrip("/") for o in title.origins]
        for obj in title.objects:
            if obj.path in seen:
                continue
            seen.add(obj.path)
            share = shares.get(obj.path, 0.0)
            popularity = score * share if math.isfinite(share) and share > 0 else 0.0
            objects.append(
                {
                    "path": obj.path,
                    "size": obj.size,
                    "sha256": obj.sha256,
                    "popularity": popularity if math.isfinite(popularity) else 0.0,
                    "sources": [o + obj.path for o in origins],
                    "title": group,
                }
            )
    return {
        "schema": MANIFEST_SCHEMA,
        "version": MANIFEST_VERSION,
        "generated_at": float(generated_at),
        "appliance": appliance_id,
        "objects": objects,
    }
