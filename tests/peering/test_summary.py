"""Inventory summaries: publisher/consumer agreement under any history, deltas, strict parsing."""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from oca.errors import OcaError
from oca.peering.bloom import BloomFilter
from oca.peering.summary import (
    SUMMARY_SCHEMA,
    SUMMARY_VERSION,
    InventorySummary,
    PeerView,
    SummaryDeltaJSON,
    SummaryError,
    SummaryFullJSON,
    SummaryJSON,
    delta_limit,
    parse_summary,
)

UNIVERSE = [f"/titles/t{i % 4}/v720/seg-{i:03d}.m4s" for i in range(24)]
HISTORY = 4


def paths(n: int, prefix: str = "/titles/x/seg-") -> list[str]:
    return [f"{prefix}{i:06d}.m4s" for i in range(n)]


def wire(summary: SummaryJSON) -> SummaryJSON:
    """The summary as a peer receives it: through JSON bytes and the strict parser."""
    parsed = parse_summary(orjson.dumps(summary))
    assert parsed == summary
    return parsed


def full_of(summary: SummaryJSON | None) -> SummaryFullJSON:
    assert summary is not None
    assert summary["kind"] == "full"
    return summary


def delta_of(summary: SummaryJSON | None) -> SummaryDeltaJSON:
    assert summary is not None
    assert summary["kind"] == "delta"
    return summary


# --------------------------------------------------------------------------- the model


class PublisherAndConsumer(RuleBasedStateMachine):
    """A publisher whose set changes (and which restarts) and a consumer polling it.

    The model keeps every set of the current epoch by generation, the set the
    consumer's view should describe and the set at its last full summary, and checks
    after every poll that the view answers exactly what the summary theory promises.
    """

    def __init__(self) -> None:
        super().__init__()
        self.restarts = 0
        self.publisher = InventorySummary("oca-1", "site-a", "e0", history=HISTORY)
        self.sets: list[frozenset[str]] = [frozenset()]  # by generation, this epoch
        self.view: PeerView | None = None
        self.view_set: frozenset[str] = frozenset()  # what the view should describe
        self.full_set: frozenset[str] = frozenset()  # the set its Bloom filter covers
        self.deltas_applied = 0

    # ----------------------------------------------------------------- publisher

    @initialize(start=st.frozensets(st.sampled_from(UNIVERSE)))
    def first_update(self, start: frozenset[str]) -> None:
        self.update(start)

    @rule(new=st.frozensets(st.sampled_from(UNIVERSE)))
    def update(self, new: frozenset[str]) -> None:
        changed = self.publisher.update(new)
        assert changed == (new != self.sets[-1])
        if changed:
            self.sets.append(new)
        assert self.publisher.generation == len(self.sets) - 1
        assert self.publisher.count == len(new)

    @rule(data=st.data())
    def churn(self, data: st.DataObject) -> None:
        """A small change: a few paths toggled, as an inventory loop usually sees."""
        toggled = data.draw(st.sets(st.sampled_from(UNIVERSE), min_size=1, max_size=3))
        self.update(self.sets[-1] ^ frozenset(toggled))

    @rule(new=st.lists(st.sampled_from(UNIVERSE)))
    def update_with_a_list(self, new: list[str]) -> None:
        """Any collection will do, duplicates included."""
        expected = frozenset(new)
        assert self.publisher.update(new) == (expected != self.sets[-1])
        if expected != self.sets[-1]:
            self.sets.append(expected)

    @rule()
    def restart(self) -> None:
        """The publisher process restarts: a new epoch, generations from 0 again."""
        self.restarts += 1
        self.publisher = InventorySummary("oca-1", "site-a", f"e{self.restarts}", history=HISTORY)
        self.sets = [frozenset()]

    # ----------------------------------------------------------------- consumer

    def expected_kind(self, epoch: str | None, generation: int | None) -> str | None:
        current = self.publisher.generation
        if epoch != self.publisher.epoch or generation is None:
            return "full"
        if generation == current:
            return None
        if 0 <= generation < current and current - generation <= min(HISTORY, current):
            return "delta"  # the universe is far below the size cap
        return "full"

    def receive(self, epoch: str | None, generation: int | None) -> None:
        expected = self.expected_kind(epoch, generation)
        reply = self.publisher.answer(epoch, generation)
        if reply is None:
            assert expected is None
            assert self.view is not None
        else:
            assert reply["kind"] == expected
            event(f"received a {expected} summary")
            data = wire(reply)
            if data["kind"] == "delta":
                assert self.view is not None
                self.view = self.view.apply(data)
                self.deltas_applied += 1
            else:
                self.view = PeerView.from_full(data) if self.view is None else self.view.apply(data)
                self.full_set = self.sets[-1]
                self.deltas_applied = 0
            self.view_set = self.sets[-1]
        self.check_view()

    @rule()
    def poll(self) -> None:
        if self.view is None:
            self.receive(None, None)
        else:
            self.receive(self.view.epoch, self.view.generation)

    @rule()
    def poll_from_another_epoch(self) -> None:
        generation = 0 if self.view is None else self.view.generation
        self.receive("elsewhere", generation)

    @rule()
    def poll_without_a_generation(self) -> None:
        self.receive(self.publisher.epoch, None)

    @precondition(lambda self: self.view is not None and self.view.generation > 0)
    @rule(back=st.integers(min_value=1, max_value=3))
    def a_delta_for_another_base_is_refused(self, back: int) -> None:
        assert self.view is not None
        since = self.view.generation - back
        reply = self.publisher.answer(self.view.epoch, max(since, 0))
        if reply is not None and reply["kind"] == "delta":
            with pytest.raises(SummaryError, match="stale delta"):
                self.view.apply(wire(reply))

    def check_view(self) -> None:
        view = self.view
        assert view is not None
        assert view.epoch == self.publisher.epoch
        assert view.generation == self.publisher.generation
        assert view.count == len(self.view_set)
        assert view.added <= self.view_set
        assert not view.removed & self.view_set
        assert view.delta_entries == len(view.added) + len(view.removed)
        if self.deltas_applied == 0:
            assert not view.added
            assert not view.removed
        for path in UNIVERSE:
            if path in self.view_set:
                assert view.may_hold(path), path  # never a false negative
            elif path in self.full_set:
                # Held at the full summary, gone since: reported absent exactly.
                assert path in view.removed
                assert not view.may_hold(path), path
            else:
                # Never held since the full summary: only a Bloom false positive.
                assert path not in view.added
                assert view.may_hold(path) == (path not in view.removed and path in view.bloom)


