"""steering.ranking: each rule of the order, exclusions with their reasons, and
properties (the fast path equals the explained reference, determinism across replicas,
only eligible holders chosen, overloaded last)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steering.catalog import Catalog
from steering.fleet import Fleet, Snapshot
from steering.hashing import rendezvous_order
from steering.ranking import Ranking, RankPolicy, great_circle_km, rank
from tests.steering.test_fleet import heartbeat, make_title, paths_of

FRA = {"site": "fra", "region": "eu", "lat": 50.11, "lon": 8.68}
AMS = {"site": "ams", "region": "eu", "lat": 52.37, "lon": 4.90}
MAD = {"site": "mad", "region": "eu", "lat": 40.42, "lon": -3.70}
NYC = {"site": "nyc", "region": "us", "lat": 40.71, "lon": -74.01}
NOWHERE = {"site": "unk", "region": "eu", "lat": None, "lon": None}


def catalog() -> Catalog:
    return Catalog([make_title("a"), make_title("b")])


def fleet_of(specs: dict[str, dict[str, Any]], cat: Catalog, now: float = 100.0) -> Snapshot:
    """A snapshot of appliances given as heartbeat() keyword arguments; ``titles`` lists
    the titles each holds, ``ago`` how long before ``now`` it was last heard from."""
    fleet = Fleet(catalog=cat)
    for aid, spec in specs.items():
        spec = dict(spec)
        titles = spec.pop("titles", ("a",))
        ago = spec.pop("ago", 0.0)
        objects = spec.pop("objects", [p for t in titles for p in paths_of(cat, t)])
        fleet.apply(heartbeat(aid, objects=objects, **spec), now - ago)
    return fleet.snapshot(now)


def ids(r: Ranking) -> list[str]:
    return [c.appliance.id for c in r.chosen]


def reasons(r: Ranking, aid: str) -> tuple[str, ...]:
    return next(c.reasons for c in r.chosen if c.appliance.id == aid)


def excluded(r: Ranking) -> dict[str, str]:
    return {e.appliance_id: e.reason for e in r.excluded}


def both(snap: Snapshot, client: str, **kw: Any) -> Ranking:
    """The fast ranking, checked against the explained one."""
    fast = rank(snap, client, **kw)
    slow = rank(snap, client, explain=True, **kw)
    assert _key(fast) == _key(slow)
    return slow


def _key(r: Ranking) -> list[tuple[Any, ...]]:
    return [(c.appliance.id, c.holder, c.prefix, c.overloaded, c.reasons) for c in r.chosen]


# --------------------------------------------------------------------------- the order


def test_longest_prefix_first_then_site_region_and_distance() -> None:
    cat = catalog()
    snap = fleet_of(
        {
            "fra1": {**FRA, "prefixes": ["10.1.0.0/16", "10.1.1.0/24"]},
            "fra2": {**FRA, "prefixes": ["10.1.0.0/16"]},
            "nyc1": {**NYC, "prefixes": ["10.0.0.0/8"]},
            "ams1": {**AMS, "prefixes": ["10.2.0.0/16"]},
            "mad1": {**MAD, "prefixes": ["10.3.0.0/16"]},
            "unk1": {**NOWHERE, "prefixes": []},
        },
        cat,
    )
    r = both(snap, "10.1.1.7", title="a")
    # /24, /16, then the /8 of a far appliance, then the client's region by distance,
    # unknown coordinates last
    assert ids(r) == ["fra1", "fra2", "nyc1", "ams1", "mad1", "unk1"]
    assert r.home.prefix == ipaddress.ip_network("10.1.1.0/24") and r.home.sites == ("fra",)
    assert reasons(r, "fra1") == (
        "prefix 10.1.1.0/24 contains 10.1.1.7 (/24)",
        "site fra = client's home",
        "0 km from the client's home",
        "holds /titles/a/",
        "rendezvous rank 1 at site fra",
    )
    km = great_circle_km(FRA["lat"], FRA["lon"], AMS["lat"], AMS["lon"])  # type: ignore[arg-type]
    assert reasons(r, "ams1")[:3] == (
        "announces no prefix containing 10.1.1.7",
        "region eu = client's home region",
        f"{km:.0f} km from the client's home",
    )
    assert reasons(r, "nyc1")[1] == "region us is not the client's home region (eu)"
    assert reasons(r, "unk1")[2] == "distance from the client's home unknown"
    assert r.excluded == ()

    # from Amsterdam: its own site, then Frankfurt (nearer than Madrid), the US last
    r = both(snap, "10.2.3.4", title="a")
    assert ids(r) == ["ams1", "nyc1", "fra1", "fra2", "mad1", "unk1"]


def test_the_home_is_found_among_every_known_appliance() -> None:
    """The appliance announcing the client's prefix is unhealthy: it is excluded, but the
    client's home is still its site."""
    cat = catalog()
    snap = fleet_of(
        {
            "mad1": {**MAD, "prefixes": ["10.3.0.0/16"], "state": "unhealthy", "reasons": ["x"]},
            "mad2": {**MAD},
            "fra1": {**FRA},
        },
        cat,
    )
    r = both(snap, "10.3.0.9", title="a")
    assert ids(r) == ["mad2", "fra1"] and r.home.sites == ("mad",)
    assert excluded(r) == {"mad1": "unhealthy: x"}


