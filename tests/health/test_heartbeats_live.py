"""Heartbeats from a real appliance to a steering stand-in on loopback.

The appliance (``python -m oca serve``, two workers, three disks) reports to an aiohttp
server in the test that checks each body's HMAC itself and rebuilds the appliance's
inventory from full lists and deltas as the steering service must. Changes are made
the way operators make them: ``oca store import``/``rm``, ``oca drain``, removing a disk,
a fill holding its lock, requests over real sockets.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from fill.metrics import FillMetrics
from fill.run import fill_lock
from tests.appliance import Appliance, fetch, free_port, remove_disk, wait_until, write_tree
from tests.health.conftest import (
    APPLIANCE_ID,
    FILES,
    KEY_ID,
    REGION,
    SITE,
    STATIC_PREFIXES,
    new_appliance,
    steering_section,
    stop_checked,
)
from tests.health.steering_stub import Beat, SteeringStub


def store_paths(app: Appliance) -> set[str]:
    out = app.oca("store", "ls", "-c", str(app.config_path), "--json").stdout
    return {r["path"] for r in orjson.loads(out)}


def placement(app: Appliance) -> dict[str, str]:
    out = app.oca("store", "ls", "-c", str(app.config_path), "--json").stdout
    return {r["path"]: r["disk"] for r in orjson.loads(out)}


def healthy(b: Beat) -> bool:
    return bool(b.doc["health"]["state"] == "healthy")


def rebuilt(stub: SteeringStub) -> set[str]:
    return stub.inventories[APPLIANCE_ID][2]


@pytest.fixture(scope="module")
def reporting(
    tmp_path_factory: pytest.TempPathFactory, secret: str
) -> Iterator[tuple[Appliance, SteeringStub]]:
    """One appliance beating every 0.3 s to one stub, shared by the tests below that
    leave it as they found it (or only add to it)."""
    with SteeringStub({KEY_ID: bytes.fromhex(secret)}) as stub:
        app = new_appliance(
            tmp_path_factory.mktemp("reporting"), steering_section([stub.url], secret)
        )
        app.start()
        try:
            yield app, stub
        finally:
            stop_checked(app)


def test_heartbeats_carry_identity_prefixes_health_load_and_the_full_inventory(
    reporting: tuple[Appliance, SteeringStub],
) -> None:
    app, stub = reporting
    first = stub.wait_for(lambda b: True)
    inv = first.inventory
    assert inv is not None and inv["kind"] == "full", inv
    assert inv["gen"] == 1 and inv["epoch"] == first.doc["boot_id"]
    assert inv["objects"] == sorted(FILES)
    assert first.doc["seq"] == 1

    b = stub.wait_for(healthy)
    d = b.doc
    assert (d["schema"], d["version"]) == ("oca.heartbeat", 1)
    assert d["appliance"] == {
        "id": APPLIANCE_ID,
        "site": SITE,
        "region": REGION,
        "lat": 50.1,
        "lon": 8.7,
        "urls": [app.url],
        "https_urls": [],
    }
    assert d["prefixes"] == STATIC_PREFIXES
    assert d["interval_seconds"] == 0.3
    assert abs(d["sent_at"] - time.time()) < 60
    h = d["health"]
    assert h["reasons"] == [] and h["draining"] is False and h["serving"] is True
    assert h["workers"] == {"configured": 2, "running": 2, "restarts": 0}
    assert h["fill"] == {"state": "idle", "last_run_at": None, "reason": ""}
    disks = {(x["tier"], x["path"]): x for x in h["disks"]}
    expected = {(t, str(p)) for t, _ in app.tiers for p in app.disk_paths(t)}
    assert set(disks) == expected
    assert all(x["state"] == "ok" and x["reason"] == "" for x in disks.values())
    assert all(x["capacity_bytes"] > 0 for x in disks.values())
    total = sum(len(v) for v in FILES.values())
    assert sum(x["used_bytes"] for x in disks.values()) == total == d["used_bytes"]
    assert d["capacity_bytes"] == sum(x["capacity_bytes"] for x in disks.values())
    load = d["load"]
    assert load["link_capacity_bits_per_second"] == 1e9
    assert 0 <= load["cpu_fraction"] <= 1 and load["nic_bits_per_second"] >= 0
    assert isinstance(load["connections"], int) and load["connections"] >= 0
    assert load["load_fraction"] == pytest.approx(
        max(load["nic_bits_per_second"] / 1e9, load["cpu_fraction"])
    )
    # Nothing changed since the full list: later heartbeats carry no inventory.
    later = stub.wait_for(lambda x: x.doc["seq"] > b.doc["seq"], after=stub.snapshot().index(b))
    assert later.inventory is None and later.doc["requests"] == {}
    assert rebuilt(stub) == set(FILES)


def test_connections_are_counted(reporting: tuple[Appliance, SteeringStub]) -> None:
    app, stub = reporting
    held = [socket.create_connection(app.host_port) for _ in range(3)]
    try:
        mark = stub.count()
        stub.wait_for(lambda b: b.doc["load"]["connections"] >= 3, after=mark)
    finally:
        for s in held:
            s.close()


def test_import_and_rm_arrive_as_deltas(
    reporting: tuple[Appliance, SteeringStub], tmp_path: Path
) -> None:
    app, stub = reporting
    stub.wait_for(lambda b: True)
    extra = {f"/titles/late/seg-{i}.m4s": os.urandom(1000 + i) for i in range(3)}
    mark = stub.count()
    app.oca("store", "import", "-c", str(app.config_path), str(write_tree(tmp_path, extra)))
    b = stub.wait_for(
        lambda b: (
            b.inventory is not None
            and b.inventory["kind"] == "delta"
            and set(extra) <= rebuilt(stub)
        ),
        after=mark,
    )
    assert b.inventory is not None
    assert b.inventory["removed"] == [] and b.inventory["base_gen"] < b.inventory["gen"]
    assert rebuilt(stub) == set(FILES) | set(extra) == store_paths(app)

    mark = stub.count()
    gone = sorted(extra)[1]
    app.oca("store", "rm", "-c", str(app.config_path), gone)
    b = stub.wait_for(
        lambda b: b.inventory is not None and b.inventory["kind"] == "delta", after=mark
    )
    assert b.inventory is not None
    assert (b.inventory["added"], b.inventory["removed"]) == ([], [gone])
    assert rebuilt(stub) == store_paths(app)
    assert all(x.answer == "ok" for x in stub.snapshot()), "a delta lacked its base"
    app.oca("store", "rm", "-c", str(app.config_path), *sorted(set(extra) - {gone}))
    stub.wait_for(lambda b: rebuilt(stub) == set(FILES), after=mark)


def test_request_counts_follow_fetches_once(reporting: tuple[Appliance, SteeringStub]) -> None:
    app, stub = reporting
    hot, cold = sorted(FILES)[:2]
    stub.wait_for(lambda b: True)
    mark = stub.count()
    for _ in range(3):
        status, _, body = fetch(*app.host_port, hot)
        assert status == 200 and body == FILES[hot]
    status, _, _ = fetch(*app.host_port, cold, {"Range": "bytes=0-9"})
    assert status == 206
    wait_until(
        lambda: stub.requests_total(hot, mark) == 3 and stub.requests_total(cold, mark) == 1,
        15,
        "the request counts to arrive",
    )
    # Several flushes and heartbeats later, nothing was counted twice.
    settled = stub.count()
    stub.wait_for(lambda b: True, after=settled + 4)
    assert stub.requests_total(hot, mark) == 3 and stub.requests_total(cold, mark) == 1


def test_fill_state_from_what_the_fill_leaves(reporting: tuple[Appliance, SteeringStub]) -> None:
    app, stub = reporting
    state_dir = str(app.root / "state")
    with fill_lock(state_dir):
        mark = stub.count()
        stub.wait_for(lambda b: b.doc["health"]["fill"]["state"] == "running", after=mark)
    mark = stub.count()
    stub.wait_for(lambda b: b.doc["health"]["fill"]["state"] == "idle", after=mark)

    metrics = FillMetrics(state_dir)
    metrics.running = 1
    metrics.save()  # a fill that was killed: its files still say running
    b = stub.wait_for(lambda b: b.doc["health"]["fill"]["reason"] != "", after=stub.count())
    fill = b.doc["health"]["fill"]
    assert fill["state"] == "idle" and "stopped without finishing" in fill["reason"]
    assert fill["last_run_at"] == pytest.approx(
        os.stat(os.path.join(state_dir, "fill", "metrics.json")).st_mtime
    )
    assert b.doc["health"]["state"] == "healthy"
    metrics.running = 0
    metrics.save()
    stub.wait_for(lambda b: b.doc["health"]["fill"]["reason"] == "", after=stub.count())


def test_the_steering_service_parser_accepts_every_heartbeat(
    reporting: tuple[Appliance, SteeringStub],
) -> None:
    """Cross-check with the control plane's own validation of the wire format."""
    from steering.heartbeat import parse_heartbeat

    _, stub = reporting
    stub.wait_for(lambda b: True, after=stub.count())
    beats = stub.snapshot()
    kinds = {b.inventory["kind"] if b.inventory else None for b in beats}
    assert {"full", "delta", None} <= kinds
    for b in beats:
        hb = parse_heartbeat(b.doc)
        assert hb.appliance_id == APPLIANCE_ID and hb.seq == b.doc["seq"]


