"""The tiered object store: every disk of every tier behind one lookup table.

Theory of operation
-------------------
Reads are the hot path and must not block the event loop: ``lookup`` is one ``dict.get``
on a table mapping URL path to :class:`ObjectRecord`, with no lock and no I/O. The
table is never changed in place. Writers (``put_file``, ``remove``, ``refresh``,
``check_disks``, ``mark_failed``) build a new dict under a short lock and swap the
reference; an attribute assignment is atomic in CPython, so a reader on another thread
sees the old table or the new one, never a half-built one. ``generation`` counts the
swaps so the server can drop cached open files when the table changes.

Each disk keeps its own index (see :mod:`oca.storage.inventory`); the table is their
union over the healthy disks. When a path is on more than one disk (a promotion between
tiers in progress, or a crash in the middle of one) the earlier tier wins, then the
disk listed first. A failed disk's objects leave the table at once and return when a
probe passes again and its index has been reloaded.

New objects go to the first configured tier unless told otherwise, and within the tier
to the first disk of the rendezvous ranking (:mod:`oca.storage.placement`) that is
healthy and has room; an object being replaced stays on the disk that holds it, so the
replacement is a single atomic rename. A tier's ``capacity_bytes`` is split evenly
across its disks (0 means each disk's filesystem size), and a disk also refuses what
its filesystem has no free space for.

Several processes share the disks (``oca serve`` workers read; ``oca store import`` and
the fill agent write). A writer always re-reads a disk's index under that disk's flock
before changing it; readers call ``refresh`` periodically, which re-reads the indexes
whose (inode, mtime, size) changed.

Access statistics (``touch``) are counted in memory as deltas, merged into a disk's
index whenever that index is saved anyway or by ``flush_stats``; deltas rather than
totals keep several serving processes from overwriting each other's counts.

Errors: an EIO (or similar) from a disk, or finding its root gone, marks that disk
failed with the errno text as the reason and the operation moves on to another disk or
raises :class:`DiskFailed`; it never takes the process down. A read error while serving
one object is judged by ``note_read_error``: the disk fails if its probe fails too, or
if more than ``disk_error_limit`` distinct objects failed within the window (then it is
held failed for ``disk_error_hold_seconds``); otherwise only that object is quarantined
(:mod:`oca.storage.errorlimit`). ``verify`` and ``move`` judge an object they cannot
read by the same rule. The store counts the disks it failed and the objects it
quarantined (:meth:`Store.counts`), for the metrics of the process using it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, KeysView
from dataclasses import dataclass, replace
from typing import Literal

from oca.config import StorageConfig
from oca.errors import CapacityExceeded, DiskFailed, IntegrityError, ObjectNotFound, StorageError
from oca.storage.errorlimit import ErrorLimit, judge_read_error
from oca.storage.errorlog import held_reason, load_errors, save_errors
from oca.storage.inventory import (
    COPY_CHUNK_BYTES,
    DiskInventory,
    DiskLayout,
    ObjectRecord,
    TmpArea,
    clean_meta,
    clean_tmp,
    clear_journal,
    describe_os_error,
    disk_failure_reason,
    disk_lock,
    file_signature,
    fsync_dir,
    hash_file,
    open_inventory,
    probe_disk,
    read_sha256_xattr,
    recover_journal,
    scan_objects,
    validate_object_path,
    write_all,
    write_journal,
    write_sha256_xattr,
)
from oca.storage.placement import rank_disks

log = logging.getLogger("oca.storage")

DiskState = Literal["ok", "failed"]
ProblemKind = Literal["sha256", "size", "missing", "unreadable", "orphan"]
# Why an object was quarantined: it could not be read, or its bytes did not match.
QuarantineReason = Literal["read-error", "checksum"]

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
# Read errors that can be one object's (bad sectors, a checksum or corruption error the
# filesystem found in its data): note_read_error decides whether the disk is at fault.
_OBJECT_ERRNOS = frozenset({errno.EIO, errno.EBADMSG, errno.EUCLEAN})


@dataclass(frozen=True, slots=True)
class DiskStatus:
    id: str
    tier: str
    root: str
    state: DiskState
    reason: str  # why it is failed; for an ok disk what limits it ("full: ...") or ""
    objects: int  # for a failed disk: as last known
    used_bytes: int
    capacity_bytes: int
    since: float  # when the state last changed


@dataclass(frozen=True, slots=True)
class PutRequest:
    path: str
    src: str
    sha256: str | None = None
    mtime: float | None = None


@dataclass(frozen=True, slots=True)
class PutOutcome:
    path: str
    record: ObjectRecord | None = None
    error: StorageError | None = None


@dataclass(frozen=True, slots=True)
class VerifyProblem:
    path: str
    disk: str
    tier: str
    kind: ProblemKind
    detail: str
    action: str = ""  # what was done about it


@dataclass(frozen=True, slots=True)
class VerifyReport:
    objects: int
    bytes: int
    problems: tuple[VerifyProblem, ...]
    quarantined: int
    failed_disks: tuple[str, ...]  # not verified, or failed while being verified

    @property
    def bad(self) -> tuple[VerifyProblem, ...]:
        """The problems that mean an object was wrong (orphan files are only reported)."""
        return tuple(p for p in self.problems if p.kind != "orphan")

    @property
    def ok(self) -> bool:
        return not self.bad and not self.failed_disks


class _SourceUnreadable(StorageError):
    """Reading the file to be stored failed (``error``: what the read raised)."""

    def __init__(self, src: str, error: OSError) -> None:
        super().__init__(f"cannot read {src}: {describe_os_error(error)}")
        self.error = error


@dataclass(frozen=True, slots=True)
class _Health:
    state: DiskState
    reason: str
    since: float


class _Access:
    __slots__ = ("hits", "last_access")

    def __init__(self) -> None:
        self.hits = 0
        self.last_access = 0.0


class _Disk:
    """Mutable per-disk state; ``inv`` and ``health`` change only under the publish lock."""

    def __init__(self, disk_id: str, tier: str, share_bytes: int) -> None:
        self.id = disk_id
        self.tier = tier
        self.root = os.path.abspath(disk_id)
        self.layout = DiskLayout(self.root)
        self.share_bytes = share_bytes  # the tier's capacity / disks; 0 = filesystem size
        self.inv = DiskInventory.of(self.root, {}, disk=disk_id, tier=tier)
        self.health = _Health("failed", "not opened yet", 0.0)
        self.fs_total = 0
        self.mount_point = False  # its root was a mount point when it came up
        self.pending = 0  # bytes copied but not yet committed
        self.io = threading.Lock()  # serialises this process's index read-modify-write
        self.tmp = TmpArea(self.layout)


@dataclass(frozen=True, slots=True)
class _Staged:
    disk: _Disk
    path: str
    tmp: str
    size: int
    sha256: str
    mtime_ns: int
    reserved: int


class Store:
    """All disks of all tiers; see the module docstring. Create with :meth:`open`."""

    def __init__(
        self, cfg: StorageConfig, *, create: bool = True, clock: Callable[[], float] = time.time
    ) -> None:
        self._cfg = cfg
        self._create = create
        self._clock = clock
        self._token = secrets.token_hex(6)
        self._disks: list[_Disk] = []
        self._tiers: dict[str, list[_Disk]] = {}
        for tier in cfg.tiers:
            share = tier.capacity_bytes // len(tier.paths) if tier.capacity_bytes else 0
            disks = [_Disk(p, tier.name, share) for p in tier.paths]
            self._tiers[tier.name] = disks
            self._disks.extend(disks)
        self._by_id = {d.id: d for d in self._disks}
        self._prefix = {d.id: d.layout.objects for d in self._disks}
        self._publish = threading.Lock()
        self._table: dict[str, ObjectRecord] = {}
        self._generation = 0
        self._stats: dict[str, _Access] = {}
        self._error_limit = ErrorLimit(
            cfg.disk_error_limit, cfg.disk_error_window_seconds, cfg.disk_error_hold_seconds
        )
        # What this process did, for its metrics (under _publish; read with counts()).
        self._failures: dict[str, int] = {}  # disks failed (was ok, now failed), by tier
        self._quarantines: dict[tuple[str, str, QuarantineReason], int] = {}  # tier, disk

    @classmethod
    def open(
        cls, cfg: StorageConfig, *, create: bool = True, clock: Callable[[], float] = time.time
    ) -> Store:
        """Bring every disk up (blocking). Unusable disks start failed, with a reason."""
        store = cls(cfg, create=create, clock=clock)
        now = clock()
        for d in store._disks:
            store._bring_up(d, now, root_too=create)
        if not store.ready:
            log.error(
                "no usable disk: %s", "; ".join(f"{d.id}: {d.health.reason}" for d in store._disks)
            )
        return store

    def close(self) -> None:
        for d in self._disks:
            d.tmp.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- reads (no I/O)

    def lookup(self, path: str) -> ObjectRecord | None:
        return self._table.get(path)

    def file_path(self, rec: ObjectRecord) -> str:
        try:
            return self._prefix[rec.disk] + rec.path
        except KeyError:
            raise ObjectNotFound(f"{rec.path}: unknown disk {rec.disk}") from None

    def paths(self) -> KeysView[str]:
        """The served objects' paths (a view of the current table; it is replaced, never
        mutated, so the view stays consistent while the caller iterates it)."""
        return self._table.keys()

    def touch(self, path: str, now: float) -> None:
        if path not in self._table:
            return
        acc = self._stats.get(path)
        if acc is None:
            acc = self._stats.setdefault(path, _Access())
        acc.hits += 1
        if now > acc.last_access:
            acc.last_access = now

    def records(self) -> Iterator[ObjectRecord]:
        """Every served object, with the access statistics counted so far."""
        table = self._table
        for rec in table.values():
            acc = self._stats.get(rec.path)
            if acc is not None and (acc.hits or acc.last_access > rec.last_access):
                yield replace(
                    rec, hits=rec.hits + acc.hits, last_access=max(rec.last_access, acc.last_access)
                )
            else:
                yield rec

    def disks(self) -> list[DiskStatus]:
        out = []
        for d in self._disks:
            h, inv = d.health, d.inv
            out.append(
                DiskStatus(
                    d.id,
                    d.tier,
                    d.root,
                    h.state,
                    h.reason,
                    len(inv.records),
                    inv.used_bytes,
                    self._capacity(d),
                    h.since,
                )
            )
        return out

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def ready(self) -> bool:
        """At least one disk is usable."""
        return any(d.health.state == "ok" for d in self._disks)

    @property
    def tiers(self) -> list[str]:
        return list(self._tiers)

    # ----------------------------------------------------------------- health

    def mark_failed(self, disk_id: str, reason: str, now: float) -> bool:
        d = self._by_id.get(disk_id)
        if d is None:
            raise StorageError(f"unknown disk {disk_id}")
        with self._publish:
            was = d.health
            if was.state == "failed":
                if reason != was.reason:
                    d.health = _Health("failed", reason, was.since)
                return False
            d.health = _Health("failed", reason, now)
            self._swap(self._merged())
            self._failures[d.tier] = self._failures.get(d.tier, 0) + 1
        d.tmp.close()  # its lock descriptor would keep a vanished filesystem alive
        log.error(
            "disk %s (tier %s): was ok, now failed, because %s; %d objects left the lookup table",
            d.id,
            d.tier,
            reason,
            len(d.inv.records),
        )
        return True

    def note_io_error(self, disk_id: str, exc: OSError, now: float) -> bool:
        """Fail ``disk_id`` if ``exc`` says the disk (not one file) is broken (may stat)."""
        d = self._by_id.get(disk_id)
        if d is None:
            return False
        reason = disk_failure_reason(exc, d.root)
        return reason is not None and self.mark_failed(disk_id, reason, now)

    def counts(
        self,
    ) -> tuple[dict[str, int], dict[tuple[str, str, QuarantineReason], int]]:
        """(disks this process failed, by tier; objects it quarantined, by tier, disk and
        reason): totals since it opened the store, for its metrics."""
        with self._publish:
            return dict(self._failures), dict(self._quarantines)

    def note_read_error(self, rec: ObjectRecord, exc: OSError, now: float) -> bool:
        """Reading ``rec``'s file failed with ``exc`` (blocking: probes the disk, may
        write its index). True if the disk was failed.

        An error that is not a data error (the disk or its root gone, ...) is judged by
        :meth:`note_io_error`. A data error (EIO, a checksum or corruption error) fails
        the disk when its probe fails too, or when the disk's error limit says the errors
        are not confined to single objects (:mod:`oca.storage.errorlimit`; the disk is
        then held failed). Otherwise it is this object's: it is quarantined (out of the
        disk's index, its file moved to ``.oca/quarantine/``) and the disk serves on.
        """
        return self._judge_read_error(rec, exc, now)[0]

    def _judge_read_error(self, rec: ObjectRecord, exc: OSError, now: float) -> tuple[bool, str]:
        """:meth:`note_read_error`, and what became of the object ("" if nothing)."""
        d = self._by_id.get(rec.disk)
        if d is None or d.health.state != "ok":
            return False, ""
        if exc.errno not in _OBJECT_ERRNOS:
            failed = self.note_io_error(rec.disk, exc, now)
            return failed, f"its disk failed: {d.health.reason}" if failed else ""
        # Its own probe file: this runs in a pool thread, beside check_disks' probe and
        # other read errors' probes, which would remove or rewrite a shared one.
        token = f"{self._token}-{threading.get_native_id()}"
        probe = probe_disk(d.layout, token, mount_point=d.mount_point)
        if not probe.ok:
            return self.mark_failed(d.id, probe.reason, now), f"its disk failed: {probe.reason}"
        detail = describe_os_error(exc)
        try:
            with d.io, disk_lock(d.layout):
                inv = self._current_locked(d, now)
                if inv is not d.inv:
                    self._install(d, inv, None)
                cur = inv.records.get(rec.path)
                if cur is None or not _same_bytes(cur, rec):
                    return False, ""  # replaced or quarantined meanwhile (another process)
                decision = judge_read_error(
                    load_errors(d.layout), rec.path, detail, now, self._error_limit
                )
                save_errors(d.layout, decision.errors)
            if decision.verdict == "fail":
                failed = self.mark_failed(d.id, decision.reason, now)
                return failed, f"its disk failed: {decision.reason}"
            limit = self._error_limit
            actions = self._quarantine(
                d, [rec], now, because=f"reading it failed ({detail}); {decision.recent} "
                f"unreadable object(s) on this disk within {limit.window_seconds:g}s, the "
                f"disk fails beyond {limit.limit}", reason="read-error",
            )  # fmt: skip
        except OSError as io_exc:
            err = self._disk_error(d, io_exc, f"quarantining {rec.path}")
            if not isinstance(err, DiskFailed):
                log.error("%s", err)
            return isinstance(err, DiskFailed), f"not quarantined: {err}"
        return False, actions.get(rec.path, "")

    def check_disks(self, now: float) -> list[DiskStatus]:
        """Probe every disk (blocking); failed disks that pass again come back. A disk
        held failed by its error limit stays failed while the hold lasts."""
        for d in self._disks:
            if d.health.state == "ok":
                probe = probe_disk(d.layout, self._token, mount_point=d.mount_point)
                held = held_reason(d.layout, now) if probe.ok else None
                if held is not None:
                    self.mark_failed(d.id, held, now)
                elif probe.ok:
                    d.fs_total = probe.total_bytes
                    self._note(d, probe.reason)
                else:
                    self.mark_failed(d.id, probe.reason, now)
            else:
                self._bring_up(d, now, root_too=False)
        return self.disks()

    def _bring_up(self, d: _Disk, now: float, *, root_too: bool) -> bool:
        was = d.health
        # A disk whose filesystem was unmounted under it is not recreated in the
        # directory left underneath (the probe says why it stays failed).
        lost = d.mount_point and not os.path.ismount(d.root)
        try:
            if self._create and not lost:
                d.layout.create(root_too=root_too)
        except OSError as exc:
            return self._still_failed(d, f"cannot create {d.root}: {describe_os_error(exc)}", now)
        probe = probe_disk(d.layout, self._token, mount_point=d.mount_point)
        if not probe.ok:
            return self._still_failed(d, probe.reason, now)
        held = held_reason(d.layout, now)
        if held is not None:
            return self._still_failed(d, held, now)
        d.tmp.close()  # an earlier claim may point into a directory that was replaced
        try:
            with d.io, disk_lock(d.layout):
                clean_tmp(d.layout)
                clean_meta(d.layout, now)
                inv = open_inventory(d.root, disk=d.id, tier=d.tier, now=now)
                inv = recover_journal(inv)
                if was.since:  # coming back: copies written elsewhere meanwhile are newer
                    inv = self._drop_superseded(d, inv)
        except (OSError, StorageError) as exc:
            detail = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
            return self._still_failed(d, f"cannot load the inventory: {detail}", now)
        d.fs_total = probe.total_bytes
        d.mount_point = d.mount_point or os.path.ismount(d.root)
        with self._publish:
            d.inv = inv
            d.health = _Health("ok", probe.reason, now)
            self._swap(self._merged())
        log.info(
            "disk %s (tier %s): was %s, now ok with %d objects (%d bytes), because %s",
            d.id,
            d.tier,
            "failed" if was.since else "not opened",
            len(inv.records),
            inv.used_bytes,
            "its probe passed and its inventory loaded",
        )
        return True

    def _drop_superseded(self, d: _Disk, inv: DiskInventory) -> DiskInventory:
        """Forget paths another healthy disk of the tier took over while ``d`` was away."""
        others = [o for o in self._tiers[d.tier] if o is not d and o.health.state == "ok"]
        stale = [p for p in inv.records if any(p in o.inv.records for o in others)]
        if not stale:
            return inv
        write_journal(d.layout, (), removals=stale)
        inv = inv.with_changes(removals=stale).save()
        for p in stale:
            _unlink_quietly(d.layout.object_file(p))
            _prune_dirs(d.layout, p)
        clear_journal(d.layout)
        log.info(
            "disk %s: %d objects were stored elsewhere in tier %s while it was failed; "
            "its older copies were removed",
            d.id,
            len(stale),
            d.tier,
        )
        return inv

    def _note(self, d: _Disk, note: str) -> None:
        """Record what limits an ok disk (``probe_disk``'s "full: ..."), or "" for none."""
        with self._publish:
            was = d.health
            if was.state != "ok" or was.reason == note:
                return
            d.health = _Health("ok", note, was.since)
        if note:
            log.warning("disk %s (tier %s): still serving, but %s", d.id, d.tier, note)
        else:
            log.info("disk %s (tier %s): has room again (was %s)", d.id, d.tier, was.reason)

    def _still_failed(self, d: _Disk, reason: str, now: float) -> bool:
        with self._publish:
            was = d.health
            d.health = _Health("failed", reason, was.since or now)
        if reason != was.reason:
            log.error("disk %s (tier %s): failed, because %s", d.id, d.tier, reason)
        return False

    def _disk_error(self, d: _Disk, exc: OSError, doing: str) -> StorageError:
        """The error to raise for ``exc``; fails the disk when the disk is what broke."""
        reason = disk_failure_reason(exc, d.root)
        if reason is not None:
            self.mark_failed(d.id, reason, self._clock())
            return DiskFailed(d.id, reason)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return CapacityExceeded(f"disk {d.id} is full ({doing}): {describe_os_error(exc)}")
        return StorageError(f"{doing} on disk {d.id}: {describe_os_error(exc)}")

    # ----------------------------------------------------------------- publishing

    def _swap(self, table: dict[str, ObjectRecord]) -> None:
        # caller holds self._publish
        self._table = table
        self._generation += 1

    def _merged(self) -> dict[str, ObjectRecord]:
        table: dict[str, ObjectRecord] = {}
        for d in reversed(self._disks):  # the disk listed first is applied last and wins
            if d.health.state == "ok":
                table.update(d.inv.records)
        return table

    def _resolve(self, path: str) -> ObjectRecord | None:
        for d in self._disks:
            if d.health.state == "ok" and (rec := d.inv.records.get(path)) is not None:
                return rec
        return None

    def _install(self, d: _Disk, inv: DiskInventory, changed: Collection[str] | None) -> None:
        """Make ``inv`` the disk's index; ``changed`` None means anything may differ."""
        with self._publish:
            d.inv = inv
            if d.health.state != "ok":
                return
            if changed is None:
                self._swap(self._merged())
                return
            table = dict(self._table)
            for path in changed:
                rec = self._resolve(path)
                if rec is None:
                    table.pop(path, None)
                else:
                    table[path] = rec
            self._swap(table)

    def _current_locked(self, d: _Disk, now: float) -> DiskInventory:
        """The disk's index as on disk now; the caller holds ``d.io`` and the disk lock."""
        inv = d.inv
        if file_signature(d.layout.inventory) != inv.signature:
            inv = open_inventory(d.root, disk=d.id, tier=d.tier, now=now, previous=inv)
        return recover_journal(inv)

    def refresh(self) -> bool:
        """Re-read the indexes another process changed (blocking); True if any did."""
        changed = False
        now = self._clock()
        for d in self._disks:
            if d.health.state != "ok":
                continue
            try:
                with d.io:
                    pending = _nonempty(d.layout.journal)
                    if file_signature(d.layout.inventory) == d.inv.signature and not pending:
                        continue
                    with disk_lock(d.layout):
                        inv = self._current_locked(d, now)
                    if inv is not d.inv:
                        self._install(d, inv, None)
                        changed = True
            except OSError as exc:
                err = self._disk_error(d, exc, "refresh")
                changed |= isinstance(err, DiskFailed)
                if not isinstance(err, DiskFailed):
                    log.warning("refresh of disk %s: %s", d.id, err)
        return changed

    # ----------------------------------------------------------------- access statistics

    def _with_stats(self, inv: DiskInventory) -> DiskInventory:
        ups = []
        for path, acc in self._stats.copy().items():
            rec = inv.records.get(path)
            if rec is None:
                continue
            hits = acc.hits
            acc.hits -= hits
            ups.append(
                replace(
                    rec, hits=rec.hits + hits, last_access=max(rec.last_access, acc.last_access)
                )
            )
            if acc.hits == 0:
                self._stats.pop(path, None)
        return inv.with_changes(ups) if ups else inv

    def flush_stats(self) -> int:
        """Merge the counted accesses into the disks' indexes (blocking); returns disks saved."""
        saved = 0
        now = self._clock()
        for d in self._disks:
            touched = [p for p in self._stats.copy() if p in d.inv.records]
            if d.health.state != "ok" or not touched:
                continue
            try:
                with d.io, disk_lock(d.layout):
                    inv = self._current_locked(d, now)
                    reloaded = inv is not d.inv
                    new = self._with_stats(inv).save()
                    self._install(d, new, None if reloaded else touched)
                    saved += 1
            except OSError as exc:
                log.warning(
                    "saving access statistics on disk %s: %s",
                    d.id,
                    self._disk_error(d, exc, "save"),
                )
        return saved

    # ----------------------------------------------------------------- writes

    def put_file(
        self,
        path: str,
        src: str,
        *,
        sha256: str | None = None,
        tier: str | None = None,
        mtime: float | None = None,
    ) -> ObjectRecord:
        """Copy ``src`` into the store as ``path`` (blocking); see the module docstring."""
        (outcome,) = self.put_many([PutRequest(path, src, sha256, mtime)], tier=tier)
        if outcome.error is not None:
            raise outcome.error
        assert outcome.record is not None
        return outcome.record

    def adopt_file(
        self,
        path: str,
        src: str,
        *,
        sha256: str,
        tier: str | None = None,
        mtime: float | None = None,
    ) -> ObjectRecord:
        """``put_file`` for a file the caller has already written, fsynced and verified
        against ``sha256`` on one of the tier's disks (the fill's part files): it is
        renamed into the disk's temp area and committed, not copied, so it is written
        once. The caller vouches for the digest (the fill hashed every byte it wrote);
        ``oca store verify`` re-checks at rest. When ``src`` is on no healthy disk of the
        tier it is copied and verified like any put (and ``src`` is left in place).
        """
        why = validate_object_path(path)
        if why is not None:
            raise StorageError(f"invalid object path {path!r}: {why}")
        if not _SHA256_RE.fullmatch(sha256):
            raise StorageError(f"{path}: {sha256!r} is not a sha256 hex digest")
        tier_name = self._tier_name(tier)
        root = os.path.abspath(src)
        try:
            st = os.stat(src)
        except OSError as exc:
            # A part file on a disk whose filesystem went away: that disk failed.
            home = next((d for d in self._disks if root.startswith(d.root + os.sep)), None)
            if home is not None and home.health.state != "ok":
                raise DiskFailed(home.id, home.health.reason) from None
            if home is not None:
                raise self._disk_error(home, exc, f"reading {src}") from None
            raise StorageError(f"cannot read {src}: {describe_os_error(exc)}") from None
        d = next(
            (c for c in self._candidates(tier_name, path) if root.startswith(c.root + os.sep)),
            None,
        )
        if d is None:
            return self.put_file(path, src, sha256=sha256, tier=tier_name, mtime=mtime)
        refusal = self._reserve(d, st.st_size, path)
        if refusal is not None:
            raise CapacityExceeded(f"no room for {path} ({st.st_size} bytes): {refusal}")
        try:
            fd, tmp = d.tmp.create()
            os.close(fd)
            os.rename(src, tmp)  # atomically replaces the empty temp file we own
            fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                mtime_ns = round(mtime * 1e9) if mtime is not None else st.st_mtime_ns
                os.utime(fd, ns=(time.time_ns(), mtime_ns))
                mtime_ns = os.fstat(fd).st_mtime_ns
                write_sha256_xattr(fd, sha256, mtime_ns)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self._release(d, st.st_size)
            raise self._disk_error(d, exc, f"adopting {path}") from None
        staged = _Staged(d, path, tmp, st.st_size, sha256, mtime_ns, st.st_size)
        outcomes = [PutOutcome(path)]
        self._commit_batch({path: (0, staged)}, outcomes)
        (outcome,) = outcomes
        if outcome.error is not None:
            raise outcome.error
        assert outcome.record is not None
        return outcome.record

    def put_many(
        self,
        items: Iterable[PutRequest],
        *,
        tier: str | None = None,
        batch_files: int = 1000,
        batch_bytes: int = 1 << 30,
    ) -> list[PutOutcome]:
        """Like ``put_file`` for many files; each index is saved once per batch.

        Failures are reported per item and do not stop the others. A batch is committed
        when it reaches ``batch_files`` files or ``batch_bytes`` bytes, and at the end.
        """
        tier_name = self._tier_name(tier)
        outcomes: list[PutOutcome] = []
        batch: dict[str, tuple[int, _Staged]] = {}
        batch_size = 0
        for req in items:
            if req.path in batch:  # the same path twice: the later one must land last
                self._commit_batch(batch, outcomes)
                batch, batch_size = {}, 0
            outcomes.append(PutOutcome(req.path))
            try:
                staged = self._stage(req, tier_name)
            except StorageError as exc:
                outcomes[-1] = PutOutcome(req.path, None, exc)
                continue
            batch[req.path] = (len(outcomes) - 1, staged)
            batch_size += staged.size
            if len(batch) >= batch_files or batch_size >= batch_bytes:
                self._commit_batch(batch, outcomes)
                batch, batch_size = {}, 0
        self._commit_batch(batch, outcomes)
        return outcomes

    def _tier_name(self, tier: str | None) -> str:
        if tier is None:
            if not self._tiers:
                raise StorageError("no storage tiers are configured")
            return next(iter(self._tiers))
        if tier not in self._tiers:
            raise StorageError(f"unknown tier {tier!r}; configured: {', '.join(self._tiers)}")
        return tier

    def staging_root(self, path: str, tier: str | None = None) -> str | None:
        """The root of the disk ``path`` would be placed on in ``tier`` (None: no healthy
        disk): a file written under it can be installed with :meth:`adopt_file` by rename."""
        order = self._candidates(self._tier_name(tier), path)
        return order[0].root if order else None

    def _capacity(self, d: _Disk) -> int:
        return d.share_bytes or d.fs_total

    def _candidates(self, tier: str, path: str) -> list[_Disk]:
        healthy = {d.id: d for d in self._tiers[tier] if d.health.state == "ok"}
        order = [healthy[i] for i in rank_disks(path, list(healthy))]
        holder = next((d for d in order if path in d.inv.records), None)
        if holder is not None:  # replace in place: one atomic rename
            order.remove(holder)
            order.insert(0, holder)
        return order

    def _reserve(self, d: _Disk, size: int, path: str) -> str | None:
        """Reserve room for ``size`` bytes on ``d``, or say why there is none."""
        try:
            vfs = os.statvfs(d.root)
            free = vfs.f_bavail * vfs.f_frsize
        except OSError:
            free = size  # the copy itself will report what is wrong with the disk
        cap = self._capacity(d)
        with self._publish:
            old = d.inv.records.get(path)
            used = d.inv.used_bytes + d.pending - (old.size if old else 0)
            if used + size > cap:
                return f"disk {d.id} has {used} of its {cap} bytes in use, {size} more do not fit"
            if size > free:
                return f"disk {d.id}'s filesystem has only {free} bytes free"
            d.pending += size
        return None

    def _release(self, d: _Disk, size: int) -> None:
        with self._publish:
            d.pending -= size

    def _stage(self, req: PutRequest, tier: str) -> _Staged:
        """Copy one source into a temp file on a chosen disk, hashing and verifying it."""
        why = validate_object_path(req.path)
        if why is not None:
            raise StorageError(f"invalid object path {req.path!r}: {why}")
        expected = None
        if req.sha256 is not None:
            expected = req.sha256.lower()
            if not _SHA256_RE.fullmatch(expected):
                raise StorageError(f"{req.path}: {req.sha256!r} is not a sha256 hex digest")
        try:
            src = open(req.src, "rb", buffering=0)  # noqa: SIM115 - closed below
        except OSError as exc:
            raise _SourceUnreadable(req.src, exc) from None
        with src:
            st = os.fstat(src.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise StorageError(f"{req.src} is not a regular file")
            candidates = self._candidates(tier, req.path)
            if not candidates:
                reasons = "; ".join(f"{d.id}: {d.health.reason}" for d in self._tiers[tier])
                raise StorageError(f"no healthy disk in tier {tier} for {req.path} ({reasons})")
            refusals: list[str] = []
            full = True
            for d in candidates:
                refusal = self._reserve(d, st.st_size, req.path)
                if refusal is not None:
                    refusals.append(refusal)
                    continue
                try:
                    src.seek(0)
                    return self._copy(d, req, src, st, expected)
                except (CapacityExceeded, DiskFailed) as exc:
                    self._release(d, st.st_size)
                    refusals.append(str(exc))
                    full = full and isinstance(exc, CapacityExceeded)
                except BaseException:
                    self._release(d, st.st_size)
                    raise
        msg = f"no room for {req.path} ({st.st_size} bytes) in tier {tier}: {'; '.join(refusals)}"
        raise CapacityExceeded(msg) if full else StorageError(msg)

    def _copy(
        self, d: _Disk, req: PutRequest, src: io.FileIO, st: os.stat_result, expected: str | None
    ) -> _Staged:
        try:
            fd, tmp = d.tmp.create()
        except OSError as exc:
            raise self._disk_error(d, exc, "creating a temp file") from None
        try:
            h = hashlib.sha256()
            buf = bytearray(COPY_CHUNK_BYTES)
            view = memoryview(buf)
            n = 0
            while True:
                try:
                    k = src.readinto(buf)
                except OSError as exc:
                    raise _SourceUnreadable(req.src, exc) from None
                if not k:
                    break
                h.update(view[:k])
                write_all(fd, view[:k])
                n += k
            digest = h.hexdigest()
            if expected is not None and digest != expected:
                raise IntegrityError(
                    f"{req.path}: sha256 of {req.src} is {digest}, expected {expected}"
                )
            mtime_ns = round(req.mtime * 1e9) if req.mtime is not None else st.st_mtime_ns
            os.utime(fd, ns=(time.time_ns(), mtime_ns))
            mtime_ns = os.fstat(fd).st_mtime_ns  # as the filesystem stored it
            write_sha256_xattr(fd, digest, mtime_ns)
            os.fsync(fd)
        except BaseException as exc:
            os.close(fd)
            _unlink_quietly(tmp)
            if isinstance(exc, OSError):
                raise self._disk_error(d, exc, f"writing {req.path}") from None
            raise
        os.close(fd)
        return _Staged(d, req.path, tmp, n, digest, mtime_ns, st.st_size)

    def _commit_batch(
        self, batch: dict[str, tuple[int, _Staged]], outcomes: list[PutOutcome]
    ) -> None:
        by_disk: dict[_Disk, list[tuple[int, _Staged]]] = {}
        for idx, staged in batch.values():
            by_disk.setdefault(staged.disk, []).append((idx, staged))
        placed: list[ObjectRecord] = []
        for d, items in by_disk.items():
            results = self._commit(d, [s for _, s in items])
            for (idx, s), res in zip(items, results, strict=True):
                if isinstance(res, ObjectRecord):
                    outcomes[idx] = PutOutcome(s.path, res)
                    placed.append(res)
                else:
                    outcomes[idx] = PutOutcome(s.path, None, res)
        self._drop_elsewhere(placed)

    def _commit(self, d: _Disk, staged: list[_Staged]) -> list[ObjectRecord | StorageError]:
        """Rename staged files into place and save the index once, under the disk lock."""
        now = self._clock()
        results: list[ObjectRecord | StorageError] = []
        try:
            with d.io, disk_lock(d.layout):
                inv = self._current_locked(d, now)
                reloaded = inv is not d.inv
                write_journal(d.layout, [s.path for s in staged])
                dirs: set[str] = set()
                for s in staged:
                    dst = d.layout.object_file(s.path)
                    try:
                        _ensure_dir(os.path.dirname(dst), dirs, d.layout.objects)
                        os.rename(s.tmp, dst)
                    except OSError as exc:
                        if disk_failure_reason(exc, d.root) is not None:
                            raise
                        _unlink_quietly(s.tmp)
                        results.append(
                            StorageError(
                                f"cannot place {s.path} on disk {d.id}: {describe_os_error(exc)}"
                            )
                        )
                        continue
                    dirs.add(os.path.dirname(dst))
                    old = inv.records.get(s.path)
                    results.append(
                        ObjectRecord(
                            s.path,
                            s.size,
                            s.sha256,
                            s.mtime_ns / 1e9,
                            d.tier,
                            d.id,
                            old.hits if old else 0,
                            old.last_access if old else 0.0,
                        )
                    )
                for directory in dirs:
                    fsync_dir(directory)
                recs = [r for r in results if isinstance(r, ObjectRecord)]
                new = self._with_stats(inv.with_changes(recs)).save()
                clear_journal(d.layout)
                self._install(d, new, None if reloaded else [r.path for r in recs])
                results = [
                    new.records.get(r.path, r) if isinstance(r, ObjectRecord) else r
                    for r in results
                ]
        except OSError as exc:
            err = self._disk_error(d, exc, "committing objects")
            for s in staged:
                _unlink_quietly(s.tmp)
            results = [err] * len(staged)
        finally:
            self._release(d, sum(s.reserved for s in staged))
        return results

    def _drop_elsewhere(self, placed: list[ObjectRecord]) -> None:
        """Remove older copies of just-placed objects from the other disks."""
        stale: dict[_Disk, list[str]] = {}
        for rec in placed:
            for d in self._disks:
                if d.id != rec.disk and d.health.state == "ok" and rec.path in d.inv.records:
                    stale.setdefault(d, []).append(rec.path)
        for d, paths in stale.items():
            try:
                self._remove_paths(d, paths)
            except StorageError as exc:
                log.warning("could not remove superseded copies from disk %s: %s", d.id, exc)

    def move(self, path: str, tier: str) -> ObjectRecord:
        """Move an object to another tier (blocking): copy, verify, switch, drop the old copy.

        The copy is written and verified against the recorded sha256 like any put, then
        renamed into place and indexed on the new disk; only then is the old copy
        removed. A reader sees the old file or the new one, never a partial one, and a
        response in flight on the old file keeps its open descriptor. The access
        statistics move with the object; they reach the new disk's index with the next
        :meth:`flush_stats` (one index save for a batch of moves, not one per move).
        """
        rec = self.lookup(path)
        if rec is None:
            raise ObjectNotFound(f"{path}: not held")
        if rec.tier == tier:
            return rec
        try:
            new = self.put_file(
                path, self.file_path(rec), sha256=rec.sha256, tier=tier, mtime=rec.mtime
            )
        except _SourceUnreadable as exc:
            # Reading the object failed: judged as when serving it (quarantined, or its
            # disk failed), not left to fail every later move too.
            self.note_read_error(rec, exc.error, self._clock())
            raise
        if rec.hits or rec.last_access:
            acc = self._stats.setdefault(path, _Access())
            acc.hits += rec.hits
            acc.last_access = max(acc.last_access, rec.last_access)
        return new

    def remove(self, path: str) -> bool:
        """Delete the object from every healthy disk holding it (blocking)."""
        removed = False
        for d in self._disks:
            if d.health.state == "ok" and path in d.inv.records:
                removed |= bool(self._remove_paths(d, [path]))
        return removed

    def _remove_paths(self, d: _Disk, paths: list[str]) -> list[str]:
        # The index is saved before the files go, never a record without bytes; the
        # journal names them, so a crash in between is finished by the next process to
        # take the lock (it unlinks them) instead of leaving files no index lists.
        now = self._clock()
        try:
            with d.io, disk_lock(d.layout):
                inv = self._current_locked(d, now)
                reloaded = inv is not d.inv
                present = [p for p in paths if p in inv.records]
                if present:
                    write_journal(d.layout, (), removals=present)
                new = (
                    self._with_stats(inv.with_changes(removals=present)).save() if present else inv
                )
                if present or reloaded:
                    self._install(d, new, None if reloaded else present)
                for p in present:
                    _unlink_quietly(d.layout.object_file(p))
                    _prune_dirs(d.layout, p)
                if present:
                    clear_journal(d.layout)
        except OSError as exc:
            raise self._disk_error(d, exc, "removing objects") from None
        return present

    # ----------------------------------------------------------------- verification

    def verify(self, *, quarantine: bool) -> VerifyReport:
        """Re-hash every object on the healthy disks (blocking, slow).

        An object that cannot be read for a data error (EIO, a checksum or corruption
        error of the filesystem) is judged as when serving it (:meth:`note_read_error`):
        quarantined and counted against its disk, which fails, and stops being verified,
        when its probe fails or its error limit is passed. With ``quarantine`` False
        nothing is changed: such an object is only reported, and its disk probed.
        """
        now = self._clock()
        objects = nbytes = quarantined = 0
        problems: list[VerifyProblem] = []
        failed: list[str] = []
        for d in self._disks:
            if d.health.state != "ok":
                failed.append(d.id)
                continue
            bad: list[tuple[ObjectRecord, VerifyProblem]] = []
            try:
                for rec in list(d.inv.records.values()):
                    problem, exc = self._verify_object(d, rec)
                    objects += 1
                    nbytes += rec.size
                    cur = d.inv.records.get(rec.path)
                    if problem is None or cur is None or not _same_bytes(cur, rec):
                        continue  # (it was replaced while we read it)
                    if exc is None or exc.errno not in _OBJECT_ERRNOS:
                        bad.append((rec, problem))
                        continue
                    action = self._verify_unreadable(d, rec, exc, now, quarantine)
                    quarantined += action.startswith("quarantined")
                    problems.append(replace(problem, action=action))
                    if d.health.state != "ok":
                        raise DiskFailed(d.id, d.health.reason)
                orphans = [p for p, _, _ in scan_objects(d.layout) if p not in d.inv.records]
                if bad or orphans:
                    bad, orphans = self._confirm(d, bad, orphans, now)
                actions: dict[str, str] = {}
                if quarantine:
                    for reason in ("read-error", "checksum"):
                        recs = [r for r, p in bad if _quarantine_reason(p) == reason]
                        if recs:
                            actions |= self._quarantine(d, recs, now, reason=reason)
            except DiskFailed:
                failed.append(d.id)
                problems.extend(p for _, p in bad)
                continue
            except OSError as exc:
                failed.append(d.id)
                log.error("verify of disk %s stopped: %s", d.id, self._disk_error(d, exc, "verify"))
                problems.extend(p for _, p in bad)
                continue
            for rec, p in bad:
                action = actions.get(rec.path, "")
                quarantined += action.startswith("quarantined")
                problems.append(replace(p, action=action))
            problems.extend(
                VerifyProblem(
                    p, d.id, d.tier, "orphan", "a file under objects/ is not in the inventory"
                )
                for p in orphans
            )
        return VerifyReport(objects, nbytes, tuple(problems), quarantined, tuple(failed))

    def _confirm(
        self,
        d: _Disk,
        bad: list[tuple[ObjectRecord, VerifyProblem]],
        orphans: list[str],
        now: float,
    ) -> tuple[list[tuple[ObjectRecord, VerifyProblem]], list[str]]:
        """The problems that still hold against the disk's index as it is now.

        Other processes (``oca serve`` storing what it pulled, a fill storing, moving
        or evicting) change the disk while a verify reads it: an object removed since
        the index was read looks missing, one stored since looks like an orphan. Under
        the disk lock, with the current index, each suspect is judged again (objects
        re-hashed: few, as real problems are rare).
        """
        with d.io, disk_lock(d.layout):
            inv = self._current_locked(d, now)
            if inv is not d.inv:
                self._install(d, inv, None)
            still: list[tuple[ObjectRecord, VerifyProblem]] = []
            for rec, _ in bad:
                cur = inv.records.get(rec.path)
                problem = self._verify_object(d, cur)[0] if cur is not None else None
                if cur is not None and problem is not None:
                    still.append((cur, problem))
            strays = [
                p
                for p in orphans
                if p not in inv.records and os.path.isfile(d.layout.object_file(p))
            ]
        return still, strays

    def _verify_object(
        self, d: _Disk, rec: ObjectRecord
    ) -> tuple[VerifyProblem | None, OSError | None]:
        """The object's problem, if any, with the error that reading it met. A data error
        is left for the caller to judge (:meth:`_verify_unreadable`); any other error
        that says the disk broke fails the disk (DiskFailed)."""
        file = d.layout.object_file(rec.path)
        try:
            st = os.stat(file)
            digest, size = hash_file(file)
        except OSError as exc:
            if exc.errno not in _OBJECT_ERRNOS:
                err = self._disk_error(d, exc, f"reading {rec.path}")
                if isinstance(err, DiskFailed):
                    raise err from None
            kind: ProblemKind = (
                "missing" if exc.errno in (errno.ENOENT, errno.ENOTDIR) else "unreadable"
            )
            return VerifyProblem(rec.path, d.id, d.tier, kind, describe_os_error(exc)), exc
        if size != rec.size:
            detail = f"{size} bytes on disk, {rec.size} recorded"
            return VerifyProblem(rec.path, d.id, d.tier, "size", detail), None
        if digest != rec.sha256:
            detail = f"sha256 {digest} on disk, {rec.sha256} recorded"
            return VerifyProblem(rec.path, d.id, d.tier, "sha256", detail), None
        if (
            read_sha256_xattr(file, st.st_mtime_ns) != digest
            and os.stat(file).st_mtime_ns == st.st_mtime_ns
        ):
            write_sha256_xattr(file, digest, st.st_mtime_ns)  # lets a rebuild trust it
        return None, None

    def _verify_unreadable(
        self, d: _Disk, rec: ObjectRecord, exc: OSError, now: float, quarantine: bool
    ) -> str:
        """A data error reading ``rec`` during verify: what was done about it."""
        if quarantine:
            return self._judge_read_error(rec, exc, now)[1]
        token = f"{self._token}-{threading.get_native_id()}"
        probe = probe_disk(d.layout, token, mount_point=d.mount_point)
        if not probe.ok:
            self.mark_failed(d.id, probe.reason, now)
            return f"its disk failed: {probe.reason}"
        return ""

    def _quarantine(
        self,
        d: _Disk,
        recs: list[ObjectRecord],
        now: float,
        because: str = "it failed verification",
        *,
        reason: QuarantineReason = "checksum",
    ) -> dict[str, str]:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        actions: dict[str, str] = {}
        with d.io, disk_lock(d.layout):
            inv = self._current_locked(d, now)
            reloaded = inv is not d.inv
            victims = [
                r for r in recs if (c := inv.records.get(r.path)) is not None and _same_bytes(c, r)
            ]
            paths = [r.path for r in victims]
            new = self._with_stats(inv.with_changes(removals=paths)).save() if victims else inv
            if victims or reloaded:
                self._install(d, new, None if reloaded else paths)
            for rec in victims:
                dst = os.path.join(d.layout.quarantine, stamp, rec.path[1:])
                try:
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    os.rename(d.layout.object_file(rec.path), dst)
                except FileNotFoundError:
                    actions[rec.path] = "removed from the inventory"
                else:
                    actions[rec.path] = f"quarantined to {dst}"
                    _prune_dirs(d.layout, rec.path)
                    with self._publish:
                        key = (d.tier, d.id, reason)
                        self._quarantines[key] = self._quarantines.get(key, 0) + 1
        for path, action in actions.items():
            log.warning(
                "object %s on disk %s: was served, now %s, because %s", path, d.id, action, because
            )
        return actions


# --------------------------------------------------------------------------- helpers


def _quarantine_reason(p: VerifyProblem) -> QuarantineReason:
    return "read-error" if p.kind == "unreadable" else "checksum"


def _same_bytes(a: ObjectRecord, b: ObjectRecord) -> bool:
    return (a.sha256, a.size, a.mtime) == (b.sha256, b.size, b.mtime)


def _nonempty(path: str) -> bool:
    try:
        return os.stat(path).st_size > 0
    except FileNotFoundError:
        return False


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _ensure_dir(directory: str, fsync_dirs: set[str], top: str) -> None:
    """Create ``directory`` and missing parents below ``top`` (the disk's ``objects``
    directory), noting each parent whose entries changed. ``top`` itself is never
    created: when it is missing the disk's filesystem went away, and the directory left
    behind (a bare mount point on the system disk) must not get objects."""
    missing: list[str] = []
    while not os.path.isdir(directory):
        if directory == top or len(directory) <= len(top):
            raise FileNotFoundError(errno.ENOENT, "the disk's objects directory is gone", top)
        missing.append(directory)
        directory = os.path.dirname(directory)
    for d in reversed(missing):
        os.mkdir(d)
        fsync_dirs.add(os.path.dirname(d))


def _prune_dirs(layout: DiskLayout, path: str) -> None:
    """Remove directories the object's removal left empty (caller holds the disk lock)."""
    directory = os.path.dirname(layout.object_file(path))
    while directory != layout.objects and directory.startswith(layout.objects):
        try:
            os.rmdir(directory)
        except OSError:
            return
        directory = os.path.dirname(directory)
