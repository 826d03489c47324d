"""``oca status`` against real appliances on loopback.

Appliance ``a`` (two workers, an internal listener, two SSDs and an HDD) peers with
appliance ``b`` (which holds one object) and with an address nobody answers; it misses
through to a real origin and sends heartbeats to a steering stand-in and to a closed
port. Traffic goes over real sockets; the drain flag is set with ``oca drain``; a disk
fails by having its directory removed. ``oca status`` runs as the operator runs it:
``python -m oca status -c CONF``, on a pipe or on a pseudo-terminal.
"""

from __future__ import annotations

import dataclasses
import os
import pty
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from oca.config import Config, SteeringConfig, StorageConfig, TierConfig
from oca.health.flags import (
    DrainState,
    SteeringStatusJSON,
    read_steering_status,
    write_steering_status,
)
from oca.health.verdict import FillHealth
from oca.status_report import Endpoint, MetricKey, Sample, build_document
from tests.appliance import Appliance, fetch, free_port, remove_disk, wait_until, write_tree
from tests.fill.origin import Origin
from tests.health.steering_stub import SteeringStub

KIB = 1024
SSD_FILES = {f"/titles/st/v720/seg-{i:03d}.m4s": os.urandom(100 * KIB + i) for i in range(6)}
HDD_FILES = {"/titles/st/v480/seg-001.m4s": os.urandom(70 * KIB + 1)}
PEER_OBJ = "/titles/pe/v720/seg-001.m4s"  # held by b only
ORIGIN_OBJ = "/titles/or/v720/seg-001.m4s"  # at the origin only
PEER_DATA = os.urandom(90 * KIB + 7)
ORIGIN_DATA = os.urandom(80 * KIB + 3)
A_ID, B_ID, SITE, REGION = "oca-status-a", "oca-status-b", "ams-test", "eu-status"
HOT = sorted(SSD_FILES)[0]
HOME = "\x1b[H"
SHOW_CURSOR = "\x1b[?25h"


def oca(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oca", *args], capture_output=True, text=True, timeout=timeout
    )


def status_json(app: Appliance, interval: float = 1.0) -> dict[str, Any]:
    r = oca("status", "-c", str(app.config_path), "--json", "--interval", str(interval))
    assert r.returncode == 0, r.stderr
    doc = orjson.loads(r.stdout)
    assert isinstance(doc, dict)
    return doc


def internal(app: Appliance) -> tuple[str, int]:
    host, port = app.urls["internal"].split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


def worker_status(app: Appliance) -> dict[str, Any]:
    status, _, body = fetch(*internal(app), "/status")
    assert status == 200, body
    doc = orjson.loads(body)
    assert isinstance(doc, dict)
    return doc


def metric(app: Appliance, name: str, **labels: str) -> float:
    _, _, body = fetch(*internal(app), "/metrics")
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def stop_checked(app: Appliance) -> None:
    code = app.stop()
    log = app.log_text()
    assert code == 0, f"appliance exited with {code}\n{log[-4000:]}"
    assert "Traceback" not in log, log[-8000:]


def steering_section(urls: list[str], secret: str, interval: float = 0.3) -> str:
    listed = ", ".join(f'"{u}"' for u in urls)
    return f"""
[steering]
urls = [{listed}]
keys = [{{ id = "st1", secret = "{secret}" }}]
interval_seconds = {interval}
request_timeout_seconds = 1
region = "{REGION}"
interfaces = ["lo"]
link_capacity_bits = 1000000000
"""


