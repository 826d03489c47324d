"""Open descriptors and page-cache residency: how the loop avoids touching a disk.

Theory of operation. Objects are immutable once installed (a replacement is a new
file renamed over the old one), so an open descriptor stays valid for the bytes it
was opened on. The worker keeps a bounded LRU of open descriptors (cachetools
``TTLCache``): a hit costs a dict lookup and no syscall; a miss opens and fstat()s
the file in the I/O thread pool, never on the event loop. Entries are shared by
concurrent responses through a reference count and closed only when evicted *and*
released. The TTL bounds how long a deleted file's space stays pinned.

``sendfile(2)`` blocks the calling thread while it reads pages that are not in the
page cache, which on an HDD is milliseconds per seek: one cold request would stall
every hot connection on the loop. Before handing a window of a file to sendfile the
loop probes residency of the window's first and last page with
``preadv2(..., RWF_NOWAIT)`` (Linux 4.14+), which fails with EAGAIN instead of
blocking when a page is absent. A cold window is read by a pool thread first (the
kernel's readahead makes that sequential), then sent from the warm page cache. The
probe is two one-byte syscalls per window; pages evicted between the probes and the
send cost at most one blocking read of that window.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cachetools import TTLCache

from oca.storage.inventory import ObjectRecord

#: Largest span sent by one sendfile() call after one residency probe.
WINDOW_BYTES = 4 << 20

_HAS_NOWAIT = hasattr(os, "RWF_NOWAIT") and hasattr(os, "preadv")
_probe_buf = bytearray(1)
_thread_local = threading.local()


@dataclass(eq=False, slots=True)
class OpenFile:
    """An open descriptor on one installed object plus what was precomputed for it."""

    fd: int
    record: ObjectRecord
    headers: bytes  # static header block: Content-Type, ETag, Last-Modified, ...
    extra: dict[str, Any] = field(default_factory=dict)
    refs: int = 0
    evicted: bool = False

    def acquire(self) -> None:
        self.refs += 1

    def release(self) -> None:
        self.refs -= 1
        if self.refs <= 0 and self.evicted:
            self._close()

    def evict(self) -> None:
        self.evicted = True
        if self.refs <= 0:
            self._close()

    def _close(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1


class _Cache(TTLCache[str, OpenFile]):
    def popitem(self) -> tuple[str, OpenFile]:
        key, value = super().popitem()
        value.evict()
        return key, value

    def expire(self, time: Any = None) -> Any:
        expired = super().expire(time)
        for _k, v in expired:
            v.evict()
        return expired


class OpenFileCache:
    """path -> OpenFile, valid while the store's record for path is the same object."""

    def __init__(self, maxsize: int, ttl: float, timer: Callable[[], float]) -> None:
        self._cache = _Cache(maxsize=maxsize, ttl=ttl, timer=timer)

    def get(self, rec: ObjectRecord) -> OpenFile | None:
        entry = self._cache.get(rec.path)
        if entry is None:
            return None
        r = entry.record
        if r.sha256 != rec.sha256 or r.disk != rec.disk or r.size != rec.size:
            self.discard(rec.path)
            return None
        return entry

    def put(self, entry: OpenFile) -> OpenFile:
        """Insert; if another request raced us to it, keep the existing one."""
        existing = self._cache.get(entry.record.path)
        if existing is not None and existing.record == entry.record:
            entry.evict()
            return existing
        if existing is not None:
            self.discard(entry.record.path)
        self._cache[entry.record.path] = entry
        return entry

    def discard(self, path: str) -> None:
        entry = self._cache.pop(path, None)
        if entry is not None:
            entry.evict()

    def discard_disk(self, disk: str) -> int:
        doomed = [p for p, e in self._cache.items() if e.record.disk == disk]
        for p in doomed:
            self.discard(p)
        return len(doomed)

    def expire(self) -> None:
        self._cache.expire()

    def clear(self) -> None:
        for p in list(self._cache.keys()):
            self.discard(p)

    def __len__(self) -> int:
        return len(self._cache)


def open_object(path: str, rec: ObjectRecord) -> int:
    """Open the object's bytes and check them against the record (blocking: thread pool).

    Raises OSError on failure; a size that differs from the record (the object was
    replaced by another process and this worker's inventory is behind) raises ESTALE.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if st.st_size != rec.size:
            raise OSError(
                errno.ESTALE, f"size on disk {st.st_size} differs from inventory {rec.size}", path
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def is_resident(fd: int, start: int, end: int) -> bool:
    """True when the first and last page of [start, end] are in the page cache.

    Never blocks. Where RWF_NOWAIT is not available, everything counts as resident.
    """
    if not _HAS_NOWAIT:
        return True
    try:
        if os.preadv(fd, [_probe_buf], start, os.RWF_NOWAIT) == 0:
            return True  # at or past EOF: nothing to read
        if end - start >= 4096:
            os.preadv(fd, [_probe_buf], end, os.RWF_NOWAIT)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (95, 22):  # EOPNOTSUPP / EINVAL: filesystem lacks NOWAIT
            return True
        raise
    return True


def warm(fd: int, start: int, length: int) -> None:
    """Read [start, start+length) so that it lands in the page cache (thread pool).

    Raises OSError (e.g. EIO) so the caller can fail the disk.
    """
    buf = getattr(_thread_local, "buf", None)
    if buf is None:
        buf = bytearray(1 << 20)
        _thread_local.buf = buf
    try:
        os.posix_fadvise(fd, start, length, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    view = memoryview(buf)
    pos, end = start, start + length
    while pos < end:
        n = os.preadv(fd, [view[: min(len(buf), end - pos)]], pos)
        if n <= 0:
            break
        pos += n


def read_span(fd: int, start: int, length: int) -> bytes:
    """Blocking read of exactly the span (thread pool); short files raise EIO."""
    data = os.pread(fd, length, start)
    if len(data) != length:
        raise OSError(5, f"short read: wanted {length} bytes at {start}, got {len(data)}")
    return data


def read_span_nowait(fd: int, start: int, length: int) -> bytes | None:
    """The span if it is all in the page cache, else None; never blocks."""
    if not _HAS_NOWAIT:
        return None
    buf = bytearray(length)
    try:
        n = os.preadv(fd, [buf], start, os.RWF_NOWAIT)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno in (95, 22):
            return None
        raise
    if n != length:
        return None
    return bytes(buf)
