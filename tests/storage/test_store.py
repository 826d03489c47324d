from __future__ import annotations

import errno
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from oca.config import StorageConfig
from oca.errors import CapacityExceeded, IntegrityError, StorageError
from oca.storage.inventory import DiskInventory, DiskLayout, read_sha256_xattr, write_journal
from oca.storage.placement import rank_disks
from oca.storage.store import PutRequest, Store

from . import make_config, sha256_of, write_source, xattrs_supported

NOW = 1_700_000_000.0


@pytest.fixture
def cfg(tmp_path: Path) -> StorageConfig:
    return make_config(tmp_path / "disks")


@pytest.fixture
def src(tmp_path: Path) -> Path:
    directory = tmp_path / "src"
    directory.mkdir()
    return directory


@pytest.fixture
def store(cfg: StorageConfig) -> Iterator[Store]:
    with Store.open(cfg) as s:
        yield s


def ssd(cfg: StorageConfig, i: int) -> str:
    return cfg.tiers[0].paths[i]


def path_ranked_first_on(disk: str, disks: tuple[str, ...], prefix: str = "/p") -> str:
    """An object path whose first placement choice among ``disks`` is ``disk``."""
    for i in range(1000):
        path = f"{prefix}/seg-{i}.m4s"
        if rank_disks(path, disks)[0] == disk:
            return path
    raise AssertionError("unreachable")


def part_files(cfg: StorageConfig) -> list[str]:
    found = []
    for tier in cfg.tiers:
        for root in tier.paths:
            tmp = DiskLayout(root).tmp
            found += [n for n in os.listdir(tmp) if not n.endswith(".lock")]
    return found


def test_open_creates_the_layout_and_reports_every_disk(cfg: StorageConfig, store: Store) -> None:
    statuses = store.disks()
    assert [(s.id, s.tier, s.state) for s in statuses] == [
        (ssd(cfg, 0), "ssd", "ok"),
        (ssd(cfg, 1), "ssd", "ok"),
        (cfg.tiers[1].paths[0], "hdd", "ok"),
    ]
    assert all(s.capacity_bytes > 0 and s.objects == 0 for s in statuses)
    for s in statuses:
        layout = DiskLayout(s.root)
        assert os.path.isdir(layout.objects) and os.path.isdir(layout.quarantine)
        assert DiskInventory.load(s.root).generation == 1
    assert store.ready and store.tiers == ["ssd", "hdd"]


def test_put_file_then_lookup(cfg: StorageConfig, store: Store, src: Path) -> None:
    data = b"\x00segment" * 1000
    source = write_source(src, "seg.m4s", data)
    os.utime(source, (NOW, NOW - 60))
    gen = store.generation
    rec = store.put_file("/titles/tos/v720/seg-00042.m4s", source)
    assert rec.size == len(data) and rec.sha256 == sha256_of(data)
    assert rec.tier == "ssd" and rec.mtime == NOW - 60  # Last-Modified comes from the source
    assert rec.disk == rank_disks(rec.path, cfg.tiers[0].paths)[0]
    assert store.lookup(rec.path) == rec
    assert store.generation > gen
    file = store.file_path(rec)
    assert file == os.path.join(rec.disk, "objects", "titles/tos/v720/seg-00042.m4s")
    assert Path(file).read_bytes() == data
    if xattrs_supported(src):
        assert read_sha256_xattr(file, os.stat(file).st_mtime_ns) == rec.sha256
    assert DiskInventory.load(rec.disk).records[rec.path].sha256 == rec.sha256
    assert part_files(cfg) == []


