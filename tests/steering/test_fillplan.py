"""steering.fillplan: per-site placement by rendezvous hashing and the fill manifests."""

from __future__ import annotations

import hashlib
import itertools

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fill.manifest import parse_manifest
from steering.catalog import Catalog, CatalogObject, ObjectKind, Title
from steering.fillplan import (
    ReplicaPolicy,
    SiteMember,
    SitePlan,
    manifest_for,
    manifest_from_plan,
    plan_site,
)
from steering.hashing import rendezvous_order, rendezvous_weight
from steering.popularity import Boost, Popularity

DAY = 86400.0
T0 = 1_795_000_000.0
ORIGINS = ("http://origin-a.example:8000", "https://origin-b.example/")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_title(
    title_id: str, size: int, *, segments: int = 3, release_at: float | None = None
) -> Title:
    """A title of exactly ``size`` bytes (MPD, init, ``segments`` media segments)."""
    prefix = f"/titles/{title_id}/"
    mpd, init = 10, 10
    media = size - mpd - init
    assert media >= 0
    per, extra = divmod(media, segments)
    items: list[tuple[str, ObjectKind, int]] = [
        (f"{prefix}manifest.mpd", "mpd", mpd),
        (f"{prefix}v1/init.mp4", "init", init),
    ]
    items += [
        (f"{prefix}v1/seg-{k:04d}.m4s", "media", per + (extra if k == 0 else 0))
        for k in range(segments)
    ]
    objects = tuple(CatalogObject(p, n, _sha(p), kind) for p, kind, n in sorted(items))
    return Title(
        id=title_id,
        prefix=prefix,
        mpd_path=f"{prefix}manifest.mpd",
        objects=objects,
        origins=ORIGINS,
        added_at=T0 - DAY,
        release_at=release_at,
    )


def site(n: int, capacity: int, name: str = "ix-fra") -> list[SiteMember]:
    return [SiteMember(f"oca-{name}-{i:02d}", name, "eu", capacity) for i in range(n)]


def titles_of(plan: SitePlan) -> dict[str, frozenset[str]]:
    return {tp.title_id: frozenset(tp.appliances) for tp in plan.titles if tp.appliances}


def check_capacity(plan: SitePlan, catalog: Catalog) -> None:
    for a, held in plan.by_appliance.items():
        used = sum(catalog.titles[t].size for t in held)
        assert used == plan.planned_bytes[a] <= plan.budget_bytes[a]
        assert len(set(held)) == len(held)


# ------------------------------------------------------------------ hashing
def test_rendezvous_weight_is_blake2b_of_title_and_appliance() -> None:
    digest = hashlib.blake2b(b"tos\x00oca-a1", digest_size=8).digest()
    assert rendezvous_weight("tos", "oca-a1") == int.from_bytes(digest, "big")
    ids = [f"oca-{i}" for i in range(20)]
    order = rendezvous_order("tos", ids)
    assert sorted(order) == sorted(ids)
    weights = [rendezvous_weight("tos", a) for a in order]
    assert weights == sorted(weights, reverse=True)
    assert rendezvous_order("tos", reversed(ids)) == order


# ------------------------------------------------------------------ replica rule
def test_replica_rule() -> None:
    policy = ReplicaPolicy(requests_per_replica=100)
    assert [policy.replicas(s, 4) for s in (0.5, 100, 100.1, 250, 10**9)] == [1, 1, 2, 3, 4]
    assert policy.replicas(50, 0) == 0
    capped = ReplicaPolicy(requests_per_replica=100, min_replicas=2, max_replicas=3)
    assert [capped.replicas(s, 5) for s in (1, 350, 10**6)] == [2, 3, 3]
    assert capped.replicas(1, 1) == 1  # never more than the site has
    with pytest.raises(ValueError, match="requests_per_replica"):
        ReplicaPolicy(requests_per_replica=0)
    with pytest.raises(ValueError, match="max_replicas"):
        ReplicaPolicy(min_replicas=3, max_replicas=2)


