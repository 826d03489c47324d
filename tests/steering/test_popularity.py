"""steering.popularity: decayed per-region title counts, object shares and boosts."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steering.catalog import Catalog, CatalogObject, ObjectKind, Title
from steering.popularity import Boost, Popularity, PopularityError, positional_prior

DAY = 86400.0
T0 = 1_795_000_000.0


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_title(
    title_id: str, segments: int = 4, *, release_at: float | None = None, size: int = 1000
) -> Title:
    prefix = f"/titles/{title_id}/"
    paths: list[tuple[str, ObjectKind, int]] = [
        (f"{prefix}manifest.mpd", "mpd", 100),
        (f"{prefix}v720/init.mp4", "init", 50),
    ]
    paths += [(f"{prefix}v720/seg-{k:05d}.m4s", "media", size) for k in range(1, segments + 1)]
    objects = tuple(CatalogObject(p, n, _sha(p), kind) for p, kind, n in sorted(paths))
    return Title(
        id=title_id,
        prefix=prefix,
        mpd_path=f"{prefix}manifest.mpd",
        objects=objects,
        origins=("http://origin.example:8000",),
        added_at=T0 - 30 * DAY,
        release_at=release_at,
    )


def seg(title_id: str, k: int) -> str:
    return f"/titles/{title_id}/v720/seg-{k:05d}.m4s"


@pytest.fixture
def catalog() -> Catalog:
    return Catalog([make_title("tos"), make_title("bbb"), make_title("sintel", 8)])


# ------------------------------------------------------------------ decay
def test_half_life_halves_the_score(catalog: Catalog) -> None:
    pop = Popularity(DAY)
    pop.record("eu", {seg("tos", 1): 100}, T0, catalog)
    now = pop.title_scores("eu", T0, catalog)["tos"]
    # 100 requests within a half-life of a day: an estimated 100 * ln 2 requests per day
    assert now == pytest.approx(100 * math.log(2))
    assert pop.title_scores("eu", T0 + DAY, catalog)["tos"] == pytest.approx(now / 2)
    assert pop.title_scores("eu", T0 + 3 * DAY, catalog)["tos"] == pytest.approx(now / 8)
    assert pop.title_score("eu", "tos", T0 + 2 * DAY, catalog) == pytest.approx(now / 4)


def test_steady_rate_converges_to_requests_per_day(catalog: Catalog) -> None:
    pop = Popularity(6 * 3600)
    # 240 requests a day, reported every 10 minutes, for 5 days (20 half-lives)
    step = 600.0
    for i in range(int(5 * DAY / step)):
        pop.record("eu", {seg("tos", 1): 240 * step / DAY}, T0 + i * step, catalog)
    assert pop.title_scores("eu", T0 + 5 * DAY - step, catalog)["tos"] == pytest.approx(
        240, rel=0.01
    )


def test_updates_accumulate_decayed(catalog: Catalog) -> None:
    pop = Popularity(DAY)
    pop.record("eu", {seg("tos", 1): 100}, T0, catalog)
    pop.record("eu", {seg("tos", 2): 100}, T0 + DAY, catalog)
    per_day = math.log(2)
    assert pop.title_scores("eu", T0 + DAY, catalog)["tos"] == pytest.approx(150 * per_day)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 10 * DAY), st.integers(1, 1000)),
        min_size=1,
        max_size=20,
    ),
    st.randoms(use_true_random=False),
)
def test_the_order_of_reports_does_not_matter(
    reports: list[tuple[float, int]], rnd: random.Random
) -> None:
    catalog = Catalog([make_title("tos")])
    in_order = Popularity(DAY)
    shuffled = Popularity(DAY)
    for dt, n in sorted(reports):
        in_order.record("eu", {seg("tos", 1): n}, T0 + dt, catalog)
    late = list(reports)
    rnd.shuffle(late)
    for dt, n in late:
        shuffled.record("eu", {seg("tos", 1): n}, T0 + dt, catalog)
    at = T0 + 11 * DAY
    expected = sum(n * 2 ** (-(at - T0 - dt) / DAY) for dt, n in reports) * math.log(2)
    assert in_order.title_score("eu", "tos", at, catalog) == pytest.approx(expected, rel=1e-9)
    assert shuffled.title_score("eu", "tos", at, catalog) == pytest.approx(expected, rel=1e-9)


# ------------------------------------------------------------------ intake
def test_paths_and_title_ids_are_attributed_unknown_ignored(catalog: Catalog) -> None:
    pop = Popularity(DAY)
    ignored = pop.record(
        "eu",
        {
            seg("tos", 1): 10,
            "/titles/tos/v1080/seg-00001.m4s": 5,  # under the prefix, not in the catalog
            "bbb": 7,  # a title id
            "/titles/nope/x.m4s": 3,
            "nope": 1,
            seg("sintel", 2): 0,
        },
        T0,
        catalog,
    )
    assert ignored == 2
    scores = pop.title_scores("eu", T0, catalog)
    assert scores == pytest.approx({"tos": 15 * math.log(2), "bbb": 7 * math.log(2)})
    assert pop.regions() == ("eu",)


def test_bad_counts_are_refused_whole(catalog: Catalog) -> None:
    pop = Popularity(DAY)
    with pytest.raises(PopularityError) as err:
        pop.record("eu", {seg("tos", 1): 4, seg("tos", 2): -1}, T0, catalog)
    assert err.value.field == f"counts[{seg('tos', 2)!r}]"
    with pytest.raises(PopularityError, match="counts"):
        pop.record("eu", {seg("tos", 1): math.nan}, T0, catalog)
    with pytest.raises(PopularityError, match="region"):
        pop.record("", {seg("tos", 1): 1}, T0, catalog)
    assert pop.title_scores("eu", T0, catalog) == {}
    with pytest.raises(PopularityError, match="half_life_seconds"):
        Popularity(0)


def test_regions_are_independent(catalog: Catalog) -> None:
    pop = Popularity(DAY)
    pop.record("eu", {seg("tos", 1): 50}, T0, catalog)
    pop.record("us", {seg("bbb", 1): 20, seg("tos", 1): 1}, T0, catalog)
    eu_before = pop.title_scores("eu", T0, catalog)
    pop.record("us", {seg("tos", 1): 1000}, T0, catalog)
    assert (
        pop.title_scores("eu", T0, catalog) == eu_before == {"tos": pytest.approx(50 * math.log(2))}
    )
    assert set(pop.title_scores("us", T0, catalog)) == {"tos", "bbb"}
    assert pop.title_scores("apac", T0, catalog) == {}


def test_removed_titles_leave_the_scores(catalog: Catalog) -> None:
    pop = Popularity(DAY)
    pop.record("eu", {seg("tos", 1): 5, seg("bbb", 1): 5}, T0, catalog)
    catalog.remove("bbb")
    assert set(pop.title_scores("eu", T0, catalog)) == {"tos"}
    assert pop.title_score("eu", "bbb", T0, catalog) == 0.0


# ------------------------------------------------------------------ object shares
def test_prior_favours_early_segments() -> None:
    title = make_title("long", 300)
    prior = positional_prior(title, half_segments=100)
    assert sum(prior.values()) == pytest.approx(1.0)
    assert prior["/titles/long/manifest.mpd"] == prior["/titles/long/v720/init.mp4"]
    assert prior[seg("long", 1)] == prior["/titles/long/manifest.mpd"]
    assert prior[seg("long", 101)] == pytest.approx(prior[seg("long", 1)] / 2)
    assert all(prior[seg("long", k)] > prior[seg("long", k + 1)] for k in range(1, 300))


def test_object_share_blends_observations_with_the_prior(catalog: Catalog) -> None:
    pop = Popularity(DAY, prior_weight=10)
    assert pop.object_share("sintel", T0, catalog) == pytest.approx(
        positional_prior(catalog.titles["sintel"])
    )
    pop.record("eu", {seg("sintel", 5): 90}, T0, catalog)
    pop.record("us", {seg("sintel", 5): 900}, T0, catalog)  # shares pool over regions
    share = pop.object_share("sintel", T0, catalog)
    assert set(share) == {o.path for o in catalog.titles["sintel"].objects}
    assert sum(share.values()) == pytest.approx(1.0)
    assert share[seg("sintel", 5)] > 0.95
    assert min(share.values()) > 0  # an unseen object of a played title is not cold
    assert pop.object_share("nope", T0, catalog) == {}


# ------------------------------------------------------------------ boosts
def test_boost_for_an_upcoming_release_takes_effect_in_its_window() -> None:
    release = T0 + 2 * DAY
    catalog = Catalog([make_title("tos"), make_title("new", release_at=release)])
    pop = Popularity(DAY)
    pop.add_boost(Boost("new", requests_per_day=5000, lead_seconds=12 * 3600, until=release + DAY))
    pop.record("eu", {seg("tos", 1): 100}, T0, catalog)
    assert "new" not in pop.title_scores("eu", T0, catalog)  # not yet: 2 days to go
    assert "new" not in pop.title_scores("eu", release - 12 * 3600 - 1, catalog)
    assert pop.title_scores("eu", release - 12 * 3600, catalog)["new"] == 5000  # 12 h ahead
    assert pop.title_scores("apac", release, catalog)["new"] == 5000  # every region
    # after release, the floor holds until observed demand passes it ...
    pop.record("eu", {seg("new", 1): 20000}, release + 3600, catalog)
    assert pop.title_scores("eu", release + 3600, catalog)["new"] == pytest.approx(
        20000 * math.log(2)
    )
    pop.record("us", {seg("new", 1): 1}, release + 3600, catalog)
    assert pop.title_scores("us", release + 3600, catalog)["new"] == 5000
    # ... and ends with the window
    assert pop.title_scores("us", release + DAY, catalog)["new"] < 1
    assert pop.prune(release + DAY, catalog) >= 1 and pop.boosts == ()


def test_boost_factor_region_and_explicit_window(catalog: Catalog) -> None:
    pop = Popularity(DAY)
    pop.record("eu", {seg("tos", 1): 100}, T0, catalog)
    pop.record("us", {seg("tos", 1): 100}, T0, catalog)
    base = 100 * math.log(2)
    pop.set_boosts(
        [
            Boost("tos", factor=3, starts_at=T0 - 10, until=T0 + 10, region="eu"),
            Boost("tos", factor=2, starts_at=T0 - 10, until=T0 + 10, region="eu"),
            Boost("bbb", requests_per_day=7),  # no release, no start: active at once
        ]
    )
    assert pop.title_scores("eu", T0, catalog)["tos"] == pytest.approx(3 * base)  # the highest wins
    assert pop.title_scores("us", T0, catalog)["tos"] == pytest.approx(base)
    assert pop.title_scores("eu", T0 + 10, catalog)["tos"] == pytest.approx(base * 2 ** (-10 / DAY))
    assert pop.title_scores("us", T0, catalog)["bbb"] == 7
    assert pop.remove_boosts("bbb") == 1 and "bbb" not in pop.title_scores("us", T0, catalog)


def test_every_upcoming_release_gets_the_configured_floor() -> None:
    release = T0 + DAY
    catalog = Catalog([make_title("tos"), make_title("new", release_at=release), make_title("bbb")])
    pop = Popularity(
        DAY,
        release_lead_seconds=6 * 3600,
        release_requests_per_day=800,
        release_hold_seconds=DAY,
    )
    assert pop.title_scores("eu", release - 6 * 3600 - 1, catalog) == {}
    assert pop.title_scores("eu", release - 6 * 3600, catalog) == {"new": 800}
    assert pop.title_score("eu", "new", release - 1, catalog) == 800
    pop.record("eu", {seg("new", 1): 5000}, release + 60, catalog)
    assert pop.title_scores("eu", release + 60, catalog)["new"] == pytest.approx(5000 * math.log(2))
    assert pop.title_scores("eu", release + DAY, catalog)["new"] == pytest.approx(
        5000 * math.log(2) * 2 ** (-(DAY - 60) / DAY)
    )  # the floor has ended
    assert pop.title_scores("us", release + DAY - 1, catalog) == {"new": 800}
    # a title that gains a release time later is picked up (the catalog changed)
    catalog.add(make_title("bbb", release_at=T0))
    assert pop.title_scores("us", T0, catalog) == {"bbb": 800}
    # a configured boost without starts_at uses the release lead by default
    pop.add_boost(Boost("new", requests_per_day=900))
    assert pop.title_score("us", "new", release - 6 * 3600, catalog) == 900
    assert pop.title_score("us", "new", release - 6 * 3600 - 1, catalog) == 0


def test_boost_validation_names_the_field() -> None:
    with pytest.raises(PopularityError, match="requests_per_day"):
        Boost("x", requests_per_day=-1)
    with pytest.raises(PopularityError, match="until"):
        Boost("x", starts_at=10, until=5)
    with pytest.raises(PopularityError, match="title_id"):
        Boost("")
    with pytest.raises(PopularityError, match="factor"):
        Boost("x", factor=math.inf)


# ------------------------------------------------------------------ soft state
def test_state_round_trips_through_a_file(catalog: Catalog, tmp_path: Path) -> None:
    pop = Popularity(DAY)
    pop.record("eu", {seg("tos", 1): 10, seg("sintel", 3): 4}, T0, catalog)
    pop.record("us", {"bbb": 3}, T0 + 60, catalog)
    pop.add_boost(Boost("bbb", requests_per_day=9, starts_at=T0, region="us"))
    pop.add_boost(Boost("tos", factor=2, lead_seconds=60, until=T0 + DAY))
    path = tmp_path / "popularity.json"
    pop.save(str(path))
    assert [p.name for p in tmp_path.iterdir()] == ["popularity.json"]
    again = Popularity.load(str(path), prior_weight=20.0)
    assert again.half_life_seconds == DAY
    for region in ("eu", "us"):
        at = T0 + DAY / 2
        assert again.title_scores(region, at, catalog) == pop.title_scores(region, at, catalog)
    assert again.object_share("sintel", T0, catalog) == pop.object_share("sintel", T0, catalog)
    assert again.boosts == pop.boosts
    assert again.regions() == ("eu", "us")
    # another half-life from the configuration keeps the counts
    faster = Popularity.from_json(pop.to_json(), half_life_seconds=DAY / 2)
    assert faster.half_life_seconds == DAY / 2
    assert faster.title_score("eu", "tos", T0, catalog) == pytest.approx(
        2 * pop.title_score("eu", "tos", T0, catalog)
    )


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(schema="other"), "schema"),
        (lambda d: d.update(extra=1), "extra"),
        (lambda d: d["regions"].update(eu={"tos": [-1, T0]}), "regions.eu.tos"),
        (lambda d: d["objects"].update(tos=[]), "objects.tos"),
        (lambda d: d["boosts"].append({"title": "x"}), "boosts[0].requests_per_day"),
        (
            lambda d: d["boosts"].append(
                {"title": "x", "requests_per_day": 1, "factor": -2, "lead_seconds": 0}
            ),
            "boosts[0].factor",
        ),
    ],
)
def test_bad_state_names_the_field(
    catalog: Catalog, mutate: Callable[[dict[str, Any]], None], field: str
) -> None:
    doc = orjson.loads(Popularity(DAY).to_json())
    mutate(doc)
    with pytest.raises(PopularityError) as err:
        Popularity.from_json(orjson.dumps(doc))
    assert err.value.field == field


def test_prune_forgets_what_faded(catalog: Catalog) -> None:
    pop = Popularity(3600)
    pop.record("eu", {seg("tos", 1): 1, seg("bbb", 1): 10**9}, T0, catalog)
    assert pop.prune(T0 + 20 * 3600, catalog) == 2  # tos: region and object counters
    assert set(pop.title_scores("eu", T0 + 20 * 3600, catalog)) == {"bbb"}
    catalog.remove("bbb")
    assert pop.prune(T0, catalog) == 2 and pop.regions() == ()
