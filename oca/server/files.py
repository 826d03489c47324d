"""Open descriptors and page-cache residency: how the loop avoids touching a disk.

Theory of operation. Objects are immutable once installed (a replacement is a new
file renamed over the old one), so an open descriptor stays valid for the bytes it
was opened on. The worker keeps a bounded cache of open descriptors (CLOCK
replacement plus an idle timeout, see :class:`OpenFileCache`): a hit costs a dict
lookup and no syscall; a miss opens and fstat()s the file in the I/O thread pool,
never on the event loop. Entries are shared by concurrent responses through a
reference count and closed only when evicted *and* released. The idle timeout
bounds how long a deleted file's space stays pinned.

``sendfile(2)`` blocks the calling thread while it reads pages that are not in the
page cache, which on an HDD is milliseconds per seek: one cold request would stall
every hot connection on the loop. Before handing a window of a file to sendfile the
loop probes residency of the window's first and last page with
``preadv2(..., RWF_NOWAIT)`` (Linux 4.14+), which fails with EAGAIN instead of
blocking when a page is absent. A cold window is read by a pool thread first (the
kernel's readahead makes that sequential), then sent from the warm page cache. The
probe is one or two one-byte syscalls per window (spans up to 256 KiB probe their first
page only), repeated after every wait for socket space, since pages can be evicted
while a slow client drains; pages evicted between a probe and the send that follows
it cost at most one blocking read.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from oca.http.semantics import Representation
from oca.storage.inventory import ObjectRecord

#: Largest span sent by one sendfile() call after one residency probe.
WINDOW_BYTES = 4 << 20

#: Spans at least this long get their last page probed too (readahead keeps short
#: spans resident or absent as a whole; long ones can be cut by eviction).
PROBE_BOTH_ENDS = 256 << 10

_HAS_NOWAIT = hasattr(os, "RWF_NOWAIT") and hasattr(os, "preadv")
_probe_buf = bytearray(1)
_thread_local = threading.local()


@dataclass(eq=False, slots=True)
class OpenFile:
    """An open descriptor on one installed object plus what was precomputed for it."""

    fd: int
    record: ObjectRecord
    headers: bytes  # static header block: Content-Type, ETag, Last-Modified, ...
    rep: Representation | None = None  # what RFC 9110 decisions need
    prefix_206: bytes = b""  # a 206 head up to Date (ContentHandler._prefix_206)
    refs: int = 0
    evicted: bool = False
    referenced: bool = False
    last_seen: float = 0.0

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
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


class OpenFileCache:
    """path -> OpenFile, valid while the store's record for path is the same object.

    Replacement is CLOCK (second chance, Corbató 1968), the usual approximation of
    LRU: a hit only sets the entry's reference bit, so the hot path costs one dict
    lookup and one attribute store (an LRU list would relink on every hit). When the
    cache is full the hand sweeps entries in insertion order, clearing reference bits
    and evicting the first entry without one. Idle entries are closed by
    :meth:`expire`, run by the worker's sweep every second: an entry not referenced
    for ``ttl`` seconds is evicted, which bounds how long a deleted file's space stays
    pinned.
    """

    def __init__(self, maxsize: int, ttl: float, timer: Callable[[], float]) -> None:
        self._entries: dict[str, OpenFile] = {}
        self._maxsize = maxsize
        self._ttl = ttl
        self._timer = timer

    def get(self, rec: ObjectRecord) -> OpenFile | None:
        entry = self._entries.get(rec.path)
        if entry is None:
            return None
        r = entry.record
        if r is not rec and (r.sha256 != rec.sha256 or r.disk != rec.disk or r.size != rec.size):
            self.discard(rec.path)
            return None
        entry.referenced = True
        return entry

    def put(self, entry: OpenFile) -> OpenFile:
        """Insert; if another request raced us to it, keep the existing one."""
        path = entry.record.path
        existing = self._entries.get(path)
        if existing is not None and existing.record == entry.record:
            entry.evict()
            existing.referenced = True
            return existing
        if existing is not None:
            self.discard(path)
        while len(self._entries) >= self._maxsize:
            self._evict_one()
        entry.referenced = True
        entry.last_seen = self._timer()
        self._entries[path] = entry
        return entry

    def _evict_one(self) -> None:
        entries = self._entries
        for _ in range(2):  # at most two passes: the second finds bits cleared
            for path, e in list(entries.items()):
                if e.referenced:
                    e.referenced = False
                    # Move behind the hand: re-insert at the end of the order.
                    del entries[path]
                    entries[path] = e
                else:
                    self.discard(path)
                    return

    def discard(self, path: str) -> None:
        entry = self._entries.pop(path, None)
        if entry is not None:
            entry.evict()

    def discard_disk(self, disk: str) -> int:
        doomed = [p for p, e in self._entries.items() if e.record.disk == disk]
        for p in doomed:
            self.discard(p)
        return len(doomed)

    def expire(self) -> int:
        """Evict entries not referenced for ``ttl`` seconds; returns how many."""
        now = self._timer()
        doomed = []
        for path, e in self._entries.items():
            if e.referenced:
                e.referenced = False
                e.last_seen = now
            elif now - e.last_seen >= self._ttl:
                doomed.append(path)
        for path in doomed:
            self.discard(path)
        return len(doomed)

    def clear(self) -> None:
        for p in list(self._entries):
            self.discard(p)

    def __len__(self) -> int:
        return len(self._entries)


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
        if end - start >= PROBE_BOTH_ENDS:
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

    The span is spliced to /dev/null with sendfile(2): the kernel reads the pages
    (with its readahead) and copies nothing to userspace, and the whole window is one
    syscall, so the thread takes the GIL once rather than once per buffer. Raises
    OSError (e.g. EIO) so the caller can fail the disk.
    """
    sink = getattr(_thread_local, "sink", None)
    if sink is None:
        sink = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        _thread_local.sink = sink
    pos, end = start, start + length
    while pos < end:
        n = os.sendfile(sink, fd, pos, end - pos)
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