def test_objects_spread_over_the_tier_by_rendezvous_hashing(
    cfg: StorageConfig, store: Store, src: Path
) -> None:
    source = write_source(src, "x", b"x")
    recs = [store.put_file(f"/t/seg-{i}.m4s", source) for i in range(20)]
    for rec in recs:
        assert rec.disk == rank_disks(rec.path, cfg.tiers[0].paths)[0]
    assert {r.disk for r in recs} == set(cfg.tiers[0].paths)
    hdd = store.put_file("/cold.mp4", source, tier="hdd", mtime=NOW)
    assert (hdd.tier, hdd.disk, hdd.mtime) == ("hdd", cfg.tiers[1].paths[0], NOW)
    with pytest.raises(StorageError, match="unknown tier"):
        store.put_file("/x", source, tier="nvme")


def test_replacing_an_object_is_atomic_and_stays_on_its_disk(store: Store, src: Path) -> None:
    first = store.put_file("/a/b.m4s", write_source(src, "1", b"first"))
    store.touch("/a/b.m4s", NOW)
    second = store.put_file("/a/b.m4s", write_source(src, "2", b"second version"))
    assert second.disk == first.disk
    assert store.lookup("/a/b.m4s") == second
    assert Path(store.file_path(second)).read_bytes() == b"second version"
    assert second.hits == 1  # popularity belongs to the path
    assert len(list(store.records())) == 1


def test_moving_an_object_to_another_tier_removes_the_old_copy(store: Store, src: Path) -> None:
    old = store.put_file("/m.mp4", write_source(src, "m", b"movie"), tier="hdd")
    new = store.put_file("/m.mp4", write_source(src, "m", b"movie"), tier="ssd")
    assert store.lookup("/m.mp4") == new
    assert not os.path.exists(store.file_path(old))
    assert "/m.mp4" not in DiskInventory.load(old.disk).records


def test_sha256_mismatch_leaves_no_object_and_no_temp_file(
    cfg: StorageConfig, store: Store, src: Path
) -> None:
    data = b"payload"
    source = write_source(src, "p", data)
    with pytest.raises(IntegrityError, match="expected"):
        store.put_file("/p.m4s", source, sha256="0" * 64)
    assert store.lookup("/p.m4s") is None
    assert part_files(cfg) == []
    for root in cfg.tiers[0].paths:
        assert not os.path.exists(DiskLayout(root).object_file("/p.m4s"))
    rec = store.put_file("/p.m4s", source, sha256=sha256_of(data).upper())
    assert rec.sha256 == sha256_of(data)


@pytest.mark.parametrize("path", ["relative", "/a/../b", "/a//b", "/dir/"])
def test_invalid_object_paths_are_refused(store: Store, src: Path, path: str) -> None:
    with pytest.raises(StorageError, match="invalid object path"):
        store.put_file(path, write_source(src, "s", b"s"))


def test_a_missing_source_is_an_error_not_a_disk_failure(store: Store, src: Path) -> None:
    with pytest.raises(StorageError, match="cannot read"):
        store.put_file("/a", str(src / "nope"))
    assert all(s.state == "ok" for s in store.disks())


def test_capacity_is_split_across_the_disks_and_enforced(tmp_path: Path, src: Path) -> None:
    cfg = make_config(tmp_path / "disks", ssd_capacity=1000, hdd=0)
    with Store.open(cfg) as store:
        assert [s.capacity_bytes for s in store.disks()] == [500, 500]
        block = write_source(src, "b", b"b" * 400)
        a = store.put_file("/a", block)
        b = store.put_file("/b", block)
        assert a.disk != b.disk  # the first choice was full, the next one took it
        with pytest.raises(CapacityExceeded, match="tier ssd") as info:
            store.put_file("/c", block)
        assert "500 bytes" in str(info.value)
        assert store.lookup("/c") is None and part_files(cfg) == []
        # Replacing an object only needs room for the difference.
        assert store.put_file("/a", write_source(src, "bigger", b"a" * 480)).disk == a.disk
        assert sum(s.used_bytes for s in store.disks()) == 880