def test_rendezvous_orders_a_site_and_holders_come_before_peers() -> None:
    cat = catalog()
    members = [f"fra{i}" for i in range(1, 7)]
    holding = members[:3]
    snap = fleet_of(
        {m: {**FRA, "prefixes": ["10.1.0.0/16"], "titles": ("a",) if m in holding else ()}
         for m in members},
        cat,
    )  # fmt: skip
    r = both(snap, "10.1.0.1", title="a")
    order = rendezvous_order("a", members)
    assert ids(r) == [m for m in order if m in holding] + [m for m in order if m not in holding]
    for rank_at_site, m in enumerate(order, 1):
        assert f"rendezvous rank {rank_at_site} at site fra" in reasons(r, m)
    peer = next(c for c in r.chosen if not c.holder)
    assert any(
        x.startswith("site-mate ") and x.endswith("holds /titles/a/ (site peering)")
        for x in peer.reasons
    )
    # without site peering the others are excluded
    r = both(snap, "10.1.0.1", title="a", policy=RankPolicy(site_peering=False))
    assert ids(r) == [m for m in order if m in holding]
    assert set(excluded(r).values()) == {"does not hold /titles/a/ (site peering off)"}


def test_peers_need_a_live_holder_at_their_site() -> None:
    cat = catalog()
    snap = fleet_of(
        {
            "fra1": {**FRA, "state": "unhealthy", "reasons": ["disk ssd:/srv/ssd0 failed: EIO"]},
            "fra2": {**FRA, "titles": ()},
            "ams1": {**AMS, "titles": ()},
        },
        cat,
    )
    r = both(snap, "10.1.0.1", title="a")
    assert r.chosen == ()
    assert excluded(r) == {
        "fra1": "unhealthy: disk ssd:/srv/ssd0 failed: EIO",
        "fra2": "does not hold /titles/a/, and its site-mates that do are stale or unhealthy",
        "ams1": "does not hold /titles/a/ and no site-mate does",
    }


def test_overloaded_appliances_are_passed_over() -> None:
    cat = catalog()
    snap = fleet_of(
        {
            "fra1": {**FRA, "prefixes": ["10.1.0.0/16"], "load": 0.93},
            "fra2": {**FRA, "prefixes": ["10.1.0.0/16"], "load": 0.2},
            "mad1": {**MAD, "load": 0.85},
            "nyc1": {**NYC},
        },
        cat,
    )
    r = both(snap, "10.1.0.1", title="a")
    assert ids(r) == ["fra2", "nyc1", "fra1", "mad1"]
    assert [c.overloaded for c in r.chosen] == [False, False, True, True]
    assert reasons(r, "fra1")[0] == "overloaded: load 0.93 >= 0.85, passed over"
    assert ids(both(snap, "10.1.0.1", title="a", policy=RankPolicy(n=2))) == ["fra2", "nyc1"]
    r = both(snap, "10.1.0.1", title="a", policy=RankPolicy(overload_threshold=0.95))
    assert ids(r) == ["fra1", "fra2", "mad1", "nyc1"]