TestPublisherAndConsumer = PublisherAndConsumer.TestCase
TestPublisherAndConsumer.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None
)


@settings(max_examples=300, deadline=None)
@given(
    history=st.lists(st.frozensets(st.sampled_from(UNIVERSE[:10])), min_size=1, max_size=12),
    window=st.integers(min_value=0, max_value=8),
)
def test_delta_transforms_the_base_set_into_the_current_set(
    history: list[frozenset[str]], window: int
) -> None:
    publisher = InventorySummary("oca-1", "site-a", "e", history=window)
    by_generation: list[frozenset[str]] = [frozenset()]
    for new in history:
        if publisher.update(new):
            by_generation.append(new)
    current = by_generation[-1]
    for base, at_base in enumerate(by_generation[:-1]):
        reply = publisher.answer("e", base)
        assert reply is not None
        if publisher.generation - base > window:
            assert reply["kind"] == "full"
            continue
        delta = delta_of(reply)
        added, removed = set(delta["added"]), set(delta["removed"])
        assert delta["added"] == sorted(added)
        assert delta["removed"] == sorted(removed)
        assert not added & at_base
        assert removed <= at_base
        assert (at_base - removed) | added == current
        assert added == current - at_base
        assert removed == at_base - current


# --------------------------------------------------------------------------- publisher


def test_update_reports_changes_and_counts_generations() -> None:
    publisher = InventorySummary("oca-1", "site-a", "e")
    assert (publisher.generation, publisher.count) == (0, 0)
    assert publisher.update([]) is False
    assert publisher.generation == 0
    assert publisher.update(["/a", "/b"]) is True
    assert (publisher.generation, publisher.count) == (1, 2)
    assert publisher.update({"/b", "/a"}) is False
    assert publisher.update(("/a",)) is True
    assert (publisher.generation, publisher.count) == (2, 1)
    assert publisher.epoch == "e"
    assert (publisher.appliance, publisher.site) == ("oca-1", "site-a")


