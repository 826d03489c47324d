"""Open-descriptor cache (CLOCK + idle timeout) and page-cache residency probes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from oca.server.files import OpenFile, OpenFileCache, is_resident, open_object, warm
from oca.storage.inventory import ObjectRecord


def _rec(path: str, size: int = 10, sha: str = "a" * 64, disk: str = "/d0") -> ObjectRecord:
    return ObjectRecord(path, size, sha, 0.0, "ssd", disk)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _entry(tmp_path: Path, name: str, rec: ObjectRecord | None = None) -> OpenFile:
    p = tmp_path / name
    p.write_bytes(b"x" * 10)
    fd = os.open(p, os.O_RDONLY)
    return OpenFile(fd, rec or _rec("/" + name), b"")


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_hit_requires_the_same_record(tmp_path: Path) -> None:
    cache = OpenFileCache(4, 60, Clock())
    e = cache.put(_entry(tmp_path, "a"))
    assert cache.get(_rec("/a")) is e
    # The object was replaced (new sha): the stale descriptor is dropped and closed.
    assert cache.get(_rec("/a", sha="b" * 64)) is None
    assert not _is_open(e.fd) and e.fd == -1
    assert len(cache) == 0


def test_full_cache_evicts_an_unreferenced_entry_first(tmp_path: Path) -> None:
    cache = OpenFileCache(3, 60, Clock())
    entries = [cache.put(_entry(tmp_path, n)) for n in "abc"]
    # A sweep of the hand clears every reference bit; then only "a" is used again.
    cache.expire()
    assert cache.get(_rec("/a")) is entries[0]
    cache.put(_entry(tmp_path, "d"))
    assert cache.get(_rec("/a")) is entries[0]
    assert cache.get(_rec("/b")) is None  # the first unreferenced entry went
    assert cache.get(_rec("/c")) is entries[2]
    assert len(cache) == 3


def test_idle_entries_expire_after_ttl(tmp_path: Path) -> None:
    clock = Clock()
    cache = OpenFileCache(8, 10, clock)
    a = cache.put(_entry(tmp_path, "a"))
    b = cache.put(_entry(tmp_path, "b"))
    for t in range(1, 25):
        clock.now = float(t)
        cache.get(_rec("/a"))  # kept busy
        cache.expire()
    assert cache.get(_rec("/a")) is a
    assert cache.get(_rec("/b")) is None
    assert not _is_open(b.fd)


def test_evicted_descriptor_closes_only_after_release(tmp_path: Path) -> None:
    cache = OpenFileCache(8, 10, Clock())
    e = cache.put(_entry(tmp_path, "a"))
    fd = e.fd
    e.acquire()  # a response is sending from it
    cache.discard("/a")
    assert _is_open(fd)
    e.release()
    assert not _is_open(fd)


def test_discard_disk_drops_only_that_disk(tmp_path: Path) -> None:
    cache = OpenFileCache(8, 10, Clock())
    cache.put(_entry(tmp_path, "a", _rec("/a", disk="/d0")))
    keep = cache.put(_entry(tmp_path, "b", _rec("/b", disk="/d1")))
    assert cache.discard_disk("/d0") == 1
    assert cache.get(_rec("/b", disk="/d1")) is keep


def test_racing_put_keeps_the_first_entry(tmp_path: Path) -> None:
    cache = OpenFileCache(8, 10, Clock())
    first = cache.put(_entry(tmp_path, "a"))
    second = _entry(tmp_path, "a")
    assert cache.put(second) is first
    assert second.fd == -1  # the loser's descriptor was closed


def test_open_object_refuses_a_size_mismatch(tmp_path: Path) -> None:
    p = tmp_path / "obj"
    p.write_bytes(b"12345")
    try:
        open_object(str(p), _rec("/obj", size=6))
    except OSError as exc:
        assert exc.errno == 116  # ESTALE: the inventory is behind the disk
    else:
        raise AssertionError("size mismatch not detected")


def test_residency_probe_and_warm(tmp_path: Path) -> None:
    p = tmp_path / "big"
    p.write_bytes(os.urandom(4 << 20))
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if is_resident(fd, 0, (4 << 20) - 1):
            pytest.skip("this filesystem keeps pages resident (tmpfs?): nothing to observe")
        warm(fd, 0, 1 << 20)
        assert is_resident(fd, 0, (1 << 20) - 1)
    finally:
        os.close(fd)
