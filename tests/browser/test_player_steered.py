"""The whole chain with a real player: dash.js in headless Chromium plays the
test-pattern title through the MPD the steering service rewrote for it (one signed
BaseURL per appliance, a ContentSteering element pointing back at the service), from
two real appliances that report to the service; the appliance serving the player is
SIGKILLed mid-playback and playback goes on from the other one."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.appliance import Appliance, free_port, wait_until
from tests.browser.harness import PlayerRun, host_of
from tests.browser.test_player_failover import longest_stall
from tests.peering.origin_proc import OriginProcess
from tests.steering.live import PATTERN, Steering, build_catalog, new_key, steering_section


@dataclass
class Chain:
    steering: Steering
    apps: dict[str, Appliance]


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    tree = tmp_path / "origin"
    shutil.copytree(PATTERN / "pattern", tree / "titles" / "pattern")
    origin = OriginProcess(tree)
    origin.start()
    hb_key, url_key = new_key(), new_key()
    port = free_port()
    steering = Steering(
        tmp_path / "steering", heartbeat_keys={"hb": hb_key}, url_keys={"u1": url_key},
        listen=f"127.0.0.1:{port}",
        extra="[content_steering]\nttl_seconds = 2\n[ranking]\noverload_threshold = 50.0\n",
    )  # fmt: skip
    steering.root.mkdir()
    build_catalog(steering.catalog_path, tree / "titles", origin.url)
    apps: dict[str, Appliance] = {}
    try:
        steering.start()
        for name in ("a1", "a2"):
            section = f'[peering]\nappliance_id = "{name}"\nsite = "s1"\n' + steering_section(
                [f"http://127.0.0.1:{port}"], "hb", hb_key, interval=0.5, region="r1"
            )
            app = Appliance(tmp_path / name, keys={"u1": url_key}, sections=section,
                            tiers=(("ssd", 1),))  # fmt: skip
            app.root.mkdir()
            app.import_tree(tree)
            apps[name] = app.start()

        def ready() -> bool:
            fleet = steering.fleet()
            return len(fleet) == 2 and all(a["status"] == "in-rotation" for a in fleet.values())

        wait_until(ready, 20, "both appliances in rotation")
        yield Chain(steering, apps)
    finally:
        for app in apps.values():
            app.stop()
        steering.stop()
        origin.stop()


def test_a_player_on_the_steered_mpd_survives_the_death_of_its_appliance(chain: Chain) -> None:
    hosts = {name: host_of(app.url) for name, app in chain.apps.items()}
    mpd_url = chain.steering.url + "/v1/titles/pattern/manifest.mpd"
    with PlayerRun(mpd_url, 50) as player:
        player.wait_for_time(8.0, timeout=30)
        segs = player.segments()
        assert {s["host"] for s in segs} <= set(hosts.values()), player.summary()
        # every segment went through a signed BaseURL (the appliances require tokens)
        assert all("/t/v1.u1." in s["url"] for s in segs), player.summary()
        victim = next(n for n, h in hosts.items() if h == segs[-1]["host"])
        survivor = next(n for n in hosts if n != victim)
        playback = player.last_playback()
        assert playback is not None
        buffered_to = playback["currentTime"] + playback["buffer"]
        killed_at = time.time()
        proc = chain.apps[victim].proc
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)
        chain.apps[victim].stop()

        after = player.wait_for_time(playback["currentTime"] + 10.0, timeout=30)
        summary = player.summary()
        assert after["currentTime"] > buffered_to + 2.0, summary
        assert not after["paused"] and not after["ended"], summary
        served_after = player.segment_hosts(since=killed_at + 1.0)
        assert set(served_after) == {hosts[survivor]}, (served_after, summary)
        stall = longest_stall(player, since=killed_at)
        assert stall < 3.0, f"playback stalled for {stall:.1f} s\n{summary}"
        # the player kept asking the steering service, which dropped the dead appliance
        steering_calls = player.of_kind("steering")
        assert steering_calls, summary
        fleet = chain.steering.fleet()
        assert fleet[victim]["status"] == "stale" and fleet[survivor]["status"] == "in-rotation"
        q = f"/v1/steering/pattern?pathways=a1,a2&_DASH_pathway={victim}"
        _, doc = chain.steering.json(q)
        assert doc["PATHWAY-PRIORITY"] == [survivor], doc
        print(
            f"\nsteered MPD: killed {victim} at {playback['currentTime']:.1f} s; played on to "
            f"{after['currentTime']:.1f} s from {survivor}, longest stall {stall:.2f} s"
        )