@dataclass
class Site:
    a: Appliance
    b: Appliance
    stub: SteeringStub
    dead_peer: str
    dead_steering: str
    origin: Origin


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    secret, peer_key = secrets.token_hex(32), secrets.token_hex(32)
    root = tmp_path_factory.mktemp("status")
    b_port = free_port()
    dead_peer = f"http://127.0.0.1:{free_port()}"
    dead_steering = f"http://127.0.0.1:{free_port()}"
    b = Appliance(
        root / "b",
        tiers=(("ssd", 1),),
        listen=f"127.0.0.1:{b_port}",
        sections=f'[peering]\nappliance_id = "{B_ID}"\nsite = "{SITE}"\nkeys = ["{peer_key}"]\n',
    )
    (root / "b").mkdir()
    b.import_tree(write_tree(root / "b" / "src", {PEER_OBJ: PEER_DATA}))
    with (
        SteeringStub({"st1": bytes.fromhex(secret)}) as stub,
        Origin({ORIGIN_OBJ: ORIGIN_DATA}) as origin,
    ):
        a = Appliance(
            root / "a",
            workers=2,
            internal=True,
            sections=f"""
[peering]
appliance_id = "{A_ID}"
site = "{SITE}"
peers = ["http://127.0.0.1:{b_port}", "{dead_peer}"]
keys = ["{peer_key}"]
summary_refresh_seconds = 0.2
backoff_max_seconds = 1

[miss]
origins = ["{origin.url}"]
"""
            + steering_section([stub.url, dead_steering], secret),
        )
        (root / "a").mkdir()
        a.import_tree(write_tree(root / "a" / "ssd-src", SSD_FILES), tier="ssd")
        a.import_tree(write_tree(root / "a" / "hdd-src", HDD_FILES), tier="hdd")
        b.start()
        try:
            a.start()
            try:
                yield Site(a, b, stub, dead_peer, dead_steering, origin)
            finally:
                stop_checked(a)
        finally:
            stop_checked(b)


def _peer_b_up(app: Appliance) -> bool:
    peers = worker_status(app)["peers"]
    return any(p["appliance"] == B_ID and p["state"] == "up" for p in peers)


@pytest.fixture(scope="module")
def traffic(site: Site) -> dict[str, Any]:
    """Hits on both tiers, a peer miss and an origin miss, then ``oca status --json``
    taken while a client keeps fetching an SSD object."""
    a = site.a
    # Each worker polls the peers itself: wait until both say b is up.
    wait_until(lambda: all(_peer_b_up(a) for _ in range(6)), 20, "both workers to see b up")
    gets = 0
    for _ in range(3):
        for path, data in {**SSD_FILES, **HDD_FILES}.items():
            assert fetch(*a.host_port, path)[::2] == (200, data)
            gets += 1
    assert fetch(*a.host_port, PEER_OBJ)[::2] == (200, PEER_DATA)
    assert fetch(*a.host_port, ORIGIN_OBJ)[::2] == (200, ORIGIN_DATA)
    gets += 2
    # Counters reach /metrics with the workers' next snapshot.
    wait_until(
        lambda: (
            metric(a, "oca_sent_bytes_total", tier="origin") == len(ORIGIN_DATA)
            and metric(a, "oca_sent_bytes_total", tier="peer") == len(PEER_DATA)
        ),
        10,
        "the misses' bytes in /metrics",
    )
    stop = threading.Event()
    flowing = {"gets": 0}

    def client() -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline and flowing["gets"] < 5000:
            assert fetch(*a.host_port, HOT)[0] == 200
            flowing["gets"] += 1

    t = threading.Thread(target=client, daemon=True)
    t.start()
    try:
        wait_until(lambda: flowing["gets"] > 20, 10, "the client to be fetching")
        doc = status_json(a, interval=1.5)
    finally:
        stop.set()
        t.join(10)
    doc["_gets_before"] = gets
    return doc


def test_header_names_the_appliance_and_its_health(site: Site, traffic: dict[str, Any]) -> None:
    a = traffic["appliance"]
    assert (a["id"], a["site"], a["region"]) == (A_ID, SITE, REGION)
    assert a["url"] == site.a.urls["internal"]
    assert a["state"] == "healthy" and a["reasons"] == [] and a["serving"] is True
    assert a["ready"] is True and a["ready_reason"] == "3 healthy disk(s)"
    assert (a["workers_configured"], a["workers_running"]) == (2, 2)
    assert a["draining"] is False and a["draining_since"] is None
    assert site.a.proc is not None
    assert a["pid"] == site.a.proc.pid
    assert 0 < a["uptime_seconds"] < 600
    assert abs(a["started_at"] + a["uptime_seconds"] - traffic["sampled_at"]) < 1e-3
    assert traffic["interval_seconds"] == pytest.approx(1.5, abs=0.5)


