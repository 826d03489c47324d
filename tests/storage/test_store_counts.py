"""What the store counts for the metrics of the process using it (:meth:`Store.counts`).

Every disk the store fails (was ok, now failed), whatever failed it (a probe, a read
error, the error limit, an index refresh), counts once per process, and every object it
quarantines counts under its tier, disk and reason: ``read-error`` when it could not be
read, ``checksum`` when its bytes did not match. The server's workers export these as
``oca_disk_failures_total`` and ``oca_objects_quarantined_total`` (checked on a real
appliance in ``tests/reliability/test_quarantine.py``). Everything here runs on real
directories; the read errors the kernel gives are handed over as the OSError a read
returned (a real EIO is exercised under FUSE in ``tests/reliability``).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from oca.config import StorageConfig
from oca.storage.errorlog import errors_path, load_errors
from oca.storage.inventory import DiskInventory, DiskLayout, ObjectRecord
from oca.storage.store import Store

from . import make_config, write_source

NOW = 1_700_000_000.0
EIO = OSError(errno.EIO, "Input/output error")


@pytest.fixture
def cfg(tmp_path: Path) -> StorageConfig:
    return replace(
        make_config(tmp_path / "disks", hdd=0),
        disk_error_limit=3,
        disk_error_window_seconds=60.0,
        disk_error_hold_seconds=30.0,
    )


@pytest.fixture
def store(cfg: StorageConfig) -> Iterator[Store]:
    with Store.open(cfg, clock=lambda: NOW) as s:
        yield s


def seed(store: Store, src: Path, n: int = 30) -> dict[str, list[ObjectRecord]]:
    by_disk: dict[str, list[ObjectRecord]] = {}
    for i in range(n):
        rec = store.put_file(f"/t/seg-{i:02d}.m4s", write_source(src, f"s{i}", os.urandom(700)))
        by_disk.setdefault(rec.disk, []).append(rec)
    assert len(by_disk) == 2 and all(len(r) >= 5 for r in by_disk.values())
    return by_disk


def test_verify_counts_what_it_quarantines_by_reason(
    cfg: StorageConfig, store: Store, tmp_path: Path
) -> None:
    by_disk = seed(store, tmp_path / "src")
    disk, other = cfg.tiers[0].paths
    rotten, odd = by_disk[disk][0], by_disk[other][0]
    # Bit rot: same size, other bytes.
    f = DiskLayout(disk).object_file(rotten.path)
    raw = bytearray(Path(f).read_bytes())
    raw[10] ^= 0xFF
    Path(f).write_bytes(bytes(raw))
    # A file that cannot be read at all (not a data error: EISDIR).
    g = DiskLayout(other).object_file(odd.path)
    os.unlink(g)
    os.mkdir(g)
    assert store.counts() == ({}, {})
    report = store.verify(quarantine=True)
    kinds = {p.path: (p.kind, p.action.split(" to ")[0]) for p in report.bad}
    assert kinds == {
        rotten.path: ("sha256", "quarantined"),
        odd.path: ("unreadable", "quarantined"),
    }
    assert report.quarantined == 2 and not report.failed_disks
    assert store.counts() == ({}, {("ssd", disk, "checksum"): 1, ("ssd", other, "read-error"): 1})
    # Neither is a data error of the disk: nothing counts against its error limit.
    assert not os.path.exists(errors_path(DiskLayout(disk)))
    assert not os.path.exists(errors_path(DiskLayout(other)))
    # Report only: nothing is quarantined, nothing counted.
    Path(DiskLayout(disk).object_file(by_disk[disk][1].path)).write_bytes(b"x" * 700)
    report = store.verify(quarantine=False)
    assert [(p.kind, p.action) for p in report.bad] == [("sha256", "")]
    assert store.counts()[1] == {("ssd", disk, "checksum"): 1, ("ssd", other, "read-error"): 1}


def test_read_errors_count_quarantines_and_the_disk_failure_beyond_the_limit(
    cfg: StorageConfig, store: Store, tmp_path: Path
) -> None:
    by_disk = seed(store, tmp_path / "src")
    disk = cfg.tiers[0].paths[0]
    results = [store.note_read_error(r, EIO, NOW + i) for i, r in enumerate(by_disk[disk][:4])]
    assert results == [False, False, False, True]
    assert store.counts() == ({"ssd": 1}, {("ssd", disk, "read-error"): 3})
    # Failing it again (held, its probe, ...) is no new failure.
    assert store.mark_failed(disk, "again", NOW + 5) is False
    assert store.check_disks(NOW + 6) and store.counts()[0] == {"ssd": 1}
    assert load_errors(DiskLayout(disk)).hold is not None


def test_a_disk_failed_by_an_index_refresh_is_counted(
    cfg: StorageConfig, store: Store, tmp_path: Path
) -> None:
    """Another process's change makes the store re-read the index; the disk's root is
    gone, so the refresh (not a probe) fails the disk."""
    seed(store, tmp_path / "src")
    disk, other = cfg.tiers[0].paths
    with Store.open(cfg, clock=lambda: NOW) as writer:  # another process storing
        writer.put_file("/t/new.m4s", write_source(tmp_path / "src", "new", b"new"))
    gone = disk + ".gone"
    os.rename(disk, gone)
    try:
        store.refresh()
        status = {s.id: s for s in store.disks()}
        assert status[disk].state == "failed" and status[other].state == "ok"
        assert store.counts() == ({"ssd": 1}, {})
        store.refresh()
        assert store.counts() == ({"ssd": 1}, {})
    finally:
        os.rename(gone, disk)
    # Back (its probe passes), and failed once more: a second failure.
    assert {s.state for s in store.check_disks(NOW + 1)} == {"ok"}
    shutil.rmtree(DiskLayout(disk).meta)
    store.check_disks(NOW + 2)
    assert store.counts() == ({"ssd": 2}, {})
    assert {r.path for r in DiskInventory.load(other).records.values()} <= set(store.paths())
