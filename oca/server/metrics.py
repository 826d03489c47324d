"""Prometheus metrics for the data plane, cheap on the hot path and summed over workers.

Theory of operation: a request handler must not pay for metric bookkeeping (the
budget on a 64 KiB range is a few tens of microseconds), so each worker counts in
plain Python integers (:class:`WorkerMetrics`). Once a second the worker writes a
small JSON snapshot of its counters to ``<state_dir>/metrics/worker-<slot>-<pid>.json``
(atomic rename). ``/metrics`` on any worker reads every snapshot and renders the sums in
the Prometheus text format through prometheus-client's exposition code.

Counters and the latency histogram are summed from the snapshot files alone, this
worker's own file included, never from its live counters: scrapes land on whichever
worker the kernel picks, and if each added its own fresher counts to the others'
older files, consecutive scrapes answered by different workers would see a counter go
backwards, which Prometheus reads as a reset and then counts the whole value again.
Every worker summing the same files, each of which only grows, keeps counters
monotonic at the price of up to one snapshot interval of delay. Gauges use this
worker's live values plus the other live workers' snapshots. Snapshots of dead
workers keep counting towards counters but not towards gauges; the supervisor marks
them dead by renaming them to ``dead-*.json``.

Names follow STYLE.md: ``oca_`` prefix, base units, counters end in ``_total``,
low-cardinality labels only (status code, tier, send method: never a path or an IP).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

# Upper bounds of the latency histogram (seconds): from first request byte parsed to
# last response byte handed to the kernel.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

COUNTERS = (
    "requests",  # by status code
    "sent_bytes",  # body bytes by tier
    "send_method_bytes",  # body bytes by method: sendfile / copy
    "cold_reads",  # spans pulled into the page cache off the loop
    "token_rejections",  # by reason
    "disk_failures",  # by tier
    "connections_accepted",
    "connections_refused",  # over max_connections
    "timeouts",  # by kind: header / keepalive / send
    "miss_requests",  # requests that missed, by outcome
    "miss_transfers",  # upstream transfers, by result
    "miss_installs",  # fetched objects kept, by result
    "upstream_bytes",  # bytes pulled on misses, by source
    "peer_requests",  # object requests to peers, by result
    "origin_requests",  # object requests to the origin, by result
    "peer_auth_rejections",  # peer requests refused, by reason
    "quarantined",  # objects taken out of service, by tier, disk and reason (join_labels)
)
# Separates the values of a counter with several labels in its snapshot key.
LABEL_SEPARATOR = "\x1f"


def join_labels(*values: str) -> str:
    """The snapshot key of one series of a counter with several labels."""
    return LABEL_SEPARATOR.join(values)


class WorkerMetrics:
    """One worker's live counters; every field is a plain dict of label -> number."""

    __slots__ = ("counters", "gauges", "latency_buckets", "latency_count", "latency_sum")

    def __init__(self) -> None:
        self.counters: dict[str, dict[str, float]] = {name: {} for name in COUNTERS}
        self.gauges: dict[str, float] = {"open_connections": 0, "ktls_available": 0, "ready": 0}
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0

    def inc(self, counter: str, label: str, amount: float = 1) -> None:
        d = self.counters[counter]
        d[label] = d.get(label, 0) + amount

    def observe_latency(self, seconds: float) -> None:
        self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self.latency_count += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "counters": self.counters,
            "gauges": self.gauges,
            "latency": {
                "buckets": self.latency_buckets,
                "sum": self.latency_sum,
                "count": self.latency_count,
            },
        }


