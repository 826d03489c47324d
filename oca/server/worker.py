"""One worker process: startup -> serve -> drain -> exit.

The supervisor (:mod:`oca.server.supervisor`) binds the listening sockets and starts
one worker per slot with ``python -m oca.server.worker``, handing over the sockets as
inherited descriptors and a JSON spec in ``OCA_WORKER_SPEC``. A worker:

1. loads the configuration and opens the store in a thread (the inventory is read,
   not rescanned, unless it is missing or corrupt);
2. starts serving on the inherited sockets and writes ``R`` to its ready pipe;
3. runs its control loops: a once-a-second sweep (connection deadlines, open-file
   TTL, metrics snapshot), the disk health probe and inventory refresh (both in the
   I/O pool, so the loop never touches a disk), and the access-log flusher;
4. on SIGTERM drains: stops accepting, lets in-flight responses finish for up to
   ``drain_timeout_seconds``, logs how many were cut, exits 0. SIGHUP reloads the
   URL-signing keys (a new verifier is built and swapped in).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import gc
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict

import aiohttp
import orjson
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from oca.auth.tokens import TokenVerifier
from oca.config import AuthKey, Config, appliance_id, load_auth_keys, load_config
from oca.errors import ConfigError, OcaError
from oca.health.flags import read_refusal, refusal_path
from oca.peering.known import KnownTable
from oca.peering.misses import MissFetcher, clean_stale_parts, clean_stale_transfers
from oca.peering.peers import PeerSet
from oca.peering.summary import InventorySummary
from oca.server.accesslog import AccessLog
from oca.server.fdbudget import plan_descriptors, soft_limit
from oca.server.files import OpenFile, OpenFileCache, open_object
from oca.server.handler import ContentHandler
from oca.server.metrics import (
    AggregateCollector,
    TextfileCollector,
    WorkerMetrics,
    join_labels,
    render,
    write_snapshot,
)
from oca.server.response import Response
from oca.server.tlsinfo import ktls_available, make_server_context
from oca.storage.inventory import ObjectRecord
from oca.storage.store import Store

log = logging.getLogger("oca.worker")


@dataclass(frozen=True)
class Listener:
    name: str  # "http", "https", "internal"
    sock: socket.socket
    tls: bool
    internal: bool


class DiskStatusJSON(TypedDict):
    tier: str
    path: str  # the disk root as configured
    state: str  # "ok" or "failed"
    reason: str  # why it is failed; "" when ok
    since: float | None  # when the state last changed (unix s)
    objects: int
    used_bytes: int
    capacity_bytes: int


class WorkerStatusJSON(TypedDict):
    """``/status``: one worker's view of the appliance (``oca status`` reads it)."""

    appliance: str
    site: str
    worker: int  # slot
    pid: int
    workers: int  # configured worker processes
    ready: bool
    reason: str  # why ready or not, as /readyz says
    refusing: str | None  # why content is refused (steering grace over), or None
    disks: list[DiskStatusJSON]
    peers: list[dict[str, Any]]  # as /peers


class PeersCollector(Collector):
    """This worker's view of its peers (each worker polls them itself)."""

    def __init__(self, state: WorkerState) -> None:
        self.state = state

    def collect(self) -> Any:
        up = GaugeMetricFamily(
            "oca_peer_up", "1 if the peer's summary is fresh, 0 if it is backed off or unknown.",
            labels=["peer"],
        )  # fmt: skip
        age = GaugeMetricFamily(
            "oca_peer_inventory_age_seconds",
            "Seconds since the peer's inventory summary was last confirmed.",
            labels=["peer"],
        )
        objs = GaugeMetricFamily(
            "oca_peer_objects", "Objects in the peer's last summary.", labels=["peer"]
        )
        for p in self.state.describe_peers():
            name = p["appliance"] or p["url"]
            up.add_metric([name], 1.0 if p["state"] == "up" else 0.0)
            if p["summary_age_seconds"] is not None:
                age.add_metric([name], p["summary_age_seconds"])
            if p["objects"] is not None:
                objs.add_metric([name], p["objects"])
        yield up
        yield age
        yield objs
        inflight = self.state.misses.inflight if self.state.misses is not None else {}
        yield GaugeMetricFamily(
            "oca_miss_transfers_in_flight", "Upstream miss transfers running now (this worker).",
            value=len(inflight),
        )  # fmt: skip


