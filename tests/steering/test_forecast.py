"""steering.forecast: the per-title, abandonment-shaped forecast a fill manifest carries."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from steering.forecast import fit


def test_fit_by_hand() -> None:
    # Title a (4 segments) played 4 times: 3 in "hi", 1 in "lo"; two plays reached
    # segment 1, one reached segments 2 and 3. Title b (2 segments) played twice, in "hi";
    # both plays reached segment 1.
    counts = {
        ("a", "hi", 0): 3, ("a", "lo", 0): 1,
        ("a", "hi", 1): 2,
        ("a", "hi", 2): 1,
        ("a", "hi", 3): 1,
        ("b", "hi", 0): 2, ("b", "hi", 1): 2,
        ("gone", "hi", 0): 9,  # not in the catalogue: ignored
        ("b", "hi", 7): 5,  # past b's length: ignored
    }  # fmt: skip
    model = fit(counts, {"a": 4, "b": 2, "c": 10})
    assert model.plays == {"a": 4.0, "b": 2.0}
    assert model.stream_share == {"hi": 5 / 6, "lo": 1 / 6}
    # index 0: 1; index 1: 4 requests / 6 plays; bin [2, 4): 2 requests / 4 + 4 plays of
    # titles longer than 2 and 3 (b has ended)
    assert model.survival == (1.0, 4 / 6, 2 / 8, 2 / 8)
    assert model.predict("a", "hi", 1) == 4 * 5 / 6 * 4 / 6
    assert model.predict("b", "lo", 0) == 2 * 1 / 6
    assert model.predict("b", "hi", 2) == 0.0  # b has two segments
    assert model.predict("c", "hi", 0) == 0.0  # nobody played c yesterday
    ranked = list(model.ranked())
    assert ranked[0] == (4 * 5 / 6, "a", "hi", 0)
    assert len(ranked) == 2 * 4 + 2 * 2  # every segment of every played title, both streams


def test_survival_is_non_increasing_and_stops_where_nobody_got() -> None:
    counts = {("t", "s", k): n for k, n in enumerate([10, 6, 7, 3, 0, 1, 0, 0])}
    model = fit(counts, {"t": 100})
    s = model.survival
    assert s[0] == 1.0 and all(a >= b for a, b in itertools.pairwise(s))
    assert len(s) == 8  # the last bin with a request ends at index 7; beyond: nothing
    assert list(model.ranked())[-1][3] == 7


def test_no_plays_no_forecast() -> None:
    model = fit({("t", "s", 3): 4}, {"t": 10})  # requests, but no play started
    assert list(model.ranked()) == [] and model.predict("t", "s", 3) == 0.0


counts_strategy = st.dictionaries(
    st.tuples(st.sampled_from("abcde"), st.sampled_from(["lo", "hi", "4k"]), st.integers(0, 30)),
    st.integers(0, 50),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(
    counts=counts_strategy,
    lengths=st.dictionaries(st.sampled_from("abcdef"), st.integers(1, 40)),
)
def test_ranked_is_every_positive_prediction_hottest_first(
    counts: dict[tuple[str, str, int], int], lengths: dict[str, int]
) -> None:
    model = fit(counts, lengths)
    ranked = list(model.ranked())
    values = [v for v, *_ in ranked]
    assert values == sorted(values, reverse=True)
    assert all(v == model.predict(t, s, k) for v, t, s, k in ranked)
    expected = {
        (t, s, k)
        for t, n in lengths.items()
        for s in model.stream_share
        for k in range(n)
        if model.predict(t, s, k) > 0
    }
    assert {(t, s, k) for _, t, s, k in ranked} == expected
    assert len(ranked) == len(expected)  # each once
    assert list(model.ranked()) == ranked  # deterministic
    total = sum(n for (t, _, k), n in counts.items() if k == 0 and k < lengths.get(t, 0))
    assert abs(sum(model.plays.values()) - total) < 1e-9