def test_leftover_temp_files_are_invisible_and_cleaned_at_open(
    cfg: StorageConfig, src: Path
) -> None:
    with Store.open(cfg) as store:
        store.put_file("/kept.m4s", write_source(src, "k", b"kept"))
    layout = DiskLayout(ssd(cfg, 0))
    Path(layout.tmp, "0123abcd-1.part").write_bytes(b"half a segm")
    Path(layout.tmp, "0123abcd.lock").write_bytes(b"")
    Path(layout.inventory).unlink()  # force a rebuild: temp files must not be adopted
    with Store.open(cfg) as store:
        assert os.listdir(layout.tmp) == []
        assert [r.path for r in store.records()] == ["/kept.m4s"]


def test_another_process_sees_new_objects_after_refresh(cfg: StorageConfig, src: Path) -> None:
    with Store.open(cfg) as writer, Store.open(cfg, create=False) as reader:
        assert reader.refresh() is False
        rec = writer.put_file("/new.m4s", write_source(src, "n", b"new"))
        assert reader.lookup("/new.m4s") is None
        gen = reader.generation
        assert reader.refresh() is True
        assert reader.lookup("/new.m4s") == rec
        assert reader.generation > gen
        assert reader.refresh() is False
        # The reader's writes merge with the writer's instead of overwriting them.
        other = reader.put_file("/other.m4s", write_source(src, "o", b"other"))
        assert writer.refresh() is True
        assert writer.lookup("/other.m4s") == other and writer.lookup("/new.m4s") == rec
        assert writer.remove("/new.m4s") is True
        reader.refresh()
        assert reader.lookup("/new.m4s") is None


def test_a_vanished_disk_is_failed_and_its_objects_leave_lookup(
    cfg: StorageConfig, store: Store, src: Path
) -> None:
    source = write_source(src, "s", b"segment")
    recs = [store.put_file(f"/t/seg-{i}.m4s", source) for i in range(12)]
    gone, kept = ssd(cfg, 0), ssd(cfg, 1)
    on_gone = [r for r in recs if r.disk == gone]
    on_kept = [r for r in recs if r.disk == kept]
    assert on_gone and on_kept
    shutil.rmtree(gone)
    gen = store.generation
    statuses = {s.id: s for s in store.check_disks(NOW)}
    failed = statuses[gone]
    assert failed.state == "failed" and failed.since == NOW
    assert gone in failed.reason and "ENOENT" in failed.reason
    assert statuses[kept].state == "ok"
    assert store.generation > gen
    assert all(store.lookup(r.path) is None for r in on_gone)
    assert all(store.lookup(r.path) == r for r in on_kept)
    # New objects go to the surviving disk of the tier.
    path = path_ranked_first_on(gone, cfg.tiers[0].paths)
    assert store.put_file(path, source).disk == kept
    # Still gone at the next check: still failed, since unchanged.
    assert {s.id: s for s in store.check_disks(NOW + 5)}[gone].since == NOW


def test_a_write_to_a_vanished_disk_fails_it_and_lands_elsewhere(
    cfg: StorageConfig, store: Store, src: Path
) -> None:
    gone = ssd(cfg, 0)
    shutil.rmtree(gone)
    path = path_ranked_first_on(gone, cfg.tiers[0].paths)
    rec = store.put_file(path, write_source(src, "s", b"segment"))
    assert rec.disk == ssd(cfg, 1)
    status = {s.id: s for s in store.disks()}[gone]
    assert status.state == "failed" and gone in status.reason


def test_a_disk_comes_back_when_its_directory_returns(
    cfg: StorageConfig, store: Store, src: Path
) -> None:
    source = write_source(src, "s", b"segment")
    recs = [store.put_file(f"/t/seg-{i}.m4s", source) for i in range(12)]
    disk = ssd(cfg, 0)
    on_disk = [r for r in recs if r.disk == disk]
    os.rename(disk, disk + ".unmounted")
    assert store.mark_failed(disk, "unmounted by the operator", NOW) is True
    assert store.mark_failed(disk, "unmounted by the operator", NOW) is False
    assert all(store.lookup(r.path) is None for r in on_disk)
    os.rename(disk + ".unmounted", disk)
    statuses = {s.id: s for s in store.check_disks(NOW + 10)}
    assert statuses[disk].state == "ok" and statuses[disk].reason == ""
    assert statuses[disk].since == NOW + 10
    assert all(store.lookup(r.path) == r for r in recs)