def test_traffic_is_counted_and_flows(traffic: dict[str, Any]) -> None:
    t = traffic["traffic"]
    assert t["requests_total"] >= traffic["_gets_before"] + 20
    assert t["bits_per_second"] > 0 and t["requests_per_second"] > 0
    assert t["requests_per_second_by_class"]["2xx"] > 0
    content = sum(len(d) for d in SSD_FILES.values()) + sum(len(d) for d in HDD_FILES.values())
    assert t["sent_bytes_total"] >= 3 * content + len(PEER_DATA) + len(ORIGIN_DATA)
    assert isinstance(t["open_connections"], int) and t["open_connections"] >= 0


def test_hits_by_tier_and_misses_by_source(traffic: dict[str, Any]) -> None:
    h = traffic["hits"]
    tiers = {x["tier"]: x for x in h["tiers"]}
    assert list(tiers) == ["ssd", "hdd", "peer", "origin"]
    assert [x["kind"] for x in h["tiers"]] == ["hit", "hit", "miss", "miss"]
    assert tiers["peer"]["sent_bytes_total"] == len(PEER_DATA)
    assert tiers["origin"]["sent_bytes_total"] == len(ORIGIN_DATA)
    assert tiers["hdd"]["sent_bytes_total"] == 3 * sum(len(d) for d in HDD_FILES.values())
    assert tiers["ssd"]["sent_bytes_total"] >= 3 * sum(len(d) for d in SSD_FILES.values())
    total = sum(x["sent_bytes_total"] for x in h["tiers"])
    assert total == traffic["traffic"]["sent_bytes_total"]
    local = tiers["ssd"]["sent_bytes_total"] + tiers["hdd"]["sent_bytes_total"]
    assert h["ratio_total"] == pytest.approx(local / total)
    assert 0 < h["ratio_total"] < 1
    assert sum(x["share_total"] for x in h["tiers"]) == pytest.approx(1.0)
    # Only the SSD object was fetched during the interval: all of it a hit.
    assert tiers["ssd"]["bits_per_second"] > 0 and tiers["ssd"]["share"] == pytest.approx(1.0)
    assert h["ratio"] == pytest.approx(1.0)
    assert h["miss_requests_total"]["started"] == 2
    assert h["peer_requests_total"]["ok"] == 1
    assert h["origin_requests_total"]["ok"] == 1
    assert h["upstream_bytes_total"] == {"origin": len(ORIGIN_DATA), "peer": len(PEER_DATA)}


def test_disks_are_listed_with_their_state(site: Site, traffic: dict[str, Any]) -> None:
    disks = traffic["disks"]
    expected = [(t, str(p)) for t, _ in site.a.tiers for p in site.a.disk_paths(t)]
    assert [(d["tier"], d["path"]) for d in disks] == expected
    assert all(d["state"] == "ok" and d["reason"] == "" for d in disks)
    assert all(d["capacity_bytes"] > 0 for d in disks)
    held = len(SSD_FILES) + len(HDD_FILES) + 2  # the two misses were installed
    assert sum(d["objects"] for d in disks) == held


def test_peers_with_reachability_and_summary_age(site: Site, traffic: dict[str, Any]) -> None:
    peers = {p["url"]: p for p in traffic["peers"]}
    b = peers[site.b.url]
    assert (b["appliance"], b["site"], b["state"], b["objects"]) == (B_ID, SITE, "up", 1)
    assert 0 <= b["summary_age_seconds"] < 5
    dead = peers[site.dead_peer]
    assert dead["state"] == "backoff" and dead["appliance"] is None
    assert "127.0.0.1" in dead["reason"] and dead["failures"] >= 1


