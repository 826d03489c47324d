"""Tier moves: the pure plan, and a live promotion while the object is being served."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

from fill.mover import plan_moves
from fill.planner import DiskSpace, HeldObject
from oca.config import load_config
from oca.storage.store import Store
from tests.appliance import Appliance, fetch, wait_until

NOW = 1_800_000_000.0
SHA = "c" * 64


def test_hot_object_promoted_and_cold_one_demoted_to_make_room() -> None:
    disks = [DiskSpace("/ssd0", "ssd", 1000), DiskSpace("/hdd0", "hdd", 10_000)]
    held = [
        HeldObject("/a/cold.m4s", 600, SHA, "ssd", "/ssd0", 1, NOW - 7 * 86400),
        HeldObject("/a/warm.m4s", 300, SHA, "ssd", "/ssd0", 40, NOW - 600),
        HeldObject("/b/hot.m4s", 600, SHA, "hdd", "/hdd0", 500, NOW - 60),
        HeldObject("/b/never.m4s", 100, SHA, "hdd", "/hdd0", 0, 0.0),
    ]
    moves = plan_moves(held, disks, ["ssd", "hdd"], NOW, headroom_fraction=0.0)
    assert [(m.path, m.from_tier, m.to_tier) for m in moves] == [
        ("/a/cold.m4s", "ssd", "hdd"),
        ("/b/hot.m4s", "hdd", "ssd"),
    ]
    # Deterministic, whatever the order of the inventory.
    again = plan_moves(
        list(reversed(held)), disks[::-1], ["ssd", "hdd"], NOW, headroom_fraction=0.0
    )
    assert again == moves


def test_nothing_moves_without_requests_or_a_second_tier() -> None:
    disks = [DiskSpace("/ssd0", "ssd", 1000), DiskSpace("/hdd0", "hdd", 10_000)]
    held = [HeldObject("/b/x.m4s", 100, SHA, "hdd", "/hdd0", 0, 0.0)]
    assert plan_moves(held, disks, ["ssd", "hdd"], NOW) == []
    hot = [HeldObject("/b/x.m4s", 100, SHA, "hdd", "/hdd0", 100, NOW)]
    assert plan_moves(hot, disks[1:], ["ssd", "hdd"], NOW) == []


def test_live_promotion_never_interrupts_serving(tmp_path: Path) -> None:
    src = tmp_path / "src"
    data = os.urandom(3 << 20)
    (src / "b").mkdir(parents=True)
    (src / "b" / "hot.m4s").write_bytes(data)
    app = Appliance(tmp_path / "a", tiers=(("ssd", 1), ("hdd", 1)),
                    storage_extra="access_stats_flush_seconds = 0.2")  # fmt: skip
    (tmp_path / "a").mkdir()
    app.import_tree(src, tier="hdd")
    app.start()
    errors: list[str] = []
    served = [0]
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            status, _h, body = fetch(*app.host_port, "/b/hot.m4s")
            if status != 200 or hashlib.sha256(body).digest() != hashlib.sha256(data).digest():
                errors.append(f"status {status}, {len(body)} bytes")
            served[0] += 1

    try:
        for _ in range(5):
            fetch(*app.host_port, "/b/hot.m4s")
        cfg = load_config(app.config_path)
        # Wait for the server to write the request counts into the index.
        with Store.open(cfg.storage) as store:

            def hits() -> int:
                store.refresh()
                rec = store.lookup("/b/hot.m4s")
                return rec.hits if rec is not None else 0

            wait_until(lambda: hits() >= 5, 10, "request counts in the index")
        t = threading.Thread(target=hammer)
        t.start()
        out = subprocess.run(
            [sys.executable, "-m", "oca", "fill", "-c", str(app.config_path), "--tiers-only"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert "tier moves: 1 of 1 planned done" in out.stdout
        with Store.open(cfg.storage) as store:
            wait_until(lambda: served[0] > 20, 20, "requests during and after the move")
            rec = store.lookup("/b/hot.m4s")
            assert rec is not None and rec.tier == "ssd" and rec.hits >= 5
        stop.set()
        t.join(30)
    finally:
        stop.set()
        app.stop()
    assert not errors, errors[:5]
    verify = app.oca("store", "verify", "-c", str(app.config_path), "--no-quarantine", check=False)
    assert verify.returncode == 0, verify.stdout
    # The old copy is gone from the slow disk.
    assert not (app.disk_paths("hdd")[0] / "objects" / "b" / "hot.m4s").exists()