def test_update_rejects_bad_paths_and_leaves_the_set_alone() -> None:
    publisher = InventorySummary("oca-1", "site-a", "e")
    publisher.update(["/a"])
    with pytest.raises(ValueError, match="path"):
        publisher.update(["/a", "b"])
    with pytest.raises(ValueError, match="path"):
        publisher.update(["/a", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        publisher.update("/a")
    assert (publisher.generation, publisher.count) == (1, 1)


def test_answer_not_modified_when_up_to_date() -> None:
    publisher = InventorySummary("oca-1", "site-a", "e")
    assert publisher.answer("e", 0) is None
    publisher.update(["/a"])
    assert publisher.answer("e", 1) is None
    assert publisher.answer("e", 0) is not None


def test_answer_full_without_a_generation_or_epoch() -> None:
    publisher = InventorySummary("oca-1", "site-a", "e")
    publisher.update(["/a"])
    full_of(publisher.answer(None, None))
    full_of(publisher.answer("e", None))
    full_of(publisher.answer(None, 1))


def test_answer_full_for_another_epoch() -> None:
    publisher = InventorySummary("oca-1", "site-a", "e2")
    publisher.update(["/a"])
    assert full_of(publisher.answer("e1", 1))["generation"] == 1
    full_of(publisher.answer("e1", 0))


def test_answer_full_for_a_generation_from_the_future_or_negative() -> None:
    publisher = InventorySummary("oca-1", "site-a", "e")
    publisher.update(["/a"])
    full_of(publisher.answer("e", 2))
    full_of(publisher.answer("e", -1))


def test_answer_full_beyond_the_history_window() -> None:
    publisher = InventorySummary("oca-1", "site-a", "e", history=3)
    for n in range(1, 6):
        publisher.update(paths(n))
    assert publisher.generation == 5
    full_of(publisher.answer("e", 0))
    full_of(publisher.answer("e", 1))
    for base in (2, 3, 4):
        delta = delta_of(publisher.answer("e", base))
        assert delta["base"] == base
        assert delta["generation"] == 5
        assert delta["added"] == paths(5)[base:]
        assert delta["removed"] == []


def test_history_zero_always_answers_full() -> None:
    publisher = InventorySummary("oca-1", "site-a", "e", history=0)
    publisher.update(["/a"])
    publisher.update(["/a", "/b"])
    full_of(publisher.answer("e", 1))
    assert publisher.answer("e", 2) is None


def test_delta_merges_add_then_remove_within_the_window() -> None:
    publisher = InventorySummary("oca-1", "site-a", "e")
    publisher.update(["/kept", "/dropped", "/flapping"])  # generation 1 = base
    publisher.update(["/kept", "/new-then-gone", "/flapping"])
    publisher.update(["/kept", "/late"])
    publisher.update(["/kept", "/late", "/flapping"])
    delta = delta_of(publisher.answer("e", 1))
    # /new-then-gone came and went: in neither list. /flapping left and came back:
    # in neither. /dropped existed at base and is gone: removed.
    assert delta["added"] == ["/late"]
    assert delta["removed"] == ["/dropped"]


def test_delta_size_cap_at_the_minimum() -> None:
    assert delta_limit(0) == 256
    assert delta_limit(2048) == 256
    assert delta_limit(4000) == 500
    small = InventorySummary("oca-1", "site-a", "e")
    small.update(paths(256))
    assert len(delta_of(small.answer("e", 0))["added"]) == 256
    large = InventorySummary("oca-1", "site-a", "e")
    large.update(paths(257))
    full_of(large.answer("e", 0))


def test_delta_size_cap_scales_with_the_set() -> None:
    before = paths(4000)
    publisher = InventorySummary("oca-1", "site-a", "e")
    publisher.update(before)
    # Replace 250 paths: 500 entries, the cap for 4000 paths.
    publisher.update(before[250:] + paths(250, "/titles/y/seg-"))
    delta = delta_of(publisher.answer("e", 1))
    assert len(delta["added"]) + len(delta["removed"]) == 500
    # One more replacement: 502 entries, over the cap.
    publisher.update(before[251:] + paths(251, "/titles/y/seg-"))
    full_of(publisher.answer("e", 1))
    assert len(delta_of(publisher.answer("e", 2))["added"]) == 1


def test_full_summary_wire_shape_and_bloom_sizing() -> None:
    publisher = InventorySummary("oca-1", "site-a", "e", fpr=0.02)
    publisher.update(["/a", "/b"])
    full = publisher.full()
    assert set(full) == {
        "schema",
        "version",
        "kind",
        "appliance",
        "site",
        "epoch",
        "generation",
        "count",
        "bloom",
    }
    assert (full["schema"], full["version"], full["kind"]) == (SUMMARY_SCHEMA, 1, "full")
    assert SUMMARY_VERSION == 1
    assert (full["appliance"], full["site"], full["epoch"]) == ("oca-1", "site-a", "e")
    assert (full["generation"], full["count"]) == (1, 2)
    floor = BloomFilter.for_capacity(1024, 0.02)
    assert (full["bloom"]["m"], full["bloom"]["k"]) == (floor.m_bits, floor.k)

    publisher.update(paths(5000))
    sized = BloomFilter.for_capacity(5000, 0.02)
    bloom = publisher.full()["bloom"]
    assert (bloom["m"], bloom["k"]) == (sized.m_bits, sized.k)


def test_full_summary_is_cached_until_the_next_change() -> None:
    publisher = InventorySummary("oca-1", "site-a", "e")
    publisher.update(["/a"])
    first = publisher.full()
    first["bloom"]["bits"] = "tampered"  # callers' copies do not leak into the cache
    again = publisher.full()
    assert again["bloom"]["bits"] != "tampered"
    assert publisher.full() == again
    publisher.update(["/a", "/b"])
    after = publisher.full()
    assert after["bloom"]["bits"] != again["bloom"]["bits"]
    view = PeerView.from_full(after)
    assert view.may_hold("/a")
    assert view.may_hold("/b")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"appliance": "bad id"}, "appliance"),
        ({"appliance": ""}, "appliance"),
        ({"site": ""}, "site"),
        ({"site": "s" * 257}, "site"),
        ({"epoch": ""}, "epoch"),
        ({"epoch": "a:b"}, "epoch"),
        ({"history": -1}, "history"),
        ({"history": True}, "history"),
        ({"fpr": 0.0}, "fpr"),
        ({"fpr": 1.0}, "fpr"),
    ],
)
def test_publisher_constructor_errors(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"appliance": "oca-1", "site": "site-a", "epoch": "e", **kwargs}
    with pytest.raises(ValueError, match=match):
        InventorySummary(**args)


