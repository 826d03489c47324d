"""The content steering manifest from a ranking (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from steering.contentsteering import Pathway, PlayerReport, hls_tag, manifest, priority

A = Pathway("a", "http://10.0.0.1:8080")
B = Pathway("b", "http://10.0.0.2:8080")
C = Pathway("c", "http://10.0.0.3:8080")


def test_report_reads_dash_and_hls_parameters_quoted_or_not() -> None:
    assert PlayerReport.from_query({"_DASH_pathway": '"b"', "_DASH_throughput": "123"}) == (
        PlayerReport("b", 123.0)
    )
    assert PlayerReport.from_query({"_HLS_pathway": "c", "_HLS_throughput": "5e6"}) == (
        PlayerReport("c", 5e6)
    )
    for bad in ("x", "-1", "nan", "inf"):
        assert PlayerReport.from_query({"_DASH_throughput": bad}).throughput_bits is None
    assert PlayerReport.from_query({}) == PlayerReport(None, None)


def test_a_player_doing_well_stays_on_its_pathway() -> None:
    order, notes = priority([A, B, C], PlayerReport("b", 5e6), min_throughput_bits=1_000_000)
    assert order == ["b", "a", "c"] and "kept first" in notes[0]


def test_an_overloaded_current_pathway_is_not_kept_first() -> None:
    hot = Pathway("b", B.base_url, overloaded=True)
    order, _ = priority([A, hot], PlayerReport("b", None), min_throughput_bits=0)
    assert order == ["a", "b"]


def test_a_slow_pathway_goes_last() -> None:
    order, notes = priority([A, B, C], PlayerReport("a", 1000), min_throughput_bits=1_000_000)
    assert order == ["b", "c", "a"] and "moved last" in notes[0]


def test_a_pathway_no_longer_ranked_is_left_out() -> None:
    order, notes = priority([B, C], PlayerReport("a", 5e6), min_throughput_bits=0)
    assert order == ["b", "c"] and "no longer ranked" in notes[0]


def test_manifest_shape_and_clones_for_appliances_missing_from_the_mpd() -> None:
    doc = manifest(
        [C, A, B], PlayerReport(None, None), ttl_seconds=10,
        reload_uri="http://steer/v1/steering/t?pathways=a,b", listed=["a", "b"],
    )  # fmt: skip
    assert doc["VERSION"] == 1 and doc["TTL"] == 10
    assert doc["RELOAD-URI"] == "http://steer/v1/steering/t?pathways=a,b"
    assert doc["PATHWAY-PRIORITY"] == ["c", "a", "b"]
    assert doc["PATHWAY-CLONES"] == [
        {"BASE-ID": "a", "ID": "c", "URI-REPLACEMENT": {"HOST": "10.0.0.3:8080"}}
    ]
    plain = manifest([A], PlayerReport(None, None), ttl_seconds=5, reload_uri=None)
    assert plain == {"VERSION": 1, "TTL": 5, "PATHWAY-PRIORITY": ["a"]}


def test_hls_tag() -> None:
    assert hls_tag("https://steer/x", "a") == (
        '#EXT-X-CONTENT-STEERING:SERVER-URI="https://steer/x",PATHWAY-ID="a"'
    )
    assert (
        hls_tag("https://steer/x", None) == '#EXT-X-CONTENT-STEERING:SERVER-URI="https://steer/x"'
    )


@given(
    st.lists(st.sampled_from("abcdef"), unique=True, min_size=1),
    st.one_of(st.none(), st.sampled_from("abcdefg")),
    st.one_of(st.none(), st.floats(0, 1e7)),
)
def test_priority_is_a_permutation_of_the_ranking(
    ids: list[str], current: str | None, throughput: float | None
) -> None:
    ranked = [Pathway(i, f"http://{i}.example") for i in ids]
    order, _ = priority(ranked, PlayerReport(current, throughput), min_throughput_bits=1000)
    assert sorted(order) == sorted(ids)
