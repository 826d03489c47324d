"""A disk's read-error log on the disk itself: ``R/.oca/disk-errors.json`` (adapter).

Theory of operation
-------------------
Every process using a disk (the ``oca serve`` workers, the supervisor's heartbeat,
``oca store``, the fill) must agree on which of its objects failed to read and on
whether the error limit holds it failed (:mod:`oca.storage.errorlimit`), so the log
lives on the disk, next to its index, and travels with it. Writers change it under
the disk's flock (read, decide, write a temp file, fsync, rename, fsync the
directory); readers never lock: they see the old file or the new one. A disk with no
such file has no recent errors and no hold, which is also how an operator clears a
hold: by removing the file.

A file that does not parse (a torn write cannot happen, but a hand edit can) is
ignored with a warning and replaced by the next writer: the log only ever adds
caution, so losing it costs at most a few more quarantined objects before the limit
trips.
"""

from __future__ import annotations

import logging
import os
import secrets
from contextlib import suppress
from typing import Any, Final

import orjson

from oca.storage.errorlimit import DiskErrors, Hold, ReadError, hold_reason
from oca.storage.inventory import DiskLayout, describe_os_error, fsync_dir, write_all

__all__ = ["ERRORS_FILE", "errors_path", "held_reason", "load_errors", "save_errors"]

log = logging.getLogger("oca.storage")

ERRORS_FILE: Final = "disk-errors.json"
_SCHEMA: Final = "oca.disk-errors"


def errors_path(layout: DiskLayout) -> str:
    return os.path.join(layout.meta, ERRORS_FILE)


def load_errors(layout: DiskLayout) -> DiskErrors:
    """The disk's error log (empty when it has none). Raises OSError if unreadable."""
    path = errors_path(layout)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return DiskErrors()
    try:
        return _decode(orjson.loads(data))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        log.warning("disk %s: ignoring its unusable error log %s: %s", layout.root, path, exc)
        return DiskErrors()


def save_errors(layout: DiskLayout, errors: DiskErrors) -> None:
    """Replace the log atomically (the caller holds the disk lock); an empty log with no
    hold removes the file."""
    path = errors_path(layout)
    if not errors.errors and errors.hold is None:
        with suppress(FileNotFoundError):
            os.unlink(path)
        return
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        try:
            write_all(fd, orjson.dumps(_encode(errors), option=orjson.OPT_APPEND_NEWLINE))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(layout.meta)


def held_reason(layout: DiskLayout, now: float) -> str | None:
    """Why the disk must stay failed at ``now`` (held by the error limit, or its log
    cannot be read), or None (blocking: one small read, none when there is no log)."""
    try:
        return hold_reason(load_errors(layout), now)
    except OSError as exc:
        return f"its error log cannot be read: {describe_os_error(exc)}"


def _encode(errors: DiskErrors) -> dict[str, Any]:
    h = errors.hold
    return {
        "schema": _SCHEMA,
        "errors": [[e.path, e.at, e.detail] for e in errors.errors],
        "hold": None if h is None else {"since": h.since, "until": h.until, "reason": h.reason},
    }


def _decode(doc: Any) -> DiskErrors:
    if not isinstance(doc, dict) or doc.get("schema") != _SCHEMA:
        raise ValueError("not an oca.disk-errors document")
    errors = tuple(
        ReadError(str(path), float(at), str(detail)) for path, at, detail in doc["errors"]
    )
    h = doc["hold"]
    hold = None
    if h is not None:
        until = h["until"]
        hold = Hold(float(h["since"]), None if until is None else float(until), str(h["reason"]))
    return DiskErrors(errors, hold)