def write_snapshot(directory: str, name: str, data: dict[str, Any]) -> None:
    """Atomically replace ``directory/name`` with ``data`` (blocking; run in a thread)."""
    tmp = os.path.join(directory, f".{name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(orjson.dumps(data))
    os.replace(tmp, os.path.join(directory, name))


def read_snapshots(directory: str, skip: str) -> list[tuple[bool, dict[str, Any]]]:
    """(alive, snapshot) for every snapshot file except ``skip``; unreadable ones ignored."""
    return [(alive, data) for name, alive, data in _read_named(directory) if name != skip]


def _load(path: str) -> dict[str, Any] | None:
    try:
        data = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _read_named(directory: str) -> list[tuple[str, bool, dict[str, Any]]]:
    """(live name, alive, snapshot) for every worker that wrote a snapshot.

    The supervisor renames ``worker-<slot>-<pid>.json`` to ``dead-<slot>-<pid>.json``
    when the worker exits, possibly between the listing and the read: a vanished live
    file is read under its dead name, and a worker listed under both names counts once.
    """
    out: list[tuple[str, bool, dict[str, Any]]] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return out
    seen: set[str] = set()
    for name in sorted(names, key=lambda n: not n.startswith("dead-")):  # dead ones first
        if not name.endswith(".json") or not name.startswith(("worker-", "dead-")):
            continue
        ident = name.partition("-")[2]  # "<slot>-<pid>.json"
        if ident in seen:
            continue
        alive = name.startswith("worker-")
        data = _load(os.path.join(directory, name))
        if data is None and alive:
            alive = False
            data = _load(os.path.join(directory, f"dead-{ident}"))
        if data is None:
            continue
        seen.add(ident)
        out.append((f"worker-{ident}", alive, data))
    return out


_COUNTER_HELP: dict[str, tuple[str, str | tuple[str, ...], str]] = {
    # key: (metric name without _total, label name (or names: see join_labels), help)
    "requests": ("oca_http_requests", "code", "HTTP responses sent, by status code."),
    "sent_bytes": ("oca_sent_bytes", "tier", "Response body bytes sent, by storage tier."),
    "send_method_bytes": (
        "oca_send_method_bytes",
        "method",
        "Response body bytes by send path: sendfile (zero-copy) or copy (TLS/fallback).",
    ),
    "cold_reads": ("oca_cold_reads", "tier", "Spans read into the page cache off the event loop."),
    "token_rejections": ("oca_token_rejections", "reason", "Requests refused for a bad token."),
    "disk_failures": (
        "oca_disk_failures",
        "tier",
        "Disks marked failed while serving (by a probe, a read error, the error limit or an "
        "index refresh), counted by each worker that failed them.",
    ),
    "connections_accepted": ("oca_connections_accepted", "listener", "Connections accepted."),
    "connections_refused": (
        "oca_connections_refused",
        "listener",
        "Connections refused because max_connections was reached.",
    ),
    "timeouts": (
        "oca_timeouts",
        "kind",
        "Connections closed by a timeout (header, keepalive, send).",
    ),
    "miss_requests": (
        "oca_miss_requests",
        "outcome",
        "Requests for objects not held: started a transfer, coalesced onto one, answered "
        "from the negative cache, or cut when the transfer failed after the headers.",
    ),
    "miss_transfers": (
        "oca_miss_transfers",
        "result",
        "Upstream transfers of missed objects, by result.",
    ),
    "miss_installs": (
        "oca_miss_installs",
        "result",
        "Missed objects kept after their transfer (installed, no-room, failed).",
    ),
    "upstream_bytes": (
        "oca_upstream_bytes",
        "source",
        "Bytes fetched on misses, by source (peer, origin).",
    ),
    "peer_requests": (
        "oca_peer_requests",
        "result",
        "Object requests this appliance sent to its peers (ok = peer hit, not-found = miss).",
    ),
    "origin_requests": (
        "oca_origin_requests",
        "result",
        "Object requests this appliance sent to the origin, by result.",
    ),
    "peer_auth_rejections": (
        "oca_peer_auth_rejections",
        "reason",
        "Requests with a peer header that were refused, by reason.",
    ),
    "quarantined": (
        "oca_objects_quarantined",
        ("tier", "disk", "reason"),
        "Objects quarantined (out of the index, moved to .oca/quarantine/): reason "
        "read-error (it could not be read) or checksum (its bytes did not match).",
    ),
}


class AggregateCollector(Collector):
    """Sums the workers' snapshots (counters) and live values (gauges), see above."""

    def __init__(
        self,
        live: WorkerMetrics,
        directory: str,
        own_name: str,
        extra: Iterable[Collector] = (),
    ) -> None:
        self.live = live
        self.directory = directory
        self.own_name = own_name
        self.extra = list(extra)

    def collect(self) -> Iterator[Any]:
        files = _read_named(self.directory)
        snaps = [(alive, s) for _name, alive, s in files]  # counters: files only, see above
        others = [(alive, s) for name, alive, s in files if name != self.own_name]
        live = [(True, self.live.snapshot()), *others]  # gauges: live where it can be
        for key, (name, label, doc) in _COUNTER_HELP.items():
            labels = [label] if isinstance(label, str) else list(label)
            fam = CounterMetricFamily(name, doc, labels=labels)
            totals: dict[str, float] = {}
            for _alive, s in snaps:
                for lv, v in s.get("counters", {}).get(key, {}).items():
                    totals[lv] = totals.get(lv, 0) + v
            for lv in sorted(totals):
                values = lv.split(LABEL_SEPARATOR) if len(labels) > 1 else [lv]
                if len(values) == len(labels):
                    fam.add_metric(values, totals[lv])
            yield fam
        conns = sum(s.get("gauges", {}).get("open_connections", 0) for alive, s in live if alive)
        yield GaugeMetricFamily(
            "oca_open_connections", "Client connections currently open (all workers).", value=conns
        )
        workers = sum(1 for alive, _ in live if alive)
        yield GaugeMetricFamily("oca_workers", "Worker processes reporting metrics.", value=workers)
        yield GaugeMetricFamily(
            "oca_ktls_available",
            "1 if the kernel offers the tls ULP (kernel TLS), else 0.",
            value=self.live.gauges.get("ktls_available", 0),
        )
        buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        total_sum = 0.0
        for _alive, s in snaps:
            lat = s.get("latency", {})
            for i, c in enumerate(lat.get("buckets", [])[: len(buckets)]):
                buckets[i] += c
            total_sum += lat.get("sum", 0.0)
        cumulative = []
        running = 0
        for bound, c in zip((*LATENCY_BUCKETS, float("inf")), buckets, strict=True):
            running += c
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        h = HistogramMetricFamily(
            "oca_http_request_duration_seconds",
            "Time from a request's first byte to its last response byte handed to the kernel.",
        )
        h.add_metric([], cumulative, total_sum)
        yield h
        for c in self.extra:
            yield from c.collect()


class TextfileCollector(Collector):
    """The ``*.prom`` files of a directory (``<state_dir>/metrics.d``), re-read per scrape.

    Other processes of the appliance that do not serve HTTP, the fill agent first,
    publish their metrics there, in the text format, by atomic rename (the textfile
    collector convention of node_exporter). Only ``oca_*`` families are taken; a file
    that does not parse is skipped and counted in ``oca_textfile_errors``.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Any]:
        errors = 0
        try:
            names = sorted(n for n in os.listdir(self.directory) if n.endswith(".prom"))
        except OSError:
            names = []
        seen: set[str] = set()
        for name in names:
            try:
                text = Path(self.directory, name).read_text(encoding="utf-8")
                families = list(text_string_to_metric_families(text))
            except (OSError, ValueError, UnicodeDecodeError):
                errors += 1
                continue
            for fam in families:
                if fam.name.startswith("oca_") and fam.name not in seen:
                    seen.add(fam.name)
                    yield fam
        yield GaugeMetricFamily(
            "oca_textfile_errors",
            "metrics.d/*.prom files that could not be read or parsed at this scrape.",
            value=errors,
        )


def render(collector: Collector) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
