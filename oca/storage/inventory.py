"""One disk of the object store: its layout, its inventory index and its write mechanics.

Theory of operation
-------------------
Every disk is self-describing, so a box can lose its system disk, or have a data disk
moved to another slot, and still know what each disk holds. Under a disk root ``R``::

    R/objects/<path>        the bytes of the object /<path>, exactly as served
    R/.oca/inventory.json   this disk's index (a cache of what R/objects holds)
    R/.oca/journal.json     the paths a writer is committing or removing (empty when idle)
    R/.oca/lock             flock(2) taken by writers around index read-modify-write
    R/.oca/tmp/             files being written; never visible as objects
    R/.oca/quarantine/      objects that failed verification or reading, kept for inspection
    R/.oca/disk-errors.json objects that failed to read lately; the error limit's hold

Crash safety follows the usual write-temp / fsync / rename / fsync-directory sequence:
bytes go to ``.oca/tmp``, are hashed while copied, fsynced and renamed into
``objects/`` (rename(2) is atomic within a filesystem), then the index is rewritten the
same way. Between the renames and the index save a crash would leave the index
describing bytes it no longer matches, so before renaming a writer fsyncs the list of
paths it is about to commit into ``journal.json``; the next process to take the disk
lock finds a non-empty journal and re-derives those records from the files. A removal
runs the other way (save the index without the objects, then unlink their files) under
a journal naming them too, so a crash in between is finished by the next process to take
the lock, which unlinks them: no file is left under ``objects/`` that no index lists. The
index therefore always describes the bytes it points at, which is what lets the server
trust ``size`` without a stat per request.

The index is only a cache of the disk. When it is missing, fails to parse or fails
validation (schema, version, types, duplicates) it is renamed aside to
``inventory.json.corrupt-<UTC timestamp>`` and rebuilt by scanning ``objects/``. Hashing
a multi-terabyte disk takes hours, so each object file carries the extended attribute
``user.oca.sha256 = "<hex>:<st_mtime_ns>"``, written when the file is created; a rebuild
trusts it only while the file's mtime_ns still matches (the stat-data trick of git's
index), and re-hashes otherwise. Filesystems without user xattrs (ENOTSUP) just re-hash.

Processes share disks: ``oca serve`` workers read, ``oca store import`` and the fill
agent write. Writers serialise on the flock of ``.oca/lock`` and always re-read the
index under it before changing it. Readers never lock: the index is replaced
atomically, so a reader sees the old file or the new one, and notices a change by its
(st_ino, st_mtime_ns, st_size). Each save bumps ``generation``.

Temp files are named ``<token>-<n>.part``; the writing process holds ``<token>.lock``
flocked for as long as it lives. A cleaner removes the files of every token whose lock
it can take (its owner is gone) and anything else it does not recognise, so a crash
never leaks space and a live writer's temp files are never pulled from under it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import Any, Final

import orjson

from oca.errors import InventoryCorrupt, StorageError

log = logging.getLogger("oca.storage")

INVENTORY_SCHEMA: Final = "oca.inventory"
INVENTORY_VERSION: Final = 1
COLUMNS: Final = ("path", "size", "sha256", "mtime", "hits", "last_access")
XATTR_SHA256: Final = "user.oca.sha256"
COPY_CHUNK_BYTES: Final = 1 << 20
STALE_PROBE_SECONDS: Final = 3600.0

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_XATTR_UNSUPPORTED = frozenset(
    {errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA, errno.EPERM, errno.EACCES, errno.E2BIG}
)
# Errors that mean the disk itself is broken, not one file or one request.
_DISK_FATAL = frozenset(
    getattr(errno, name)
    for name in ("EIO", "EROFS", "ENODEV", "ENXIO", "ENOTCONN", "ESTALE", "EUCLEAN", "ENOMEDIUM")
    if hasattr(errno, name)
)


@dataclass(frozen=True, slots=True)
class ObjectRecord:
    """One object held by one disk."""

    path: str  # URL path, starts with "/"
    size: int
    sha256: str  # lower-case hex
    mtime: float  # seconds since the epoch (Last-Modified)
    tier: str
    disk: str  # disk id = the disk root as configured
    hits: int = 0
    last_access: float = 0.0


@dataclass(frozen=True, slots=True)
class FileSignature:
    """What tells a reader that a file was replaced or rewritten."""

    ino: int
    mtime_ns: int
    size: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileSignature:
        return cls(st.st_ino, st.st_mtime_ns, st.st_size)


@dataclass(frozen=True, slots=True)
class RebuildStats:
    files: int = 0
    bytes: int = 0
    hashed: int = 0  # digests computed by reading the file
    trusted: int = 0  # digests taken from a valid xattr
    skipped: int = 0  # symlinks, special files, undecodable names


@dataclass(frozen=True, slots=True)
class DiskLayout:
    """Where things live under one disk root."""

    root: str

    @property
    def objects(self) -> str:
        return os.path.join(self.root, "objects")

    @property
    def meta(self) -> str:
        return os.path.join(self.root, ".oca")

    @property
    def tmp(self) -> str:
        return os.path.join(self.root, ".oca", "tmp")

    @property
    def quarantine(self) -> str:
        return os.path.join(self.root, ".oca", "quarantine")

    @property
    def lock(self) -> str:
        return os.path.join(self.root, ".oca", "lock")

    @property
    def inventory(self) -> str:
        return os.path.join(self.root, ".oca", "inventory.json")

    @property
    def journal(self) -> str:
        return os.path.join(self.root, ".oca", "journal.json")

    def object_file(self, path: str) -> str:
        return self.objects + path

    def create(self, *, root_too: bool) -> None:
        """Create the directories; the root itself only when ``root_too``."""
        if root_too:
            with suppress(FileExistsError):  # then the stat below says what is wrong
                os.makedirs(self.root, exist_ok=True)
        if not stat.S_ISDIR(os.stat(self.root).st_mode):  # its own error (EIO, ENOENT...)
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), self.root)
        for d in (self.objects, self.meta, self.tmp, self.quarantine):
            os.makedirs(d, exist_ok=True)


# --------------------------------------------------------------------------- helpers


def validate_object_path(path: str) -> str | None:
    """Why ``path`` cannot name an object, or None when it can."""
    if not path.startswith("/") or len(path) < 2:
        return "must start with '/' and name a file"
    if "\x00" in path:
        return "contains a NUL character"
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    for part in path[1:].split("/"):
        if part in ("", ".", ".."):
            return "has an empty, '.' or '..' component"
        if len(part.encode("utf-8")) > 255:
            return "has a component longer than 255 bytes"
    return None


def describe_os_error(exc: OSError) -> str:
    """``<file>: <strerror> (<ENAME>)``: what reasons and messages say about an OSError."""
    code = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno else "?"
    text = f"{exc.strerror or exc} ({code})"
    return f"{exc.filename}: {text}" if exc.filename else text


def disk_failure_reason(exc: OSError, root: str) -> str | None:
    """The reason to fail the disk at ``root`` for ``exc``, or None if only one file is bad."""
    if exc.errno in _DISK_FATAL:
        return describe_os_error(exc)
    if exc.errno in (errno.ENOENT, errno.ENOTDIR) and not os.path.isdir(os.path.join(root, ".oca")):
        return f"disk root {root} is gone or no longer an oca disk ({describe_os_error(exc)})"
    return None


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def hash_file(path: str) -> tuple[str, int]:
    """(sha256 hex, size) of the bytes of ``path``."""
    h = hashlib.sha256()
    buf = bytearray(COPY_CHUNK_BYTES)
    view = memoryview(buf)
    n = 0
    with open(path, "rb", buffering=0) as f:
        while k := f.readinto(buf):
            h.update(view[:k])
            n += k
    return h.hexdigest(), n


def read_sha256_xattr(target: str | int, mtime_ns: int) -> str | None:
    """The digest recorded on the file, if it was recorded for this exact mtime_ns."""
    try:
        raw = os.getxattr(target, XATTR_SHA256)
    except OSError as exc:
        if exc.errno in _XATTR_UNSUPPORTED:
            return None
        raise
    digest, _, ns = raw.decode("ascii", "replace").partition(":")
    if _SHA256_RE.fullmatch(digest) and ns.isdigit() and int(ns) == mtime_ns:
        return digest
    return None


def write_sha256_xattr(target: str | int, sha256: str, mtime_ns: int) -> bool:
    """Record the digest on the file; False when the filesystem does not allow it."""
    try:
        os.setxattr(target, XATTR_SHA256, f"{sha256}:{mtime_ns}".encode("ascii"))
    except OSError as exc:
        if exc.errno in _XATTR_UNSUPPORTED or exc.errno == errno.ENOSPC:
            return False
        raise
    return True


def file_signature(path: str) -> FileSignature | None:
    try:
        return FileSignature.of(os.stat(path))
    except FileNotFoundError:
        return None


@contextmanager
def disk_lock(layout: DiskLayout) -> Iterator[None]:
    """Hold the disk's writer lock (flock on ``.oca/lock``, shared by all processes)."""
    fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the flock


