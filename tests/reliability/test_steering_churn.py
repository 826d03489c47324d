"""Steering under churn: 1,000 appliances flapping health while players ask for rankings.

The fleet is the benchmark's synthetic one (``bench.steering.build``: 1,000 appliances
in 200 sites, every title placed by the fill plan's hash). Each round, a random share of
the appliances send a heartbeat that flips their health (unhealthy, degraded, healthy),
drain state, or serving flag; some go silent long enough to be stale, and come back.
Between heartbeats, players ask for rankings. The test keeps its own record of what
every appliance last said and when, independent of the fleet, and checks every ranking
against it: no chosen appliance was unhealthy, draining, not serving or stale at the
instant the snapshot was taken, and every chosen appliance holds the title or has a
site-mate that does.

The default variant runs 40 rounds (about 8,000 heartbeats, 8,000 rankings); the soak
variant (``pytest -m slow tests/reliability/test_steering_churn.py``) runs 1,500 rounds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import pytest

from bench.steering import SyntheticAppliance, SyntheticFleet, build
from steering.ranking import RankPolicy, rank

MISSED = 3  # the fleet's default missed_heartbeats
INTERVAL = 2.0


@dataclass
class Said:
    """What an appliance last told steering, as the test saw it sent."""

    at: float
    state: str
    draining: bool
    serving: bool


@pytest.fixture
def synthetic() -> SyntheticFleet:
    return build(appliances=1000, sites=200, titles=3000, head=200, interval_seconds=INTERVAL,
                 seed=11, now=1_000_000.0)  # fmt: skip


def _flap(doc: dict[str, Any], rng: random.Random) -> None:
    health = doc["health"]
    roll = rng.random()
    health["state"] = "unhealthy" if roll < 0.3 else "degraded" if roll < 0.45 else "healthy"
    health["reasons"] = [] if health["state"] == "healthy" else ["disk ssd:/srv/ssd1 failed"]
    health["draining"] = rng.random() < 0.15
    health["serving"] = rng.random() > 0.1


def churn(synthetic: SyntheticFleet, rounds: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    fleet, catalog = synthetic.fleet, synthetic.catalog
    policy = RankPolicy(n=10, overload_threshold=0.95, site_peering=True)
    now = 1_000_000.0
    said: dict[str, Said] = {
        a.id: Said(now, "healthy", False, True) for a in synthetic.appliances
    }  # the full inventories build() sent were healthy, serving and not draining
    by_id: dict[str, SyntheticAppliance] = {a.id: a for a in synthetic.appliances}
    silent: set[str] = set()
    stats = {"heartbeats": 0, "rankings": 0, "chosen": 0, "empty": 0, "excluded_bad": 0}
    for _ in range(rounds):
        now += INTERVAL / 4
        # some appliances go silent (a crash, a hung box) for a while; some come back
        for a_id in rng.sample(sorted(by_id), 5):
            silent.add(a_id)
        for a_id in list(silent):
            if rng.random() < 0.2:
                silent.discard(a_id)
        for a in rng.sample(synthetic.appliances, 200):
            if a.id in silent:
                continue
            doc = synthetic.heartbeat(a, now, rng, delta_fraction=0.05)
            _flap(doc, rng)
            fleet.apply(doc, now)
            h = doc["health"]
            said[a.id] = Said(now, h["state"], h["draining"], h["serving"])
            stats["heartbeats"] += 1
        snap = fleet.snapshot(now, catalog)
        for client, title in synthetic.requests(200, rng):
            ranking = rank(snap, client, title=title, policy=policy)
            stats["rankings"] += 1
            if not ranking.chosen:
                stats["empty"] += 1
            for choice in ranking.chosen:
                a_id = choice.appliance.id
                s = said[a_id]
                stale_at = s.at + MISSED * INTERVAL
                assert s.state != "unhealthy", (a_id, s, choice.reasons)
                assert not s.draining and s.serving, (a_id, s, choice.reasons)
                assert now <= stale_at, f"{a_id} chosen {now - s.at:.1f} s after it last spoke"
                holders = snap.title_holders(title)
                site_mates = set(snap.site_members(choice.appliance.site))
                assert a_id in holders or holders & site_mates, (a_id, title)
                stats["chosen"] += 1
    # the churn really happened: a good share of the fleet was out of rotation at the end
    out = sum(
        1
        for a_id, s in said.items()
        if s.state == "unhealthy" or s.draining or not s.serving or now > s.at + MISSED * INTERVAL
    )
    stats["out_at_end"] = out
    return stats


def test_no_ranking_holds_an_appliance_that_was_out_at_snapshot_time(
    synthetic: SyntheticFleet,
) -> None:
    stats = churn(synthetic, rounds=40, seed=5)
    assert stats["heartbeats"] >= 7000 and stats["rankings"] == 8000
    assert stats["chosen"] > 5 * stats["rankings"], stats  # rankings were not trivially empty
    assert stats["out_at_end"] > 100, stats


@pytest.mark.slow
def test_soak_no_ranking_holds_an_appliance_that_was_out(synthetic: SyntheticFleet) -> None:
    stats = churn(synthetic, rounds=1500, seed=6)
    assert stats["rankings"] == 300_000 and stats["chosen"] > 5 * stats["rankings"], stats