# --------------------------------------------------------------------------- consumer


def make_view(held: list[str]) -> tuple[InventorySummary, PeerView]:
    publisher = InventorySummary("oca-1", "site-a", "e")
    publisher.update(held)
    return publisher, PeerView.from_full(full_of(wire(publisher.full())))


def test_view_applies_deltas_exactly() -> None:
    publisher, view = make_view(["/a", "/b"])
    assert (view.generation, view.count, view.delta_entries) == (1, 2, 0)
    publisher.update(["/a", "/c"])
    view = view.apply(delta_of(publisher.answer(view.epoch, view.generation)))
    assert (view.added, view.removed) == (frozenset({"/c"}), frozenset({"/b"}))
    assert view.may_hold("/a")
    assert view.may_hold("/c")
    assert not view.may_hold("/b")
    assert (view.generation, view.count, view.delta_entries) == (2, 2, 2)
    publisher.update(["/a", "/b"])
    view = view.apply(delta_of(publisher.answer(view.epoch, view.generation)))
    assert (view.added, view.removed) == (frozenset({"/b"}), frozenset({"/c"}))
    assert view.may_hold("/b")
    assert not view.may_hold("/c")


def test_full_summary_replaces_the_view() -> None:
    publisher, view = make_view(["/a"])
    publisher.update(["/b"])
    view = view.apply(delta_of(publisher.answer(view.epoch, view.generation)))
    assert view.delta_entries == 2
    replaced = view.apply(publisher.full())
    assert replaced.delta_entries == 0
    assert replaced.generation == 2
    assert replaced.may_hold("/b")
    other = InventorySummary("oca-2", "site-a", "x")
    assert view.apply(other.full()).appliance == "oca-2"


