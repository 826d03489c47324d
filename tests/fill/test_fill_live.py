"""`oca fill` end to end: a real origin on loopback, a real peer appliance, real disks."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from fill.agent import FillRun
from fill.manifest import parse_manifest
from fill.metrics import FillMetrics
from fill.run import plan_for
from oca.config import load_config
from oca.storage.store import Store
from tests.appliance import Appliance, fetch, new_key, write_tree
from tests.fill.origin import Origin

MiB = 1 << 20


def make_objects(n: int, size: int, title: str = "/titles/a/v1") -> dict[str, bytes]:
    return {f"{title}/seg-{i:03d}.m4s": os.urandom(size) for i in range(n)}


def write_manifest(path: Path, objects: dict[str, bytes], origins: list[str],
                   popularity: dict[str, float] | None = None) -> Path:  # fmt: skip
    doc = {
        "schema": "oca.fill-manifest",
        "version": 1,
        "generated_at": time.time(),
        "objects": [
            {
                "path": p,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "popularity": (popularity or {}).get(p, 1000.0 - i),
                "sources": [o + p for o in origins],
            }
            for i, (p, data) in enumerate(objects.items())
        ],
    }
    path.write_bytes(orjson.dumps(doc))
    return path


def filler(root: Path, manifest: Path, peers: list[str] = (), rate_bits: int = 10**10,  # type: ignore[assignment]
           tiers: tuple[tuple[str, int], ...] = (("ssd", 1), ("hdd", 1)), extra: str = "",
           storage_extra: str = "") -> Appliance:  # fmt: skip
    peer_list = ", ".join(f'"{p}"' for p in peers)
    app = Appliance(
        root,
        tiers=tiers,
        extra=(
            "[fill]\n"
            f'manifest = "{manifest}"\n'
            f"peers = [{peer_list}]\n"
            f"max_fill_rate_bits = {rate_bits}\n"
            "retry_backoff_seconds = 0.05\n"
            "connect_timeout_seconds = 2\n"
            "read_timeout_seconds = 5\n"
            "progress_interval_seconds = 0.5\n" + extra
        ),
    )
    root.mkdir(parents=True, exist_ok=True)
    app.write_config()
    return app


def run_fill(app: Appliance, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oca", "fill", "-c", str(app.config_path), "--now", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def held(app: Appliance) -> dict[str, str]:
    cfg = load_config(app.config_path)
    with Store.open(cfg.storage) as store:
        return {r.path: r.sha256 for r in store.records()}


def verify_ok(app: Appliance) -> None:
    out = app.oca("store", "verify", "-c", str(app.config_path), "--no-quarantine", check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def expected(objects: dict[str, bytes]) -> dict[str, str]:
    return {p: hashlib.sha256(d).hexdigest() for p, d in objects.items()}


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[tuple[Appliance, dict[str, bytes]]]:
    """A running appliance at the same site holding the first half of the title."""
    objects = make_objects(8, 96 * 1024)
    src = tmp_path / "peer-src"
    for p, data in list(objects.items())[:4]:
        f = src / p.lstrip("/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
    app = Appliance(tmp_path / "peer", tiers=(("ssd", 1),))
    (tmp_path / "peer").mkdir()
    app.import_tree(src)
    app.start()
    try:
        yield app, objects
    finally:
        app.stop()


def test_peer_first_then_origin(tmp_path: Path, peer: tuple[Appliance, dict[str, bytes]]) -> None:
    peer_app, objects = peer
    with Origin(objects) as origin:
        manifest = write_manifest(tmp_path / "manifest.json", objects, [origin.url])
        app = filler(tmp_path / "a", manifest, peers=[peer_app.url])
        out = run_fill(app)
        assert out.returncode == 0, out.stdout + out.stderr
        assert held(app) == expected(objects)
        # The peer held the first four: the origin was asked only for the rest.
        assert origin.requested() == set(list(objects)[4:])
    peer_bytes = sum(len(d) for d in list(objects.values())[:4])
    assert f"{peer_bytes / 1024:.1f} KiB from peers" in out.stdout
    verify_ok(app)
    # A second run has nothing to do.
    again = run_fill(app)
    assert again.returncode == 0 and "fetched 0 of 0 planned" in again.stdout
    # The appliance's /metrics carries the fill's counters (kept across both runs).
    app.start()
    try:
        status, _h, body = fetch(*app.host_port, "/metrics")
    finally:
        app.stop()
    text = body.decode()
    origin_bytes = sum(len(d) for d in list(objects.values())[4:])
    assert status == 200
    assert f'oca_fill_bytes_total{{source="peer"}} {float(peer_bytes)}' in text
    assert f'oca_fill_bytes_total{{source="origin"}} {float(origin_bytes)}' in text
    assert 'oca_fill_objects_total{result="done"} 8.0' in text
    assert "oca_fill_last_success_timestamp_seconds 1." in text
    assert "oca_textfile_errors 0.0" in text


def test_peers_from_peering_are_asked_with_the_site_key(tmp_path: Path) -> None:
    """[peering] peers with a site key: the fill signs its peer requests (X-Oca-Peer), so
    a peer that demands URL tokens from players still serves it, and the known-objects
    table for the server's miss path is written from the manifest."""
    objects = make_objects(4, 64 * 1024)
    site_key = new_key()
    src = write_tree(tmp_path / "peer-src", dict(list(objects.items())[:2]))
    peer_app = Appliance(tmp_path / "peer", tiers=(("ssd", 1),), keys={"k1": new_key()})
    (tmp_path / "peer").mkdir()
    peer_app.sections = f'[peering]\nappliance_id = "peer"\nkeys = ["{site_key}"]\n'
    peer_app.import_tree(src)
    peer_app.start()
    try:
        with Origin(objects) as origin:
            manifest = write_manifest(tmp_path / "manifest.json", objects, [origin.url])
            app = filler(tmp_path / "a", manifest)
            app.sections = (
                f'[peering]\nappliance_id = "a"\npeers = ["{peer_app.url}"]\n'
                f'keys = ["{site_key}"]\n'
            )
            app.write_config()
            out = run_fill(app)
            assert out.returncode == 0, out.stdout + out.stderr
            assert held(app) == expected(objects)
            assert origin.requested() == set(list(objects)[2:])
    finally:
        peer_app.stop()
    signed = [
        orjson.loads(line)
        for line in (peer_app.root / "access.log").read_bytes().splitlines()
        if b'"peer":"a"' in line
    ]
    # Every object was asked of the peer first; it served what it holds, 404 the rest.
    assert sorted((r["path"], r["status"]) for r in signed) == sorted(
        (p, 200 if i < 2 else 404) for i, p in enumerate(objects)
    )
    known = orjson.loads((app.root / "state" / "known-objects.json").read_bytes())
    assert known["objects"][next(iter(objects))][1] == expected(objects)[next(iter(objects))]