def test_stale_draining_unhealthy_and_not_serving_are_excluded_with_reasons() -> None:
    cat = catalog()
    snap = fleet_of(
        {
            "a-stale": {**FRA, "ago": 7.1},
            "b-drain": {**FRA, "draining": True},
            "c-sick": {**FRA, "state": "unhealthy"},
            "d-off": {**FRA, "serving": False},
            "e-degraded": {**FRA, "state": "degraded", "reasons": ["one disk failed"]},
            "f-ok": {**FRA},
        },
        cat,
    )
    r = both(snap, "10.1.0.1", title="a")
    assert ids(r) == ["e-degraded", "f-ok"] or ids(r) == ["f-ok", "e-degraded"]
    assert excluded(r) == {
        "a-stale": "stale: last heartbeat 7.1 s ago (limit 6.0 s)",
        "b-drain": "draining",
        "c-sick": "unhealthy",
        "d-off": "not serving",
    }
    assert rank(snap, "10.1.0.1", title="a").excluded == ()  # only in explain mode


def test_allow_miss_makes_every_eligible_appliance_a_candidate() -> None:
    cat = catalog()
    snap = fleet_of(
        {"fra1": {**FRA, "prefixes": ["10.1.0.0/16"]}, "ams1": {**AMS}, "nyc1": {**NYC}}, cat
    )
    r = both(snap, "10.1.0.1", title="b")
    assert r.chosen == () and not r.miss
    assert set(excluded(r).values()) == {"does not hold /titles/b/ and no site-mate does"}
    r = both(snap, "10.1.0.1", title="b", policy=RankPolicy(allow_miss=True))
    assert r.miss and ids(r) == ["fra1", "ams1", "nyc1"]
    assert not any(c.holder for c in r.chosen)
    assert "no eligible appliance holds /titles/b/: fetches it on a miss" in reasons(r, "ams1")
    # a title somebody eligible holds is no miss
    r = both(snap, "10.1.0.1", title="a", policy=RankPolicy(allow_miss=True))
    assert not r.miss and ids(r) == ["fra1", "ams1", "nyc1"]


def test_n_caps_the_answer() -> None:
    cat = catalog()
    snap = fleet_of({f"fra{i}": {**FRA} for i in range(5)}, cat)
    r = both(snap, "10.1.0.1", title="a", policy=RankPolicy(n=2))
    assert len(r.chosen) == 2
    assert sorted(excluded(r).values()) == ["beyond the first 2"] * 3
    with pytest.raises(ValueError, match="n must be"):
        RankPolicy(n=0)
    with pytest.raises(ValueError, match="overload_threshold"):
        RankPolicy(overload_threshold=float("nan"))


def test_one_object_and_objects_outside_the_catalog() -> None:
    cat = catalog()
    a = paths_of(cat, "a")
    snap = fleet_of(
        {
            "fra1": {**FRA, "objects": [*a[:1], "/loose/x"]},
            "ams1": {**AMS, "objects": a},
            "nyc1": {**NYC, "objects": []},
        },
        cat,
    )
    assert ids(both(snap, "10.1.0.1", title="a")) == ["ams1"]
    assert ids(both(snap, "10.1.0.1", title="a", path=a[0])) == ["fra1", "ams1"]
    assert ids(both(snap, "10.1.0.1", path=a[0])) == ["fra1", "ams1"]
    r = both(snap, "10.1.0.1", path="/loose/x")
    assert ids(r) == ["fra1"] and "holds /loose/x" in reasons(r, "fra1")
    with pytest.raises(ValueError, match="title or a path"):
        rank(snap, "10.1.0.1")


