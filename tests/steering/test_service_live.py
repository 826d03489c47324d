"""The steering service end to end: real appliances heartbeat to ``oca steering`` over
HTTP, an origin process holds the title, and every output is checked against the real
appliances (signed URLs they serve, MPDs whose segments they serve, a fill that runs
from the service's manifest)."""

from __future__ import annotations

import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from fill.manifest import parse_manifest
from oca.health.heartbeat import sign_heartbeat
from tests.appliance import Appliance, free_port, wait_until
from tests.peering.origin_proc import OriginProcess
from tests.steering.live import PATTERN, Steering, build_catalog, new_key, steering_section

NS = "{urn:mpeg:dash:schema:mpd:2011}"
MPD_PATH = "/titles/pattern/manifest.mpd"


@dataclass
class World:
    steering: Steering
    origin: OriginProcess
    apps: dict[str, Appliance]
    tree: Path
    hb_key: str
    url_key: str


def _appliance(root: Path, name: str, world_keys: tuple[str, str], steer_url: str,
               *, holds: Path | None, extra_sections: str = "") -> Appliance:  # fmt: skip
    hb_key, url_key = world_keys
    sections = (
        f'[peering]\nappliance_id = "{name}"\nsite = "s1"\n'
        + steering_section(
            [steer_url],
            "hb",
            hb_key,
            region="r1",
            prefixes=["10.1.0.0/16"],
            latitude=50.1,
            longitude=8.7,
        )
        + extra_sections
    )
    app = Appliance(root / name, workers=1, keys={"u1": url_key}, sections=sections,
                    storage_extra="access_stats_flush_seconds = 0.2")  # fmt: skip
    app.root.mkdir(parents=True)
    if holds is not None:
        app.import_tree(holds)
    return app


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("steer")
    tree = root / "origin"
    shutil.copytree(PATTERN / "pattern", tree / "titles" / "pattern")
    shutil.copytree(PATTERN / "pattern", tree / "titles" / "later")  # added while running
    origin = OriginProcess(tree)
    origin.start()
    hb_key, url_key = new_key(), new_key()
    port = free_port()
    steering = Steering(
        root / "steering",
        heartbeat_keys={"hb": hb_key},
        url_keys={"u1": url_key},
        listen=f"127.0.0.1:{port}",
        extra='[[fill.boosts]]\ntitle = "pattern"\nrequests_per_day = 100000\n'
        "[content_steering]\nttl_seconds = 5\nmin_throughput_bits = 100000\n"
        # the appliances share this machine's CPUs with the tests: never judge by load here
        "[ranking]\noverload_threshold = 50.0\n",
    )
    steering.root.mkdir(parents=True)
    only_pattern = root / "catalog-src"
    shutil.copytree(PATTERN / "pattern", only_pattern / "pattern")
    build_catalog(steering.catalog_path, only_pattern, origin.url)
    steering.start()
    steer_url = f"http://127.0.0.1:{port}"
    seed = root / "seed"
    shutil.copytree(PATTERN / "pattern", seed / "titles" / "pattern")
    fill_section = f'[fill]\nmanifest = "{steer_url}/v1/fill/a3"\nwindow_jitter_seconds = 0\n'
    apps = {
        "a1": _appliance(root, "a1", (hb_key, url_key), steer_url, holds=seed),
        "a2": _appliance(root, "a2", (hb_key, url_key), steer_url, holds=seed),
        "a3": _appliance(
            root, "a3", (hb_key, url_key), steer_url, holds=None,
            extra_sections=fill_section,
        ),
    }  # fmt: skip
    try:
        for app in apps.values():
            app.start()
        world = World(steering, origin, apps, tree, hb_key, url_key)
        n = len(list((PATTERN / "pattern").iterdir()))

        def settled() -> bool:
            # in rotation, and the holders' first full inventories have arrived
            fleet = world.steering.fleet()
            return len(in_rotation(world)) == 3 and all(
                fleet[a]["objects"] == n for a in ("a1", "a2")
            )

        wait_until(settled, 20, "all three appliances in rotation with their inventories")
        yield world
    finally:
        for app in apps.values():
            app.stop()
        steering.stop()
        origin.stop()


def in_rotation(world: World) -> set[str]:
    try:
        fleet = world.steering.fleet()
    except (OSError, urllib.error.URLError):
        return set()
    return {a for a, s in fleet.items() if s["status"] == "in-rotation"}


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def source_bytes(world: World, path: str) -> bytes:
    return (world.tree / path.lstrip("/")).read_bytes()