def test_a_replaced_empty_disk_comes_back_empty(
    cfg: StorageConfig, store: Store, src: Path
) -> None:
    source = write_source(src, "s", b"segment")
    for i in range(8):
        store.put_file(f"/t/seg-{i}.m4s", source)
    disk = ssd(cfg, 0)
    shutil.rmtree(disk)
    store.check_disks(NOW)
    os.mkdir(disk)  # a new, empty drive mounted in its place
    status = {s.id: s for s in store.check_disks(NOW + 1)}[disk]
    assert (status.state, status.objects) == ("ok", 0)
    assert all(r.disk != disk for r in store.records())


def test_copies_written_elsewhere_while_a_disk_was_away_win(
    cfg: StorageConfig, store: Store, src: Path
) -> None:
    disk = ssd(cfg, 0)
    path = path_ranked_first_on(disk, cfg.tiers[0].paths)
    store.put_file(path, write_source(src, "old", b"old"))
    os.rename(disk, disk + ".away")
    store.check_disks(NOW)
    new = store.put_file(path, write_source(src, "new", b"new version"))
    assert new.disk == ssd(cfg, 1)
    os.rename(disk + ".away", disk)
    store.check_disks(NOW + 1)
    assert store.lookup(path) == new
    assert path not in DiskInventory.load(disk).records


def test_open_with_an_unusable_disk_starts_it_failed(tmp_path: Path, src: Path) -> None:
    cfg = make_config(tmp_path / "disks", hdd=0)
    os.makedirs(tmp_path / "disks")
    Path(ssd(cfg, 0)).write_bytes(b"not a directory")
    with Store.open(cfg) as store:
        statuses = store.disks()
        assert statuses[0].state == "failed" and ssd(cfg, 0) in statuses[0].reason
        assert statuses[1].state == "ok" and store.ready
        assert store.put_file("/a", write_source(src, "a", b"a")).disk == ssd(cfg, 1)


def test_open_with_no_usable_disk_still_returns(tmp_path: Path, src: Path) -> None:
    cfg = make_config(tmp_path / "missing", hdd=0)
    with Store.open(cfg, create=False) as store:
        assert not store.ready
        assert all(s.state == "failed" and s.reason for s in store.disks())
        assert store.lookup("/a") is None
        with pytest.raises(StorageError, match="no healthy disk"):
            store.put_file("/a", write_source(src, "a", b"a"))


def test_verify_quarantines_a_flipped_byte(cfg: StorageConfig, store: Store, src: Path) -> None:
    good = store.put_file("/good.m4s", write_source(src, "g", b"good bytes"))
    bad = store.put_file("/titles/bad.m4s", write_source(src, "b", b"bad bytes"))
    file = store.file_path(bad)
    with open(file, "r+b") as f:
        f.seek(3)
        f.write(b"\xff")
    report = store.verify(quarantine=False)
    assert (report.objects, report.ok) == (2, False)
    assert [(p.path, p.kind) for p in report.bad] == [("/titles/bad.m4s", "sha256")]
    assert store.lookup(bad.path) == bad  # only reported
    report = store.verify(quarantine=True)
    assert report.quarantined == 1 and "quarantined to" in report.bad[0].action
    assert store.lookup(bad.path) is None and store.lookup(good.path) == good
    assert not os.path.exists(file)
    moved = [p for p in Path(DiskLayout(bad.disk).quarantine).rglob("*") if p.is_file()]
    assert len(moved) == 1 and moved[0].name == "bad.m4s"
    assert bad.path not in DiskInventory.load(bad.disk).records
    assert store.verify(quarantine=True).ok


