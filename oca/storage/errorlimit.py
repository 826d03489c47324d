"""A bad object or a bad disk: the per-disk read-error limit (pure core).

Theory of operation
-------------------
An I/O error while reading an object names one file, not a disk. A few bad sectors
under one object make every read of that object fail while everything else on the disk
reads well; failing the whole disk for it, and bringing it back when the next probe
(which writes and reads its own small file) passes, makes the disk flap between failed
and ok with every request for that object, while the heartbeat, sampled between
flaps, keeps telling steering that the object is there.

Mature object stores keep the two apart. OpenStack Swift's object auditor moves an
object it cannot read into a quarantine directory, so it is never served again and the
replicator restores a good copy; its proxies error-limit a whole node only after
``error_suppression_limit`` errors within ``error_suppression_interval`` seconds, and
then leave it alone for a while instead of retrying it at once. The store
(:meth:`oca.storage.store.Store.note_read_error`) does the same with each disk:

1. the disk is probed at once; a probe that fails fails the disk, as any other;
2. otherwise the error is confined to that object: it is quarantined (dropped from the
   disk's index, its file moved under ``.oca/quarantine/``), so no process serves it
   again and the supervisor's heartbeat stops listing it;
3. every quarantined object is noted in the disk's error log; when more than
   ``limit`` distinct objects have failed to read within ``window_seconds``, the
   errors are no longer confined to single objects: the disk is failed and *held*
   failed for ``hold_seconds`` (0: until an operator clears the hold), whatever its
   probe says.

This module is the decision alone: it takes the log and the current time and returns
the log to save and the verdict. The log's file (``R/.oca/disk-errors.json``, shared by
every process using the disk) is read and written by :mod:`oca.storage.errorlog`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

__all__ = [
    "DiskErrors",
    "ErrorLimit",
    "Hold",
    "ReadError",
    "ReadErrorDecision",
    "hold_reason",
    "judge_read_error",
]


@dataclass(frozen=True, slots=True)
class ReadError:
    """One object of the disk that failed to read."""

    path: str
    at: float  # unix seconds
    detail: str  # the error, as describe_os_error says it


@dataclass(frozen=True, slots=True)
class Hold:
    """The disk is failed by the error limit, whatever its probe says, while active."""

    since: float
    until: float | None  # None: until an operator clears it
    reason: str

    def active(self, now: float) -> bool:
        return self.until is None or now < self.until


@dataclass(frozen=True, slots=True)
class DiskErrors:
    """One disk's error log: recent unreadable objects, and its hold if any."""

    errors: tuple[ReadError, ...] = ()
    hold: Hold | None = None


@dataclass(frozen=True, slots=True)
class ErrorLimit:
    """``storage.disk_error_limit``, ``_window_seconds`` and ``_hold_seconds``."""

    limit: int  # distinct unreadable objects tolerated within the window
    window_seconds: float
    hold_seconds: float  # 0: until an operator clears it


@dataclass(frozen=True, slots=True)
class ReadErrorDecision:
    verdict: Literal["quarantine", "fail"]
    errors: DiskErrors  # the log to save
    recent: int  # distinct objects that failed within the window, this one included
    reason: str  # why the disk fails; "" for "quarantine"


def hold_reason(log: DiskErrors, now: float) -> str | None:
    """Why the disk is held failed at ``now``, or None."""
    if log.hold is not None and log.hold.active(now):
        return log.hold.reason
    return None


def judge_read_error(
    log: DiskErrors, path: str, detail: str, now: float, limit: ErrorLimit
) -> ReadErrorDecision:
    """Reading ``path`` failed with ``detail`` at ``now`` while the disk's probe passes:
    quarantine the object, or fail the disk (see the module docstring).

    Errors older than the window are forgotten; a path already in the window counts
    once (several workers, or several requests, meet the same bad object). Failing the
    disk starts a hold and clears the errors: once the hold is over the disk starts
    counting afresh, rather than failing again on its first error.
    """
    held = hold_reason(log, now)
    # An error noted "after" now counts too: processes take their clocks before waiting
    # for the disk lock, so the log is not in the order of their ``now``.
    recent = tuple(e for e in log.errors if now - e.at < limit.window_seconds)
    if held is not None:
        return ReadErrorDecision("fail", DiskErrors(recent, log.hold), len(recent), held)
    recent = (*(e for e in recent if e.path != path), ReadError(path, now, detail))
    if len(recent) <= limit.limit:
        return ReadErrorDecision("quarantine", DiskErrors(recent), len(recent), "")
    until = now + limit.hold_seconds if limit.hold_seconds > 0 else None
    reason = (
        f"{len(recent)} objects failed to read within {limit.window_seconds:g}s, more than "
        f"storage.disk_error_limit = {limit.limit} (latest {path}: {detail}); held failed "
        + (f"until {_utc(until)}" if until is not None else "until an operator clears it")
    )
    return ReadErrorDecision("fail", DiskErrors((), Hold(now, until, reason)), len(recent), reason)


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
