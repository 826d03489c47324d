"""The nightly fill window in local wall-clock time (pure: the time is an argument).

A window ``"02:00-14:00"`` recurs every day; one that ends before it starts
(``"22:00-06:00"``) wraps midnight. So that a fleet does not hit the origin at the same
second, each appliance starts late by a fixed offset in ``[0, jitter]`` derived from its
name (stable across runs, spread across appliances); the end is the same for all.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class WindowState:
    inside: bool
    end: datetime | None  # the end of the current window when inside
    next_start: datetime  # the next start (after ``end`` when inside)


def jitter_offset(name: str, jitter_seconds: float) -> float:
    """A stable offset in ``[0, jitter_seconds]`` for the appliance called ``name``."""
    if jitter_seconds <= 0:
        return 0.0
    h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    return (h / 2**64) * jitter_seconds


def window_state(now: datetime, start_min: int, end_min: int, offset_seconds: float) -> WindowState:
    """Where ``now`` (naive local time) falls relative to the window."""
    length = (end_min - start_min) % 1440 or 1440
    offset = timedelta(seconds=min(offset_seconds, max(length * 60 - 60, 0)))
    today = datetime.combine(now.date(), datetime.min.time())
    for day in (-1, 0, 1):
        start = today + timedelta(days=day, minutes=start_min)
        end = start + timedelta(minutes=length)
        if start + offset <= now < end:
            return WindowState(True, end, start + timedelta(days=1) + offset)
    for day in (0, 1):
        start = today + timedelta(days=day, minutes=start_min) + offset
        if start > now:
            return WindowState(False, None, start)
    raise AssertionError("unreachable: a window starts every day")  # pragma: no cover