def scan_objects(layout: DiskLayout) -> Iterator[tuple[str, str, os.stat_result]]:
    """(object path, file path, lstat) of every regular file under ``objects/``."""
    stack = [(layout.objects, "")]
    while stack:
        directory, prefix = stack.pop()
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            path = f"{prefix}/{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, path))
            elif entry.is_file(follow_symlinks=False):
                why = validate_object_path(path)
                if why is not None:
                    log.warning("skipping %r on %s: object path %s", path, layout.root, why)
                    continue
                yield path, entry.path, entry.stat(follow_symlinks=False)
            else:
                log.warning("skipping %s: not a regular file", entry.path)


def record_from_file(
    path: str,
    file: str,
    st: os.stat_result,
    *,
    tier: str,
    disk: str,
    previous: ObjectRecord | None = None,
) -> tuple[ObjectRecord, bool]:
    """The record for the bytes of ``file`` and whether they had to be hashed."""
    digest = read_sha256_xattr(file, st.st_mtime_ns)
    hashed = digest is None
    size = st.st_size
    if digest is None:
        digest, size = hash_file(file)
        after = os.stat(file, follow_symlinks=False)
        if after.st_mtime_ns == st.st_mtime_ns and after.st_size == size:
            write_sha256_xattr(file, digest, st.st_mtime_ns)
    rec = ObjectRecord(
        path=path,
        size=size,
        sha256=digest,
        mtime=st.st_mtime_ns / 1e9,
        tier=tier,
        disk=disk,
        hits=previous.hits if previous else 0,
        last_access=previous.last_access if previous else 0.0,
    )
    return rec, hashed