def test_ipv6_and_ipv4_mapped_clients() -> None:
    cat = catalog()
    snap = fleet_of(
        {
            "fra1": {**FRA, "prefixes": ["10.1.0.0/16", "2001:db8:1::/48"]},
            "ams1": {**AMS, "prefixes": ["2001:db8::/32"]},
        },
        cat,
    )
    assert ids(both(snap, "2001:db8:1::7", title="a")) == ["fra1", "ams1"]
    assert ids(both(snap, "2001:db8:2::7", title="a")) == ["ams1", "fra1"]
    r = both(snap, "::ffff:10.1.2.3", title="a")
    assert str(r.client) == "10.1.2.3" and ids(r) == ["fra1", "ams1"]
    match = snap.longest_match("2001:db8:1::9")
    assert match is not None and match.appliances == ("fra1",)
    assert snap.longest_match("192.0.2.1") is None


def test_a_client_nowhere_is_ranked_by_holding_and_rendezvous() -> None:
    cat = catalog()
    snap = fleet_of({"fra1": {**FRA}, "fra2": {**FRA, "titles": ()}, "ams1": {**AMS}}, cat)
    r = both(snap, "192.0.2.1", title="a")
    holders = rendezvous_order("a", ["fra1", "ams1"])
    assert ids(r) == [*holders, "fra2"]
    assert r.home.prefix is None
    assert "client's home unknown" in reasons(r, "fra1")[1]


# --------------------------------------------------------------------------- properties

SITES = {"s1": (50.0, 8.0), "s2": (52.0, 4.0), "s3": (40.0, -74.0), "s4": (50.0, 8.0)}
PREFIXES = ["10.0.0.0/8", "10.1.0.0/16", "10.1.1.0/24", "10.2.0.0/16", "2001:db8::/32",
            "2001:db8:1::/48"]  # fmt: skip
CLIENTS = ["10.1.1.5", "10.1.2.5", "10.2.0.1", "10.9.0.1", "192.0.2.1", "2001:db8:1::5",
           "2001:db8:2::5"]  # fmt: skip
CAT = catalog()
OBJECTS = paths_of(CAT, "a") + paths_of(CAT, "b")


@st.composite
def appliance_specs(draw: st.DrawFn) -> list[tuple[str, dict[str, Any], float]]:
    count = draw(st.integers(1, 9))
    out = []
    for i in range(count):
        site = draw(st.sampled_from(sorted(SITES)))
        lat, lon = SITES[site] if draw(st.integers(0, 5)) else (None, None)
        spec = {
            "site": site,
            "region": draw(st.sampled_from(["r1", "r2"])),
            "lat": lat,
            "lon": lon,
            "prefixes": draw(st.lists(st.sampled_from(PREFIXES), max_size=3)),
            "state": draw(st.sampled_from(["healthy", "healthy", "degraded", "unhealthy"])),
            "draining": draw(st.integers(0, 6)) == 0,
            "serving": draw(st.integers(0, 6)) != 0,
            "load": draw(st.sampled_from([0.1, 0.5, 0.85, 0.9, 1.3])),
            "interval": draw(st.sampled_from([1.0, 2.0])),
            "objects": draw(st.lists(st.sampled_from(OBJECTS), unique=True)),
        }
        ago = draw(st.sampled_from([0.0, 0.0, 1.0, 10.0]))
        out.append((f"a{i}", spec, ago))
    return out


policies = st.builds(
    RankPolicy,
    n=st.integers(1, 6),
    overload_threshold=st.sampled_from([0.5, 0.85, 1.0]),
    site_peering=st.booleans(),
    allow_miss=st.booleans(),
)


def _snapshot(specs: Sequence[tuple[str, dict[str, Any], float]], order: Iterable[int]) -> Snapshot:
    fleet = Fleet(catalog=CAT)
    for i in order:
        aid, spec, ago = specs[i]
        fleet.apply(heartbeat(aid, **spec), 100.0 - ago)
    return fleet.snapshot(100.0)


