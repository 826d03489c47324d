"""A read error quarantines the object; only errors beyond the limit fail (and hold) the disk.

The decision (:mod:`oca.storage.errorlimit`) is tested as a pure function, with a
property: with no hold, the verdict is "fail" exactly when more than ``limit`` distinct
paths failed within the window. The store (:meth:`Store.note_read_error`) is tested on
real directories: the error itself is handed over as the OSError a read returned (the
kernel's own EIO under a real appliance is exercised in
``tests/reliability/test_bad_object.py``), and every outcome is read back from the
disks: the index file, the quarantine directory, the error log, a second store (another
process) and the supervisor's :class:`~oca.health.disks.DiskWatch`.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oca.config import StorageConfig, load_config
from oca.errors import ConfigError
from oca.health.disks import DiskWatch
from oca.storage.errorlimit import DiskErrors, ErrorLimit, Hold, hold_reason, judge_read_error
from oca.storage.errorlog import errors_path, held_reason, load_errors, save_errors
from oca.storage.inventory import DiskInventory, DiskLayout, ObjectRecord
from oca.storage.store import Store

from . import make_config, write_source

NOW = 1_700_000_000.0
EIO = OSError(errno.EIO, "Input/output error")
LIMIT = ErrorLimit(limit=3, window_seconds=60.0, hold_seconds=30.0)


# ----------------------------------------------------------------------------- pure core


def test_errors_up_to_the_limit_quarantine_and_the_next_one_fails_and_holds() -> None:
    log = DiskErrors()
    for i in range(3):
        d = judge_read_error(log, f"/o{i}", "EIO", NOW + i, LIMIT)
        assert (d.verdict, d.recent, d.reason) == ("quarantine", i + 1, "")
        log = d.errors
    d = judge_read_error(log, "/o3", "Input/output error (EIO)", NOW + 3, LIMIT)
    assert (d.verdict, d.recent) == ("fail", 4)
    assert "4 objects failed to read within 60s" in d.reason
    assert "storage.disk_error_limit = 3" in d.reason and "/o3" in d.reason
    assert "until 2023-11-14T22:13:53Z" in d.reason  # NOW + 3 + 30
    assert d.errors == DiskErrors((), Hold(NOW + 3, NOW + 33, d.reason))
    # While held, every error fails the disk with the hold's reason; the log keeps it.
    held = judge_read_error(d.errors, "/o9", "EIO", NOW + 20, LIMIT)
    assert (held.verdict, held.reason, held.errors.hold) == ("fail", d.reason, d.errors.hold)
    assert hold_reason(d.errors, NOW + 32.9) == d.reason
    assert hold_reason(d.errors, NOW + 33) is None
    # After the hold the disk counts afresh: one error quarantines, the hold is dropped.
    after = judge_read_error(d.errors, "/o9", "EIO", NOW + 34, LIMIT)
    assert (after.verdict, after.recent, after.errors.hold) == ("quarantine", 1, None)


def test_the_same_object_counts_once_and_old_errors_are_forgotten() -> None:
    log = DiskErrors()
    for t, path in ((0, "/a"), (1, "/a"), (2, "/b"), (3, "/a"), (4, "/c")):
        d = judge_read_error(log, path, "EIO", NOW + t, LIMIT)
        assert d.verdict == "quarantine"
        log = d.errors
    assert [(e.path, e.at) for e in log.errors] == [
        ("/b", NOW + 2),
        ("/a", NOW + 3),
        ("/c", NOW + 4),
    ]
    # /b and /a leave the 60 s window; /d and /e fit under the limit again.
    for t, path in ((63.5, "/d"), (63.9, "/e")):
        log = judge_read_error(log, path, "EIO", NOW + t, LIMIT).errors
    assert [e.path for e in log.errors] == ["/c", "/d", "/e"]


def test_an_error_noted_later_by_another_process_still_counts() -> None:
    """Workers read the clock before they wait for the disk lock: the log is not in the
    order of the times they judge with."""
    log = DiskErrors()
    for i in range(3):
        log = judge_read_error(log, f"/o{i}", "EIO", NOW + 10 + i, LIMIT).errors
    d = judge_read_error(log, "/late", "EIO", NOW + 9.5, LIMIT)
    assert (d.verdict, d.recent) == ("fail", 4)


def test_a_hold_of_zero_lasts_until_an_operator_clears_it() -> None:
    forever = replace(LIMIT, hold_seconds=0.0)
    log = DiskErrors()
    for i in range(4):
        d = judge_read_error(log, f"/o{i}", "EIO", NOW, forever)
        log = d.errors
    assert d.verdict == "fail" and log.hold is not None and log.hold.until is None
    assert d.reason.endswith("held failed until an operator clears it")
    assert hold_reason(log, NOW + 10 * 365 * 86400) == d.reason


@given(
    st.lists(
        st.tuples(st.sampled_from([f"/p{i}" for i in range(8)]), st.floats(0, 200)),
        max_size=30,
    ),
    st.integers(1, 6),
)
def test_the_disk_fails_exactly_when_more_than_limit_objects_failed_in_the_window(
    events: list[tuple[str, float]], limit: int
) -> None:
    """The model: each quarantined path counts from its latest error for 50 s; failing
    starts a 10 s hold (every error fails) and forgets what was counted."""
    rule = ErrorLimit(limit, 50.0, 10.0)
    log = DiskErrors()
    counted: dict[str, float] = {}
    hold_until = float("-inf")
    for path, t in sorted(events, key=lambda e: e[1]):
        d = judge_read_error(log, path, "EIO", t, rule)
        log = d.errors
        assert len(log.errors) <= limit
        if t < hold_until:
            assert d.verdict == "fail" and d.reason == log.hold.reason  # type: ignore[union-attr]
            continue
        recent = {p for p, at in counted.items() if t - at < 50.0} | {path}
        if len(recent) > limit:
            assert (d.verdict, d.recent) == ("fail", len(recent))
            counted, hold_until = {}, t + 10.0
        else:
            assert (d.verdict, d.recent) == ("quarantine", len(recent))
            counted = {p: at for p, at in counted.items() if p in recent}
            counted[path] = t


# ----------------------------------------------------------------------------- the log file


def test_the_error_log_round_trips_and_an_empty_one_leaves_no_file(tmp_path: Path) -> None:
    layout = DiskLayout(str(tmp_path))
    layout.create(root_too=True)
    assert load_errors(layout) == DiskErrors()
    d = judge_read_error(DiskErrors(), "/x", "EIO", NOW, LIMIT)
    save_errors(layout, d.errors)
    assert load_errors(layout) == d.errors
    held = DiskErrors((), Hold(NOW, None, "held"))
    save_errors(layout, held)
    assert load_errors(layout) == held
    assert held_reason(layout, NOW) == "held"
    save_errors(layout, DiskErrors())
    assert not any(n.startswith("disk-errors.json") for n in os.listdir(layout.meta))


def test_an_unusable_error_log_is_ignored_and_an_unreadable_one_fails_the_disk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    layout = DiskLayout(str(tmp_path))
    layout.create(root_too=True)
    Path(errors_path(layout)).write_bytes(b'{"schema": "oca.disk-errors", "errors": [[1]]}')
    assert load_errors(layout) == DiskErrors()
    assert held_reason(layout, NOW) is None
    assert "ignoring its unusable error log" in caplog.text
    os.unlink(errors_path(layout))
    os.mkdir(errors_path(layout))  # reading it fails (EISDIR)
    why = held_reason(layout, NOW)
    assert why is not None and "its error log cannot be read" in why and "EISDIR" in why


def test_the_limits_are_validated_with_the_key_named(tmp_path: Path) -> None:
    tier = f'[[storage.tiers]]\nname = "ssd"\npaths = ["{tmp_path}/ssd0"]\n'
    for key, value, message in (
        ("disk_error_limit", "0", "storage.disk_error_limit: must be >= 1, got 0"),
        ("disk_error_window_seconds", "0.5", "storage.disk_error_window_seconds: must be >= 1"),
        ("disk_error_hold_seconds", "-1", "storage.disk_error_hold_seconds: must be >= 0"),
    ):
        (tmp_path / "oca.toml").write_text(f"[storage]\n{key} = {value}\n{tier}")
        with pytest.raises(ConfigError, match=message):
            load_config(tmp_path / "oca.toml")
    (tmp_path / "oca.toml").write_text(f"[storage]\n{tier}")
    cfg = load_config(tmp_path / "oca.toml").storage
    assert (cfg.disk_error_limit, cfg.disk_error_window_seconds, cfg.disk_error_hold_seconds) == (
        10,
        600.0,
        3600.0,
    )


# ----------------------------------------------------------------------------- the store


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def cfg(tmp_path: Path) -> StorageConfig:
    return replace(
        make_config(tmp_path / "disks", hdd=0),
        disk_error_limit=3,
        disk_error_window_seconds=60.0,
        disk_error_hold_seconds=30.0,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(cfg: StorageConfig, clock: Clock) -> Iterator[Store]:
    with Store.open(cfg, clock=clock) as s:
        yield s


def seed(store: Store, src: Path, n: int = 40) -> dict[str, list[ObjectRecord]]:
    """``n`` objects; disk -> its records (each disk holds at least six)."""
    by_disk: dict[str, list[ObjectRecord]] = {}
    for i in range(n):
        rec = store.put_file(f"/t/seg-{i:02d}.m4s", write_source(src, f"s{i}", os.urandom(900)))
        by_disk.setdefault(rec.disk, []).append(rec)
    assert len(by_disk) == 2 and all(len(recs) >= 6 for recs in by_disk.values())
    return by_disk


def test_a_read_error_quarantines_the_object_and_the_disk_serves_on(
    cfg: StorageConfig, store: Store, clock: Clock, tmp_path: Path
) -> None:
    by_disk = seed(store, tmp_path / "src")
    disk, other = cfg.tiers[0].paths
    bad, *rest = by_disk[disk]
    reader = Store.open(cfg, clock=clock)  # another worker
    watch = DiskWatch(cfg)  # the supervisor's heartbeat view
    assert bad.path in watch.poll(NOW).totals
    assert store.note_read_error(bad, EIO, NOW) is False
    assert store.lookup(bad.path) is None
    assert all(store.lookup(r.path) == r for r in rest + by_disk[other])
    status = {s.id: s for s in store.disks()}[disk]
    assert (status.state, status.reason) == ("ok", "")
    assert bad.path not in DiskInventory.load(disk).records
    moved = [p for p in Path(DiskLayout(disk).quarantine).rglob("*") if p.is_file()]
    assert [p.name for p in moved] == [Path(bad.path).name]
    assert not os.path.exists(DiskLayout(disk).object_file(bad.path))
    (err,) = load_errors(DiskLayout(disk)).errors
    assert (err.path, err.at) == (bad.path, NOW) and "EIO" in err.detail
    # Every other process drops it too, and the disk stays ok everywhere.
    reader.refresh()
    assert reader.lookup(bad.path) is None and {s.state for s in reader.disks()} == {"ok"}
    view = watch.poll(NOW + 1)
    assert bad.path not in view.totals and {d.state for d in view.disks} == {"ok"}
    assert set(view.totals) == {r.path for r in rest + by_disk[other]}
    # The next probes keep it ok: nothing flaps.
    for t in range(2, 6):
        assert {s.state for s in store.check_disks(NOW + t)} == {"ok"}
        assert {d.state for d in watch.poll(NOW + 10 * t).disks} == {"ok"}
    # A second worker meeting the same bad object (before its refresh) does not count it
    # again, nor fail anything.
    assert reader.note_read_error(bad, EIO, NOW + 2) is False
    assert len(load_errors(DiskLayout(disk)).errors) == 1
    assert {s.state for s in reader.disks()} == {"ok"}
    reader.close()


def test_errors_beyond_the_limit_fail_the_disk_and_hold_it_failed(
    cfg: StorageConfig, store: Store, clock: Clock, tmp_path: Path
) -> None:
    by_disk = seed(store, tmp_path / "src")
    disk, other = cfg.tiers[0].paths
    watch = DiskWatch(cfg)
    watch.poll(NOW)
    victims = by_disk[disk][:5]
    results = [store.note_read_error(r, EIO, NOW + i) for i, r in enumerate(victims[:4])]
    assert results == [False, False, False, True]
    status = {s.id: s for s in store.disks()}[disk]
    assert status.state == "failed" and "more than storage.disk_error_limit = 3" in status.reason
    assert all(store.lookup(r.path) is None for r in by_disk[disk])
    assert all(store.lookup(r.path) == r for r in by_disk[other])
    # Three were quarantined; the fourth is on a failed disk, still in its index.
    assert {r.path for r in victims[:3]}.isdisjoint(DiskInventory.load(disk).records)
    assert victims[3].path in DiskInventory.load(disk).records
    hold = load_errors(DiskLayout(disk)).hold
    assert hold is not None and (hold.since, hold.until) == (NOW + 3, NOW + 33)
    # Its probe passes, but it stays failed in this process, in the heartbeat's view
    # (which probes every 5 s) and in a new process until the hold is over.
    for t in (5.0, 10.0, 20.0, 32.5):
        clock.now = NOW + t
        assert {s.id: s for s in store.check_disks(NOW + t)}[disk].state == "failed"
        (seen,) = [v for v in watch.poll(NOW + t).disks if v.path == disk]
        assert (seen.state, seen.reason) == ("failed", hold.reason)
    clock.now = NOW + 20
    with Store.open(cfg, clock=clock) as fresh:
        status = {s.id: s for s in fresh.disks()}[disk]
        assert status.state == "failed" and status.reason == hold.reason
        assert all(fresh.lookup(r.path) is None for r in by_disk[disk])
    assert set(watch.poll(NOW + 32.5).totals) == {r.path for r in by_disk[other]}
    # Once the hold is over it comes back with everything but the quarantined objects.
    clock.now = NOW + 33
    status = {s.id: s for s in store.check_disks(NOW + 33)}[disk]
    assert (status.state, status.reason) == ("ok", "")
    back = {r.path for r in by_disk[disk][3:]}
    assert {p for p in back if store.lookup(p) is not None} == back
    assert all(store.lookup(r.path) is None for r in victims[:3])
    # It counts afresh: one more bad object is quarantined, the disk stays ok.
    assert store.note_read_error(by_disk[disk][5], EIO, NOW + 34) is False
    assert {s.id: s for s in store.disks()}[disk].state == "ok"


def test_an_operator_clears_a_hold_by_removing_the_error_log(
    cfg: StorageConfig, clock: Clock, tmp_path: Path
) -> None:
    cfg = replace(cfg, disk_error_hold_seconds=0.0)
    with Store.open(cfg, clock=clock) as store:
        by_disk = seed(store, tmp_path / "src")
        disk = cfg.tiers[0].paths[0]
        for i, rec in enumerate(by_disk[disk][:4]):
            store.note_read_error(rec, EIO, NOW + i)
        for t in (100.0, 86400.0 * 30):
            status = {s.id: s for s in store.check_disks(NOW + t)}[disk]
            assert status.state == "failed" and "until an operator clears it" in status.reason
        os.unlink(errors_path(DiskLayout(disk)))
        status = {s.id: s for s in store.check_disks(NOW + 86400.0 * 31)}[disk]
        assert (status.state, status.reason) == ("ok", "")


def test_a_read_error_on_a_disk_that_fails_its_probe_fails_the_disk(
    cfg: StorageConfig, store: Store, tmp_path: Path
) -> None:
    by_disk = seed(store, tmp_path / "src")
    disk = cfg.tiers[0].paths[0]
    bad = by_disk[disk][0]
    os.rename(DiskLayout(disk).tmp, DiskLayout(disk).tmp + ".gone")  # the probe cannot pass
    assert store.note_read_error(bad, EIO, NOW) is True
    status = {s.id: s for s in store.disks()}[disk]
    assert status.state == "failed" and "missing" in status.reason
    assert bad.path in DiskInventory.load(disk).records, "nothing is quarantined"
    assert not os.path.exists(errors_path(DiskLayout(disk)))


@pytest.mark.parametrize(
    ("code", "fails"), [(errno.ENXIO, True), (errno.ENODEV, True), (errno.EMFILE, False)]
)
def test_errors_that_are_not_data_errors_are_judged_as_before(
    cfg: StorageConfig, store: Store, tmp_path: Path, code: int, fails: bool
) -> None:
    """A device gone fails the disk at once; running out of descriptors is neither the
    object's fault nor the disk's."""
    by_disk = seed(store, tmp_path / "src")
    disk = cfg.tiers[0].paths[0]
    rec = by_disk[disk][0]
    assert store.note_read_error(rec, OSError(code, os.strerror(code)), NOW) is fails
    assert ({s.id: s for s in store.disks()}[disk].state == "failed") is fails
    assert rec.path in DiskInventory.load(disk).records
    assert not os.path.exists(errors_path(DiskLayout(disk)))


def test_a_replaced_object_is_not_quarantined_for_its_old_copy(
    cfg: StorageConfig, store: Store, tmp_path: Path
) -> None:
    by_disk = seed(store, tmp_path / "src")
    old = by_disk[cfg.tiers[0].paths[0]][0]
    new = store.put_file(old.path, write_source(tmp_path / "src", "new", b"new bytes"))
    assert new.disk == old.disk and new.sha256 != old.sha256
    assert store.note_read_error(old, EIO, NOW) is False
    assert store.lookup(old.path) == new
    assert new.path in DiskInventory.load(new.disk).records
    assert load_errors(DiskLayout(old.disk)) == DiskErrors(), "not counted against the disk"


def test_probes_of_read_errors_and_of_the_disk_check_do_not_collide(
    cfg: StorageConfig, store: Store, tmp_path: Path
) -> None:
    """Read errors are judged in pool threads while the periodic check probes the same
    disk: each probe must use its own file, or one removes or rewrites another's and
    a healthy disk fails ("ENOENT", "read back different bytes")."""
    disk = cfg.tiers[0].paths[0]
    ghost = ObjectRecord("/not/held.m4s", 1, "0" * 64, NOW, "ssd", disk)  # probes, no more
    stop = threading.Event()

    def judge() -> None:
        while not stop.is_set():
            store.note_read_error(ghost, EIO, NOW)

    threads = [threading.Thread(target=judge) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(200):
            states = {s.id: (s.state, s.reason) for s in store.check_disks(NOW + i)}
            assert states[disk] == ("ok", ""), f"check {i}: {states[disk]}"
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not os.path.exists(errors_path(DiskLayout(disk)))