class StoreCollector(Collector):
    def __init__(self, state: WorkerState) -> None:
        self.state = state

    def collect(self) -> Any:
        up = GaugeMetricFamily("oca_disk_up", "1 if the disk is serving, 0 if failed.",
                               labels=["tier", "disk"])  # fmt: skip
        objs = GaugeMetricFamily("oca_store_objects", "Objects held, by tier.", labels=["tier"])
        used = GaugeMetricFamily("oca_store_used_bytes", "Bytes held, by tier.", labels=["tier"])
        cap = GaugeMetricFamily("oca_store_capacity_bytes", "Capacity, by tier.", labels=["tier"])
        per_tier: dict[str, list[int]] = {}
        for d in self.state.store.disks():
            up.add_metric([d.tier, d.root], 1.0 if d.state == "ok" else 0.0)
            t = per_tier.setdefault(d.tier, [0, 0, 0])
            if d.state == "ok":
                t[0] += d.objects
                t[1] += d.used_bytes
                t[2] += d.capacity_bytes
        for tier, (n, u, c) in sorted(per_tier.items()):
            objs.add_metric([tier], n)
            used.add_metric([tier], u)
            cap.add_metric([tier], c)
        yield from (up, objs, used, cap)


class WorkerState:
    """Everything a connection needs, owned by the worker's event loop."""

    def __init__(
        self,
        cfg: Config,
        loop: asyncio.AbstractEventLoop,
        store: Store,
        slot: int,
        has_internal_listener: bool,
        metrics_dir: str,
    ) -> None:
        self.cfg = cfg
        self.loop = loop
        self.store = store
        self.slot = slot
        self.pid = os.getpid()
        self.has_internal_listener = has_internal_listener
        self.connections: set[Any] = set()
        # server.max_connections and storage.open_file_cache_size, or fewer when the
        # open-file limit cannot hold them next to what disks and misses need (fdbudget).
        nofile = soft_limit()
        fds = plan_descriptors(
            nofile,
            max_connections=cfg.server.max_connections,
            open_file_cache_size=cfg.storage.open_file_cache_size,
            io_threads=cfg.storage.io_threads,
            upstream_connections=cfg.miss.max_upstream_connections,
            upstream_transfers=cfg.miss.max_upstream_transfers,
        )
        self.max_connections = fds.connections
        if fds.open_files < cfg.storage.open_file_cache_size or (
            fds.connections < cfg.server.max_connections
        ):
            log.warning(
                "worker %d holds at most %d client connections (server.max_connections = %d) "
                "and %d open files (storage.open_file_cache_size = %d), because the open-file "
                "limit is %d; beyond that new connections get 503 (raise LimitNOFILE or "
                "ulimit -n)", slot, fds.connections, cfg.server.max_connections,
                fds.open_files, cfg.storage.open_file_cache_size, nofile,
            )  # fmt: skip
        self.draining = False
        # Why content is refused (steering grace over, policy stop), or None; from the
        # supervisor's flag file, read on the inventory refresh (oca.health.flags).
        self.refusing: str | None = None
        self.refusal_path = refusal_path(cfg.server.state_dir)
        self.ready = False
        self.clock: Callable[[], float] = time.time
        self.metrics = WorkerMetrics()
        if cfg.tls.ktls == "auto":
            self.metrics.gauges["ktls_available"] = 1.0 if ktls_available() else 0.0
        self.metrics_dir = metrics_dir
        self.metrics_name = f"worker-{slot}-{self.pid}.json"
        self.collector = AggregateCollector(
            self.metrics,
            metrics_dir,
            self.metrics_name,
            extra=[
                StoreCollector(self),
                PeersCollector(self),
                TextfileCollector(os.path.join(cfg.server.state_dir, "metrics.d")),
            ],
        )
        self.files = OpenFileCache(
            fds.open_files, cfg.storage.open_file_cache_ttl_seconds, loop.time
        )
        self.io_pool = concurrent.futures.ThreadPoolExecutor(
            cfg.storage.io_threads, thread_name_prefix="oca-io"
        )
        self.verifier: TokenVerifier | None = None
        self.key_ids: list[str] = []
        self.access_log = AccessLog(cfg.server.access_log)
        # Peering and the miss path (oca.peering).
        self.appliance = appliance_id(cfg)
        self.peer_keys = [bytes.fromhex(k) for k in cfg.peering.keys]
        self.summary = InventorySummary(self.appliance, cfg.peering.site, secrets.token_hex(8))
        self.summary_generation = -1
        self.known = KnownTable(cfg.server.state_dir)
        self.peers: PeerSet | None = None
        if cfg.peering.peers:
            self.peers = PeerSet(
                cfg.peering.peers,
                me=self.appliance,
                key=self.peer_keys[0],
                refresh_seconds=cfg.peering.summary_refresh_seconds,
                timeout_seconds=cfg.peering.request_timeout_seconds,
                backoff_max_seconds=cfg.peering.backoff_max_seconds,
            )
        self.misses: MissFetcher | None = None
        if cfg.miss.enabled:
            self.misses = MissFetcher(
                cfg, store, self.known, self.peers, self.io_pool, self.metrics.inc
            )
        self.handler = ContentHandler(self)

    # ---------------------------------------------------------------- keys
    def load_keys(self) -> None:
        self._install_keys(load_auth_keys(self.cfg.auth))

    def _install_keys(self, keys: tuple[AuthKey, ...]) -> None:
        self.key_ids = sorted(k.id for k in keys)
        self.verifier = (
            TokenVerifier({k.id: bytes.fromhex(k.secret) for k in keys}) if keys else None
        )

    def reload_keys(self) -> None:
        """SIGHUP: re-read [auth] from the config file (and its keys_file)."""
        try:
            fresh = load_config(self.cfg.source or None)
            keys = load_auth_keys(fresh.auth)
        except ConfigError as exc:
            log.error("key reload failed, keeping the current keys: %s", exc)
            return
        before = self.key_ids
        self._install_keys(keys)
        log.warning("signing keys were %s, now %s, because of SIGHUP",
                    before or "none", self.key_ids or "none")  # fmt: skip

    # ---------------------------------------------------------------- health
    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        if self.refusing is not None:
            return False, self.refusing
        if not self.ready:
            return False, "starting"
        ok = [d for d in self.store.disks() if d.state == "ok"]
        if not ok:
            return False, "no healthy disk"
        return True, f"{len(ok)} healthy disk(s)"

    def describe_peers(self) -> list[dict[str, Any]]:
        return self.peers.describe() if self.peers is not None else []

    def describe(self) -> WorkerStatusJSON:
        ready, reason = self.readiness()
        disks: list[DiskStatusJSON] = [
            {
                "tier": d.tier,
                "path": d.root,
                "state": d.state,
                "reason": d.reason,
                "since": d.since or None,
                "objects": d.objects,
                "used_bytes": d.used_bytes,
                "capacity_bytes": d.capacity_bytes,
            }
            for d in self.store.disks()
        ]
        return {
            "appliance": self.appliance,
            "site": self.cfg.peering.site,
            "worker": self.slot,
            "pid": self.pid,
            "workers": self.cfg.server.workers or os.cpu_count() or 1,
            "ready": ready,
            "reason": reason,
            "refusing": self.refusing,
            "disks": disks,
            "peers": self.describe_peers(),
        }

    def update_summary(self) -> None:
        """Republish the inventory summary when the store's table changed."""
        gen = self.store.generation
        if gen != self.summary_generation:
            self.summary_generation = gen
            self.summary.update(self.store.paths())

    def render_metrics(self) -> bytes:
        return render(self.collector)

    # ---------------------------------------------------------------- files
    def open_file(self, rec: ObjectRecord, fs_path: str) -> OpenFile:
        """Thread pool: open and describe one object (not yet in the cache).

        A file missing where this worker's table says it is may have been moved by
        another process since the last inventory refresh (the fill's tier mover, or a
        newer copy placed on another disk): re-read the indexes now and open the object
        where it is, rather than answer 404 for an object the appliance holds.
        """
        try:
            fd = open_object(fs_path, rec)
        except FileNotFoundError:
            self.store.refresh()
            cur = self.store.lookup(rec.path)
            if cur is None or self.store.file_path(cur) == fs_path:
                raise
            rec, fd = cur, open_object(self.store.file_path(cur), cur)
        return self.handler.open_file_entry(fd, rec)

    def on_open_error(self, rec: ObjectRecord, exc: OSError) -> Response:
        if exc.errno == errno.ESTALE:
            # Replaced by another process after our last inventory refresh.
            self.loop.run_in_executor(self.io_pool, self.store.refresh)
            return self.handler.error(503, "object-changed", extra=b"Retry-After: 1\r\n")
        self.on_read_error(rec, exc)
        if exc.errno == errno.ENOENT:
            log.warning("object %s missing from disk %s", rec.path, rec.disk)
            return self.handler.error(404, "not-found")
        return self.handler.error(503, "disk-error", extra=b"Retry-After: 5\r\n")

    def on_read_error(self, rec: ObjectRecord, exc: OSError) -> None:
        """An I/O error on one object: let the store decide whether the object is
        quarantined or its disk failed (Store.note_read_error)."""
        self.files.discard(rec.path)
        fut = self.loop.run_in_executor(self.io_pool, self._note_read_error, rec, exc)

        def done(f: asyncio.Future[bool]) -> None:
            if f.cancelled():
                return
            if f.exception() is not None:
                log.error("judging a read error of %s failed: %r", rec.path, f.exception())
            elif f.result():
                self.files.discard_disk(rec.disk)

        fut.add_done_callback(done)

    def _note_read_error(self, rec: ObjectRecord, exc: OSError) -> bool:
        """Thread pool: True if the disk was failed. A file whose size no longer matches
        its record (truncated or replaced behind the store's back) reads short, which the
        send path reports as EIO; that is this object's fault, not the disk's."""
        try:
            size = os.stat(self.store.file_path(rec)).st_size
        except OSError as stat_exc:
            return self.store.note_read_error(rec, stat_exc, time.time())
        if size != rec.size:
            log.error(
                "object %s on disk %s is %d bytes, its record says %d; not serving it "
                "(oca store verify quarantines it)",
                rec.path,
                rec.disk,
                size,
                rec.size,
            )
            return False
        return self.store.note_read_error(rec, exc, time.time())


