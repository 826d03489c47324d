"""The heartbeat reporter: poll the box, evaluate, post to every steering URL (the shell).

Theory of operation
-------------------
One reporter runs in the supervisor, as an asyncio task (see
:mod:`oca.server.supervisor`). Each *cycle*, every ``steering.interval_seconds``:

1. **poll**, in a thread of its own so the supervisor's loop never touches a disk: the
   disks and their indexes (:class:`~oca.health.disks.DiskWatch`), the fill's state,
   the drain flag, the routing table when configured, the workers' connection counts;
   NIC and CPU counters (:class:`~oca.health.load.LoadSampler`);
2. **evaluate** the verdict (:func:`~oca.health.verdict.evaluate`) and the request
   counts since the previous cycle (:func:`~oca.health.inventory.request_counts`);
3. **publish**: build one heartbeat per steering URL, differing only in its inventory
   part (each replica has its own acknowledged base), sign it and post it. Each URL has
   at most one heartbeat in flight; a URL still busy with the previous one skips this
   cycle, so one slow replica never delays the others.

Between cycles the reporter wakes every second: to notice a change of the drain flag
or the start of a shutdown (either sends a heartbeat at once), to run the grace timer
(:class:`~oca.health.contact.ContactTracker`), and when a replica answered
``send-full`` (the next cycle starts at once and carries the full list to it).

Failures are logged once per transition per URL ("was ok, now failing, because ...")
and loss of all contact as the tracker's three lines. With ``unreachable_policy =
"stop"`` the end of the grace period writes the refusal flag the workers read
(:mod:`oca.health.flags`) and recovery removes it. Each cycle also rewrites
``<state_dir>/run/steering.json`` with every URL's latest outcome, its last successful
heartbeat and the grace state, for ``oca status``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import psutil

from oca.config import Config, appliance_id
from oca.health.contact import ContactTracker
from oca.health.disks import DiskWatch, StoreView
from oca.health.flags import (
    SteeringStatusJSON,
    SteeringURLJSON,
    clear_refusal,
    clear_steering_status,
    drain_path,
    read_drain,
    write_refusal,
    write_steering_status,
)
from oca.health.heartbeat import (
    HEARTBEAT_HEADER,
    HEARTBEAT_PATH,
    HeartbeatReply,
    Identity,
    InventoryJSON,
    LoadJSON,
    build_heartbeat,
    encode_heartbeat,
    parse_reply,
    sign_heartbeat,
)
from oca.health.inventory import (
    InventoryLog,
    InventoryVersion,
    ReplicaBase,
    acknowledged,
    inventory_payload,
    request_counts,
)
from oca.health.load import LoadSampler
from oca.health.routes import RoutesError, merge_prefixes, read_route_prefixes
from oca.health.sources import fill_health, open_connections
from oca.health.verdict import FillHealth, HealthVerdict, WorkerHealth, evaluate

__all__ = ["HeartbeatReporter", "LocalState", "public_urls"]

log = logging.getLogger("oca.health")

TICK_SECONDS = 1.0
MAX_REPLY_BYTES = 1 << 20


# --------------------------------------------------------------------------- identity


def _local_address(version: int) -> str | None:
    """The first non-loopback address of this host of the IP ``version``."""
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            try:
                ip = ipaddress.ip_address(a.address.split("%", 1)[0])
            except ValueError:
                continue
            if ip.version == version and not (ip.is_loopback or ip.is_link_local):
                return str(ip)
    return None


def public_urls(
    announced: Sequence[Mapping[str, str]], configured: Sequence[str], kind: str
) -> tuple[str, ...]:
    """The content base URLs of ``kind`` ("http" or "https") players use: the configured
    ones, else the bound listeners with a wildcard host replaced by a local address."""
    if configured:
        return tuple(u.rstrip("/") for u in configured)
    out: list[str] = []
    for item in announced:
        if item["kind"] != kind:
            continue
        parts = urlsplit(item["url"])
        host = parts.hostname or ""
        if host in ("0.0.0.0", "::"):
            local = _local_address(4 if host == "0.0.0.0" else 6)
            if local is not None:
                shown = f"[{local}]" if ":" in local else local
                parts = parts._replace(netloc=f"{shown}:{parts.port}")
                log.warning("steering.public_%surls is not set; telling steering that players "
                            "reach listener %s at %s", "https_" if kind == "https" else "",
                            item["url"], urlunsplit(parts))  # fmt: skip
        out.append(urlunsplit(parts))
    return tuple(out)


# --------------------------------------------------------------------------- polling


@dataclass(frozen=True, slots=True)
class LocalState:
    """One poll of the box (everything but the supervisor's own state)."""

    store: StoreView
    fill: FillHealth
    draining: bool
    connections: int
    route_prefixes: tuple[str, ...] | None  # None: routes are not read
    problems: tuple[str, ...]


@dataclass(slots=True)
class _Replica:
    url: str  # base URL, no trailing slash
    base: ReplicaBase | None = None
    need_full: bool = True
    up: bool | None = None  # latest heartbeat's outcome; None before the first
    reason: str = ""
    task: asyncio.Task[None] | None = None
    last_ok: float | None = None  # when a heartbeat to it last succeeded
    last_attempt: float | None = None  # when the latest outcome was known


@dataclass(slots=True)
class _Cycle:
    """What the last cycle observed (shared by the per-URL heartbeats)."""

    verdict: HealthVerdict
    load: LoadJSON
    prefixes: list[str]
    requests: dict[str, int] = field(default_factory=dict)


class HeartbeatReporter:
    """See the module docstring. ``workers`` and ``stopping`` report the supervisor's
    view: worker counts, and whether the appliance is shutting down."""

    def __init__(
        self,
        cfg: Config,
        announced: Sequence[Mapping[str, str]],
        workers: Callable[[], WorkerHealth],
        stopping: Callable[[], bool],
        *,
        clock: Callable[[], float] = time.time,
        boot_id: str | None = None,
    ) -> None:
        s = cfg.steering
        self.cfg = cfg
        self.state_dir = cfg.server.state_dir
        self.metrics_dir = os.path.join(self.state_dir, "run", "metrics")
        self.boot_id = boot_id or secrets.token_hex(16)
        self.identity = Identity(
            appliance_id(cfg),
            cfg.peering.site,
            s.region,
            s.latitude,
            s.longitude,
            public_urls(announced, s.public_urls, "http"),
            public_urls(announced, s.public_https_urls, "https"),
        )
        self.key_id = s.keys[0].id
        self.secret = bytes.fromhex(s.keys[0].secret)
        self.replicas = [_Replica(u.rstrip("/")) for u in s.urls]
        self.workers = workers
        self.stopping = stopping
        self.clock = clock
        self.contact = ContactTracker(s.grace_seconds, s.unreachable_policy, clock())
        self.log_inv = InventoryLog(self.boot_id)
        self.disks = DiskWatch(cfg.storage)
        self.load = LoadSampler(s.interfaces, s.link_capacity_bits)
        self.seq = 0
        self.wake = asyncio.Event()
        self.cycle: _Cycle | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="oca-health")
        self._store_version = -1
        self._marks: dict[str, int] | None = None
        self._routes: tuple[str, ...] = ()
        self._routes_error: str | None = None
        self._drain_sig: tuple[int, int] | None = None
        self._stop_sent = False
        self._status_error: str | None = None

    # ------------------------------------------------------------------ main loop
    async def run(self) -> None:
        """Until cancelled. Exceptions of a cycle are logged and the next one runs."""
        timeout = aiohttp.ClientTimeout(total=self.cfg.steering.request_timeout_seconds)
        where = ", ".join(self.identity.urls + self.identity.https_urls) or "no listener"
        log.info("heartbeats every %.1fs to %s as %s (site %s, region %s), content at %s",
                 self.cfg.steering.interval_seconds, ", ".join(r.url for r in self.replicas),
                 self.identity.id, self.identity.site, self.identity.region, where)  # fmt: skip
        loop = asyncio.get_running_loop()
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                while True:
                    started = loop.time()
                    try:
                        await self._run_cycle(session)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        log.exception("heartbeat cycle failed; trying again next interval")
                    await self._wait(started + self.cfg.steering.interval_seconds)
        finally:
            for r in self.replicas:
                if r.task is not None:
                    r.task.cancel()
            await asyncio.gather(
                *(r.task for r in self.replicas if r.task is not None), return_exceptions=True
            )
            self._pool.shutdown(wait=False, cancel_futures=True)
            if self.contact.refusing:
                clear_refusal(self.state_dir)
            with contextlib.suppress(OSError):
                clear_steering_status(self.state_dir)

    async def finish(self, task: asyncio.Task[None], timeout: float = 2.0) -> None:
        """End ``task`` (running :meth:`run`) after the heartbeat saying the appliance is
        shutting down went out, waiting for it at most ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.wake.set()
        while not self._stop_sent and not task.done() and loop.time() < deadline:
            await asyncio.sleep(0.02)
        pending = [r.task for r in self.replicas if r.task is not None and not r.task.done()]
        if pending and not task.done():
            await asyncio.wait(pending, timeout=max(deadline - loop.time(), 0.0))
        task.cancel()
        await asyncio.wait({task}, timeout=timeout)
        if not task.done():
            log.error("the heartbeat reporter did not stop when asked; leaving it")

    async def _wait(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._observe_contact(None)
            remaining = until - loop.time()
            if remaining <= 0 or self.wake.is_set():
                break
            # asyncio.timeout, not wait_for: wait_for (3.11) can swallow a cancellation
            # that arrives just as the event is set, and finish() does exactly that.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, TICK_SECONDS)):
                    await self.wake.wait()
            if self._drain_changed():
                log.info("drain flag changed; sending a heartbeat now")
                break
            if self.stopping() and not self._stop_sent:
                break
        self.wake.clear()

    def _drain_changed(self) -> bool:
        try:
            st = os.stat(drain_path(self.state_dir))
            sig: tuple[int, int] | None = (st.st_ino, st.st_mtime_ns)
        except OSError:
            sig = None
        return sig != self._drain_sig

    # ------------------------------------------------------------------ one cycle
    async def _run_cycle(self, session: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        now = self.clock()
        local = await loop.run_in_executor(self._pool, self._poll, now)
        sample = self.load.sample(loop.time())
        requests: dict[str, int] = {}
        if local.store.version != self._store_version:
            self._store_version = local.store.version
            requests = await loop.run_in_executor(self._pool, self._take_counts, local.store)
        stopping = self.stopping()
        problems = list(local.problems) + list(sample.problems)
        verdict = evaluate(
            local.store.disks,
            self.workers(),
            local.fill,
            draining=local.draining,
            refusing=self.contact.refusal_reason(now),
            stopping=stopping,
            problems=problems,
        )
        prefixes = merge_prefixes(self.cfg.steering.prefixes, local.route_prefixes or ())
        load: LoadJSON = {
            "nic_bits_per_second": sample.nic_bits_per_second,
            "link_capacity_bits_per_second": sample.link_capacity_bits_per_second,
            "cpu_fraction": sample.cpu_fraction,
            "connections": local.connections,
            "load_fraction": sample.load_fraction,
        }
        self.cycle = _Cycle(verdict, load, prefixes, requests)
        await loop.run_in_executor(self._pool, self._publish_status, self.status(now))
        self.seq += 1
        if stopping:
            self._stop_sent = True
        inv = self.log_inv.current
        for r in self.replicas:
            if r.task is not None and not r.task.done():
                log.debug("heartbeat to %s still in flight; skipping this cycle", r.url)
                continue
            r.task = asyncio.create_task(self._send(session, r, self.cycle, self.seq, inv))

    def status(self, now: float) -> SteeringStatusJSON:
        """What ``<state_dir>/run/steering.json`` says: the contact as of ``now``."""
        s = self.cfg.steering
        urls: list[SteeringURLJSON] = [
            {
                "url": r.url,
                "state": "unknown" if r.up is None else "ok" if r.up else "failing",
                "reason": r.reason if r.up is False else "",
                "last_ok_at": r.last_ok,
                "last_attempt_at": r.last_attempt,
            }
            for r in self.replicas
        ]
        return {
            "pid": os.getpid(),
            "updated_at": now,
            "interval_seconds": s.interval_seconds,
            "contact": self.contact.state,
            "contacted": any(r.last_ok is not None for r in self.replicas),
            "last_ok_at": self.contact.last_ok,
            "grace_seconds": s.grace_seconds,
            "policy": s.unreachable_policy,
            "refusing": self.contact.refusal_reason(now) or "",
            "urls": urls,
        }

    def _publish_status(self, doc: SteeringStatusJSON) -> None:
        """Thread: write the steering status file; a failure is logged once."""
        try:
            write_steering_status(self.state_dir, doc)
        except OSError as exc:
            if str(exc) != self._status_error:
                log.error("cannot write the steering status file: %s", exc)
            self._status_error = str(exc)
        else:
            self._status_error = None

    def _take_counts(self, store: StoreView) -> dict[str, int]:
        """Thread: a new inventory generation if the served set changed, and the request
        counts since the previous store version."""
        if self.log_inv.update(frozenset(store.totals)):
            cur = self.log_inv.current
            log.debug("inventory generation %d: %d objects", cur.gen, len(cur.paths))
        requests, self._marks = request_counts(self._marks, store.totals, store.joined)
        return requests

    def _poll(self, now: float) -> LocalState:
        """Thread: everything read from files and the kernel for one cycle."""
        store = self.disks.poll(now)
        fill = fill_health(self.state_dir)
        problems: list[str] = []
        try:
            st = os.stat(drain_path(self.state_dir))
            self._drain_sig = (st.st_ino, st.st_mtime_ns)
        except OSError:
            self._drain_sig = None
        try:
            draining = read_drain(self.state_dir).draining
        except OSError as exc:
            draining = False
            problems.append(f"drain flag {drain_path(self.state_dir)} is unreadable: {exc}")
        routes: tuple[str, ...] | None = None
        s = self.cfg.steering
        if s.routes_table:
            try:
                self._routes = tuple(
                    read_route_prefixes(s.routes_table, s.routes_protocols, s.routes_netns)
                )
                if self._routes_error is not None:
                    log.info("routing table readable again: %d client prefixes",
                             len(self._routes))  # fmt: skip
                self._routes_error = None
            except RoutesError as exc:
                if str(exc) != self._routes_error:
                    log.warning("client prefixes: %s; keeping the %d read before", exc,
                                len(self._routes))  # fmt: skip
                self._routes_error = str(exc)
                problems.append(f"client prefixes from routes: {exc}")
            routes = self._routes
        return LocalState(
            store, fill, draining, open_connections(self.metrics_dir), routes, tuple(problems),
        )  # fmt: skip

    # ------------------------------------------------------------------ sending
    async def _send(
        self,
        session: aiohttp.ClientSession,
        r: _Replica,
        cycle: _Cycle,
        seq: int,
        inv: InventoryVersion,
    ) -> None:
        payload = inventory_payload(inv, r.base, need_full=r.need_full)
        doc = build_heartbeat(
            identity=self.identity,
            boot_id=self.boot_id,
            seq=seq,
            sent_at=self.clock(),
            interval_seconds=self.cfg.steering.interval_seconds,
            prefixes=cycle.prefixes,
            health=cycle.verdict.to_json(),
            load=cycle.load,
            inventory=payload,
            requests=cycle.requests,
        )
        body = encode_heartbeat(doc)
        headers = {
            "Content-Type": "application/json",
            HEARTBEAT_HEADER: sign_heartbeat(self.key_id, self.secret, body),
        }
        try:
            async with session.post(r.url + HEARTBEAT_PATH, data=body, headers=headers) as resp:
                data = await resp.content.read(MAX_REPLY_BYTES)
                reply = parse_reply(resp.status, data)
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reply = HeartbeatReply(False, reason=_describe(exc))
        except Exception as exc:  # a bug here must not end the reporter
            log.exception("heartbeat to %s", r.url)
            reply = HeartbeatReply(False, reason=f"{type(exc).__name__}: {exc}")
        self._record(r, reply, inv, payload)

    def _record(
        self,
        r: _Replica,
        reply: HeartbeatReply,
        inv: InventoryVersion,
        payload: InventoryJSON | None,
    ) -> None:
        was = r.up
        r.up, r.reason = reply.ok, reply.reason
        r.last_attempt = self.clock()
        if reply.ok:
            r.last_ok = r.last_attempt
            if was is not True:
                log.info("heartbeat to %s: was %s, now ok", r.url,
                         "failing" if was is False else "not sent yet")  # fmt: skip
            if reply.send_full:
                if not r.need_full:
                    log.info("%s asked for the full inventory; sending it now", r.url)
                r.need_full = True
                self.wake.set()
            else:
                r.base = acknowledged(r.base, inv, payload)
                r.need_full = False
        elif was is not False:
            log.warning("heartbeat to %s: was %s, now failing, because %s", r.url,
                        "ok" if was else "not sent yet", reply.reason)  # fmt: skip
        self._observe_contact(reply.ok, r.url if reply.ok else "")

    def _observe_contact(self, outcome: bool | None, via: str = "") -> None:
        now = self.clock()
        if outcome is True:
            event = self.contact.observe(True, now, f"via {via}" if via else "")
        elif outcome is False and all(r.up is False for r in self.replicas):
            reasons = "; ".join(f"{r.url}: {r.reason}" for r in self.replicas)
            event = self.contact.observe(False, now, reasons)
        else:
            event = self.contact.observe(None, now)
        if event is None:
            return
        log.log(logging.INFO if event.kind == "recovered" else logging.WARNING, "%s", event.message)
        try:
            if event.refusing:
                write_refusal(self.state_dir, self.contact.refusal_reason(now) or event.message)
            elif event.kind == "recovered":
                clear_refusal(self.state_dir)
        except OSError as exc:
            log.error("cannot update the steering refusal flag: %s", exc)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorError):
        err = exc.os_error
        why = err.strerror or (os.strerror(err.errno) if err.errno else text)
        return f"cannot connect to {exc.host}:{exc.port}: {why}"
    return f"{type(exc).__name__}: {text}"
