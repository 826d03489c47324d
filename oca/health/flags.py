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
- ``<state_dir>/run/steering.json`` is what the heartbeat reporter knows about its
  contact with the steering service, rewritten (by rename) every cycle: each URL's
  latest outcome, its last successful heartbeat, and the grace state. It names the
  supervisor's pid, so a reader can tell it from a file left by an earlier run; the
  reporter removes it when it stops. ``oca status`` reads it.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any, Literal, TextIO, TypedDict, cast

import orjson

from oca.config import Config, appliance_id

__all__ = [
    "DrainState",
    "SteeringStatusJSON",
    "SteeringURLJSON",
    "clear_refusal",
    "clear_steering_status",
    "drain_path",
    "read_drain",
    "read_refusal",
    "read_steering_status",
    "refusal_path",
    "run_drain",
    "set_drain",
    "steering_status_path",
    "write_refusal",
    "write_steering_status",
]


def drain_path(state_dir: str) -> str:
    return os.path.join(state_dir, "drain.json")


def refusal_path(state_dir: str) -> str:
    return os.path.join(state_dir, "run", "steering-refusing")


@dataclass(frozen=True, slots=True)
class DrainState:
    draining: bool
    since: float | None = None


def _write_atomic(path: str, data: bytes, *, durable: bool = True) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
            if durable:
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


# --------------------------------------------------------------------------- steering


def steering_status_path(state_dir: str) -> str:
    return os.path.join(state_dir, "run", "steering.json")


class SteeringURLJSON(TypedDict):
    url: str
    state: Literal["ok", "failing", "unknown"]  # the latest heartbeat's outcome
    reason: str  # why the latest heartbeat failed; "" otherwise
    last_ok_at: float | None  # when a heartbeat to this URL last succeeded (unix s)
    last_attempt_at: float | None  # when the latest heartbeat's outcome was known


class SteeringStatusJSON(TypedDict):
    pid: int  # the supervisor's
    updated_at: float
    interval_seconds: float
    contact: Literal["up", "lost", "over"]  # see oca.health.contact
    contacted: bool  # some heartbeat succeeded since the start
    last_ok_at: float  # last successful heartbeat to any URL, else the start
    grace_seconds: float
    policy: Literal["serve", "stop"]
    refusing: str  # why content is refused now; "" while it is served
    urls: list[SteeringURLJSON]


def write_steering_status(state_dir: str, doc: SteeringStatusJSON) -> None:
    """Replace the steering status file (blocking). Not fsynced: it is rewritten every
    cycle and means nothing after a crash."""
    _write_atomic(steering_status_path(state_dir), orjson.dumps(doc), durable=False)


def clear_steering_status(state_dir: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(steering_status_path(state_dir))


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _optional_number(v: Any) -> bool:
    return v is None or _number(v)


def read_steering_status(state_dir: str) -> SteeringStatusJSON | None:
    """The steering status file, or None when it is missing or not of this format."""
    try:
        with open(steering_status_path(state_dir), "rb") as fh:
            doc = orjson.loads(fh.read())
    except (OSError, orjson.JSONDecodeError):
        return None
    if not (
        isinstance(doc, dict)
        and isinstance(doc.get("pid"), int)
        and all(_number(doc.get(k)) for k in ("updated_at", "interval_seconds", "last_ok_at"))
        and _number(doc.get("grace_seconds"))
        and doc.get("contact") in ("up", "lost", "over")
        and doc.get("policy") in ("serve", "stop")
        and isinstance(doc.get("contacted"), bool)
        and isinstance(doc.get("refusing"), str)
        and isinstance(doc.get("urls"), list)
    ):
        return None
    for u in doc["urls"]:
        if not (
            isinstance(u, dict)
            and isinstance(u.get("url"), str)
            and u.get("state") in ("ok", "failing", "unknown")
            and isinstance(u.get("reason"), str)
            and _optional_number(u.get("last_ok_at"))
            and _optional_number(u.get("last_attempt_at"))
        ):
            return None
    return cast(SteeringStatusJSON, doc)