@given(st.floats(0, 1e7), st.floats(0, 1e7), st.integers(1, 30))
def test_replicas_never_decrease_with_the_score(a: float, b: float, n: int) -> None:
    policy = ReplicaPolicy(requests_per_replica=1000)
    lo, hi = sorted((a, b))
    assert 1 <= policy.replicas(lo, n) <= policy.replicas(hi, n) <= n


# ------------------------------------------------------------------ placement
def test_hot_titles_get_more_replicas_on_their_rendezvous_appliances() -> None:
    catalog = Catalog([make_title(t, 1000) for t in ("hot", "warm", "cold", "unknown")])
    scores = {"hot": 950.0, "warm": 250.0, "cold": 3.0, "unknown": 0.0, "gone": 50.0}
    members = site(4, 10_000)
    plan = plan_site(members, catalog, scores, policy=ReplicaPolicy(requests_per_replica=100))
    placed = {tp.title_id: tp for tp in plan.titles}
    ids = [m.appliance_id for m in members]
    assert placed["hot"].appliances == tuple(rendezvous_order("hot", ids))  # 10 wanted, 4 there
    assert placed["warm"].appliances == tuple(rendezvous_order("warm", ids)[:3])
    assert placed["cold"].appliances == tuple(rendezvous_order("cold", ids)[:1])
    assert "unknown" not in placed  # no score: never placed
    assert placed["gone"].appliances == () and placed["gone"].reason == "not in the catalog"
    assert "3 of 3 replicas" in placed["warm"].reason
    assert [tp.title_id for tp in plan.titles] == ["hot", "warm", "gone", "cold"]
    for a in ids:
        assert plan.by_appliance[a][0] == "hot"
    check_capacity(plan, catalog)


def test_a_title_that_does_not_fit_tries_the_next_appliance_in_hash_order() -> None:
    catalog = Catalog([make_title("big", 900), make_title("small", 200)])
    members = [
        SiteMember("oca-a", "s", "eu", 1000),
        SiteMember("oca-b", "s", "eu", 1000),
        SiteMember("oca-c", "s", "eu", 500),
    ]
    order = rendezvous_order("big", ["oca-a", "oca-b", "oca-c"])
    plan = plan_site(members, catalog, {"big": 10.0, "small": 1.0}, headroom_fraction=0)
    big = plan.placement("big")
    assert big is not None
    assert big.appliances == (next(a for a in order if a != "oca-c"),)
    if order[0] == "oca-c":
        assert "do not fit on oca-c (500 bytes left)" in big.reason
    check_capacity(plan, catalog)


def test_titles_larger_than_every_member_are_reported_and_planning_stops_when_full() -> None:
    catalog = Catalog([make_title(f"t{i}", 400) for i in range(10)] + [make_title("huge", 5000)])
    scores = {f"t{i}": 100.0 - i for i in range(10)} | {"huge": 1000.0}
    plan = plan_site(site(2, 1000), catalog, scores, headroom_fraction=0.2)
    huge = plan.placement("huge")
    assert huge is not None and huge.appliances == ()
    assert "5000 bytes do not fit" in huge.reason
    assert plan.budget_bytes == {"oca-ix-fra-00": 800, "oca-ix-fra-01": 800}
    assert sum(len(v) for v in plan.by_appliance.values()) == 4  # two of 400 per appliance
    assert plan.not_examined == 6  # t4..t9: nobody has 400 bytes left
    check_capacity(plan, catalog)


def test_boosted_upcoming_release_is_placed_unknown_titles_are_not() -> None:
    release = T0 + DAY
    catalog = Catalog([make_title("old", 100), make_title("new", 100, release_at=release)])
    pop = Popularity(DAY)
    pop.add_boost(Boost("new", requests_per_day=1e6, lead_seconds=6 * 3600))
    before = plan_site(site(3, 1000), catalog, pop.title_scores("eu", T0, catalog))
    assert before.titles == ()
    during = plan_site(site(3, 1000), catalog, pop.title_scores("eu", release - 3600, catalog))
    new = during.placement("new")
    assert new is not None and len(new.appliances) == 3


