"""Clients with their own addresses, in network namespaces, ask the real steering
service which appliances to use. Four real appliances announce different prefixes and
report real load; the service sees each client's own source address.

Topology (the appliances and the service run in the root namespace)::

    client ns A  10.201.1.2/24 --veth-- 10.201.1.1  (fra1, fra2 announce 10.201.0.0/16)
    client ns B  10.202.1.2/24 --veth-- 10.202.1.1  (ams1 announces 10.202.1.0/24)
    nyc1 announces nothing; fra2's link capacity is tiny, so its load is far above the
    overload threshold.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from tests.appliance import Appliance, free_port, wait_until, write_tree
from tests.steering.live import Steering, build_catalog, new_key, steering_section

INTERVAL = 0.3
MISSED = 3
FILES = {
    "/titles/news/manifest.mpd": (
        b'<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
        b'mediaPresentationDuration="PT4S" profiles="urn:mpeg:dash:profile:isoff-on-demand:2011">'
        b'<Period><AdaptationSet mimeType="video/mp4"><Representation id="v" bandwidth="1000">'
        b'<BaseURL>v.mp4</BaseURL><SegmentBase indexRange="0-99"/></Representation>'
        b"</AdaptationSet></Period></MPD>"
    ),
    "/titles/news/v.mp4": os.urandom(50_000),
}
SITES: dict[str, dict[str, Any]] = {
    "fra1": {"site": "fra", "region": "eu", "latitude": 50.11, "longitude": 8.68,
             "prefixes": ["10.201.0.0/16"]},
    "fra2": {"site": "fra", "region": "eu", "latitude": 50.11, "longitude": 8.68,
             "prefixes": ["10.201.0.0/16"], "link_capacity_bits": 8000},
    "ams1": {"site": "ams", "region": "eu", "latitude": 52.37, "longitude": 4.90,
             "prefixes": ["10.202.1.0/24"]},
    "nyc1": {"site": "nyc", "region": "us", "latitude": 40.71, "longitude": -74.0,
             "prefixes": []},
}  # fmt: skip


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


@dataclass
class Client:
    ns: str
    address: str
    gateway: str


@dataclass
class World:
    steering: Steering
    port: int
    apps: dict[str, Appliance]
    a: Client
    b: Client


@pytest.fixture(scope="module")
def clients() -> Iterator[tuple[Client, Client]]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("these tests need root and iproute2 (CI runs as root; `make test` installs)")
    tag = secrets.token_hex(2)
    made: list[tuple[str, str]] = []
    out = []
    try:
        for i, net in ((1, "10.201.1"), (2, "10.202.1")):
            ns, host, peer = f"ocs-{tag}-{i}", f"ocs{tag}h{i}", f"ocs{tag}n{i}"
            ip("netns", "add", ns)
            made.append((ns, host))
            ip("link", "add", host, "type", "veth", "peer", "name", peer)
            ip("link", "set", peer, "netns", ns)
            ip("addr", "add", f"{net}.1/24", "dev", host)
            ip("link", "set", host, "up")
            ip("-n", ns, "addr", "add", f"{net}.2/24", "dev", peer)
            ip("-n", ns, "link", "set", peer, "up")
            ip("-n", ns, "link", "set", "lo", "up")
            out.append(Client(ns, f"{net}.2", f"{net}.1"))
        yield out[0], out[1]
    finally:
        for ns, host in made:
            ip("link", "del", host, check=False)
            ip("netns", "del", ns, check=False)


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, clients: tuple[Client, Client]
) -> Iterator[World]:
    root = tmp_path_factory.mktemp("netns-steer")
    tree = write_tree(root / "tree", FILES)
    hb_key, url_key = new_key(), new_key()
    port = free_port()
    steering = Steering(root / "steering", heartbeat_keys={"hb": hb_key},
                        url_keys={"u1": url_key}, listen=f"0.0.0.0:{port}",
                        # every appliance here shares two cores: judge load by the NIC
                        extra="[ranking]\noverload_threshold = 5.0\n")  # fmt: skip
    steering.root.mkdir(parents=True)
    build_catalog(steering.catalog_path, tree / "titles", "http://127.0.0.1:9")
    steering.start()
    steer_url = f"http://127.0.0.1:{port}"
    apps: dict[str, Appliance] = {}
    try:
        for name, spec in SITES.items():
            spec = dict(spec)
            site = spec.pop("site")
            section = f'[peering]\nappliance_id = "{name}"\nsite = "{site}"\n' + steering_section(
                [steer_url], "hb", hb_key, interval=INTERVAL, **spec
            )
            app = Appliance(root / name, keys={"u1": url_key}, sections=section)
            app.root.mkdir()
            app.import_tree(tree)
            apps[name] = app.start()
        w = World(steering, port, apps, *clients)
        wait_until(lambda: len(w.steering.fleet()) == 4 and all(
            a["status"] == "in-rotation" and a["objects"] == 2
            for a in w.steering.fleet().values()
        ), 20, "four appliances reporting")  # fmt: skip
        wait_until(lambda: w.steering.fleet()["fra2"]["load_fraction"] > 1, 10, "fra2 overloaded")
        yield w
    finally:
        for app in apps.values():
            app.stop()
        steering.stop()


def ask(world: World, client: Client, what: str = "urls") -> dict[str, Any]:
    """The ranking as the client sees it, fetched from inside its namespace."""
    url = f"http://{client.gateway}:{world.port}/v1/{what}"
    got = subprocess.run(
        ["ip", "netns", "exec", client.ns, "curl", "-sS", "--max-time", "5", url],
        capture_output=True, text=True, timeout=15,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    doc: dict[str, Any] = orjson.loads(got.stdout)
    return doc


def order(world: World, client: Client) -> list[str]:
    return [u["appliance"] for u in ask(world, client, "titles/news/urls")["urls"]]


def test_each_client_gets_the_appliance_covering_its_prefix_first(world: World) -> None:
    doc = ask(world, world.a, "titles/news/urls?explain=1")
    assert doc["client"] == world.a.address  # the service saw the namespace's address
    assert order(world, world.a)[0] == "fra1"
    doc_b = ask(world, world.b, "titles/news/urls")
    assert doc_b["client"] == world.b.address
    ids_b = [u["appliance"] for u in doc_b["urls"]]
    assert ids_b[0] == "ams1", ask(world, world.b, "explain/news")
    assert "nyc1" in ids_b, orjson.dumps(ask(world, world.b, "explain/news")).decode()
    # then by distance from the client's home site: Frankfurt before New York
    assert ids_b.index("fra1") < ids_b.index("nyc1")


def test_an_overloaded_appliance_is_passed_over_and_the_explanation_says_why(
    world: World,
) -> None:
    ids = order(world, world.a)
    assert ids[-1] == "fra2" and ids[:3] == ["fra1", "ams1", "nyc1"]
    doc = ask(world, world.a, "explain/news")
    fra2 = next(c for c in doc["chosen"] if c["appliance"] == "fra2")
    assert any(r.startswith("overloaded: load ") and "passed over" in r for r in fra2["reasons"])
    assert fra2["load"] > 5.0


def test_a_draining_appliance_gets_no_new_players(world: World) -> None:
    app = world.apps["fra1"]
    app.oca("drain", "-c", str(app.config_path))
    try:
        wait_until(lambda: "fra1" not in order(world, world.a), 10, "fra1 leaving the ranking")
        doc = ask(world, world.a, "explain/news")
        assert {"appliance": "fra1", "reason": "draining"} in doc["excluded"]
        # its current players keep being served
        url = app.url + "/titles/news/v.mp4"
        got = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url],
                             capture_output=True, text=True, timeout=10)  # fmt: skip
        assert got.stdout == "403"  # unsigned: refused by auth, not by draining
    finally:
        app.oca("drain", "-c", str(app.config_path), "--undrain")
    wait_until(lambda: order(world, world.a)[0] == "fra1", 10, "fra1 back first")


def test_a_killed_appliance_leaves_the_ranking_within_the_stated_interval(
    world: World,
) -> None:
    limit = MISSED * INTERVAL  # heartbeat.missed_heartbeats x the appliance's interval
    assert order(world, world.b)[0] == "ams1"
    app = world.apps["ams1"]
    assert app.proc is not None
    killed = time.monotonic()
    os.killpg(app.proc.pid, signal.SIGKILL)
    app.proc.wait(10)
    wait_until(lambda: "ams1" not in order(world, world.b), 10, "ams1 leaving the ranking")
    gone = time.monotonic() - killed
    # the last beat came at most one interval before the kill; allow the polling step
    assert gone <= limit + 0.5, f"took {gone:.2f} s, stated {limit:.1f} s"
    doc = ask(world, world.b, "explain/news")
    reason = next(e["reason"] for e in doc["excluded"] if e["appliance"] == "ams1")
    assert reason.startswith("stale: last heartbeat")
    assert order(world, world.b)[0] == "fra1"
