"""Reading what other processes leave behind: the fill's state and the workers' metrics.

- *Fill.* ``oca fill`` holds an exclusive flock on ``<state_dir>/fill/lock`` while it
  runs, saves its counters to ``<state_dir>/fill/metrics.json`` when it starts and
  ends, and publishes ``oca_fill_running`` in ``<state_dir>/metrics.d/fill.prom``. The
  lock is found in ``/proc/locks`` (by device and inode) rather than by trying to take
  it, since taking it even briefly could make a starting fill believe another one runs.
  A ``fill.prom`` that still says running while nobody holds the lock means the last
  fill stopped without finishing.
- *Connections.* Each worker writes a metrics snapshot every second
  (:mod:`oca.server.metrics`); the sum of the live workers' ``open_connections``
  gauges is the appliance's connection count, with no socket table walk.
"""

from __future__ import annotations

import os

from oca.health.verdict import FillHealth
from oca.server.metrics import read_snapshots

__all__ = ["fill_health", "flock_holder", "open_connections"]


def flock_holder(path: str, locks_file: str = "/proc/locks") -> int | None:
    """The pid holding a flock on ``path`` (per /proc/locks), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open(locks_file, encoding="ascii", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                # "1: FLOCK  ADVISORY  WRITE 1855 fe:00:2302020 0 EOF" (blocked waiters
                # carry a "->" after the number and are not holders)
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == ident:
                    return int(fields[4]) if fields[4].isdigit() else 0
    except OSError:
        return None
    return None


def _prom_value(path: str, name: str) -> float | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(name + " "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def fill_health(state_dir: str) -> FillHealth:
    """The fill's state as the files it leaves show it (blocking, cheap)."""
    fill_dir = os.path.join(state_dir, "fill")
    try:
        last: float | None = os.stat(os.path.join(fill_dir, "metrics.json")).st_mtime
    except OSError:
        last = None
    holder = flock_holder(os.path.join(fill_dir, "lock"))
    if holder is not None:
        return FillHealth("running", last, "")
    running = _prom_value(os.path.join(state_dir, "metrics.d", "fill.prom"), "oca_fill_running")
    if running:
        return FillHealth(
            "idle", last, "the last fill stopped without finishing (killed or crashed)"
        )
    return FillHealth("idle", last, "")


def open_connections(metrics_dir: str) -> int:
    """Open client connections over the live workers, from their snapshots."""
    total = 0.0
    for alive, snap in read_snapshots(metrics_dir, skip=""):
        gauges = snap.get("gauges")
        if alive and isinstance(gauges, dict):
            value = gauges.get("open_connections", 0)
            if isinstance(value, int | float):
                total += value
    return int(total)