def test_unreachable_peer_and_failing_origin_url_fall_back(tmp_path: Path) -> None:
    objects = make_objects(4, 64 * 1024)
    with Origin(objects) as bad, Origin(objects) as good:
        bad.broken = set(objects)
        manifest = write_manifest(tmp_path / "manifest.json", objects, [bad.url, good.url])
        # Port 9 (discard) on loopback: nothing listens, the connection is refused.
        app = filler(tmp_path / "a", manifest, peers=["http://127.0.0.1:9"])
        out = run_fill(app)
        assert out.returncode == 0, out.stdout + out.stderr
        assert held(app) == expected(objects)
        assert bad.requested() == set(objects)  # tried, answered 503, retried elsewhere
    verify_ok(app)


def test_corrupt_peer_is_detected_and_not_used_again(
    tmp_path: Path, peer: tuple[Appliance, dict[str, bytes]]
) -> None:
    peer_app, objects = peer
    first = next(iter(objects))
    # Flip bytes of one object on the peer's disk behind its back (same size).
    victim = peer_app.disk_paths("ssd")[0] / "objects" / first.lstrip("/")
    data = bytearray(victim.read_bytes())
    data[:8] = b"\x00" * 8 if data[:8] != b"\x00" * 8 else b"\x01" * 8
    victim.write_bytes(bytes(data))
    with Origin(objects) as origin:
        manifest = write_manifest(tmp_path / "manifest.json", objects, [origin.url])
        app = filler(tmp_path / "a", manifest, peers=[peer_app.url], extra="concurrency = 1\n")
        out = run_fill(app)
        assert out.returncode == 0, out.stdout + out.stderr
        assert held(app) == expected(objects)
        # After the wrong bytes the peer is dropped: everything else came from the origin.
        assert origin.requested() == set(objects)
    host = peer_app.url.split("//")[1]
    assert f"source http://{host} not used again" in out.stdout
    assert "wrong bytes" in out.stderr or "wrong bytes" in out.stdout
    verify_ok(app)


