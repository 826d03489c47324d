"""Fill counters: kept across runs in ``<state_dir>/fill/metrics.json`` and published as
a Prometheus text file, ``<state_dir>/metrics.d/fill.prom``, that the appliance's
``/metrics`` includes (like node_exporter's textfile collector).

Counters only ever grow, across runs too: each run starts from the saved totals.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from steering.files import write_atomic

_COUNTERS: dict[str, tuple[str, str, str]] = {
    "bytes": ("oca_fill_bytes", "source", "Bytes received by the fill, by source (peer, origin)."),
    "objects": (
        "oca_fill_objects",
        "result",
        "Objects the fill finished, by result (done, failed).",
    ),
    "source_errors": (
        "oca_fill_source_errors",
        "source",
        "Failed transfers and wrong bytes, by source kind.",
    ),
    "evicted_bytes": ("oca_fill_evicted_bytes", "", "Bytes the fill evicted to make room."),
}


class FillMetrics(Collector):
    def __init__(self, state_dir: str) -> None:
        self.state_path = os.path.join(state_dir, "fill", "metrics.json")
        self.prom_path = os.path.join(state_dir, "metrics.d", "fill.prom")
        self.counters: dict[str, dict[str, float]] = {k: {} for k in _COUNTERS}
        self.last_success = 0.0
        self.running = 0.0
        self.remaining_bytes = 0.0
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            with open(self.state_path, "rb") as fh:
                saved: Any = orjson.loads(fh.read())
            for k in _COUNTERS:
                for label, v in dict(saved["counters"].get(k, {})).items():
                    self.counters[k][str(label)] = float(v)
            self.last_success = float(saved.get("last_success", 0.0))

    def inc(self, counter: str, label: str, amount: float = 1) -> None:
        d = self.counters[counter]
        d[label] = d.get(label, 0) + amount

    def set_last_success(self, when: float) -> None:
        self.last_success = max(self.last_success, when)

    def collect(self) -> Iterator[Any]:
        for key, (name, label, doc) in _COUNTERS.items():
            fam = CounterMetricFamily(name, doc, labels=[label] if label else None)
            values = self.counters[key]
            if label:
                for lv in sorted(values):
                    fam.add_metric([lv], values[lv])
            else:
                fam.add_metric([], values.get("", 0.0))
            yield fam
        yield GaugeMetricFamily(
            "oca_fill_last_success_timestamp_seconds",
            "When the fill last stored an object (unix time).",
            value=self.last_success,
        )
        yield GaugeMetricFamily("oca_fill_running", "1 while a fill runs.", value=self.running)
        yield GaugeMetricFamily(
            "oca_fill_remaining_bytes",
            "Bytes the running (or last) fill still had to fetch.",
            value=self.remaining_bytes,
        )

    def save(self) -> None:
        """Write both files atomically (a reader sees the old or the new file)."""
        state = {"counters": self.counters, "last_success": self.last_success}
        _write_atomic(self.state_path, orjson.dumps(state))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        _write_atomic(self.prom_path, generate_latest(registry))


def _write_atomic(path: str, data: bytes) -> None:
    """:func:`steering.files.write_atomic` (temp file, fsync, rename, fsync of the
    directory), creating the directory first."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, data, prefix=".tmp-")