def _subject(choice: int) -> tuple[str | None, str | None]:
    """(title, path): a whole title, or one object."""
    if choice < 2:
        return "ab"[choice], None
    return None, OBJECTS[choice - 2]


@settings(max_examples=150, deadline=None)
@given(
    specs=appliance_specs(),
    client=st.sampled_from(CLIENTS),
    policy=policies,
    subject=st.integers(0, len(OBJECTS) + 1),
    data=st.data(),
)
def test_ranking_properties(
    specs: list[tuple[str, dict[str, Any], float]],
    client: str,
    policy: RankPolicy,
    subject: int,
    data: st.DataObject,
) -> None:
    snap = _snapshot(specs, range(len(specs)))
    title, path = _subject(subject)
    fast = rank(snap, client, title=title, path=path, policy=policy)
    slow = rank(snap, client, title=title, path=path, policy=policy, explain=True)
    # the fast path is the explained reference, and deterministic
    assert (
        _key(fast) == _key(slow) == _key(rank(snap, client, title=title, path=path, policy=policy))
    )
    assert fast.miss == slow.miss and len(fast.chosen) <= policy.n
    # explain covers every known appliance exactly once
    named = [c.appliance.id for c in slow.chosen] + [e.appliance_id for e in slow.excluded]
    assert sorted(named) == sorted(snap.appliances)
    # every chosen appliance is eligible and holds it (or a live site-mate does)
    for c in fast.chosen:
        v = c.appliance
        assert v.fresh and v.state != "unhealthy" and not v.draining and v.serving
        wanted = [path] if path is not None else paths_of(CAT, title or "")
        holds = all(snap.holds(v.id, p) for p in wanted)
        assert c.holder == (holds and not fast.miss)
        if not holds and not fast.miss:
            assert policy.site_peering
            mates = [snap.appliances[m] for m in snap.site_members(v.site)]
            assert any(
                m.fresh and m.state != "unhealthy" and all(snap.holds(m.id, p) for p in wanted)
                for m in mates
            )
        assert c.overloaded == (v.load_fraction >= policy.overload_threshold)
    # overloaded appliances never precede one that is not
    flags = [c.overloaded for c in fast.chosen]
    assert flags == sorted(flags)
    # a replica fed the same heartbeats in another order answers the same
    order = data.draw(st.permutations(range(len(specs))))
    other = _snapshot(specs, order)
    again = rank(other, client, title=title, path=path, policy=policy, explain=True)
    assert _key(again) == _key(slow) and again.excluded == slow.excluded


@settings(max_examples=60, deadline=None)
@given(specs=appliance_specs(), policy=policies, data=st.data())
def test_caches_follow_inventory_changes(
    specs: list[tuple[str, dict[str, Any], float]], policy: RankPolicy, data: st.DataObject
) -> None:
    """Rankings from a fleet whose inventories keep changing stay equal to those of a
    fleet built fresh in each state (the per-title caches are never served stale)."""
    fleet = Fleet(catalog=CAT)
    for aid, spec, ago in specs:
        fleet.apply(heartbeat(aid, **{**spec, "objects": OBJECTS}), 100.0 - ago)
    for step in range(1, 4):
        for client in CLIENTS:  # warm the caches at many locations
            for title in ("a", "b"):
                rank(fleet.snapshot(100.0), client, title=title, policy=policy)
        specs = [
            (aid, {**spec, "objects": data.draw(st.lists(st.sampled_from(OBJECTS), unique=True))},
             ago)
            for aid, spec, ago in specs
        ]  # fmt: skip
        for aid, spec, ago in specs:
            fleet.apply(heartbeat(aid, seq=1 + step, **spec), 100.0 - ago)
        changed = fleet.snapshot(100.0)
        fresh = _snapshot(specs, range(len(specs)))
        for client in CLIENTS:
            for title in ("a", "b"):
                assert _key(rank(changed, client, title=title, policy=policy)) == _key(
                    rank(fresh, client, title=title, policy=policy)
                )