def test_verify_reports_missing_and_truncated_files_and_orphans(store: Store, src: Path) -> None:
    gone = store.put_file("/gone.m4s", write_source(src, "g", b"gone"))
    short = store.put_file("/short.m4s", write_source(src, "s", b"shortened"))
    os.unlink(store.file_path(gone))
    os.truncate(store.file_path(short), 3)
    Path(DiskLayout(short.disk).object_file("/stray.bin")).write_bytes(b"stray")
    report = store.verify(quarantine=True)
    kinds = {p.path: p.kind for p in report.problems}
    assert kinds == {"/gone.m4s": "missing", "/short.m4s": "size", "/stray.bin": "orphan"}
    assert store.lookup("/gone.m4s") is None and store.lookup("/short.m4s") is None
    assert [p.kind for p in store.verify(quarantine=True).problems] == ["orphan"]


def test_put_many_saves_each_index_once(cfg: StorageConfig, store: Store, src: Path) -> None:
    source = write_source(src, "s", b"s")
    items = [PutRequest(f"/batch/{i}.m4s", source) for i in range(50)]
    items.append(PutRequest("bad path", source))
    outcomes = store.put_many(items)
    assert [o.path for o in outcomes] == [i.path for i in items]
    assert all(o.record is not None for o in outcomes[:50])
    assert outcomes[50].record is None and isinstance(outcomes[50].error, StorageError)
    for root in cfg.tiers[0].paths:  # generation 1 from open, 2 from the one batch save
        assert DiskInventory.load(root).generation == 2
    assert len(list(store.records())) == 50


def test_remove(store: Store, src: Path) -> None:
    rec = store.put_file("/deep/dir/x.m4s", write_source(src, "x", b"x"))
    assert store.remove("/deep/dir/x.m4s") is True
    assert store.lookup(rec.path) is None
    assert not os.path.exists(os.path.join(rec.disk, "objects", "deep"))  # emptied dirs pruned
    assert store.remove("/deep/dir/x.m4s") is False


def test_access_statistics_are_counted_in_memory_and_flushed(
    cfg: StorageConfig, store: Store, src: Path
) -> None:
    rec = store.put_file("/hot.m4s", write_source(src, "h", b"hot"))
    store.touch("/hot.m4s", NOW)
    store.touch("/hot.m4s", NOW + 1)
    store.touch("/unknown", NOW)
    assert store.lookup("/hot.m4s") == rec  # touching never rewrites the table ...
    (counted,) = store.records()
    assert (counted.hits, counted.last_access) == (2, NOW + 1)
    assert DiskInventory.load(rec.disk).records["/hot.m4s"].hits == 0  # ... nor the disk
    assert store.flush_stats() == 1
    assert DiskInventory.load(rec.disk).records["/hot.m4s"].hits == 2
    with Store.open(cfg) as other:
        other.touch("/hot.m4s", NOW + 2)
        other.flush_stats()
    store.refresh()
    assert store.lookup("/hot.m4s") is not None
    assert store.lookup("/hot.m4s").hits == 3  # type: ignore[union-attr]


def test_an_interrupted_commit_is_reconciled_at_open(cfg: StorageConfig, src: Path) -> None:
    with Store.open(cfg) as store:
        rec = store.put_file("/a.m4s", write_source(src, "a", b"old"))
    # A writer journalled /a.m4s, renamed new bytes over it and died before saving.
    layout = DiskLayout(rec.disk)
    write_journal(layout, ["/a.m4s"])
    Path(layout.object_file("/a.m4s")).write_bytes(b"new and longer")
    with Store.open(cfg) as store:
        now = store.lookup("/a.m4s")
        assert now is not None and now.size == 14 and now.sha256 == sha256_of(b"new and longer")


