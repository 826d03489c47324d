from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from oca.errors import InventoryCorrupt
from oca.storage.inventory import (
    DiskInventory,
    DiskLayout,
    ObjectRecord,
    TmpArea,
    clean_tmp,
    describe_os_error,
    disk_failure_reason,
    open_inventory,
    read_sha256_xattr,
    recover_journal,
    validate_object_path,
    write_journal,
    write_sha256_xattr,
)

from . import sha256_of, xattrs_supported


@pytest.fixture
def disk(tmp_path: Path) -> DiskLayout:
    layout = DiskLayout(str(tmp_path / "disk0"))
    layout.create(root_too=True)
    return layout


def put_object(layout: DiskLayout, path: str, data: bytes) -> str:
    file = Path(layout.object_file(path))
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(data)
    return str(file)


def record(path: str, data: bytes, *, hits: int = 0) -> ObjectRecord:
    return ObjectRecord(path, len(data), sha256_of(data), 1700000000.5, "ssd", "d0", hits, 12.25)


def test_save_and_load_roundtrip(disk: DiskLayout) -> None:
    recs = {r.path: r for r in (record("/a/b.m4s", b"abc", hits=3), record("/c ü.mpd", b"x"))}
    saved = DiskInventory.of(disk.root, recs, disk="d0", tier="ssd").save()
    assert saved.generation == 1
    assert saved.used_bytes == 4
    loaded = DiskInventory.load(disk.root, disk="d0", tier="ssd")
    assert dict(loaded.records) == recs
    assert loaded.generation == 1
    assert loaded.signature == saved.signature
    assert loaded.save().generation == 2
    assert "inventory.json" in os.listdir(disk.meta)
    assert not [n for n in os.listdir(disk.meta) if n.endswith(".tmp")]


def test_load_of_a_missing_index_raises_file_not_found(disk: DiskLayout) -> None:
    with pytest.raises(FileNotFoundError):
        DiskInventory.load(disk.root)


def _valid_document() -> dict[str, object]:
    return {
        "schema": "oca.inventory",
        "version": 1,
        "generation": 4,
        "columns": ["path", "size", "sha256", "mtime", "hits", "last_access"],
        "objects": [["/a", 1, "0" * 64, 1.0, 0, 0.0]],
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "version"),
        ({"schema": "other"}, "schema"),
        ({"generation": -1}, "generation"),
        ({"columns": ["path"]}, "columns"),
        ({"objects": {"/a": 1}}, "objects"),
        ({"objects": [["/a", -1, "0" * 64, 1.0, 0, 0.0]]}, "objects[0]"),
        ({"objects": [["/a", 1, "XYZ", 1.0, 0, 0.0]]}, "objects[0]"),
        ({"objects": [["a", 1, "0" * 64, 1.0, 0, 0.0]]}, "objects[0]"),
        ({"objects": [["/a", 1, "0" * 64, 1.0, 0, 0.0]] * 2}, "twice"),
    ],
)
def test_load_validates(disk: DiskLayout, change: dict[str, object], message: str) -> None:
    doc = _valid_document() | change
    Path(disk.inventory).write_bytes(orjson.dumps(doc))
    with pytest.raises(InventoryCorrupt, match=message.replace("[", r"\[").replace("]", r"\]")):
        DiskInventory.load(disk.root)


def test_valid_document_loads(disk: DiskLayout) -> None:
    Path(disk.inventory).write_bytes(orjson.dumps(_valid_document()))
    assert DiskInventory.load(disk.root).generation == 4


def _damage(layout: DiskLayout, how: str) -> None:
    path = Path(layout.inventory)
    if how == "deleted":
        path.unlink()
    elif how == "garbage":
        path.write_bytes(os.urandom(300))
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif how == "wrong-version":
        doc = orjson.loads(path.read_bytes())
        doc["version"] = 99
        path.write_bytes(orjson.dumps(doc))


@pytest.mark.parametrize("how", ["deleted", "garbage", "truncated", "wrong-version"])
def test_damaged_index_is_rebuilt_from_the_files(disk: DiskLayout, how: str) -> None:
    contents = {
        "/t/v720/seg-1.m4s": b"one" * 100,
        "/t/v720/seg-2.m4s": b"",
        "/t/café.mpd": b"<MPD/>",
    }
    for path, data in contents.items():
        put_object(disk, path, data)
    DiskInventory.of(disk.root, {}, disk="d0", tier="ssd").save()
    _damage(disk, how)
    inv = open_inventory(disk.root, disk="d0", tier="ssd", now=1700000000.0)
    assert {p: (r.size, r.sha256) for p, r in inv.records.items()} == {
        p: (len(d), sha256_of(d)) for p, d in contents.items()
    }
    assert all(r.tier == "ssd" and r.disk == "d0" for r in inv.records.values())
    # The rebuilt index was saved, and a bad one was kept aside for inspection.
    assert DiskInventory.load(disk.root).records.keys() == contents.keys()
    aside = [n for n in os.listdir(disk.meta) if n.startswith("inventory.json.corrupt-")]
    assert len(aside) == (0 if how == "deleted" else 1)


