"""Tier placement after the fill: promote what got hot to the fastest tier, demote what
went cold (the plan is pure; :func:`run_moves` carries it out through the store).

Theory of operation
-------------------
The fill places objects by the forecast; requests during the day then show what is
really hot. Every held object gets the policy's priority (:mod:`fill.policy`: requests
seen on the box, decayed by age, plus the forecast when a manifest is at hand). The
fastest tier should hold the highest priorities that fit in its budget
(``capacity * (1 - headroom)``), so:

- an object outside the fastest tier is *promoted* when it is among those and has
  been requested at least ``min_hits`` times recently (decayed count), hottest first;
- objects on the fastest tier that are not among those are *demoted* to the next tier,
  coldest first, only as far as the promotions need the room.

A move is :meth:`oca.storage.store.Store.move`: copy, verify against the recorded
sha256, rename into place, index, then drop the old copy. Serving never waits for it
(the server only reloads the changed index), and an in-flight response keeps reading
the old file through its open descriptor.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fill.planner import DiskSpace, HeldObject
from fill.policy import PolicyParams, PopularityLRU

log = logging.getLogger("fill.mover")


@dataclass(frozen=True, slots=True)
class Move:
    path: str
    size: int
    from_tier: str
    to_tier: str
    priority: float
    reason: str


def plan_moves(
    held: Iterable[HeldObject],
    disks: Sequence[DiskSpace],
    tier_order: Sequence[str],
    now: float,
    *,
    headroom_fraction: float = 0.05,
    min_hits: float = 2.0,
    max_moves: int = 1000,
    forecast: dict[str, float] | None = None,
    params: PolicyParams | None = None,
) -> list[Move]:
    """Demotions (coldest first) then promotions (hottest first); see the module docstring."""
    healthy_tiers = [t for t in tier_order if any(d.tier == t and d.healthy for d in disks)]
    if len(healthy_tiers) < 2:
        return []
    fast, slow = healthy_tiers[0], healthy_tiers[1]
    budget = sum(
        int(d.capacity_bytes * (1 - headroom_fraction))
        for d in disks
        if d.tier == fast and d.healthy
    )
    policy = PopularityLRU(1 << 62, params)
    policy.set_forecast(forecast or {})
    objects = {h.path: h for h in held}
    recent: dict[str, float] = {}
    for h in objects.values():
        policy.insert(h.path, h.size, now, hits=h.hits, last_access=h.last_access)
        recent[h.path] = policy.priority(h.path) - policy.forecast(h.path)
    order = sorted(objects, key=lambda p: (-policy.priority(p), p))
    wanted: set[str] = set()
    room = budget
    for p in order:
        h = objects[p]
        eligible = h.tier == fast or recent[p] >= min_hits
        if eligible and h.size <= room:
            wanted.add(p)
            room -= h.size
    promote = [p for p in order if p in wanted and objects[p].tier != fast][:max_moves]
    need = sum(objects[p].size for p in promote)
    used = sum(h.size for h in objects.values() if h.tier == fast)
    free = budget - used
    demote: list[str] = []
    for p in reversed(order):  # coldest first
        if free >= need:
            break
        h = objects[p]
        if h.tier == fast and p not in wanted:
            demote.append(p)
            free += h.size
    moves = [
        Move(p, objects[p].size, fast, slow, policy.priority(p), "colder than what is promoted")
        for p in demote
    ]
    moves += [
        Move(
            p,
            objects[p].size,
            objects[p].tier,
            fast,
            policy.priority(p),
            f"requested {recent[p]:.1f} times recently (decayed)",
        )
        for p in promote
    ]
    return moves