def test_bad_members_are_refused() -> None:
    catalog = Catalog([make_title("t", 100)])
    with pytest.raises(ValueError, match=r"members\[1\]\.site"):
        plan_site([*site(1, 10), *site(1, 10, "other")], catalog, {})
    with pytest.raises(ValueError, match=r"members\[1\]\.appliance_id"):
        plan_site(site(1, 10) * 2, catalog, {})
    with pytest.raises(ValueError, match="headroom_fraction"):
        plan_site(site(1, 10), catalog, {}, headroom_fraction=1)
    empty = plan_site([], catalog, {"t": 5.0})
    assert empty.by_appliance == {} and empty.not_examined == 1


# ------------------------------------------------------------------ the manifest
def test_manifest_parses_with_the_fill_agent() -> None:
    catalog = Catalog([make_title("tos", 1000, segments=4), make_title("bbb", 500)])
    pop = Popularity(DAY)
    requests = {"/titles/tos/v1/seg-0002.m4s": 40, "/titles/bbb/manifest.mpd": 4}
    pop.record("eu", requests, T0, catalog)
    scores = pop.title_scores("eu", T0, catalog)
    members = site(2, 10_000)
    plan = plan_site(members, catalog, scores, policy=ReplicaPolicy(requests_per_replica=10))
    for m in members:
        doc = manifest_from_plan(
            m.appliance_id,
            plan,
            catalog,
            generated_at=T0,
            object_share=lambda t: pop.object_share(t, T0, catalog),
        )
        # planning and building in one call gives the same manifest
        assert doc == manifest_for(
            m.appliance_id, members, catalog, scores, now=T0, popularity=pop,
            requests_per_replica=10, headroom_fraction=0.05,
        )  # fmt: skip
        parsed = parse_manifest(orjson.dumps(doc))
        assert parsed.appliance == m.appliance_id and parsed.generated_at == T0
        by_title: dict[str | None, float] = {}
        for o in parsed.objects:
            title_id = o.path.split("/")[2]
            obj = next(x for x in catalog.titles[title_id].objects if x.path == o.path)
            assert (o.size, o.sha256, o.tier) == (obj.size, obj.sha256, None)
            assert o.title == f"/titles/{title_id}"
            assert o.sources == (
                f"http://origin-a.example:8000{o.path}",
                f"https://origin-b.example{o.path}",
            )
            by_title[title_id] = by_title.get(title_id, 0.0) + o.popularity
        held = plan.by_appliance[m.appliance_id]
        assert set(by_title) == set(held)
        for t in held:
            assert by_title[t] == pytest.approx(scores[t])  # the title's score, spread
        if "tos" in held:
            pops = {o.path: o.popularity for o in parsed.objects}
            assert pops["/titles/tos/v1/seg-0002.m4s"] == max(
                v for p, v in pops.items() if p.startswith("/titles/tos/")
            )
    with pytest.raises(ValueError, match="not a member"):
        manifest_from_plan("oca-elsewhere", plan, catalog, generated_at=T0)
    with pytest.raises(ValueError, match="not both"):
        manifest_for(
            "oca-ix-fra-00", members, catalog, scores, now=T0,
            policy=ReplicaPolicy(), requests_per_replica=10,
        )  # fmt: skip


def test_manifest_without_object_shares_uses_the_prior_and_skips_removed_titles() -> None:
    catalog = Catalog([make_title("a", 300), make_title("b", 300)])
    plan = plan_site(site(1, 1000), catalog, {"a": 2.0, "b": 1.0})
    catalog.remove("b")
    doc = manifest_from_plan("oca-ix-fra-00", plan, catalog, generated_at=T0)
    parsed = parse_manifest(orjson.dumps(doc))
    assert {o.title for o in parsed.objects} == {"/titles/a"}
    assert sum(o.popularity for o in parsed.objects) == pytest.approx(2.0)
    assert all(o.popularity > 0 for o in parsed.objects)


# ------------------------------------------------------------------ properties
title_sets = st.lists(
    st.tuples(st.integers(20, 3000), st.floats(0.0, 5000.0)), min_size=1, max_size=40
)


