"""Flag files that carry state between processes: drain, and refusing content.

- ``<state_dir>/drain.json`` exists while the appliance is draining. ``oca drain``
  writes it (temp file, fsync, rename) and ``oca drain --undrain`` removes it; it
  lives beside the disks' state rather than under ``run/`` so a drain outlasts a
  restart of the service (maintenance usually means restarts). The heartbeat reporter
  checks it every second and sends a heartbeat as soon as it changes.
- ``<state_dir>/run/steering-refusing`` exists while the steering grace period is over
  with ``unreachable_policy = "stop"``; it holds the reason. The supervisor's reporter
  writes and removes it; workers read it on their inventory refresh (never per request)
  and answer content requests with 503 while it exists. The supervisor removes a stale
  one at start.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import TextIO

import orjson

from oca.config import Config, appliance_id

__all__ = [
    "DrainState",
    "clear_refusal",
    "drain_path",
    "read_drain",
    "read_refusal",
    "refusal_path",
    "run_drain",
    "set_drain",
    "write_refusal",
]


def drain_path(state_dir: str) -> str:
    return os.path.join(state_dir, "drain.json")


def refusal_path(state_dir: str) -> str:
    return os.path.join(state_dir, "run", "steering-refusing")


@dataclass(frozen=True, slots=True)
class DrainState:
    draining: bool
    since: float | None = None


def _write_atomic(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_drain(state_dir: str) -> DrainState:
    """Whether the drain flag is set, and since when (its content, else its mtime)."""
    path = drain_path(state_dir)
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            data = fh.read()
    except FileNotFoundError:
        return DrainState(False)
    since = st.st_mtime
    with contextlib.suppress(orjson.JSONDecodeError, TypeError, ValueError):
        doc = orjson.loads(data)
        if isinstance(doc, dict) and isinstance(doc.get("since"), int | float):
            since = float(doc["since"])
    return DrainState(True, since)


def set_drain(state_dir: str, draining: bool, now: float) -> tuple[DrainState, DrainState]:
    """Set or clear the drain flag (blocking): (state before, state after)."""
    before = read_drain(state_dir)
    if draining:
        if before.draining:
            return before, before
        _write_atomic(drain_path(state_dir), orjson.dumps({"since": now}))
        return before, DrainState(True, now)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(drain_path(state_dir))
    return before, DrainState(False)


def _when(t: float | None) -> str:
    return (
        "an unknown time" if t is None else time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))
    )


def run_drain(cfg: Config, *, undrain: bool, out: TextIO) -> int:
    """``oca drain [--undrain]``: set or clear the flag and say what changed."""
    name = appliance_id(cfg)
    before, after = set_drain(cfg.server.state_dir, not undrain, time.time())
    if not undrain and before.draining:
        print(f"oca drain: appliance {name} was already draining (since {_when(before.since)})",
              file=out)  # fmt: skip
    elif not undrain:
        print(f"oca drain: appliance {name} is now draining: the steering service sends it no "
              "new players; the players it serves keep being served", file=out)  # fmt: skip
    elif before.draining:
        print(f"oca drain: appliance {name} was draining (since {_when(before.since)}), now "
              "it is not: the steering service may send it players again", file=out)  # fmt: skip
    else:
        print(f"oca drain: appliance {name} was not draining; nothing changed", file=out)
    if not cfg.steering.urls and before.draining != after.draining:
        print("oca drain: note: no [steering] urls are configured, so no steering service "
              "hears of this", file=out)  # fmt: skip
    return 0


def write_refusal(state_dir: str, reason: str) -> None:
    _write_atomic(refusal_path(state_dir), reason.encode("utf-8"))


def clear_refusal(state_dir: str) -> bool:
    """Remove the refusal flag; True if there was one."""
    try:
        os.unlink(refusal_path(state_dir))
    except FileNotFoundError:
        return False
    return True


def read_refusal(path: str) -> str | None:
    """The reason content is refused, or None (one failed open when it is not)."""
    try:
        with open(path, "rb") as fh:
            text = fh.read(4096).decode("utf-8", "replace").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"steering refusal flag {path} is unreadable: {exc.strerror}"
    return text or "steering unreachable: refusing new content requests"