def test_steering_contact_per_url(site: Site, traffic: dict[str, Any]) -> None:
    s = traffic["steering"]
    assert s["configured"] is True and s["contact"] == "up" and s["contacted"] is True
    assert (s["grace_seconds"], s["policy"], s["refusing"]) == (600.0, "serve", "")
    now = traffic["sampled_at"]
    assert 0 <= now - s["reported_at"] < 5
    urls = {u["url"]: u for u in s["urls"]}
    ok, dead = urls[site.stub.url], urls[site.dead_steering]
    assert ok["state"] == "ok" and ok["reason"] == "" and 0 <= now - ok["last_ok_at"] < 5
    assert dead["state"] == "failing" and dead["last_ok_at"] is None
    assert dead["reason"].startswith("cannot connect to 127.0.0.1:")
    assert s["last_ok_at"] == pytest.approx(ok["last_ok_at"], abs=1.0)


def test_fill_block(traffic: dict[str, Any]) -> None:
    f = traffic["fill"]
    assert (f["state"], f["reason"], f["window"]) == ("idle", "", "02:00-14:00")
    assert f["last_run_at"] is None and f["objects_total"] == {}


def test_status_endpoint_only_on_the_internal_listener(site: Site) -> None:
    assert fetch(*site.a.host_port, "/status")[0] == 404
    doc = worker_status(site.a)
    assert doc["appliance"] == A_ID and doc["worker"] in (0, 1) and doc["workers"] == 2


def test_human_view_printed_once_on_a_pipe(site: Site) -> None:
    r = oca("status", "-c", str(site.a.config_path), "--interval", "0.5")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "\x1b[" not in out  # no terminal control on a pipe
    first = out.splitlines()[0]
    assert first.startswith(f"{A_ID}  site {SITE}  region {REGION}  up ") and "HEALTHY" in first
    for tier, _ in site.a.tiers:
        for p in site.a.disk_paths(tier):
            assert f"{p}  ok" in out
    for block in ("traffic ", "hits ", "disks ", "fill ", "peers ", "steering "):
        assert any(line.startswith(block) for line in out.splitlines()), block
    assert site.dead_steering in out and "failing" in out and B_ID in out


def test_drain_shows_in_the_status(site: Site) -> None:
    cfg = str(site.a.config_path)
    assert oca("drain", "-c", cfg).returncode == 0
    try:
        doc = status_json(site.a, interval=0.2)
        a = doc["appliance"]
        assert a["draining"] is True and abs(a["draining_since"] - time.time()) < 60
        assert a["state"] == "healthy" and a["serving"] is True  # draining is not a fault
        text = oca("status", "-c", cfg, "--interval", "0.2").stdout
        assert "DRAINING (since " in text.splitlines()[0]
    finally:
        assert oca("drain", "-c", cfg, "--undrain").returncode == 0
    assert status_json(site.a, interval=0.2)["appliance"]["draining"] is False


def test_live_view_redraws_in_place_and_ctrl_c_exits_0(site: Site) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "oca", "status", "-c", str(site.a.config_path), "--interval",
         "0.3"],
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 20
        while out.count(HOME.encode()) < 3 and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    break
        assert out.count(HOME.encode()) >= 3, out[-2000:]
        os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends
        code = proc.wait(10)
        while select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)
    text = out.decode(errors="replace")
    assert code == 0, text[-2000:]
    frames = text.split(HOME)[1:]
    assert all(A_ID in f and "\x1b[J" in f for f in frames[:3]), frames[:3]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    assert text.endswith(SHOW_CURSOR)


# --------------------------------------------------------------------------- failures


