"""A real player (dash.js in headless Chromium) moves between appliances: on its own
when the one it streams from dies, and when Content Steering tells it to.

Two appliances, each its own process on loopback with real disks, hold the test-pattern
title (``oca/media/pattern``, made by ``scripts/make_dash_title.py``). The MPD the
player gets is that title's, with MPD-level BaseURLs whose serviceLocations name the
appliances ("a", "b"); player.html documents the dash.js settings and how its BaseURL
failover works.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import oca
from tests.appliance import Appliance
from tests.browser.harness import DocumentServer, PlayerRun, host_of, with_base_urls

TITLE = Path(oca.__file__).resolve().parent / "media" / "pattern"
TITLE_PATH = "/titles/pattern/"
MPD_TYPE = "application/dash+xml"


def kill_appliance(app: Appliance) -> None:
    """SIGKILL the supervisor and its workers at once, as a power cut would."""
    assert app.proc is not None
    os.killpg(app.proc.pid, signal.SIGKILL)
    app.stop()


def longest_stall(player: PlayerRun, since: float) -> float:
    """The longest wall-clock span over which currentTime did not advance."""
    longest = 0.0
    frozen_since: float | None = None
    last_time, prev_t = -1.0, since
    for r in player.of_kind("playback", since):
        if r["currentTime"] <= last_time + 1e-3:
            if frozen_since is None:
                frozen_since = prev_t
            longest = max(longest, r["t"] - frozen_since)
        else:
            frozen_since = None
        last_time, prev_t = r["currentTime"], r["t"]
    return longest


def steering_response(
    priority: list[str], ttl_seconds: int = 1, clones: list[dict[str, Any]] | None = None
) -> bytes:
    """A DASH-IF Content Steering manifest (VERSION 1)."""
    doc: dict[str, Any] = {"VERSION": 1, "TTL": ttl_seconds, "PATHWAY-PRIORITY": priority}
    if clones:
        doc["PATHWAY-CLONES"] = clones
    return orjson.dumps(doc)


@pytest.fixture
def appliances(tmp_path: Path) -> Iterator[dict[str, Appliance]]:
    src = tmp_path / "src"
    shutil.copytree(TITLE, src / TITLE_PATH.strip("/"))
    apps: dict[str, Appliance] = {}
    try:
        for name in "ab":
            (tmp_path / name).mkdir()
            app = Appliance(tmp_path / name, tiers=(("ssd", 1),))
            app.import_tree(src)
            apps[name] = app.start()
        yield apps
    finally:
        for app in apps.values():
            app.stop()


def test_playback_fails_over_to_the_other_appliance_when_one_dies(
    appliances: dict[str, Appliance],
) -> None:
    hosts = {name: host_of(app.url) for name, app in appliances.items()}
    mpd = with_base_urls(
        (TITLE / "manifest.mpd").read_text(),
        [(name, app.url + TITLE_PATH) for name, app in appliances.items()],
    )
    with DocumentServer() as docs, PlayerRun(docs.put("/p.mpd", mpd, MPD_TYPE), 50) as player:
        before = player.wait_for_time(8.0, timeout=30)
        assert set(player.segment_hosts()) <= set(hosts.values()), player.summary()
        # The host of the newest segment is the one streaming now.
        victim = next(n for n, h in hosts.items() if h == player.segments()[-1]["host"])
        survivor = next(n for n in hosts if n != victim)

        playback = player.last_playback()
        assert playback is not None
        buffered_to = playback["currentTime"] + playback["buffer"]
        killed_at = time.time()
        kill_appliance(appliances[victim])

        after = player.wait_for_time(playback["currentTime"] + 10.0, timeout=25)
        summary = player.summary()

        # Playback went on past what was buffered when the appliance died, so it played
        # segments that only the survivor could have served.
        assert after["currentTime"] > buffered_to + 2.0, summary
        assert not after["paused"] and not after["ended"], summary
        # (A segment that finished just before the kill may be reported just after it.)
        served_after = player.segment_hosts(since=killed_at + 1.0)
        assert set(served_after) == {hosts[survivor]}, (served_after, summary)
        assert served_after[hosts[survivor]] >= 4, summary

        # dash.js blacklisted the dead appliance and reported only its failed
        # downloads; anything else going wrong is a failure.
        assert victim in {r["serviceLocation"] for r in player.of_kind("blacklist")}, summary
        unexpected = [
            e for e in player.errors() if e.get("host") != hosts[victim] or e["t"] < killed_at
        ]
        assert not unexpected, summary

        stall = longest_stall(player, since=killed_at)
        assert stall < 3.0, f"playback stalled for {stall:.1f} s\n{summary}"
        print(
            f"\ndash.js {player.of_kind('page')[0]['dashjs']}: killed {victim} at "
            f"{playback['currentTime']:.1f} s with {playback['buffer']:.1f} s buffered; "
            f"{before['currentTime']:.1f} -> {after['currentTime']:.1f} s, longest stall "
            f"{stall:.2f} s, {served_after[hosts[survivor]]} segments from {survivor}"
        )


@pytest.mark.parametrize("b_in_mpd", [True, False], ids=["listed", "cloned"])
def test_playback_moves_to_the_appliance_content_steering_puts_first(
    appliances: dict[str, Appliance], b_in_mpd: bool
) -> None:
    """Listed: the MPD names both appliances and the steering manifest reorders them.
    Cloned: the MPD names only "a"; the steering manifest adds "b" as a PATHWAY-CLONE
    of "a" with b's host and puts it first."""
    a, b = appliances["a"], appliances["b"]
    base_urls = [("a", a.url + TITLE_PATH)]
    if b_in_mpd:
        base_urls.append(("b", b.url + TITLE_PATH))
    with DocumentServer() as docs:
        steering_url = docs.put("/steering", steering_response(["a", "b"]), "application/json")
        mpd = with_base_urls(
            (TITLE / "manifest.mpd").read_text(), base_urls, steering_url=steering_url
        )
        with PlayerRun(docs.put("/p.mpd", mpd, MPD_TYPE), 40) as player:
            player.wait_for_time(3.0, timeout=30)
            assert set(player.segment_hosts()) == {host_of(a.url)}, player.summary()

            clones = (
                []
                if b_in_mpd
                else [{"BASE-ID": "a", "ID": "b", "URI-REPLACEMENT": {"HOST": host_of(b.url)}}]
            )
            steered_at = time.time()
            docs.put("/steering", steering_response(["b", "a"], clones=clones), "application/json")

            def from_b() -> list[dict[str, Any]]:
                segs = player.segments(since=steered_at)
                return [s for s in segs if s["host"] == host_of(b.url)]

            player.wait_for(lambda: len(from_b()) >= 4, 15, "4 segments from b")
            first_b = from_b()[0]
            summary = player.summary()
            after_switch = player.segments(since=first_b["t"])
            assert {s["host"] for s in after_switch} == {host_of(b.url)}, summary
            assert not player.errors(), summary
            assert not player.of_kind("blacklist"), summary
            assert longest_stall(player, since=steered_at) < 1.0, summary
            # The player told the steering service which pathway it was on.
            queries = [path for _, path in docs.requests if path.startswith("/steering?")]
            assert any("_DASH_pathway=%22a%22" in q for q in queries), queries
            print(f"\nmoved to b {first_b['t'] - steered_at:.2f} s after the steering change")