def test_rate_cap_holds_over_a_20_second_transfer(tmp_path: Path) -> None:
    cap_bits = 16_000_000  # 2 MB/s
    objects = make_objects(20, 2_000_000)  # 40 MB: 20 s at the cap
    with Origin(objects) as origin:
        manifest = write_manifest(tmp_path / "manifest.json", objects, [origin.url])
        app = filler(tmp_path / "a", manifest, rate_bits=cap_bits)
        out = run_fill(app, timeout=180)
        assert out.returncode == 0, out.stdout + out.stderr
        first = min(t for t, _p, _r in origin.log)
    took = time.monotonic() - first  # includes the last commit and process exit: a bound
    total_bits = sum(len(d) for d in objects.values()) * 8
    rate = total_bits / took
    print(f"fill rate {rate / 1e6:.2f} Mbit/s over {took:.1f}s, cap {cap_bits / 1e6} Mbit/s")
    # Never above the cap (the elapsed time bounds the rate from above), and close to it.
    assert rate <= cap_bits * 1.10, f"{rate / 1e6:.2f} Mbit/s over {took:.1f}s"
    assert rate >= cap_bits * 0.90, f"{rate / 1e6:.2f} Mbit/s over {took:.1f}s"
    assert held(app) == expected(objects)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_disk_full_mid_fill_fails_that_object_cleanly(tmp_path: Path) -> None:
    objects = make_objects(6, 1 * MiB)
    app_root = tmp_path / "a"
    disk = app_root / "ssd0"
    disk.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3200k", "tmpfs", str(disk)], check=True)
    try:
        with Origin(objects) as origin:
            manifest = write_manifest(tmp_path / "manifest.json", objects, [origin.url])
            # The tier claims far more than the filesystem has: the disk fills up mid-fill.
            app = filler(app_root, manifest, tiers=(("ssd", 1),), extra="concurrency = 1\n")
            cfg_text = app.config_path.read_text().replace(
                'name = "ssd"', 'name = "ssd"\ncapacity_bytes = 104857600'
            )
            app.config_path.write_text(cfg_text)
            out = run_fill(app)
        assert out.returncode == 1, out.stdout + out.stderr
        got = held(app)
        want = expected(objects)
        assert got and len(got) < len(objects)
        assert all(want[p] == sha for p, sha in got.items())  # what is there is whole
        failed = [line for line in out.stdout.splitlines() if "failed /titles/" in line]
        assert len(failed) == len(objects) - len(got)
        assert all("no room" in line or "ENOSPC" in line for line in failed), failed
        verify_ok(app)
        # No part file is left taking space.
        parts = disk / ".oca" / "fill"
        assert not parts.exists() or not any(parts.iterdir())
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_bad_manifest_is_rejected_naming_the_field(tmp_path: Path) -> None:
    objects = make_objects(2, 1000)
    manifest = write_manifest(tmp_path / "manifest.json", objects, ["http://127.0.0.1:9"])
    doc = orjson.loads(manifest.read_bytes())
    doc["objects"][1]["sha256"] = "nothex"
    manifest.write_bytes(orjson.dumps(doc))
    app = filler(tmp_path / "a", manifest)
    out = run_fill(app)
    assert out.returncode == 2
    assert "objects[1].sha256" in out.stderr
    assert held(app) == {}