def test_rebuild_trusts_a_valid_xattr_and_rehashes_a_modified_file(disk: DiskLayout) -> None:
    if not xattrs_supported(Path(disk.root)):
        pytest.skip("filesystem without user xattrs")
    file = put_object(disk, "/a.m4s", b"original bytes")
    st = os.stat(file)
    # A digest recorded for the current mtime is trusted without reading the file:
    # proven here by recording a digest that does not match the bytes.
    planted = "ab" * 32
    write_sha256_xattr(file, planted, st.st_mtime_ns)
    inv, stats = DiskInventory.rebuild(disk.root)
    assert inv.records["/a.m4s"].sha256 == planted
    assert (stats.trusted, stats.hashed) == (1, 0)
    # Once the file is modified (new mtime) the recorded digest no longer applies.
    Path(file).write_bytes(b"modified bytes!")
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    inv, stats = DiskInventory.rebuild(disk.root)
    assert inv.records["/a.m4s"].sha256 == sha256_of(b"modified bytes!")
    assert inv.records["/a.m4s"].size == len(b"modified bytes!")
    assert (stats.trusted, stats.hashed) == (0, 1)
    # ... and the rebuild recorded the fresh digest for next time.
    assert read_sha256_xattr(file, os.stat(file).st_mtime_ns) == sha256_of(b"modified bytes!")
    _, stats = DiskInventory.rebuild(disk.root)
    assert (stats.trusted, stats.hashed) == (1, 0)


def test_rebuild_skips_symlinks_and_keeps_access_statistics(disk: DiskLayout) -> None:
    put_object(disk, "/real.m4s", b"data")
    os.symlink("/etc/hostname", disk.object_file("/link.m4s"))
    previous = {"/real.m4s": record("/real.m4s", b"data", hits=7)}
    inv, stats = DiskInventory.rebuild(disk.root, previous=previous)
    assert list(inv.records) == ["/real.m4s"]
    assert inv.records["/real.m4s"].hits == 7
    assert stats.files == 1


def test_clean_tmp_removes_leftovers_but_not_a_live_writers_files(disk: DiskLayout) -> None:
    Path(disk.tmp, "crashed-1.part").write_bytes(b"half")
    Path(disk.tmp, "deadbeef.lock").write_bytes(b"")  # its owner is gone: nobody holds it
    Path(disk.tmp, "deadbeef-3.part").write_bytes(b"half")
    area = TmpArea(disk)
    fd, live = area.create()
    os.close(fd)
    assert clean_tmp(disk) == 3
    assert os.listdir(disk.tmp) != [] and os.path.exists(live)
    area.close()
    clean_tmp(disk)
    assert os.listdir(disk.tmp) == []


def test_journal_recovery_reconciles_interrupted_commits(disk: DiskLayout) -> None:
    put_object(disk, "/kept.m4s", b"old")
    put_object(disk, "/replaced.m4s", b"old")
    inv = DiskInventory.rebuild(disk.root)[0].save()
    # A writer journalled two paths, renamed a new /replaced.m4s and a new /added.m4s
    # into place, removed nothing, and stopped before saving the index.
    write_journal(disk, ["/replaced.m4s", "/added.m4s", "/never-renamed.m4s"])
    put_object(disk, "/replaced.m4s", b"new bytes")
    put_object(disk, "/added.m4s", b"added")
    fixed = recover_journal(inv)
    assert {p: r.size for p, r in fixed.records.items()} == {
        "/kept.m4s": 3,
        "/replaced.m4s": 9,
        "/added.m4s": 5,
    }
    assert fixed.records["/replaced.m4s"].sha256 == sha256_of(b"new bytes")
    assert os.path.getsize(disk.journal) == 0
    assert DiskInventory.load(disk.root).records.keys() == fixed.records.keys()
    assert recover_journal(fixed) is fixed  # nothing left to do


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("/titles/tos/v720/seg-00042.m4s", True),
        ("/café/ü.mpd", True),
        ("relative", False),
        ("/", False),
        ("/a//b", False),
        ("/a/../b", False),
        ("/a/./b", False),
        ("/dir/", False),
        ("/nul\x00", False),
        ("/bad-\udcff", False),
        ("/" + "x" * 256, False),
    ],
)
def test_object_paths(path: str, ok: bool) -> None:
    assert (validate_object_path(path) is None) == ok


def test_disk_failure_reasons(disk: DiskLayout) -> None:
    eio = OSError(5, "Input/output error", disk.object_file("/a"))
    assert "EIO" in (disk_failure_reason(eio, disk.root) or "")
    enoent = FileNotFoundError(2, "No such file or directory", disk.object_file("/a"))
    assert disk_failure_reason(enoent, disk.root) is None  # one object missing: not the disk
    gone = disk.root + "-gone"
    reason = disk_failure_reason(enoent, gone) or ""
    assert gone in reason and "ENOENT" in reason
    assert describe_os_error(eio).endswith("Input/output error (EIO)")
