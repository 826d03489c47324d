"""A fill killed with SIGKILL at random instants never leaves a bad object behind."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oca.config import load_config
from oca.storage.store import Store
from tests.fill.origin import Origin
from tests.fill.test_fill_live import expected, filler, make_objects, write_manifest

KILLS = 20  # the default run; the soak variant kills 50 times
SOAK_KILLS = 50


def check_store(config: Path, want: dict[str, str]) -> int:
    """Open the store as the next process would; every listed object must hash right."""
    cfg = load_config(config)
    with Store.open(cfg.storage) as store:
        records = list(store.records())
        for rec in records:
            assert rec.sha256 == want[rec.path], rec.path
            data = Path(store.file_path(rec)).read_bytes()
            assert len(data) == rec.size, rec.path
            assert hashlib.sha256(data).hexdigest() == rec.sha256, rec.path
    return len(records)


def test_sigkill_at_random_points_never_leaves_a_bad_object(tmp_path: Path) -> None:
    sigkill_fills(tmp_path, KILLS)


@pytest.mark.slow
def test_soak_sigkill_at_random_points(tmp_path: Path) -> None:
    sigkill_fills(tmp_path, SOAK_KILLS)


def sigkill_fills(tmp_path: Path, kills: int) -> None:
    rnd = random.Random(20261121)
    objects = make_objects(16, 1 << 20)
    want = expected(objects)
    with Origin(objects) as origin:
        manifest = write_manifest(tmp_path / "manifest.json", objects, [origin.url])
        app = filler(tmp_path / "a", manifest, rate_bits=48_000_000)
        cmd = [sys.executable, "-m", "oca", "fill", "-c", str(app.config_path), "--now"]
        complete_cycles = 0
        for _ in range(kills):
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rnd.uniform(0.15, 1.6))
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            n = check_store(app.config_path, want)
            if n == len(objects):
                # Filled before the kill landed: empty the disks so later kills hit work.
                complete_cycles += 1
                for tier in ("ssd", "hdd"):
                    for disk in app.disk_paths(tier):
                        shutil.rmtree(disk, ignore_errors=True)
        # The next, unkilled run completes the fill from wherever the last one stopped.
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
    assert check_store(app.config_path, want) == len(objects)
    verify = app.oca("store", "verify", "-c", str(app.config_path), "--no-quarantine", check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # No part file is left once everything is in.
    for tier in ("ssd", "hdd"):
        for disk in app.disk_paths(tier):
            parts = disk / ".oca" / "fill"
            assert not parts.exists() or not os.listdir(parts)
    print(f"{kills} kills, {complete_cycles} complete fills between them")
