"""fill.policy.PopularityLRU: properties of any sequence of operations, and the formula's intent."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from fill.policy import DAY_SECONDS, PolicyParams, PopularityLRU, parent_group

HOUR = 3600.0
MiB = 1 << 20

# ------------------------------------------------------------------ properties

KEYS = [f"/t/{title}/v1/s{seg}.m4s" for title in "abcd" for seg in range(4)]


@dataclass(frozen=True)
class Op:
    kind: str  # request | insert | evict | remove | forecast | reprioritise | victims
    key: str
    size: int
    dt: float
    pinned: frozenset[str]
    forecast: tuple[tuple[str, float], ...]


ops = st.builds(
    Op,
    kind=st.sampled_from(
        ["request"] * 3 + ["insert", "evict", "remove", "forecast", "reprioritise", "victims"]
    ),
    key=st.sampled_from(KEYS),
    size=st.integers(min_value=0, max_value=40),
    dt=st.floats(min_value=0.0, max_value=12 * HOUR),
    pinned=st.frozensets(st.sampled_from(KEYS), max_size=6),
    forecast=st.lists(
        st.tuples(st.sampled_from(KEYS), st.floats(min_value=0.0, max_value=1e4)), max_size=8
    ).map(tuple),
)


def apply(policy: PopularityLRU, sizes: dict[str, int], op: Op, now: float) -> object:
    """Apply ``op`` as the appliance would; return what the policy decided."""
    size = sizes.setdefault(op.key, op.size)  # an object keeps its size
    if op.kind == "request":
        if op.key in policy:
            policy.touch(op.key, now)
            return ("hit", op.key)
        return ("miss", policy.make_room(op.key, size, now, op.pinned))
    if op.kind == "insert":
        return ("insert", policy.insert(op.key, size, now))
    if op.kind == "evict":
        policy.evict(op.key)
    elif op.kind == "remove":
        policy.remove(op.key)
    elif op.kind == "forecast":
        policy.set_forecast(dict(op.forecast))
    elif op.kind == "reprioritise":
        policy.reprioritise(now)
    elif op.kind == "victims":
        return ("victims", policy.choose_victims(size, op.pinned))
    return None


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(min_value=0, max_value=120), seq=st.lists(ops, max_size=60))
def test_used_bytes_never_exceed_capacity(capacity: int, seq: list[Op]) -> None:
    policy = PopularityLRU(capacity)
    sizes: dict[str, int] = {}
    now = 0.0
    for op in seq:
        now += op.dt
        apply(policy, sizes, op, now)
        assert 0 <= policy.used_bytes <= policy.capacity_bytes
        assert policy.used_bytes == sum(policy.size_of(k) for k in list(policy.keys()))
        probation = sum(policy.size_of(k) for k in list(policy.keys()) if policy.on_probation(k))
        assert probation == policy._probation_bytes


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(min_value=1, max_value=120), seq=st.lists(ops, max_size=60))
def test_pinned_objects_are_never_chosen_or_evicted(capacity: int, seq: list[Op]) -> None:
    policy = PopularityLRU(capacity)
    sizes: dict[str, int] = {}
    now = 0.0
    for op in seq:
        now += op.dt
        held = set(policy.keys())
        result = apply(policy, sizes, op, now)
        if op.kind == "victims" and isinstance(result, tuple) and result[1] is not None:
            assert not set(result[1]) & op.pinned
        if op.kind == "request":
            # a miss may evict, but never a pinned object
            assert (held & op.pinned) <= set(policy.keys())


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(min_value=0, max_value=120), seq=st.lists(ops, max_size=60))
def test_choices_are_deterministic_for_the_same_inputs(capacity: int, seq: list[Op]) -> None:
    def run() -> tuple[list[object], list[tuple[str, float]]]:
        policy = PopularityLRU(capacity)
        sizes: dict[str, int] = {}
        now = 0.0
        decisions = []
        for op in seq:
            now += op.dt
            decisions.append(apply(policy, sizes, op, now))
        return decisions, sorted((k, policy.priority(k)) for k in list(policy.keys()))

    assert run() == run()


# ------------------------------------------------------------------ intent


def seg(title: str, n: int) -> str:
    return f"/titles/{title}/v3000/seg-{n:05d}.m4s"


def test_title_predicted_hot_survives_a_quiet_hour() -> None:
    """A forecast title not requested for an hour outlives one-off traffic that fills
    and churns the rest of the cache, while an unforecast title requested as recently goes."""
    policy = PopularityLRU(20 * MiB)
    now = 0.0
    hot = [seg("hot", n) for n in range(5)]
    policy.set_forecast({k: 200.0 for k in hot})  # requests per day
    for k in hot:
        assert policy.make_room(k, MiB, now) == []  # overnight fill
    cold = [seg("cold", n) for n in range(5)]
    for k in cold:
        policy.make_room(k, MiB, now)
    for i in range(200):  # an hour of one-off requests for other titles, 10x the free room
        now += HOUR / 200
        policy.make_room(seg(f"oneoff{i}", 0), MiB, now)
    assert all(k in policy for k in hot)
    assert not any(k in policy for k in cold)
    assert policy.used_bytes <= policy.capacity_bytes


def test_stale_title_not_in_the_manifest_goes_first() -> None:
    policy = PopularityLRU(8 * MiB)
    now = 0.0
    stale = [seg("stale", n) for n in range(4)]
    for k in stale:  # popular yesterday: requested three times each
        policy.insert(k, MiB, now)
        policy.touch(k, now + 60)
        policy.touch(k, now + 120)
    now += DAY_SECONDS
    listed = [seg("listed", n) for n in range(4)]
    policy.set_forecast({k: 10.0 for k in listed})
    policy.reprioritise(now)
    for k in listed:
        policy.insert(k, MiB, now)
    victims = policy.choose_victims(policy.free_bytes() + 4 * MiB)
    assert victims is not None and sorted(victims) == sorted(stale)


def test_unlisted_segment_of_a_forecast_title_inherits_the_title_forecast() -> None:
    policy = PopularityLRU(100 * MiB, PolicyParams(half_life_seconds=6 * HOUR))
    policy.set_forecast({seg("a", 0): 9.0, seg("a", 1): 3.0, seg("b", 0): 1.0})
    later = seg("a", 700)  # nobody asked for it yesterday; its title is hot
    assert parent_group(later) == parent_group(seg("a", 0))
    per_half_life = 6 * HOUR / DAY_SECONDS
    assert policy.forecast(later) == (9.0 + 3.0) / 2 * per_half_life
    assert policy.forecast(seg("unknown", 0)) == 0.0
    assert policy.candidate_priority(later, 0.0) > policy.candidate_priority(seg("b", 5), 0.0)
    assert policy.candidate_priority(seg("b", 5), 0.0) > policy.candidate_priority(
        seg("unknown", 0), 0.0
    )


def test_one_off_misses_only_churn_the_probation_share() -> None:
    """A flood of one-off requests for unforecast objects (the sessions of rarely watched
    titles) takes the probationary share of the cache and no more."""
    policy = PopularityLRU(20 * MiB, PolicyParams(probation_fraction=0.1))
    now = 0.0
    listed = [seg("listed", n) for n in range(20)]
    policy.set_forecast({k: 5.0 + n for n, k in enumerate(listed)})
    for k in listed:
        assert policy.insert(k, MiB, now)  # the overnight fill
    assert policy.free_bytes() == 0
    for i in range(500):
        now += 7.0
        victims = policy.make_room(seg(f"oneoff{i}", 0), MiB, now)
        assert victims is not None and len(victims) == 1
    gone = [k for k in listed if k not in policy]
    assert gone == listed[:2]  # the two coldest made room for the 2 MiB share
    probation = [k for k in policy if policy.on_probation(k)]
    assert probation == [seg("oneoff498", 0), seg("oneoff499", 0)]
    assert policy.used_bytes == policy.capacity_bytes


def filled_cache(filled: int) -> PopularityLRU:
    """A 20 MiB cache with a 2 MiB probationary FIFO and ``filled`` 1 MiB filled objects."""
    policy = PopularityLRU(20 * MiB, PolicyParams(probation_fraction=0.1))
    for n in range(filled):
        policy.insert(seg("filled", n), MiB, 0.0)
    return policy


def one_offs(policy: PopularityLRU, count: int, now: float) -> float:
    """``count`` misses for objects nobody asks for again, 7 s apart; returns the time."""
    for i in range(count):
        now += 7.0
        policy.make_room(seg(f"oneoff{i}", 0), MiB, now)
    return now


def test_an_object_requested_again_on_probation_is_promoted_and_stays() -> None:
    policy = filled_cache(18)
    now = 0.0
    again = seg("again", 0)
    assert policy.make_room(again, MiB, now) == []
    assert policy.on_probation(again)
    policy.touch(again, now + 1)
    one_offs(policy, 100, now + 1)
    assert again in policy and not policy.on_probation(again)


def test_an_evicted_object_is_remembered_and_readmitted_to_the_main_cache() -> None:
    policy = filled_cache(20)
    first = seg("first", 0)
    policy.make_room(first, MiB, 0.0)
    now = one_offs(policy, 5, 0.0)
    assert first not in policy  # left the FIFO without a second request
    now += 60.0
    assert policy.candidate_priority(first, now) > policy.candidate_priority(seg("new", 0), now)
    policy.make_room(first, MiB, now)  # requested again: its history comes back with it
    assert not policy.on_probation(first)
    assert policy.candidate_priority(seg("new", 0), now) == 1.0


def test_a_forecast_miss_below_the_main_cache_goes_on_probation() -> None:
    policy = PopularityLRU(4 * MiB, PolicyParams(probation_fraction=0.25))
    now = 0.0
    listed = [seg("listed", n) for n in range(4)]
    lukewarm = seg("lukewarm", 0)
    policy.set_forecast({**{k: 50.0 for k in listed}, lukewarm: 0.5})
    for k in listed:
        assert policy.insert(k, MiB, now)
    assert not policy.admit(lukewarm, MiB, now + 60)
    policy.make_room(lukewarm, MiB, now + 60)
    assert policy.on_probation(lukewarm)
    hot = seg("listed", 9)  # unlisted segment of a hot title: inherits its forecast
    assert policy.admit(hot, MiB, now + 60)
    policy.make_room(hot, MiB, now + 120)
    assert not policy.on_probation(hot)
    assert policy.make_room(seg("huge", 0), 5 * MiB, now) is None  # larger than the cache