def test_failed_disk_is_a_reason_and_its_objects_leave_the_inventory(
    tmp_path: Path, stub: SteeringStub, secret: str
) -> None:
    app = new_appliance(tmp_path, steering_section([stub.url], secret))
    where = placement(app)
    app.start()
    try:
        stub.wait_for(healthy)
        lost = str(app.disk_paths("ssd")[1])
        on_lost = {p for p, d in where.items() if d == lost}
        assert on_lost, "the disk to fail holds objects"
        mark = stub.count()
        remove_disk(lost)
        b = stub.wait_for(lambda b: b.doc["health"]["state"] == "degraded", after=mark, timeout=15)
        h = b.doc["health"]
        (disk,) = [x for x in h["disks"] if x["path"] == lost]
        assert disk["state"] == "failed" and lost in disk["reason"]
        assert any(r.startswith(f"disk ssd:{lost} failed: ") for r in h["reasons"]), h["reasons"]
        assert h["serving"] is True
        stub.wait_for(lambda b: rebuilt(stub) == set(FILES) - on_lost, after=mark)
        # Shutting down: a last heartbeat takes the appliance out of rotation at once.
        mark = stub.count()
        stop_checked(app)
        last = stub.wait_for(lambda b: not b.doc["health"]["serving"], after=mark, timeout=5)
        assert any(r.startswith("shutting down") for r in last.doc["health"]["reasons"])
    finally:
        stop_checked(app)