def test_stale_deltas_are_refused() -> None:
    publisher, view = make_view(["/a"])
    publisher.update(["/a", "/b"])
    publisher.update(["/a", "/b", "/c"])
    newer = view.apply(delta_of(publisher.answer("e", 1)))
    # A delta from generation 2 does not apply to a view at 1 or at 3.
    from_two = delta_of(publisher.answer("e", 2))
    with pytest.raises(SummaryError, match="stale delta: base 2"):
        view.apply(from_two)
    with pytest.raises(SummaryError, match="stale delta: base 2"):
        newer.apply(from_two)
    # Another epoch, or another appliance, is stale whatever the base.
    restarted = InventorySummary("oca-1", "site-a", "e-next")
    restarted.update(["/a"])
    restarted.update(["/z"])
    with pytest.raises(SummaryError, match="stale delta: epoch"):
        view.apply(delta_of(restarted.answer("e-next", 1)))
    impostor = InventorySummary("oca-9", "site-a", "e")
    impostor.update(["/a"])
    impostor.update(["/b"])
    with pytest.raises(SummaryError, match="stale delta: appliance"):
        view.apply(delta_of(impostor.answer("e", 1)))
    assert isinstance(SummaryError("x"), OcaError)


def test_view_is_immutable_and_hashable() -> None:
    _, view = make_view(["/a"])
    with pytest.raises(AttributeError):
        view.generation = 5  # type: ignore[misc]
    assert hash(view) == hash(PeerView.from_full(view_source(view)))
    assert view == PeerView.from_full(view_source(view))


def view_source(view: PeerView) -> SummaryFullJSON:
    return {
        "schema": SUMMARY_SCHEMA,
        "version": SUMMARY_VERSION,
        "kind": "full",
        "appliance": view.appliance,
        "site": view.site,
        "epoch": view.epoch,
        "generation": view.generation,
        "count": view.count,
        "bloom": {
            "m": view.bloom.m_bits,
            "k": view.bloom.k,
            "bits": base64.b64encode(view.bloom.to_bytes()).decode("ascii"),
        },
    }


def test_from_full_refuses_a_delta() -> None:
    publisher, _ = make_view(["/a"])
    publisher.update(["/b"])
    delta = publisher.answer("e", 1)
    with pytest.raises(SummaryError, match="kind"):
        PeerView.from_full(delta)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- parsing


def valid_full() -> dict[str, Any]:
    publisher = InventorySummary("oca-1", "site-a", "e")
    publisher.update(["/a"])
    return dict(copy.deepcopy(publisher.full()))


def valid_delta() -> dict[str, Any]:
    publisher = InventorySummary("oca-1", "site-a", "e")
    publisher.update(["/a"])
    publisher.update(["/b"])
    return dict(copy.deepcopy(delta_of(publisher.answer("e", 1))))


def test_round_trip_through_orjson_bytes() -> None:
    full = valid_full()
    delta = valid_delta()
    assert parse_summary(orjson.dumps(full)) == full
    assert parse_summary(orjson.dumps(delta)) == delta
    assert parse_summary(bytearray(orjson.dumps(delta))) == delta
    assert parse_summary(full) == full
    assert parse_summary(full) is not full  # a fresh object, never the caller's


Mutation = Callable[[dict[str, Any]], None]


def setter(key: str, value: object) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        data[key] = value

    return mutate


def deleter(key: str) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        del data[key]

    return mutate


def bloom_setter(key: str, value: object) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        data["bloom"][key] = value

    return mutate


def bloom_deleter(key: str) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        del data["bloom"][key]

    return mutate


def bloom_for_8_bits(bits: str) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        data["bloom"] = {"m": 8, "k": 1, "bits": bits}

    return mutate