# -------------------------------------------------------------------- loops


async def _every(seconds: float, fn: Callable[[], Any], name: str) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            res = fn()
            if asyncio.iscoroutine(res):
                await res
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; will retry", name)


def _sweep(state: WorkerState) -> None:
    now = state.loop.time()
    for conn in list(state.connections):
        if conn.deadline <= now:
            conn.on_deadline(now)
    state.files.expire()


async def _snapshot(state: WorkerState) -> None:
    # Disks failed and objects quarantined by this worker's store, whatever did it (a
    # probe, a read error, the error limit, an index refresh, an install).
    failures, quarantined = state.store.counts()
    state.metrics.counters["disk_failures"] = {t: float(n) for t, n in failures.items()}
    state.metrics.counters["quarantined"] = {
        join_labels(*key): float(n) for key, n in quarantined.items()
    }
    snap = state.metrics.snapshot()
    await state.loop.run_in_executor(
        state.io_pool, write_snapshot, state.metrics_dir, state.metrics_name, snap
    )


async def _check_disks(state: WorkerState) -> None:
    await state.loop.run_in_executor(state.io_pool, state.store.check_disks, time.time())
    for d in state.store.disks():
        if d.state != "ok":
            # However it was failed (its probe, a read, an index refresh), its cached
            # descriptors go now: they would keep a vanished filesystem alive.
            state.files.discard_disk(d.id)


