"""steering.fleet and steering.heartbeat: validation, soft state, deltas, staleness,
warm start."""

from __future__ import annotations

import copy
import ipaddress
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from steering.catalog import Catalog, CatalogObject, Title
from steering.fleet import Fleet, FleetStateError, Snapshot
from steering.heartbeat import HeartbeatError, parse_heartbeat

SHA = "0" * 64


def make_title(tid: str, segments: int = 2) -> Title:
    prefix = f"/titles/{tid}/"
    objects = [CatalogObject(prefix + "manifest.mpd", 100, SHA, "mpd")]
    objects += [
        CatalogObject(f"{prefix}v1/seg-{k}.m4s", 1000, SHA, "media") for k in range(segments)
    ]
    return Title(tid, prefix, prefix + "manifest.mpd", tuple(objects), ("http://o:1",), 0.0)


def paths_of(catalog: Catalog, tid: str) -> list[str]:
    title = catalog.get(tid)
    assert title is not None
    return [o.path for o in title.objects]


def heartbeat(
    aid: str,
    *,
    site: str = "s1",
    region: str = "r1",
    lat: float | None = 50.0,
    lon: float | None = 8.0,
    prefixes: Iterable[str] = (),
    seq: int = 1,
    boot_id: str = "boot1",
    interval: float = 2.0,
    state: str = "healthy",
    reasons: Iterable[str] = (),
    draining: bool = False,
    serving: bool = True,
    load: float = 0.1,
    objects: Iterable[str] | None = None,
    inventory: dict[str, Any] | None = None,
    requests: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A valid heartbeat document; ``objects`` makes a full inventory (epoch boot_id)."""
    if objects is not None:
        inventory = {"kind": "full", "epoch": boot_id, "gen": seq, "objects": list(objects)}
    doc: dict[str, Any] = {
        "schema": "oca.heartbeat",
        "version": 1,
        "appliance": {
            "id": aid, "site": site, "region": region, "lat": lat, "lon": lon,
            "urls": [f"http://{aid}.test:8080"], "https_urls": [f"https://{aid}.test:8443"],
        },
        "boot_id": boot_id,
        "seq": seq,
        "sent_at": 1_795_000_000.0,
        "interval_seconds": interval,
        "prefixes": list(prefixes),
        "health": {
            "state": state, "reasons": list(reasons), "draining": draining, "serving": serving,
            "disks": [{"tier": "ssd", "path": "/srv/ssd0", "state": "ok", "reason": "",
                       "capacity_bytes": 1000, "used_bytes": 10}],
            "workers": {"configured": 2, "running": 2, "restarts": 0},
            "fill": {"state": "idle", "last_run_at": None, "reason": ""},
        },
        "load": {"nic_bits_per_second": 1.2e9, "link_capacity_bits_per_second": 1e10,
                 "cpu_fraction": 0.3, "connections": 12, "load_fraction": load},
        "capacity_bytes": 4_000_000, "used_bytes": 1000,
        "inventory": inventory,
        "requests": requests or {},
    }  # fmt: skip
    return doc


# --------------------------------------------------------------------------- validation


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        doc = doc[p]
    if value is _DELETE:
        del doc[last]
    else:
        doc[last] = value


_DELETE = object()

MALFORMED = [
    ("health.state", "sick", "health.state", "expected one of healthy, degraded, unhealthy"),
    ("appliance.id", _DELETE, "appliance.id", "missing"),
    ("appliance.id", "a b", "appliance.id", "expected 1-64 of [A-Za-z0-9._-]"),
    ("appliance.lat", 91, "appliance.lat", "out of range"),
    ("appliance.urls", ["ftp://x"], "appliance.urls[0]", "expected a URL"),
    ("appliance.https_urls", ["http://x"], "appliance.https_urls[0]", "https://"),
    ("schema", "oca.other", "schema", "expected 'oca.heartbeat'"),
    ("version", 2, "version", "expected 1"),
    ("version", True, "version", "expected 1"),
    ("seq", True, "seq", "expected an integer, got a boolean"),
    ("seq", -1, "seq", "below 0"),
    ("sent_at", "now", "sent_at", "expected a number"),
    ("interval_seconds", 0, "interval_seconds", "must be above 0"),
    ("prefixes", ["10.1.0.0/33"], "prefixes[0]", "is not an IP network"),
    ("prefixes", "10.1.0.0/24", "prefixes", "expected a list"),
    ("health.draining", "no", "health.draining", "expected true or false"),
    ("health.reasons", [1], "health.reasons[0]", "expected a string"),
    ("health.disks", [{"tier": "ssd"}], "health.disks[0].path", "missing"),
    ("health.workers.running", -2, "health.workers.running", "below 0"),
    ("load.load_fraction", math.nan, "load.load_fraction", "finite"),
    ("load.connections", 1.5, "load.connections", "expected an integer"),
    ("load.extra", 1, "load.extra", "unknown field"),
    ("extra", 1, "extra", "unknown field"),
    ("capacity_bytes", _DELETE, "capacity_bytes", "missing"),
    ("requests", {"/a": -1}, "requests['/a']", "expected an integer >= 0"),
    ("requests", {"a": 1}, "requests['a']", "a key must be a path"),
    ("inventory", {"kind": "some"}, "inventory.kind", "expected one of full, delta"),
    ("inventory", {"kind": "full", "epoch": "e", "gen": 1, "objects": ["/a", "b"]},
     "inventory.objects[1]", "starting with '/'"),
    ("inventory", {"kind": "delta", "epoch": "e", "base_gen": 2, "gen": 2, "added": [],
                   "removed": []}, "inventory.gen", "must exceed base_gen 2"),
    ("inventory", {"kind": "delta", "epoch": "e", "base_gen": 1, "gen": 2, "added": []},
     "inventory.removed", "missing"),
]  # fmt: skip


@pytest.mark.parametrize(("where", "value", "field", "detail"), MALFORMED)
def test_malformed_heartbeats_name_the_field(
    where: str, value: Any, field: str, detail: str
) -> None:
    doc = heartbeat("a1", objects=["/titles/a/x"])
    fleet = Fleet()
    fleet.apply(doc, 0.0)
    before = fleet.snapshot(0.0)
    bad = copy.deepcopy(doc)
    bad["seq"] = 2
    _set(bad, where, value)
    with pytest.raises(HeartbeatError) as info:
        fleet.apply(bad, 1.0)
    assert info.value.field == field
    assert detail in info.value.detail
    assert str(info.value).startswith(f"{field}: ")
    assert fleet.snapshot(0.0) is before  # nothing changed


def test_not_an_object() -> None:
    with pytest.raises(HeartbeatError, match=r"^heartbeat: expected an object, got a list"):
        parse_heartbeat([])


def test_prefixes_are_normalised_and_optional_fields_default() -> None:
    doc = heartbeat("a1", prefixes=["2001:db8:1::/48", "10.1.0.7/24", "10.1.0.0/24"])
    del doc["appliance"]["lat"], doc["appliance"]["https_urls"], doc["requests"]
    del doc["inventory"], doc["health"]["disks"], doc["load"]["cpu_fraction"]
    hb = parse_heartbeat(doc)
    assert hb.prefixes == (
        ipaddress.ip_network("10.1.0.0/24"),
        ipaddress.ip_network("2001:db8:1::/48"),
    )
    assert hb.lat is None and hb.https_urls == () and hb.disks == () and hb.requests == {}
    assert parse_heartbeat(hb.to_json()) == hb


# --------------------------------------------------------------------------- inventories


def test_full_then_deltas_and_the_wrong_base() -> None:
    cat = Catalog([make_title("a"), make_title("b")])
    a, b = paths_of(cat, "a"), paths_of(cat, "b")
    fleet = Fleet(catalog=cat)
    r = fleet.apply(heartbeat("x", objects=a[:2]), 0.0)
    assert (r.inventory, r.applied) == ("ok", True)
    snap = fleet.snapshot(0.0)
    assert snap.title_holders("a") == frozenset()
    assert snap.holders(a[0]) == {"x"} and not snap.holds("x", a[2])

    delta = {"kind": "delta", "epoch": "boot1", "base_gen": 1, "gen": 2, "added": [a[2], b[0]],
             "removed": []}  # fmt: skip
    assert fleet.apply(heartbeat("x", seq=2, inventory=delta), 1.0).inventory == "ok"
    snap = fleet.snapshot(1.0)
    assert snap.title_holders("a") == {"x"} and snap.holds("x", b[0])
    assert snap.appliances["x"].objects == 4

    # a retry of the same heartbeat is ignored, and answered as applied
    r = fleet.apply(heartbeat("x", seq=2, inventory=delta, requests={a[0]: 5}), 1.5)
    assert (r.applied, r.inventory, r.requests) == (False, "ok", {})
    assert "not after 2" in r.detail

    # a delta from a base this replica does not hold: health applies, inventory does not
    stale_delta = {"kind": "delta", "epoch": "boot1", "base_gen": 7, "gen": 8,
                   "added": [b[1]], "removed": [a[0]]}  # fmt: skip
    r = fleet.apply(heartbeat("x", seq=3, inventory=stale_delta, state="degraded"), 2.0)
    assert (r.inventory, r.applied) == ("send-full", True)
    assert "holds gen 2 of epoch boot1" in r.detail
    snap = fleet.snapshot(2.0)
    assert snap.appliances["x"].state == "degraded"
    assert snap.holds("x", a[0]) and not snap.holds("x", b[1])

    # the full inventory that follows replaces everything
    assert fleet.apply(heartbeat("x", seq=4, objects=b), 2.5).inventory == "ok"
    snap = fleet.snapshot(2.5)
    assert snap.title_holders("a") == frozenset() and snap.title_holders("b") == {"x"}
    assert snap.inventory("x") == frozenset(b)

    # a new boot is accepted even with a lower seq; a delta of its new epoch needs a full
    new_epoch = {"kind": "delta", "epoch": "boot2", "base_gen": 1, "gen": 2, "added": [],
                 "removed": []}  # fmt: skip
    r = fleet.apply(heartbeat("x", seq=1, boot_id="boot2", inventory=new_epoch), 3.0)
    assert (r.applied, r.inventory) == (True, "send-full")


def test_no_inventory_known_asks_for_a_full_one() -> None:
    fleet = Fleet()
    r = fleet.apply(heartbeat("x"), 0.0)
    assert r.inventory == "send-full" and "no inventory" in r.detail
    assert fleet.apply(heartbeat("x", seq=2, objects=[]), 0.0).inventory == "ok"
    assert fleet.apply(heartbeat("x", seq=3), 0.0).inventory == "ok"


def test_objects_outside_the_catalog_count_once_the_catalog_lists_them() -> None:
    cat = Catalog([make_title("a")])
    later = make_title("later")
    fleet = Fleet()
    fleet.apply(heartbeat("x", objects=[o.path for o in later.objects]), 0.0)
    fleet.apply(heartbeat("y", objects=[later.objects[0].path]), 0.0)
    assert fleet.snapshot(0.0, cat).title_holders("later") == frozenset()
    assert fleet.snapshot(0.0).holders(later.objects[0].path) == {"x", "y"}
    cat.add(later)
    snap = fleet.snapshot(0.0, cat)
    assert snap.title_holders("later") == {"x"}
    assert snap.holders(later.objects[0].path) == {"x", "y"}
    cat.remove("later")
    assert fleet.snapshot(0.0, cat).title_holders("later") == frozenset()
    # a reloaded catalog (a new object, version 0 again) is noticed too
    snap = fleet.snapshot(0.0, Catalog([make_title("a"), later]))
    assert snap.title_holders("later") == {"x"}


def test_requests_go_to_the_callback_and_the_accumulator() -> None:
    seen: list[tuple[str, str, dict[str, int]]] = []
    fleet = Fleet(on_requests=lambda a, r, c: seen.append((a, r, dict(c))), collect_requests=True)
    fleet.apply(heartbeat("x", region="eu", requests={"/t/a": 2}), 0.0)
    fleet.apply(heartbeat("y", region="eu", requests={"/t/a": 1, "/t/b": 4}), 0.0)
    fleet.apply(heartbeat("y", region="eu", requests={"/t/a": 9}), 0.0)  # a retry
    assert seen == [("x", "eu", {"/t/a": 2}), ("y", "eu", {"/t/a": 1, "/t/b": 4})]
    assert fleet.drain_requests() == {"eu": {"/t/a": 3, "/t/b": 4}}
    assert fleet.drain_requests() == {}


# --------------------------------------------------------------------------- time


def test_staleness_uses_each_appliances_interval_and_snapshots_are_cached() -> None:
    fleet = Fleet(missed_heartbeats=3, forget_after_seconds=100)
    fleet.apply(heartbeat("fast", interval=2.0), 10.0)
    fleet.apply(heartbeat("slow", interval=5.0), 10.0)
    snap = fleet.snapshot(11.0)
    assert fleet.snapshot(16.0) is snap  # nothing changed, no deadline passed
    assert snap.appliances["fast"].stale_after_seconds == 6.0
    later = fleet.snapshot(16.5)
    assert later is not snap
    assert not later.appliances["fast"].fresh and later.appliances["slow"].fresh
    assert [later.eligible[later.topology.index[i]] for i in ("fast", "slow")] == [False, True]
    assert not fleet.snapshot(25.5).appliances["slow"].fresh
    # a heartbeat makes it fresh again
    fleet.apply(heartbeat("fast", seq=2), 30.0)
    assert fleet.snapshot(30.0).appliances["fast"].fresh
    # forgotten forget_after_seconds after the last heartbeat
    assert set(fleet.snapshot(110.0).appliances) == {"fast", "slow"}
    assert set(fleet.snapshot(110.5).appliances) == {"fast"}
    assert "slow" not in fleet and len(fleet) == 1
    assert fleet.snapshot(130.5).appliances == {}


def test_a_clock_going_back_recomputes_freshness() -> None:
    fleet = Fleet()
    fleet.apply(heartbeat("x"), 10.0)
    assert not fleet.snapshot(20.0).appliances["x"].fresh
    assert fleet.snapshot(12.0).appliances["x"].fresh


def test_forgetting_clears_title_holders_and_frees_the_slot() -> None:
    cat = Catalog([make_title("a")])
    fleet = Fleet(catalog=cat, forget_after_seconds=10)
    fleet.apply(heartbeat("x", objects=paths_of(cat, "a")), 0.0)
    assert fleet.snapshot(0.0).title_holders("a") == {"x"}
    assert fleet.snapshot(11.0).title_holders("a") == frozenset()
    fleet.apply(heartbeat("y", objects=paths_of(cat, "a")[:1]), 12.0)
    snap = fleet.snapshot(12.0)
    assert snap.title_holders("a") == frozenset() and snap.holders(paths_of(cat, "a")[0]) == {"y"}


def test_old_snapshots_do_not_change() -> None:
    cat = Catalog([make_title("a")])
    a = paths_of(cat, "a")
    fleet = Fleet(catalog=cat)
    fleet.apply(heartbeat("x", objects=a), 0.0)
    old = fleet.snapshot(0.0)
    delta = {"kind": "delta", "epoch": "boot1", "base_gen": 1, "gen": 2, "added": ["/n"],
             "removed": [a[0]]}  # fmt: skip
    fleet.apply(heartbeat("x", seq=2, inventory=delta), 1.0)
    fleet.apply(heartbeat("y", objects=a), 1.0)
    new = fleet.snapshot(1.0)
    assert old.title_holders("a") == {"x"} and old.holds("x", a[0]) and not old.holds("x", "/n")
    assert set(old.appliances) == {"x"}
    assert new.title_holders("a") == {"y"} and new.holds("x", "/n")


# --------------------------------------------------------------------------- warm start


def _same(a: Snapshot, b: Snapshot, titles: Iterable[str]) -> None:
    assert a.appliances == b.appliances
    for aid in a.appliances:
        assert a.inventory(aid) == b.inventory(aid)
    for t in titles:
        assert a.title_holders(t) == b.title_holders(t)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    cat = Catalog([make_title("a"), make_title("b")])
    fleet = Fleet(catalog=cat, forget_after_seconds=50)
    fleet.apply(heartbeat("x", objects=[*paths_of(cat, "a"), "/other/z"],
                          prefixes=["10.0.0.0/8"]), 0.0)  # fmt: skip
    fleet.apply(heartbeat("y", site="s2", lat=None, lon=None, objects=paths_of(cat, "b")), 5.0)
    fleet.apply(heartbeat("z", state="unhealthy", reasons=["disk failed: EIO"]), 5.0)
    path = tmp_path / "fleet.json"
    fleet.save(str(path))
    assert not list(tmp_path.glob(".fleet-*"))  # no temporary file left behind

    loaded = Fleet(catalog=cat, forget_after_seconds=50)
    assert loaded.load(str(path), 5.0) == 3
    _same(fleet.snapshot(5.0), loaded.snapshot(5.0), ("a", "b"))
    # they go stale at the same time, and deltas continue on the saved generation
    assert not loaded.snapshot(6.5).appliances["x"].fresh
    delta = {"kind": "delta", "epoch": "boot1", "base_gen": 1, "gen": 2, "added": [],
             "removed": [paths_of(cat, "a")[0]]}  # fmt: skip
    r = loaded.apply(heartbeat("x", seq=2, inventory=delta), 7.0)
    assert r.inventory == "ok"
    assert loaded.snapshot(7.0).title_holders("a") == frozenset()
    # appliances already past forget_after_seconds are not loaded
    assert Fleet(forget_after_seconds=50).load(str(path), 52.0) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "file: not JSON"),
        (b"[]", "schema: expected 'oca.fleet-state'"),
        (orjson.dumps({"schema": "oca.fleet-state", "version": 9}), "version: expected 1"),
        (orjson.dumps({"schema": "oca.fleet-state", "version": 1, "paths": ["x"],
                       "appliances": []}), "paths: expected a list of paths"),
    ],
)  # fmt: skip
def test_a_corrupt_state_file_is_a_clear_error(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "fleet.json"
    path.write_bytes(content)
    fleet = Fleet()
    with pytest.raises(FleetStateError, match=message):
        fleet.load(str(path), 0.0)
    assert len(fleet) == 0


def test_a_bad_field_in_a_saved_heartbeat_is_named(tmp_path: Path) -> None:
    fleet = Fleet()
    fleet.apply(heartbeat("x", objects=["/a"]), 0.0)
    fleet.apply(heartbeat("y", objects=["/a"]), 0.0)
    path = tmp_path / "fleet.json"
    fleet.save(str(path))
    with pytest.raises(FleetStateError, match="already knows"):
        fleet.load(str(path), 0.0)
    saved = orjson.loads(path.read_bytes())
    changes: list[tuple[Callable[[dict[str, Any]], object], str]] = [
        (lambda d: d["appliances"][1]["heartbeat"]["health"].update(state="sick"),
         r"appliances\[1\]\.heartbeat\.health\.state: "),
        (lambda d: d["appliances"][0]["inventory"].update(objects=[1]),
         r"appliances\[0\]\.inventory\.objects: expected indexes into paths"),
        (lambda d: d["appliances"][0]["inventory"].update(objects=[True]),
         r"appliances\[0\]\.inventory\.objects: "),
        (lambda d: d["appliances"][0]["inventory"].update(gen=-1),
         r"appliances\[0\]\.inventory\.gen: -1 is below 0"),
    ]  # fmt: skip
    for change, where in changes:
        doc = copy.deepcopy(saved)
        change(doc)
        path.write_bytes(orjson.dumps(doc))
        fresh = Fleet()
        with pytest.raises(FleetStateError, match=where):
            fresh.load(str(path), 0.0)
        assert len(fresh) == 0


# --------------------------------------------------------------------------- delta protocol


CATALOG_TITLES = ("a", "b")
UNIVERSE = [f"/titles/{t}/{o}" for t in CATALOG_TITLES for o in ("manifest.mpd", "v1/seg-0.m4s",
                                                                 "v1/seg-1.m4s")]  # fmt: skip
UNIVERSE += ["/elsewhere/1", "/elsewhere/2"]


class _Appliance:
    def __init__(self, aid: str) -> None:
        self.id = aid
        self.boot = 0
        self.epoch = "e0"
        self.seq = 0
        self.gen = 0
        self.history: dict[int, frozenset[str]] = {0: frozenset()}
        self.acked: int | None = None  # the generation this replica acknowledged
        self.last: dict[str, Any] | None = None

    @property
    def objects(self) -> frozenset[str]:
        return self.history[self.gen]

    def next(self) -> dict[str, Any]:
        self.seq += 1
        inventory: dict[str, Any] | None
        if self.acked is None:
            inventory = {"kind": "full", "epoch": self.epoch, "gen": self.gen,
                         "objects": sorted(self.objects)}  # fmt: skip
        elif self.acked == self.gen:
            inventory = None
        else:
            base = self.history[self.acked]
            inventory = {"kind": "delta", "epoch": self.epoch, "base_gen": self.acked,
                         "gen": self.gen, "added": sorted(self.objects - base),
                         "removed": sorted(base - self.objects)}  # fmt: skip
        return heartbeat(self.id, seq=self.seq, boot_id=f"boot{self.boot}", inventory=inventory)


class DeltaProtocol(RuleBasedStateMachine):
    """Appliances change their sets, heartbeats get lost or delivered twice, steering
    restarts (empty, or from a saved state) and the catalog changes: whenever steering
    answered "ok", it holds exactly the appliance's set, and title holders agree with
    the inventories."""

    def __init__(self) -> None:
        super().__init__()
        self.catalog = Catalog([make_title(t) for t in CATALOG_TITLES])
        self.fleet = Fleet(catalog=self.catalog)
        self.now = 0.0
        self.appliances = [_Appliance("x"), _Appliance("y")]
        self.saved: bytes | None = None
        self.saved_acks: list[int | None] = []

    @rule(which=st.integers(0, 1), path=st.sampled_from(UNIVERSE))
    def toggle(self, which: int, path: str) -> None:
        a = self.appliances[which]
        changed = a.objects ^ {path}
        a.gen += 1
        a.history[a.gen] = changed

    @rule(which=st.integers(0, 1), lost=st.booleans())
    def send(self, which: int, lost: bool) -> None:
        a = self.appliances[which]
        doc = a.next()
        self.now += 0.1
        if lost:
            return
        result = self.fleet.apply(doc, self.now)
        assert result.applied
        a.last = doc
        if result.inventory == "ok":
            a.acked = a.gen
        else:
            assert doc["inventory"] is None or doc["inventory"]["kind"] == "delta"
            a.acked = None

    @precondition(lambda self: any(a.last for a in self.appliances))
    @rule(which=st.integers(0, 1))
    def deliver_twice(self, which: int) -> None:
        a = self.appliances[which]
        if a.last is None:
            return
        result = self.fleet.apply(a.last, self.now)
        assert not result.applied and result.requests == {}

    @rule(which=st.integers(0, 1))
    def restart_appliance(self, which: int) -> None:
        a = self.appliances[which]
        a.boot += 1
        a.epoch = f"e{a.boot}"
        a.seq = 0
        a.acked = None
        a.last = None

    @rule(from_saved=st.booleans())
    def restart_steering(self, from_saved: bool) -> None:
        self.fleet = Fleet(catalog=self.catalog)
        if from_saved and self.saved is not None:
            import tempfile

            with tempfile.NamedTemporaryFile() as f:
                f.write(self.saved)
                f.flush()
                self.fleet.load(f.name, self.now)
            # the appliances do not know: they continue from what they had acked
        for a in self.appliances:
            a.last = None  # a retry would reach the new replica as new

    @rule()
    def save(self) -> None:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            self.fleet.save(f"{d}/fleet.json")
            self.saved = Path(f"{d}/fleet.json").read_bytes()

    @rule(tid=st.sampled_from(CATALOG_TITLES), present=st.booleans())
    def change_catalog(self, tid: str, present: bool) -> None:
        if present:
            self.catalog.add(make_title(tid))
        elif tid in self.catalog.titles:
            self.catalog.remove(tid)

    @invariant()
    def steering_holds_what_it_acknowledged(self) -> None:
        snap = self.fleet.snapshot(self.now, self.catalog)
        for a in self.appliances:
            if a.acked is not None and a.id in snap.appliances and a.last is not None:
                assert snap.inventory(a.id) == a.history[a.acked]

    @invariant()
    def title_holders_agree_with_inventories(self) -> None:
        snap = self.fleet.snapshot(self.now, self.catalog)
        for tid in CATALOG_TITLES:
            title = self.catalog.get(tid)
            want = frozenset(
                aid
                for aid in snap.appliances
                if title is not None and {o.path for o in title.objects} <= snap.inventory(aid)
            )
            assert snap.title_holders(tid) == want
            for o in UNIVERSE:
                assert snap.holders(o) == {
                    aid for aid in snap.appliances if o in snap.inventory(aid)
                }


DeltaProtocol.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestDeltaProtocol = DeltaProtocol.TestCase


def test_a_warm_start_does_not_trust_unchanged(tmp_path: Path) -> None:
    """Saved at gen 1, acknowledged gen 2 later; after a restart from the saved state the
    appliance says "unchanged", which must not confirm gen 1."""
    fleet = Fleet()
    fleet.apply(heartbeat("x", objects=["/a"]), 0.0)
    path = tmp_path / "fleet.json"
    fleet.save(str(path))
    delta = {"kind": "delta", "epoch": "boot1", "base_gen": 1, "gen": 2, "added": ["/b"],
             "removed": []}  # fmt: skip
    assert fleet.apply(heartbeat("x", seq=2, inventory=delta), 1.0).inventory == "ok"
    restarted = Fleet()
    restarted.load(str(path), 1.5)
    assert restarted.snapshot(1.5).inventory("x") == {"/a"}  # used at once
    r = restarted.apply(heartbeat("x", seq=3), 2.0)
    assert r.inventory == "send-full" and "saved state" in r.detail
    assert restarted.apply(heartbeat("x", seq=3), 2.0).inventory == "send-full"  # a retry
    # a delta from exactly the saved generation confirms it
    restarted = Fleet()
    restarted.load(str(path), 1.5)
    assert restarted.apply(heartbeat("x", seq=2, inventory=delta), 2.0).inventory == "ok"
    assert restarted.apply(heartbeat("x", seq=3), 2.0).inventory == "ok"
    assert restarted.snapshot(2.0).inventory("x") == {"/a", "/b"}