FULL_CASES: list[tuple[str, Mutation, str]] = [
    ("schema missing", deleter("schema"), "schema"),
    ("schema wrong", setter("schema", "oca.other"), "schema"),
    ("version 2", setter("version", 2), "version"),
    ("version bool", setter("version", True), "version"),
    ("version string", setter("version", "1"), "version"),
    ("version float", setter("version", 1.0), "version"),
    ("kind unknown", setter("kind", "partial"), "kind"),
    ("kind missing", deleter("kind"), "kind"),
    ("appliance missing", deleter("appliance"), "appliance"),
    ("appliance int", setter("appliance", 7), "appliance"),
    ("appliance charset", setter("appliance", "oca 1"), "appliance"),
    ("site empty", setter("site", ""), "site"),
    ("site null", setter("site", None), "site"),
    ("site too long", setter("site", "s" * 257), "site"),
    ("epoch empty", setter("epoch", ""), "epoch"),
    ("epoch charset", setter("epoch", "e:1"), "epoch"),
    ("generation negative", setter("generation", -1), "generation"),
    ("generation bool", setter("generation", True), "generation"),
    ("generation float", setter("generation", 1.0), "generation"),
    ("count negative", setter("count", -1), "count"),
    ("count string", setter("count", "1"), "count"),
    ("count missing", deleter("count"), "count"),
    ("unknown field", setter("extra", 1), "extra"),
    ("delta field in a full", setter("base", 0), "base"),
    ("bloom missing", deleter("bloom"), "bloom"),
    ("bloom list", setter("bloom", []), "bloom"),
    ("bloom.m missing", bloom_deleter("m"), "bloom.m"),
    ("bloom.m not multiple of 8", bloom_setter("m", 12), "bloom.m"),
    ("bloom.m zero", bloom_setter("m", 0), "bloom.m"),
    ("bloom.m bool", bloom_setter("m", True), "bloom.m"),
    ("bloom.k zero", bloom_setter("k", 0), "bloom.k"),
    ("bloom.k too large", bloom_setter("k", 33), "bloom.k"),
    ("bloom.k string", bloom_setter("k", "3"), "bloom.k"),
    ("bloom.bits int", bloom_setter("bits", 5), "bloom.bits"),
    ("bloom.bits not base64", bloom_setter("bits", "!!!!"), "bloom.bits"),
    ("bloom.bits non-ascii", bloom_setter("bits", "é"), "bloom.bits"),
    ("bloom.bits wrong length", bloom_setter("bits", "AAAA"), "bloom.bits"),
    ("bloom.bits unpadded", bloom_for_8_bits("AQ"), "bloom.bits"),
    ("bloom.bits non-canonical", bloom_for_8_bits("AR=="), "bloom.bits"),
    ("bloom unknown field", bloom_setter("seed", 1), "bloom.seed"),
]

DELTA_CASES: list[tuple[str, Mutation, str]] = [
    ("base missing", deleter("base"), "base"),
    ("base bool", setter("base", False), "base"),
    ("base negative", setter("base", -1), "base"),
    ("base not below generation", setter("base", 2), "base"),
    ("added missing", deleter("added"), "added"),
    ("added not a list", setter("added", "/a"), "added"),
    ("added entry relative", setter("added", ["/a", "b"]), "added[1]"),
    ("added entry int", setter("added", [1]), "added[0]"),
    ("removed entry null", setter("removed", [None]), "removed[0]"),
    ("removed dict", setter("removed", {"/a": 1}), "removed"),
    ("path in both lists", setter("removed", ["/b"]), "removed"),
    ("full field in a delta", setter("count", 1), "count"),
    ("generation string", setter("generation", "2"), "generation"),
]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [pytest.param(m, f, id=name) for name, m, f in FULL_CASES],
)
def test_parse_rejects_malformed_full(mutate: Mutation, field: str) -> None:
    data = valid_full()
    mutate(data)
    for raw in (data, orjson.dumps(data)):
        with pytest.raises(SummaryError) as info:
            parse_summary(raw)
        assert info.value.field == field
        assert str(info.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [pytest.param(m, f, id=name) for name, m, f in DELTA_CASES],
)
def test_parse_rejects_malformed_delta(mutate: Mutation, field: str) -> None:
    data = valid_delta()
    mutate(data)
    for raw in (data, orjson.dumps(data)):
        with pytest.raises(SummaryError) as info:
            parse_summary(raw)
        assert info.value.field == field
        assert str(info.value).startswith(f"{field}: ")


def test_bloom_bits_error_message() -> None:
    data = valid_full()
    data["bloom"]["bits"] = "!!!!"
    with pytest.raises(SummaryError, match=r"^bloom\.bits: not base64$"):
        parse_summary(data)


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff", b"[]", b"1", b'"x"', b"null"])
def test_parse_rejects_non_objects(raw: bytes) -> None:
    with pytest.raises(SummaryError) as info:
        parse_summary(raw)
    assert info.value.field == "summary"