def test_fleet_status_has_every_appliance_with_its_inventory(world: World) -> None:
    fleet = world.steering.fleet()
    assert set(fleet) == {"a1", "a2", "a3"}
    n = len(list((PATTERN / "pattern").iterdir()))
    assert fleet["a1"]["objects"] == fleet["a2"]["objects"] == n
    assert fleet["a1"]["prefixes"] == ["10.1.0.0/16"]
    assert fleet["a1"]["site"] == "s1" and fleet["a1"]["region"] == "r1"
    assert fleet["a1"]["reasons"] == [] and fleet["a1"]["fresh"] is True
    assert fleet["a1"]["urls"] == [world.apps["a1"].url]


def test_ranked_urls_are_signed_and_served_by_each_appliance(world: World) -> None:
    path = "/titles/pattern/init-0.m4s"
    status, doc = world.steering.json(f"/v1/titles/pattern/urls?path={path}&explain=1")
    assert status == 200, doc
    ids = [u["appliance"] for u in doc["urls"]]
    # holders first; a3 holds nothing but its site-mates do, so it may serve by peering
    assert set(ids[:2]) == {"a1", "a2"} and ids[2] == "a3"
    want = source_bytes(world, path)
    for entry in doc["urls"][:2]:
        assert "/t/v1.u1." in entry["url"] and entry["url"].endswith(path)
        assert get(entry["url"]) == (200, want)
        forged = entry["url"].replace("/titles/pattern/", "/titles/other/")
        assert get(forged)[0] == 403
    assert doc["excluded"] == []
    assert any("holds" in r or "hold" in r for r in doc["urls"][0]["reasons"])


def test_rewritten_mpd_lists_each_appliance_and_its_segments_are_served(world: World) -> None:
    status, headers, body = world.steering.request("/v1/titles/pattern/manifest.mpd")
    assert status == 200 and headers["Content-Type"].startswith("application/dash+xml")
    root = ET.fromstring(body)
    bases = root.findall(f"{NS}BaseURL")
    locations = [b.get("serviceLocation") for b in bases]
    assert set(locations[:2]) == {"a1", "a2"}
    steering = root.find(f"{NS}ContentSteering")
    assert steering is not None and steering.text is not None
    assert steering.get("defaultServiceLocation") == locations[0]
    assert steering.text.startswith(world.steering.url + "/v1/steering/pattern?")
    for base in bases[:2]:
        assert base.text is not None
        for rel in ("init-1.m4s", "chunk-1-00003.m4s", "subtitles-en.vtt"):
            url = urllib.parse.urljoin(base.text, rel)
            assert get(url) == (200, source_bytes(world, f"/titles/pattern/{rel}")), url


def test_content_steering_manifest_keeps_a_good_pathway_and_leaves_a_slow_one(
    world: World,
) -> None:
    q = "/v1/steering/pattern?pathways=a1,a2"
    status, doc = world.steering.json(q)
    assert status == 200
    assert doc["VERSION"] == 1 and doc["TTL"] == 5
    assert doc["RELOAD-URI"].startswith(world.steering.url + "/v1/steering/pattern?pathways=")
    first = doc["PATHWAY-PRIORITY"][0]
    other = "a2" if first == "a1" else "a1"
    status, sticky = world.steering.json(f'{q}&_DASH_pathway="{other}"&_DASH_throughput=5000000')
    assert sticky["PATHWAY-PRIORITY"][0] == other
    status, slow = world.steering.json(f"{q}&_DASH_pathway={first}&_DASH_throughput=1000")
    assert slow["PATHWAY-PRIORITY"][-1] == first
    # a3 is ranked but not in the player's MPD: offered as a clone of a listed pathway
    clones = {c["ID"]: c for c in doc.get("PATHWAY-CLONES", [])}
    assert "a3" in clones
    assert (
        clones["a3"]["URI-REPLACEMENT"]["HOST"]
        == urllib.parse.urlsplit(world.apps["a3"].url).netloc
    )


def _signed(key: str, body: bytes, key_id: str = "hb") -> str:
    return sign_heartbeat(key_id, bytes.fromhex(key), body)


