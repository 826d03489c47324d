"""How busy the appliance is: NIC throughput against link capacity, and CPU.

Theory of operation
-------------------
The steering service passes over an appliance whose ``load_fraction`` reaches its
overload threshold, so the number must track what runs out first on a video edge
cache: the link, and on small-range workloads the CPU. :class:`LoadSampler` reads the
kernel's per-NIC byte counters (psutil) at each heartbeat and turns the difference
since the previous sample into bits per second, per direction, over the counted
interfaces (``steering.interfaces``, or every non-loopback interface that is up).
The busier direction counts: a full-duplex link has its capacity in each direction,
and serving is transmit while a fill is receive. Capacity is
``steering.link_capacity_bits`` or, when 0, the sum of the counted NICs' reported
speeds; virtual NICs report none, and then only the CPU counts (logged once).
CPU is the system-wide busy fraction since the previous sample.

:func:`load_fraction` is ``max(nic bits / capacity, cpu)``, the figure the steering
wire format defines.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import psutil

__all__ = ["LoadSample", "LoadSampler", "load_fraction"]

log = logging.getLogger("oca.health")


def load_fraction(nic_bits_per_second: float, capacity_bits: float, cpu_fraction: float) -> float:
    """``max(nic / capacity, cpu)``, ignoring the NIC when the capacity is unknown (pure)."""
    nic = nic_bits_per_second / capacity_bits if capacity_bits > 0 else 0.0
    return max(nic, cpu_fraction, 0.0)


@dataclass(frozen=True, slots=True)
class LoadSample:
    nic_bits_per_second: float
    link_capacity_bits_per_second: float
    cpu_fraction: float
    problems: tuple[str, ...] = ()

    @property
    def load_fraction(self) -> float:
        return load_fraction(
            self.nic_bits_per_second, self.link_capacity_bits_per_second, self.cpu_fraction
        )


class LoadSampler:
    """See the module docstring; ``sample`` takes a monotonic time."""

    def __init__(self, interfaces: Sequence[str], link_capacity_bits: int) -> None:
        self._configured = tuple(interfaces)
        self._capacity = link_capacity_bits
        self._last: tuple[float, int, int] | None = None  # (time, sent, received)
        self._warned_capacity = False
        psutil.cpu_percent(interval=None)  # starts the CPU measurement

    def _interfaces(self) -> tuple[list[str], list[str], dict[str, int]]:
        """(interfaces counted, problems, speed in Mbit/s by interface)."""
        stats = psutil.net_if_stats()
        problems: list[str] = []
        if self._configured:
            names = [n for n in self._configured if n in stats]
            problems += [
                f"interface {n} (steering.interfaces) does not exist"
                for n in self._configured
                if n not in stats
            ]
        else:
            names = [
                n
                for n, s in stats.items()
                if s.isup and "loopback" not in getattr(s, "flags", "") and n != "lo"
            ]
        return names, problems, {n: stats[n].speed for n in names}

    def sample(self, now: float) -> LoadSample:
        names, problems, speeds = self._interfaces()
        counters = psutil.net_io_counters(pernic=True)
        sent = sum(counters[n].bytes_sent for n in names if n in counters)
        received = sum(counters[n].bytes_recv for n in names if n in counters)
        bits = 0.0
        if self._last is not None:
            t0, s0, r0 = self._last
            dt = now - t0
            if dt > 0:
                # A counter that went backwards (an interface re-created) counts as idle.
                bits = max(sent - s0, received - r0, 0) * 8 / dt
        self._last = (now, sent, received)
        capacity = float(self._capacity or sum(max(v, 0) for v in speeds.values()) * 1_000_000)
        if capacity <= 0 and not self._warned_capacity:
            self._warned_capacity = True
            log.warning(
                "link capacity unknown: no counted interface (%s) reports a speed; the load "
                "reported to steering counts CPU only (set steering.link_capacity_bits)",
                ", ".join(names) or "none",
            )
        cpu = psutil.cpu_percent(interval=None) / 100.0
        return LoadSample(bits, capacity, min(max(cpu, 0.0), 1.0), tuple(problems))
