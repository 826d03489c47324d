"""CPU and memory accounting around one benchmark run, and the statistics quoted.

CPU figures are percent of one core over the run's wall time:

- *server*: user+system time of the server's worker processes (psutil);
- *client*: user+system time of the wrk processes, read from ``RUSAGE_CHILDREN`` (wrk
  is reaped inside the window, and it is the only child that exits there);
- *harness*: this process (the page-cache dropper thread runs here);
- *irq*: interrupt and softirq time system-wide (loopback TCP work is often accounted
  here rather than to a process);
- *other*: everything else that was busy (``/proc/stat`` user+nice+system+steal minus
  the above). A high *other* means something else on the machine was competing with
  the run, which is then retried.
"""

from __future__ import annotations

import resource
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psutil  # type: ignore[import-untyped, unused-ignore]


@dataclass(frozen=True)
class Spread:
    median: float
    min: float
    max: float


def spread(values: Sequence[float]) -> Spread:
    if not values:
        return Spread(0.0, 0.0, 0.0)
    return Spread(float(statistics.median(values)), float(min(values)), float(max(values)))


def process_cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    out: dict[int, float] = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[pid] = float(t.user + t.system)
    return out


def _children_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _self_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _system_busy() -> tuple[float, float]:
    """(busy seconds excluding irq, irq+softirq seconds), summed over CPUs."""
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "steal", 0.0)
    irq = getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return float(busy), float(irq)


@dataclass(frozen=True)
class CpuUsage:
    wall_s: float
    server_pct: float
    client_pct: float
    harness_pct: float
    irq_pct: float
    other_pct: float
    workers_changed: bool  # a worker exited or was replaced during the run


class CpuWindow:
    """Start before the load generator, :meth:`finish` after it was reaped."""

    def __init__(self, server_pids: Sequence[int]) -> None:
        self._pids = list(server_pids)
        self._server0 = process_cpu_seconds(self._pids)
        self._children0 = _children_cpu_seconds()
        self._self0 = _self_cpu_seconds()
        self._busy0, self._irq0 = _system_busy()
        self._t0 = time.monotonic()

    def finish(self, server_pids_now: Sequence[int]) -> CpuUsage:
        server1 = process_cpu_seconds(self._pids)
        busy1, irq1 = _system_busy()
        wall = max(time.monotonic() - self._t0, 1e-6)
        client = _children_cpu_seconds() - self._children0
        harness = _self_cpu_seconds() - self._self0
        server = sum(server1[p] - self._server0[p] for p in server1 if p in self._server0)
        other = (busy1 - self._busy0) - server - client - harness
        changed = sorted(server_pids_now) != sorted(self._pids) or len(server1) != len(self._pids)

        def pct(seconds: float) -> float:
            return round(100.0 * max(seconds, 0.0) / wall, 1)

        return CpuUsage(
            wall_s=round(wall, 3),
            server_pct=pct(server),
            client_pct=pct(client),
            harness_pct=pct(harness),
            irq_pct=pct(irq1 - self._irq0),
            other_pct=pct(other),
            workers_changed=changed,
        )


def rss_bytes(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += int(psutil.Process(pid).memory_info().rss)
        except psutil.Error:
            continue
    return total


class RssSampler:
    """Sample the summed RSS of ``pids()`` every ``interval`` seconds in a thread."""

    def __init__(self, pids: Callable[[], Sequence[int]], interval: float = 1.0) -> None:
        self._pids = pids
        self.interval = interval
        self.samples: list[tuple[float, int]] = []  # (seconds since start, bytes)
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._lock = threading.Lock()

    def sample(self) -> int:
        value = rss_bytes(self._pids())
        with self._lock:
            self.samples.append((round(time.monotonic() - self._t0, 2), value))
        return value

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def snapshot(self) -> list[tuple[float, int]]:
        with self._lock:
            return list(self.samples)