def test_heartbeats_are_authenticated_and_validated(world: World) -> None:
    body = orjson.dumps({"schema": "oca.heartbeat", "version": 1, "sent_at": time.time()})
    status, doc = world.steering.json(
        "/v1/heartbeat", method="POST", body=body,
        headers={"X-Oca-Heartbeat": _signed(new_key(), body)},
    )  # fmt: skip
    assert status == 403 and doc["error"] == "bad signature"
    status, doc = world.steering.json(
        "/v1/heartbeat", method="POST", body=body, headers={"X-Oca-Heartbeat": "nokey"}
    )
    assert status == 403
    status, doc = world.steering.json(
        "/v1/heartbeat", method="POST", body=body,
        headers={"X-Oca-Heartbeat": _signed(world.hb_key, body)},
    )  # fmt: skip
    assert status == 400 and doc["error"].startswith("appliance")
    stale = orjson.dumps({"schema": "oca.heartbeat", "sent_at": time.time() - 3600})
    status, doc = world.steering.json(
        "/v1/heartbeat", method="POST", body=stale,
        headers={"X-Oca-Heartbeat": _signed(world.hb_key, stale)},
    )  # fmt: skip
    assert status == 403 and "sent_at" in doc["error"]
    status, _, metrics = world.steering.request("/metrics")
    text = metrics.decode()
    assert 'oca_steering_heartbeats_total{result="forbidden"}' in text
    assert 'oca_steering_heartbeats_total{result="malformed"}' in text
    assert 'oca_steering_appliances{state="in-rotation"} 3.0' in text


def test_drained_appliance_gets_no_new_players_and_keeps_serving(world: World) -> None:
    app = world.apps["a2"]
    app.oca("drain", "-c", str(app.config_path))
    try:
        wait_until(lambda: "a2" not in in_rotation(world), 10, "a2 out of rotation")
        _, doc = world.steering.json("/v1/explain/pattern")
        assert [c["appliance"] for c in doc["chosen"]][:1] == ["a1"]
        assert {"appliance": "a2", "reason": "draining"} in doc["excluded"]
        # current players keep being served by the draining appliance
        _, urls = world.steering.json("/v1/titles/pattern/urls")
        assert "a2" not in [u["appliance"] for u in urls["urls"]]
        assert get(app.url + "/titles/pattern/init-0.m4s")[0] in (200, 403)
    finally:
        app.oca("drain", "-c", str(app.config_path), "--undrain")
    wait_until(lambda: "a2" in in_rotation(world), 10, "a2 back in rotation")


def test_fill_runs_from_the_service_manifest(world: World) -> None:
    status, doc = world.steering.json("/v1/fill/a3")
    assert status == 200, doc
    manifest = parse_manifest(orjson.dumps(doc))
    paths = {o.path for o in manifest.objects}
    assert MPD_PATH in paths and len(paths) == len(list((PATTERN / "pattern").iterdir()))
    assert all(o.sources == (world.origin.url + o.path,) for o in manifest.objects)
    app = world.apps["a3"]
    done = app.oca("fill", "-c", str(app.config_path), "--now", check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    n = len(paths)
    wait_until(lambda: world.steering.fleet()["a3"]["objects"] == n, 10, "a3 reports the fill")
    status, urls = world.steering.json("/v1/titles/pattern/urls")
    assert {u["appliance"] for u in urls["urls"]} == {"a1", "a2", "a3"}


def test_a_title_added_while_running_is_ranked(world: World) -> None:
    body = orjson.dumps({"mpd_url": world.origin.url + "/titles/later/manifest.mpd"})
    status, doc = world.steering.json("/v1/catalog/titles", method="POST", body=body)
    assert status == 201, doc
    assert doc["title"] == "later"
    status, cat = world.steering.json("/v1/catalog")
    assert {t["id"] for t in cat["titles"]} == {"pattern", "later"}
    on_disk = orjson.loads(world.steering.catalog_path.read_bytes())
    assert {t["id"] for t in on_disk["titles"]} == {"pattern", "later"}
    # nobody holds it yet: no appliance is ranked and the answer says so
    status, doc = world.steering.json("/v1/titles/later/urls")
    assert status == 503 and doc["urls"] == []
    status, doc = world.steering.json("/v1/titles/nope/urls")
    assert status == 404


def test_a_restarted_service_rebuilds_the_fleet_from_heartbeats(world: World) -> None:
    world.steering.stop()
    state = world.steering.root / "state"
    shutil.rmtree(state, ignore_errors=True)  # no warm start: soft state only
    world.steering.start()
    started = time.monotonic()
    n = len(list((PATTERN / "pattern").iterdir()))

    def whole() -> bool:
        fleet = world.steering.fleet()
        return set(fleet) == {"a1", "a2", "a3"} and fleet["a1"]["objects"] == n

    wait_until(whole, 10, "fleet rebuilt with full inventories")
    # two heartbeat intervals: one answered "send-full", the next carried the inventory
    assert time.monotonic() - started < 5
    status, doc = world.steering.json("/v1/titles/pattern/urls")
    assert status == 200 and len(doc["urls"]) == 3