# --------------------------------------------------------------------------- the index


def _decode(data: bytes, root: str, disk: str, tier: str) -> tuple[dict[str, ObjectRecord], int]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InventoryCorrupt(f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InventoryCorrupt("top level is not an object")
    if doc.get("schema") != INVENTORY_SCHEMA:
        raise InventoryCorrupt(f"schema is {doc.get('schema')!r}, expected {INVENTORY_SCHEMA!r}")
    if doc.get("version") != INVENTORY_VERSION:
        raise InventoryCorrupt(f"version {doc.get('version')!r} is not supported (want 1)")
    generation = doc.get("generation")
    if type(generation) is not int or generation < 0:
        raise InventoryCorrupt("generation is not a non-negative integer")
    if doc.get("columns") != list(COLUMNS):
        raise InventoryCorrupt(f"columns are {doc.get('columns')!r}, expected {list(COLUMNS)!r}")
    rows = doc.get("objects")
    if not isinstance(rows, list):
        raise InventoryCorrupt("objects is not a list")
    records: dict[str, ObjectRecord] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(COLUMNS):
            raise InventoryCorrupt(f"objects[{i}] is not a row of {len(COLUMNS)} values")
        path, size, digest, mtime, hits, last_access = row
        if not (
            type(path) is str
            and path.startswith("/")
            and type(size) is int
            and size >= 0
            and type(digest) is str
            and _SHA256_RE.fullmatch(digest)
            and type(mtime) in (int, float)
            and type(hits) is int
            and hits >= 0
            and type(last_access) in (int, float)
        ):
            raise InventoryCorrupt(f"objects[{i}] has a value of the wrong type or range")
        if path in records:
            raise InventoryCorrupt(f"objects[{i}]: {path} is listed twice")
        records[path] = ObjectRecord(
            path, size, digest, float(mtime), tier, disk, hits, float(last_access)
        )
    return records, generation


@dataclass(frozen=True, slots=True, eq=False)
class DiskInventory:
    """An immutable snapshot of one disk's index; changes return a new snapshot."""

    root: str
    disk: str
    tier: str
    records: Mapping[str, ObjectRecord] = field(default_factory=dict)
    generation: int = 0
    used_bytes: int = 0
    signature: FileSignature | None = None  # of the file this was loaded from or saved to

    @classmethod
    def of(
        cls,
        root: str,
        records: Mapping[str, ObjectRecord],
        *,
        disk: str | None = None,
        tier: str = "",
        generation: int = 0,
        signature: FileSignature | None = None,
    ) -> DiskInventory:
        used = sum(r.size for r in records.values())
        return cls(root, disk or root, tier, records, generation, used, signature)

    @property
    def layout(self) -> DiskLayout:
        return DiskLayout(self.root)

    @classmethod
    def load(cls, root: str, *, disk: str | None = None, tier: str = "") -> DiskInventory:
        """Read and validate ``R/.oca/inventory.json``.

        Raises FileNotFoundError when there is none, InventoryCorrupt when it is bad.
        """
        with open(DiskLayout(root).inventory, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
        records, generation = _decode(data, root, disk or root, tier)
        return cls.of(
            root,
            records,
            disk=disk,
            tier=tier,
            generation=generation,
            signature=FileSignature.of(st),
        )

    @classmethod
    def rebuild(
        cls,
        root: str,
        *,
        disk: str | None = None,
        tier: str = "",
        previous: Mapping[str, ObjectRecord] | None = None,
        generation: int = 0,
    ) -> tuple[DiskInventory, RebuildStats]:
        """Scan ``R/objects``; access statistics carry over from ``previous``."""
        disk_id = disk or root
        prev = previous or {}
        records: dict[str, ObjectRecord] = {}
        files = nbytes = hashed = 0
        for path, file, st in scan_objects(DiskLayout(root)):
            rec, was_hashed = record_from_file(
                path, file, st, tier=tier, disk=disk_id, previous=prev.get(path)
            )
            records[path] = rec
            files += 1
            nbytes += rec.size
            hashed += was_hashed
        stats = RebuildStats(files, nbytes, hashed, files - hashed, 0)
        return cls.of(root, records, disk=disk_id, tier=tier, generation=generation), stats

    def with_changes(
        self, upserts: Iterable[ObjectRecord] = (), removals: Iterable[str] = ()
    ) -> DiskInventory:
        records = dict(self.records)
        used = self.used_bytes
        for path in removals:
            old = records.pop(path, None)
            if old is not None:
                used -= old.size
        for rec in upserts:
            old = records.get(rec.path)
            used += rec.size - (old.size if old else 0)
            records[rec.path] = rec
        return replace(self, records=records, used_bytes=used)

    def reconcile(self, paths: Iterable[str]) -> DiskInventory:
        """Re-derive the records of ``paths`` from the files (after an interrupted commit)."""
        layout = self.layout
        upserts: list[ObjectRecord] = []
        removals: list[str] = []
        for path in paths:
            file = layout.object_file(path)
            try:
                st = os.stat(file, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                removals.append(path)
                continue
            if not stat.S_ISREG(st.st_mode):
                removals.append(path)
                continue
            rec, _ = record_from_file(
                path, file, st, tier=self.tier, disk=self.disk, previous=self.records.get(path)
            )
            upserts.append(rec)
        return self.with_changes(upserts, removals)

    def encode(self, generation: int, now: float) -> bytes:
        doc: dict[str, Any] = {
            "schema": INVENTORY_SCHEMA,
            "version": INVENTORY_VERSION,
            "generation": generation,
            "disk": self.disk,
            "tier": self.tier,
            "saved_at": now,
            "columns": list(COLUMNS),
            "objects": [
                [r.path, r.size, r.sha256, r.mtime, r.hits, r.last_access]
                for r in self.records.values()
            ],
        }
        return orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE)

    def save(self) -> DiskInventory:
        """Write atomically (temp, fsync, rename, fsync dir); the caller holds the disk lock."""
        layout = self.layout
        generation = self.generation + 1
        data = self.encode(generation, time.time())
        tmp = f"{layout.inventory}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            try:
                write_all(fd, data)
                os.fsync(fd)
                sig = FileSignature.of(os.fstat(fd))
            finally:
                os.close(fd)
            os.rename(tmp, layout.inventory)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        fsync_dir(layout.meta)
        return replace(self, generation=generation, signature=sig)


def open_inventory(
    root: str, *, disk: str, tier: str, now: float, previous: DiskInventory | None = None
) -> DiskInventory:
    """Load the index, or rebuild and save it when missing or corrupt (caller holds the lock)."""
    layout = DiskLayout(root)
    try:
        return DiskInventory.load(root, disk=disk, tier=tier)
    except FileNotFoundError:
        was, because = "missing", "inventory.json did not exist"
    except InventoryCorrupt as exc:
        aside = _free_name(
            layout.inventory + ".corrupt-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        )
        os.rename(layout.inventory, aside)
        was, because = "corrupt", f"inventory.json was unusable ({exc}); it was moved to {aside}"
    inv, stats = DiskInventory.rebuild(
        root,
        disk=disk,
        tier=tier,
        previous=previous.records if previous else None,
        generation=previous.generation if previous else 0,
    )
    inv = inv.save()
    fresh = was == "missing" and stats.files == 0  # a new disk: nothing to worry about
    log.log(
        logging.INFO if fresh else logging.WARNING,
        "inventory of disk %s: was %s, now rebuilt from %d files (%d bytes; %d hashed, "
        "%d trusted from xattr), because %s",
        disk,
        was,
        stats.files,
        stats.bytes,
        stats.hashed,
        stats.trusted,
        because,
    )
    return inv


def _free_name(base: str) -> str:
    name, n = base, 0
    while os.path.lexists(name):
        n += 1
        name = f"{base}-{n}"
    return name


def _unlink_quietly(path: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)


# --------------------------------------------------------------------------- commit journal


def write_journal(layout: DiskLayout, paths: Iterable[str], removals: Iterable[str] = ()) -> None:
    """Durably record the paths about to be renamed into place, and those whose files
    are about to be unlinked after an index save without them (caller holds the lock)."""
    existed = os.path.exists(layout.journal)
    doc: dict[str, Any] = {"schema": "oca.journal", "paths": list(paths)}
    gone = list(removals)
    if gone:
        doc["removals"] = gone
    fd = os.open(layout.journal, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, orjson.dumps(doc))
        os.fsync(fd)
    finally:
        os.close(fd)
    if not existed:
        fsync_dir(layout.meta)


def clear_journal(layout: DiskLayout) -> None:
    # No fsync: if the truncation is lost in a crash the journal is replayed, harmlessly.
    os.truncate(layout.journal, 0)


def read_journal(layout: DiskLayout) -> list[str]:
    """The paths of an unfinished commit (see :func:`read_journal_entries`)."""
    return read_journal_entries(layout)[0]


def read_journal_entries(layout: DiskLayout) -> tuple[list[str], list[str]]:
    """(paths being committed, paths being removed) of an unfinished journal."""
    try:
        with open(layout.journal, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return [], []
    if not data:
        return [], []
    try:
        doc = orjson.loads(data)
        paths = doc["paths"]
        removals = doc.get("removals", [])
        if not isinstance(paths, list) or not isinstance(removals, list):
            raise TypeError("not lists")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        # A torn journal was being written when the writer stopped: it had changed nothing.
        log.warning("disk %s: ignoring a torn commit journal", layout.root)
        return [], []

    def valid(items: list[Any]) -> list[str]:
        return [p for p in items if isinstance(p, str) and validate_object_path(p) is None]

    return valid(paths), valid(removals)


def recover_journal(inv: DiskInventory) -> DiskInventory:
    """Finish a commit or a removal a writer left half done (caller holds the lock)."""
    paths, removals = read_journal_entries(inv.layout)
    if not paths and not removals:
        return inv
    fixed = inv.reconcile(paths).with_changes(removals=removals).save()
    for p in removals:  # the index no longer lists them: their files go too
        _unlink_quietly(inv.layout.object_file(p))
    clear_journal(inv.layout)
    log.warning(
        "inventory of disk %s: was mid-commit of %d objects and mid-removal of %d, now "
        "reconciled with the files, because a writer stopped before finishing",
        inv.disk,
        len(paths),
        len(removals),
    )
    return fixed


# --------------------------------------------------------------------------- temp files


class TmpArea:
    """This process's claim on one disk's ``.oca/tmp`` (see the module docstring)."""

    def __init__(self, layout: DiskLayout) -> None:
        self._layout = layout
        self._mutex = threading.Lock()
        self._token = ""
        self._lock_fd = -1
        self._count = 0

    def create(self) -> tuple[int, str]:
        """A new, exclusively created temp file: (descriptor open for writing, path)."""
        with self._mutex:
            if self._lock_fd < 0:
                self._claim()
            self._count += 1
            path = os.path.join(self._layout.tmp, f"{self._token}-{self._count}.part")
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644), path

    def _claim(self) -> None:
        for _ in range(8):
            token = secrets.token_hex(8)
            path = os.path.join(self._layout.tmp, f"{token}.lock")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # A cleaner may have taken and removed the file before our flock.
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    self._token, self._lock_fd = token, fd
                    return
            except (BlockingIOError, FileNotFoundError):
                pass
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        raise StorageError(f"cannot claim a temp area in {self._layout.tmp}")

    def close(self) -> None:
        """Give the claim up (after a disk failure, or at shutdown)."""
        with self._mutex:
            if self._lock_fd >= 0:
                with suppress(OSError):
                    os.unlink(os.path.join(self._layout.tmp, f"{self._token}.lock"))
                os.close(self._lock_fd)
            self._lock_fd, self._token, self._count = -1, "", 0


def clean_tmp(layout: DiskLayout) -> int:
    """Delete temp files no live writer owns; returns how many were removed."""
    try:
        names = os.listdir(layout.tmp)
    except FileNotFoundError:
        return 0
    live: set[str] = set()
    removed = 0
    for name in names:
        if not name.endswith(".lock"):
            continue
        path = os.path.join(layout.tmp, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            live.add(name[: -len(".lock")])
        else:
            _unlink_quietly(path)  # its owner is gone
            removed += 1
        finally:
            os.close(fd)
    for name in names:
        if name.endswith(".lock") or (name.endswith(".part") and name.split("-", 1)[0] in live):
            continue
        path = os.path.join(layout.tmp, name)
        if os.path.isdir(path) and not os.path.islink(path):
            continue
        _unlink_quietly(path)
        removed += 1
    return removed


def clean_meta(layout: DiskLayout, now: float) -> None:
    """Remove index and error-log temp files (only writers holding the lock make them)
    and old probes."""
    for name in os.listdir(layout.meta):
        path = os.path.join(layout.meta, name)
        if name.startswith(("inventory.json.", "disk-errors.json.")) and name.endswith(".tmp"):
            _unlink_quietly(path)
        elif name.startswith("probe-"):
            try:
                if now - os.stat(path).st_mtime > STALE_PROBE_SECONDS:
                    _unlink_quietly(path)
            except FileNotFoundError:
                pass


# --------------------------------------------------------------------------- health probe


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    reason: str = ""  # why not ok; for an ok disk, a limit it has hit ("full: ...") or ""
    total_bytes: int = 0
    free_bytes: int = 0


def probe_disk(layout: DiskLayout, token: str, *, mount_point: bool = False) -> ProbeResult:
    """Is the disk usable: root a directory, layout present, ``.oca`` writable and readable.

    ``mount_point``: the root was a mount point when the disk was opened; a root that
    no longer is one lost its filesystem (unmounted, or the drive dropped out), and the
    directory left underneath is not the disk. A probe that cannot be written because
    the filesystem is full (ENOSPC, EDQUOT) leaves the disk ok, with a "full: ..."
    reason: everything it holds still reads, only new objects must go elsewhere (the
    store's writes check the free space themselves).
    """
    root = layout.root
    try:
        st = os.stat(root)
    except OSError as exc:
        return ProbeResult(False, f"disk root {root} is unusable: {describe_os_error(exc)}")
    if not stat.S_ISDIR(st.st_mode):
        return ProbeResult(False, f"disk root {root} is not a directory")
    if mount_point and not os.path.ismount(root):
        return ProbeResult(
            False, f"disk root {root} is no longer a mount point: its filesystem went away"
        )
    for d in (layout.objects, layout.meta, layout.tmp):
        if not os.path.isdir(d):
            return ProbeResult(False, f"{d} is missing: not an oca disk, or it was wiped")
    probe = os.path.join(layout.meta, f"probe-{token}")
    payload = secrets.token_bytes(16)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            write_all(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        with open(probe, "rb") as f:
            back = f.read()
        os.unlink(probe)
        vfs = os.statvfs(root)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return _full(layout, probe, exc)
        return ProbeResult(
            False, f"probe write/read in {layout.meta} failed: {describe_os_error(exc)}"
        )
    if back != payload:
        return ProbeResult(False, f"probe file {probe} read back different bytes")
    return ProbeResult(True, "", vfs.f_blocks * vfs.f_frsize, vfs.f_bavail * vfs.f_frsize)


def _full(layout: DiskLayout, probe: str, exc: OSError) -> ProbeResult:
    """The probe of a disk whose filesystem has no room: ok if it still reads."""
    with suppress(OSError):
        os.unlink(probe)
    try:
        vfs = os.statvfs(layout.root)
        os.listdir(layout.meta)
    except OSError as read_exc:
        return ProbeResult(False, f"probe in {layout.meta} failed: {describe_os_error(read_exc)}")
    return ProbeResult(
        True,
        f"full: no room for a probe file in {layout.meta} ({describe_os_error(exc)}); "
        f"{vfs.f_bavail * vfs.f_frsize} bytes free",
        vfs.f_blocks * vfs.f_frsize,
        vfs.f_bavail * vfs.f_frsize,
    )