def test_outside_the_window_exits_with_a_message(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "manifest.json", {}, [])
    now = time.localtime()
    start = (now.tm_hour + 2) % 24
    window = f"{start:02d}:00-{(start + 1) % 24:02d}:00"
    app = filler(tmp_path / "a", manifest, extra=f'window = "{window}"\n')
    out = subprocess.run(
        [sys.executable, "-m", "oca", "fill", "-c", str(app.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    assert f"outside the fill window {window}" in out.stdout and "--now" in out.stdout


def test_manifest_over_http_from_the_control_plane(tmp_path: Path) -> None:
    objects = make_objects(3, 50_000)
    with Origin(dict(objects)) as origin:
        manifest = write_manifest(tmp_path / "manifest.json", objects, [origin.url])
        origin.objects["/fill/manifest.json"] = manifest.read_bytes()
        app = filler(tmp_path / "a", Path("unused"))
        out = run_fill(app, "--manifest", f"{origin.url}/fill/manifest.json")
        assert out.returncode == 0, out.stdout + out.stderr
        assert held(app) == expected(objects)
        missing = run_fill(app, "--manifest", f"{origin.url}/fill/nothing.json")
        assert missing.returncode == 3 and "HTTP 404" in missing.stderr


def test_stops_at_the_window_end_and_resumes_with_ranges(tmp_path: Path) -> None:
    """The deadline cuts transfers mid-object; the next run resumes the part files."""
    objects = make_objects(4, 1_000_000)
    with Origin(objects) as origin:
        manifest_path = write_manifest(tmp_path / "manifest.json", objects, [origin.url])
        app = filler(tmp_path / "a", manifest_path, rate_bits=8_000_000)  # 1 MB/s: 4 s
        cfg = load_config(app.config_path)
        manifest = parse_manifest(manifest_path.read_bytes())
        with Store.open(cfg.storage) as store:
            plan = plan_for(cfg, store, manifest, time.time())
            run = FillRun(cfg, store, plan, FillMetrics(cfg.server.state_dir),
                          deadline=time.monotonic() + 1.5)  # fmt: skip
            summary = asyncio.run(run.run())
        assert summary.stopped_at_window_end
        assert summary.fetched < len(objects) and summary.left_for_next_run > 0
        got = held(app)
        assert all(expected(objects)[p] == sha for p, sha in got.items())
        first_log = len(origin.log)
        out = run_fill(app)
        assert out.returncode == 0, out.stdout + out.stderr
        assert held(app) == expected(objects)
        resumed = [r for _t, _p, r in origin.log[first_log:] if r.startswith("bytes=")]
    assert resumed, "the second run should continue part files with Range requests"


def test_remaining_bytes_falls_while_the_run_goes_on(tmp_path: Path) -> None:
    """oca_fill_remaining_bytes (what `oca status` and the dashboard show as progress)
    moves during a run, not only at its start and end."""
    objects = make_objects(4, 500_000)
    with Origin(objects) as origin:
        manifest_path = write_manifest(tmp_path / "manifest.json", objects, [origin.url])
        # 2 MB at 1 MB/s: about 2 s, with progress every 0.2 s ("[fill]" keys: last wins)
        app = filler(tmp_path / "a", manifest_path, rate_bits=8_000_000)
        app.config_path.write_text(
            app.config_path.read_text().replace(
                "progress_interval_seconds = 0.5", "progress_interval_seconds = 0.2"
            )
        )
        cfg = load_config(app.config_path)
        prom = Path(cfg.server.state_dir) / "metrics.d" / "fill.prom"
        manifest = parse_manifest(manifest_path.read_bytes())
        seen: list[float] = []

        async def fill_and_watch() -> None:
            with Store.open(cfg.storage) as store:
                plan = plan_for(cfg, store, manifest, time.time())
                run = FillRun(cfg, store, plan, FillMetrics(cfg.server.state_dir))
                task = asyncio.create_task(run.run())
                while not task.done():
                    with contextlib.suppress(OSError):
                        m = re.search(r"^oca_fill_remaining_bytes (\S+)$", prom.read_text(), re.M)
                        if m:
                            seen.append(float(m[1]))
                    await asyncio.sleep(0.05)
                await task

        asyncio.run(fill_and_watch())
    total = sum(len(b) for b in objects.values())
    between = {v for v in seen if 0 < v < total}
    assert len(between) >= 2, f"remaining bytes seen during the run: {sorted(set(seen))}"
    assert seen == sorted(seen, reverse=True), "remaining bytes only ever fall"