async def _flush_stats(state: WorkerState) -> None:
    await state.loop.run_in_executor(state.io_pool, state.store.flush_stats)


async def _refresh(state: WorkerState) -> None:
    await state.loop.run_in_executor(state.io_pool, state.store.refresh)
    state.update_summary()
    await state.loop.run_in_executor(state.io_pool, state.known.reload)
    state.refusing = await state.loop.run_in_executor(
        state.io_pool, read_refusal, state.refusal_path
    )


# -------------------------------------------------------------------- main


async def serve(
    cfg: Config,
    listeners: list[Listener],
    slot: int,
    metrics_dir: str,
    on_ready: Callable[[], None],
    stop: asyncio.Event | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    from oca.server.protocol import HttpProtocol

    store = await loop.run_in_executor(None, Store.open, cfg.storage)
    has_internal = any(lst.internal for lst in listeners)
    state = WorkerState(cfg, loop, store, slot, has_internal, metrics_dir)
    state.load_keys()
    state.update_summary()
    await loop.run_in_executor(state.io_pool, state.known.reload)
    state.refusing = await loop.run_in_executor(state.io_pool, read_refusal, state.refusal_path)
    if state.misses is not None:
        removed = await loop.run_in_executor(state.io_pool, clean_stale_parts, store)
        if removed:
            log.info("removed %d part file(s) of misses cut short by a worker that died", removed)
        lock_dir = state.misses.lock_dir
        removed = await loop.run_in_executor(state.io_pool, clean_stale_transfers, lock_dir)
        if removed:
            log.info("removed %d state file(s) of misses led by a worker that died", removed)
    ssl_ctx: ssl.SSLContext | None = None
    if any(lst.tls for lst in listeners):
        ssl_ctx = make_server_context(cfg.tls.cert_file, cfg.tls.key_file)
    servers = []
    for lst in listeners:
        srv = await loop.create_server(
            lambda lst=lst: HttpProtocol(state, lst),
            sock=lst.sock,
            ssl=ssl_ctx if lst.tls else None,
            backlog=4096,
            ssl_handshake_timeout=cfg.server.header_timeout_seconds if lst.tls else None,
        )
        servers.append(srv)
    stop = stop or asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGHUP, state.reload_keys)
    tasks = [
        asyncio.create_task(_every(1.0, lambda: _sweep(state), "sweep")),
        asyncio.create_task(_every(1.0, lambda: _snapshot(state), "metrics snapshot")),
        asyncio.create_task(_every(0.25, state.access_log.flush, "access log")),
        asyncio.create_task(
            _every(
                cfg.storage.disk_check_interval_seconds, lambda: _check_disks(state), "disk check"
            )
        ),
        asyncio.create_task(
            _every(cfg.storage.inventory_poll_seconds, lambda: _refresh(state), "inventory refresh")
        ),
        asyncio.create_task(
            _every(
                cfg.storage.access_stats_flush_seconds,
                lambda: _flush_stats(state),
                "access stats",
            )
        ),
    ]
    peer_session: aiohttp.ClientSession | None = None
    if state.peers is not None:
        peer_session = aiohttp.ClientSession()
        tasks.append(asyncio.create_task(state.peers.run(peer_session)))
    # Everything allocated so far (config, inventory, modules) lives for the whole run:
    # move it out of the collector's sight, and collect young objects less often.
    # Per-request objects are freed by reference counting (protocol teardown breaks
    # the cycles), so the cyclic collector has little to find on the hot path.
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    state.ready = True
    state.metrics.gauges["ready"] = 1
    await _snapshot(state)
    on_ready()
    await stop.wait()

    # ---- drain
    state.draining = True
    for srv in servers:
        srv.close()
    in_flight = len(state.connections)
    for conn in list(state.connections):
        conn.drain()
    deadline = loop.time() + cfg.server.drain_timeout_seconds
    while state.connections and loop.time() < deadline:
        await asyncio.sleep(0.05)
    cut = len(state.connections)
    for conn in list(state.connections):
        conn._abort()
    log.info("worker %d drained: %d connection(s) open at SIGTERM, %d cut at the %.0fs timeout",
             slot, in_flight, cut, cfg.server.drain_timeout_seconds)  # fmt: skip
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if state.misses is not None:
        await state.misses.close()
    if peer_session is not None:
        await peer_session.close()
    await _snapshot(state)
    await _flush_stats(state)
    state.access_log.flush_now()
    state.files.clear()
    state.io_pool.shutdown(wait=False, cancel_futures=True)
    return 0


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )


def main() -> int:
    spec = orjson.loads(os.environ["OCA_WORKER_SPEC"])
    try:
        cfg = load_config(spec["config"] or None, overrides=spec.get("overrides") or {})
    except ConfigError as exc:
        print(f"oca worker: bad config: {exc}", file=sys.stderr)
        return 2
    _setup_logging(cfg.server.log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides
    # Pool threads (opens, cold reads) need the GIL back promptly after their syscall
    # returns, or a busy loop thread makes every cold read wait a full switch interval.
    sys.setswitchinterval(0.0005)
    listeners = [
        Listener(
            item["name"],
            socket.socket(fileno=item["fd"]),
            item["tls"],
            item["internal"],
        )
        for item in spec["listeners"]
    ]
    ready_fd = spec["ready_fd"]

    def on_ready() -> None:
        with contextlib.suppress(OSError):
            os.write(ready_fd, b"R")

    runner: Callable[..., int] = asyncio.run
    if cfg.server.event_loop == "uvloop":
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            log.warning("uvloop is not installed; using the standard asyncio event loop")
    log.info("worker %d event loop: %s", spec["slot"],
             "uvloop" if runner is not asyncio.run else "asyncio")  # fmt: skip
    try:
        return runner(serve(cfg, listeners, spec["slot"], spec["metrics_dir"], on_ready))
    except (OcaError, OSError, ssl.SSLError) as exc:
        # Before READY this is a startup failure (the supervisor stops on status 3);
        # after it, the supervisor restarts the worker.
        log.error("worker %d failed: %s", spec["slot"], exc)
        return 3


if __name__ == "__main__":
    sys.exit(main())