# --------------------------------------------------------------------------- wake-ups


@pytest.fixture
def slow(
    tmp_path: Path, stub: SteeringStub, secret: str
) -> Iterator[tuple[Appliance, SteeringStub, str]]:
    """An appliance beating only every 30 s, to a live stub and a URL nobody answers."""
    dead = f"http://127.0.0.1:{free_port()}"
    app = new_appliance(tmp_path, steering_section([stub.url, dead], secret, interval=30))
    app.start()
    try:
        stub.wait_for(lambda b: b.inventory is not None)
        yield app, stub, dead
    finally:
        stop_checked(app)


def test_drain_via_the_cli_sends_a_heartbeat_at_once(
    slow: tuple[Appliance, SteeringStub, str],
) -> None:
    app, stub, _ = slow
    cfg = str(app.config_path)
    mark = stub.count()
    out = app.oca("drain", "-c", cfg).stdout
    assert f"appliance {APPLIANCE_ID} is now draining" in out
    b = stub.wait_for(lambda b: b.doc["health"]["draining"], after=mark, timeout=5)
    assert b.doc["health"]["serving"] is True and b.doc["health"]["reasons"] == []
    status, _, body = fetch(*app.host_port, sorted(FILES)[0])
    assert status == 200 and body == FILES[sorted(FILES)[0]]
    assert "was already draining" in app.oca("drain", "-c", cfg).stdout

    mark = stub.count()
    out = app.oca("drain", "-c", cfg, "--undrain").stdout
    assert "was draining" in out and "now it is not" in out
    stub.wait_for(lambda b: not b.doc["health"]["draining"], after=mark, timeout=5)
    assert "was not draining" in app.oca("drain", "-c", cfg, "--undrain").stdout


def test_send_full_answer_brings_the_full_inventory_in_the_next_heartbeat(
    slow: tuple[Appliance, SteeringStub, str],
) -> None:
    app, stub, dead = slow
    stub.send_full_once = True
    # Wake the reporter (a drain flag change) so the test need not wait 30 s.
    mark = stub.count()
    app.oca("drain", "-c", str(app.config_path))
    asked = stub.wait_for(lambda b: b.answer == "send-full", after=mark, timeout=5)
    nxt = stub.wait_for(lambda b: True, after=stub.snapshot().index(asked) + 1, timeout=5)
    assert nxt.doc["seq"] == asked.doc["seq"] + 1
    inv = nxt.inventory
    assert inv is not None and inv["kind"] == "full" and inv["objects"] == sorted(FILES)
    assert nxt.answer == "ok"
    # The dead replica fails on its own, logged once, and contact is kept by the other.
    log = app.log_text()
    assert log.count(f"heartbeat to {dead}: was not sent yet, now failing, because") == 1
    assert "steering unreachable" not in log