def build(specs: list[tuple[int, float]]) -> tuple[Catalog, dict[str, float]]:
    catalog = Catalog([make_title(f"t{i:03d}", size) for i, (size, _) in enumerate(specs)])
    return catalog, {f"t{i:03d}": score for i, (_, score) in enumerate(specs)}


@settings(max_examples=60, deadline=None)
@given(title_sets, st.lists(st.integers(0, 20_000), min_size=1, max_size=8))
def test_capacity_is_never_exceeded_and_planning_is_deterministic(
    specs: list[tuple[int, float]], capacities: list[int]
) -> None:
    catalog, scores = build(specs)
    members = [SiteMember(f"oca-{i}", "s", "eu", c) for i, c in enumerate(capacities)]
    policy = ReplicaPolicy(requests_per_replica=700)
    plan = plan_site(members, catalog, scores, policy=policy)
    check_capacity(plan, catalog)
    for tp in plan.titles:
        assert len(tp.appliances) <= tp.wanted
    assert 0 not in {tp.score for tp in plan.titles}
    # the same inputs in another order give the same plan
    again = plan_site(
        list(reversed(members)), catalog, dict(reversed(scores.items())), policy=policy
    )
    assert again == plan


@settings(max_examples=60, deadline=None)
@given(title_sets, st.integers(1, 8))
def test_hotter_titles_have_at_least_as_many_replicas(
    specs: list[tuple[int, float]], n: int
) -> None:
    catalog, scores = build(specs)
    plan = plan_site(
        site(n, 10**9), catalog, scores, policy=ReplicaPolicy(requests_per_replica=500)
    )
    placed = [tp for tp in plan.titles if tp.appliances]
    assert len(placed) == sum(1 for s in scores.values() if s > 0)
    for hotter, colder in itertools.pairwise(placed):
        assert hotter.score >= colder.score
        assert len(hotter.appliances) >= len(colder.appliances)


@settings(max_examples=60, deadline=None)
@given(title_sets, st.integers(1, 10), st.integers(1, 4))
def test_adding_an_appliance_moves_only_the_titles_it_ranks_high_for(
    specs: list[tuple[int, float]], n: int, max_replicas: int
) -> None:
    """With room for everything, a title changes appliances only where the new one ranks
    among its first replicas: it gains the new appliance and loses at most one other."""
    catalog, scores = build(specs)
    policy = ReplicaPolicy(requests_per_replica=800, max_replicas=max_replicas)
    before = titles_of(plan_site(site(n, 10**9), catalog, scores, policy=policy))
    grown = site(n + 1, 10**9)
    new = grown[-1].appliance_id
    after = titles_of(plan_site(grown, catalog, scores, policy=policy))
    assert set(before) == set(after)
    moved = 0
    for t in before:
        if before[t] == after[t]:
            continue
        moved += 1
        assert after[t] - before[t] == {new}
        assert len(before[t] - after[t]) <= 1
    assert moved == sum(1 for held in after.values() if new in held)


def test_adding_an_appliance_to_a_full_site_moves_a_bounded_share() -> None:
    # 2000 titles of varied size and a Zipf-like popularity, far more than the site holds
    specs = [(1000 + (i * 7919) % 9000, 1e5 / (i + 1)) for i in range(2000)]
    catalog, scores = build(specs)
    policy = ReplicaPolicy(requests_per_replica=2000)
    for n in (4, 8):
        before = plan_site(site(n, 2_000_000), catalog, scores, policy=policy)
        after = plan_site(site(n + 1, 2_000_000), catalog, scores, policy=policy)
        new = f"oca-ix-fra-{n:02d}"
        a, b = titles_of(before), titles_of(after)
        # replicas that went away from the old appliances, as a share of all
        old_pairs = {(t, x) for t, xs in a.items() for x in xs}
        new_pairs = {(t, x) for t, xs in b.items() for x in xs if x != new}
        lost = len(old_pairs - new_pairs) / len(old_pairs)
        assert lost <= 2 / (n + 1), (n, lost)
        # and a re-plan with unchanged capacities changes nothing
        assert plan_site(site(n, 2_000_000), catalog, scores, policy=policy) == before