def test_failed_disk_and_unreachable_steering(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    app = Appliance(
        tmp_path,
        workers=1,
        tiers=(("ssd", 2),),
        sections='[peering]\nappliance_id = "oca-status-f"\n'
        + steering_section([dead], secrets.token_hex(32), interval=0.2),
    )
    files = {f"/titles/f/seg-{i:02d}.m4s": os.urandom(5000 + i) for i in range(8)}
    app.import_tree(write_tree(tmp_path / "src", files))
    app.start()
    lost = str(app.disk_paths("ssd")[1])
    try:
        remove_disk(lost)
        wait_until(
            lambda: any(
                d["path"] == lost and d["state"] == "failed"
                for d in orjson.loads(fetch(*app.host_port, "/status")[2])["disks"]
            ),
            15,
            f"the worker to fail {lost}",
        )
        steering_file = tmp_path / "state" / "run" / "steering.json"
        wait_until(
            lambda: (
                steering_file.exists()
                and orjson.loads(steering_file.read_bytes())["contact"] == "lost"
            ),
            15,
            "the reporter to find steering unreachable",
        )
        doc = status_json(app, interval=0.3)
        (disk,) = [d for d in doc["disks"] if d["path"] == lost]
        assert disk["state"] == "failed" and lost in disk["reason"] and disk["since"] > 0
        a = doc["appliance"]
        assert a["state"] == "degraded" and a["serving"] is True
        assert any(r.startswith(f"disk ssd:{lost} failed: ") for r in a["reasons"]), a["reasons"]
        s = doc["steering"]
        assert s["contact"] == "lost" and s["contacted"] is False and s["last_ok_at"] is None
        (url,) = s["urls"]
        assert url["url"] == dead and url["state"] == "failing"
        assert "cannot connect" in url["reason"] and url["last_attempt_at"] is not None
        text = oca("status", "-c", str(app.config_path), "--interval", "0.2").stdout
        assert f"{lost}  FAILED since " in text and "DEGRADED" in text.splitlines()[0]
        assert "steering  UNREACHABLE" in text
    finally:
        stop_checked(app)
    # Stopped: the reporter took its file away, and status says the box is unreachable.
    assert not (tmp_path / "state" / "run" / "steering.json").exists()
    r = oca("status", "-c", str(app.config_path), "--interval", "0.2")
    assert r.returncode == 1 and r.stdout == ""
    assert "cannot reach the appliance at http://127.0.0.1:" in r.stderr
    assert "Connection refused" in r.stderr and "is not running" in r.stderr


def test_unreachable_appliance_is_an_error(tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "oca.toml"
    conf.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\nstate_dir = "{tmp_path}/state"\n'
        f'[[storage.tiers]]\nname = "ssd"\npaths = ["{tmp_path}/ssd0"]\n'
    )
    for extra in ([], ["--json"]):
        r = oca("status", "-c", str(conf), "--interval", "0.2", *extra)
        assert r.returncode == 1 and r.stdout == "", r
        assert r.stderr.startswith(f"oca: cannot reach the appliance at http://127.0.0.1:{port} ")
        assert "Connection refused" in r.stderr


def test_bad_config_and_bad_interval_exit_2(tmp_path: Path) -> None:
    conf = tmp_path / "oca.toml"
    conf.write_text('[server]\nlisten = ["127.0.0.1:1"]\nbogus = 1\n')
    r = oca("status", "-c", str(conf))
    assert r.returncode == 2 and "bad configuration" in r.stderr and "bogus" in r.stderr
    r = oca("status", "-c", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    conf.write_text(
        f'[server]\nlisten = ["127.0.0.1:1"]\nstate_dir = "{tmp_path}/state"\n'
        f'[[storage.tiers]]\nname = "ssd"\npaths = ["{tmp_path}/ssd0"]\n'
    )
    r = oca("status", "-c", str(conf), "--interval", "0")
    assert r.returncode == 2 and "--interval" in r.stderr


# --------------------------------------------------------------------------- pure core


def _sample(at: float, metrics: dict[MetricKey, float], steering: Any = None) -> Sample:
    worker = {"appliance": "x", "site": "s", "worker": 0, "workers": 1, "ready": True,
              "reason": "1 healthy disk(s)", "refusing": None, "peers": [],
              "disks": [{"tier": "ssd", "path": "/d0", "state": "ok", "reason": "", "since": 1.0,
                         "objects": 1, "used_bytes": 1, "capacity_bytes": 10}]}  # fmt: skip
    return Sample(
        at, 1_000_000 + at, metrics, worker, DrainState(False), FillHealth("idle", None), steering
    )


def _counters(ok: float, ssd: float, origin: float, internal: float = 0) -> dict[MetricKey, float]:
    return {
        ("oca_http_requests_total", (("code", "200"),)): ok,
        ("oca_sent_bytes_total", (("tier", "ssd"),)): ssd,
        ("oca_sent_bytes_total", (("tier", "origin"),)): origin,
        ("oca_sent_bytes_total", (("tier", "none"),)): internal,
        ("oca_workers", ()): 1,
        ("oca_open_connections", ()): 3,
    }


CFG = dataclasses.replace(
    Config(),
    storage=StorageConfig(tiers=(TierConfig("ssd", ("/d0",)), TierConfig("hdd", ("/d1",)))),
    steering=SteeringConfig(urls=("http://steer.test",)),
)
WHERE = Endpoint("http://127.0.0.1:1", 4242, 999_000.0, "test")


def test_rates_come_from_two_samples_and_leave_out_own_requests() -> None:
    first = _sample(10.0, _counters(100, 1000, 0, internal=5000))
    last = _sample(12.0, _counters(112, 3000, 1000, internal=9000))
    doc = build_document(CFG, WHERE, first, last, own_requests=2, own_connections=1)
    t, h = doc["traffic"], doc["hits"]
    assert doc["interval_seconds"] == 2.0
    assert t["requests_per_second"] == 5.0 and t["requests_per_second_by_class"] == {"2xx": 5.0}
    assert t["bits_per_second"] == (2000 + 1000) * 8 / 2  # internal bodies left out
    assert (t["requests_total"], t["sent_bytes_total"], t["open_connections"]) == (112, 4000, 2)
    assert [x["tier"] for x in h["tiers"]] == ["ssd", "hdd", "peer", "origin"]
    assert h["ratio"] == pytest.approx(2 / 3) and h["ratio_total"] == pytest.approx(3 / 4)
    assert doc["appliance"]["uptime_seconds"] == pytest.approx(1_000_012.0 - 999_000.0)
    one = build_document(CFG, WHERE, None, last)
    assert one["traffic"]["bits_per_second"] is None and one["hits"]["ratio"] is None
    assert one["hits"]["tiers"][0]["share"] is None and one["interval_seconds"] is None


def test_a_counter_that_went_down_counts_from_zero() -> None:
    first = _sample(10.0, _counters(5000, 10**9, 0))
    last = _sample(11.0, _counters(30, 4000, 0))  # the appliance restarted in between
    doc = build_document(CFG, WHERE, first, last)
    assert doc["traffic"]["requests_per_second"] == 30.0
    assert doc["traffic"]["bits_per_second"] == 4000 * 8


def test_steering_report_of_an_earlier_run_is_not_shown(tmp_path: Path) -> None:
    report: SteeringStatusJSON = {
        "pid": 4242, "updated_at": 5.0, "interval_seconds": 2.0, "contact": "lost",
        "contacted": True, "last_ok_at": 3.0, "grace_seconds": 600.0, "policy": "stop",
        "refusing": "", "urls": [{"url": "http://steer.test", "state": "failing",
                                  "reason": "timed out", "last_ok_at": 3.0,
                                  "last_attempt_at": 5.0}],
    }  # fmt: skip
    write_steering_status(str(tmp_path), report)
    read = read_steering_status(str(tmp_path))
    assert read == report
    metrics = _counters(1, 1, 0)
    s = build_document(CFG, WHERE, None, _sample(1.0, metrics, read))["steering"]
    assert (s["contact"], s["urls"][0]["reason"], s["reported_at"]) == ("lost", "timed out", 5.0)
    other = dataclasses.replace(WHERE, pid=4243)  # a later run of the appliance
    s = build_document(CFG, other, None, _sample(1.0, metrics, read))["steering"]
    assert s["contact"] == "unknown" and s["urls"][0]["state"] == "unknown"
    s = build_document(Config(), WHERE, None, _sample(1.0, metrics, read))["steering"]
    assert s["contact"] == "off" and s["urls"] == []
    for bad in (b"{", b"[]", orjson.dumps({**report, "contact": "maybe"})):
        (tmp_path / "run" / "steering.json").write_bytes(bad)
        assert read_steering_status(str(tmp_path)) is None