# --------------------------------------------------------------------------- grace


def _readyz(app: Appliance) -> int:
    return fetch(*app.host_port, "/readyz")[0]


def _every_worker(app: Appliance, probe: Callable[[], int], status: int, what: str) -> None:
    """Wait until ``probe`` answers ``status`` several times in a row: requests land on
    either worker, and each reads the refusal flag on its own refresh."""
    wait_until(lambda: all(probe() == status for _ in range(8)), 15, what)


def test_grace_over_with_policy_stop_refuses_content_until_steering_answers(
    tmp_path: Path, secret: str
) -> None:
    keys = {KEY_ID: bytes.fromhex(secret)}
    path = sorted(FILES)[0]
    stubs = [SteeringStub(keys).__enter__()]
    port = stubs[0].port
    app = new_appliance(
        tmp_path, steering_section([stubs[0].url], secret, interval=0.2, grace=1, policy="stop")
    )
    app.start()

    def content() -> int:
        return fetch(*app.host_port, path)[0]

    try:
        stubs[0].wait_for(healthy)
        assert content() == 200
        stubs.pop().__exit__()  # steering goes away
        _every_worker(app, content, 503, "content refused")
        status, headers, _ = fetch(*app.host_port, path)
        assert status == 503 and headers["retry-after"].isdigit()
        _every_worker(app, lambda: _readyz(app), 503, "/readyz not ready")
        log = app.log_text()
        assert log.count("steering unreachable: no steering URL answered since") == 1
        assert log.count("grace period over; policy=stop: refusing new content requests") == 1, log[
            -3000:
        ]
        stubs.append(SteeringStub(keys, port=port).__enter__())  # and comes back
        _every_worker(app, content, 200, "content served again")
        _every_worker(app, lambda: _readyz(app), 200, "/readyz ready again")
        log = app.log_text()
        assert log.count("steering reachable again") == 1
        lost = log.index("steering unreachable: no steering URL")
        over = log.index("grace period over")
        back = log.index("steering reachable again")
        assert lost < over < back
        stubs[0].wait_for(lambda b: b.doc["health"]["serving"] is True)
    finally:
        stop_checked(app)
        for stub in stubs:
            stub.__exit__()


def test_grace_over_with_policy_serve_keeps_serving(tmp_path: Path, secret: str) -> None:
    keys = {KEY_ID: bytes.fromhex(secret)}
    path = sorted(FILES)[0]
    with SteeringStub(keys, mode=503) as stub:
        app = new_appliance(
            tmp_path, steering_section([stub.url], secret, interval=0.2, grace=1, policy="serve")
        )
        app.start()
        try:
            wait_until(
                lambda: "policy=serve: keep serving" in app.log_text(), 15, "the grace to end"
            )
            assert all(fetch(*app.host_port, path)[0] == 200 for _ in range(8))
            assert all(_readyz(app) == 200 for _ in range(8))
            log = app.log_text()
            assert log.count("steering unreachable: no steering URL answered since") == 1
            assert log.count("now failing, because HTTP 503") == 1  # once, not every beat
            stub.mode = "ok"
            wait_until(lambda: "steering reachable again" in app.log_text(), 15, "contact again")
            b = stub.wait_for(lambda b: b.answer == "ok")
            assert b.doc["health"]["serving"] is True
            assert fetch(*app.host_port, path)[0] == 200
        finally:
            stop_checked(app)


# --------------------------------------------------------------------------- helpers


def test_fill_lock_probe_does_not_take_the_lock(tmp_path: Path) -> None:
    """Reading the fill state never holds the fill lock (a starting fill must not fail)."""
    from oca.health.sources import fill_health

    state_dir = str(tmp_path)
    with fill_lock(state_dir):
        assert fill_health(state_dir).state == "running"
    assert fill_health(state_dir).state == "idle"
    fd = os.open(os.path.join(state_dir, "fill", "lock"), os.O_RDWR)
    try:
        fill_health(state_dir)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: nobody kept it
    finally:
        os.close(fd)