def test_concurrent_writers_in_threads_and_in_two_instances_lose_nothing(
    cfg: StorageConfig, src: Path
) -> None:
    source = write_source(src, "s", b"segment")
    with Store.open(cfg) as one, Store.open(cfg) as two:

        def fill(store: Store, prefix: str) -> None:
            for i in range(15):
                store.put_file(f"/{prefix}/seg-{i}.m4s", source)

        workers = [
            threading.Thread(target=fill, args=(store, f"{name}{t}"))
            for store, name in ((one, "one"), (two, "two"))
            for t in range(3)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        one.refresh()
        two.refresh()
        expected = {
            f"/{n}{t}/seg-{i}.m4s" for n in ("one", "two") for t in range(3) for i in range(15)
        }
        assert {r.path for r in one.records()} == expected
        assert {r.path for r in two.records()} == expected
        on_disk = set()
        for root in cfg.tiers[0].paths:
            on_disk |= set(DiskInventory.load(root).records)
        assert on_disk == expected
        assert part_files(cfg) == []


def test_an_eio_while_writing_fails_the_disk_and_the_write_moves_on(
    cfg: StorageConfig, store: Store, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync
    failures: list[int] = []

    def fsync_failing_once(fd: int) -> None:
        if not failures:
            failures.append(fd)
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_failing_once)
    path = path_ranked_first_on(ssd(cfg, 0), cfg.tiers[0].paths)
    rec = store.put_file(path, write_source(src, "s", b"segment"))
    assert failures and rec.disk == ssd(cfg, 1)
    status = {s.id: s for s in store.disks()}[ssd(cfg, 0)]
    assert status.state == "failed" and "EIO" in status.reason


def test_adopt_file_renames_a_verified_file_on_the_disk(cfg: StorageConfig, store: Store) -> None:
    data = os.urandom(50_000)
    path = "/titles/tos/v720/seg-00007.m4s"
    disk = rank_disks(path, cfg.tiers[0].paths)[0]
    part = Path(disk) / ".oca" / "fill" / "x.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(data)
    ino = os.stat(part).st_ino
    rec = store.adopt_file(path, str(part), sha256=sha256_of(data), tier="ssd")
    assert rec.disk == disk and rec.sha256 == sha256_of(data) and rec.size == len(data)
    file = store.file_path(rec)
    assert Path(file).read_bytes() == data
    assert os.stat(file).st_ino == ino  # renamed, not copied
    assert not part.exists() and part_files(cfg) == []
    assert DiskInventory.load(disk).records[path].sha256 == rec.sha256
    if xattrs_supported(Path(disk)):
        assert read_sha256_xattr(file, os.stat(file).st_mtime_ns) == rec.sha256


def test_adopt_file_copies_and_verifies_from_elsewhere(store: Store, src: Path) -> None:
    data = os.urandom(10_000)
    source = write_source(src, "seg.m4s", data)
    rec = store.adopt_file("/a/b.m4s", source, sha256=sha256_of(data))
    assert Path(store.file_path(rec)).read_bytes() == data
    assert Path(source).exists()  # a copy: the source stays
    with pytest.raises(IntegrityError):
        store.adopt_file("/a/c.m4s", source, sha256="0" * 64)
    assert store.lookup("/a/c.m4s") is None


def test_commit_never_recreates_the_objects_directory_of_a_vanished_disk(tmp_path: Path) -> None:
    """The directory a lost mount leaves behind gets no ``objects`` tree: placing an
    object there fails with ENOENT (which fails the disk), and creates nothing."""
    from oca.storage.store import _ensure_dir

    root = tmp_path / "ssd0"
    root.mkdir()  # the bare mount point: the filesystem with objects/ and .oca/ is gone
    top = str(root / "objects")
    dirs: set[str] = set()
    with pytest.raises(FileNotFoundError):
        _ensure_dir(str(root / "objects" / "titles" / "a" / "v1"), dirs, top)
    assert os.listdir(root) == [] and dirs == set()
    # On a disk that is there, the missing parents below objects/ are made and noted.
    (root / "objects").mkdir()
    _ensure_dir(str(root / "objects" / "titles" / "a"), dirs, top)
    assert (root / "objects" / "titles" / "a").is_dir()
    assert dirs == {top, str(root / "objects" / "titles")}
