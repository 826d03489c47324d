"""The supervisor: binds listeners, runs one worker per slot, restarts, drains.

Theory of operation. For every configured address the supervisor binds one
``SO_REUSEPORT`` socket *per worker slot* (the first resolves port 0, the rest bind
the same port) and keeps them all open. Worker *i* inherits the sockets of slot *i*;
the kernel spreads new connections over the group. Because the supervisor holds each
slot's socket, a worker that dies loses no queued connection: they wait in its
socket's backlog until the replacement, started with the same socket, accepts them.

Workers are separate interpreters (``python -m oca.server.worker``) watched through
pidfds. A worker that exits unexpectedly is logged with its status and restarted,
with backoff when it keeps dying at startup. SIGTERM/SIGINT stop restarts and forward
SIGTERM (each worker drains, see :mod:`oca.server.worker`); workers still running
after ``drain_timeout_seconds`` plus a grace period are killed. SIGHUP is forwarded
(workers reload signing keys). READY=1 goes to systemd once every slot reported
ready; WATCHDOG=1 pings come from this loop.

The bound addresses are printed as ``oca: listening <kind> <url>`` lines and written
to ``<state_dir>/run/listeners.json`` so tools and tests using port 0 can find them.

With ``[steering] urls`` set, the supervisor also runs the heartbeat reporter
(:mod:`oca.health.reporter`, one per appliance), which reads the worker counts from
:meth:`Supervisor.worker_health` and sends a last heartbeat when a shutdown starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from oca.config import Config, parse_listen
from oca.health.flags import clear_refusal
from oca.health.verdict import WorkerHealth
from oca.server import systemd
from oca.server.fdbudget import raise_soft_limit
from oca.server.tlsinfo import ktls_available

if TYPE_CHECKING:
    from oca.health.reporter import HeartbeatReporter

log = logging.getLogger("oca.server")

GRACE_SECONDS = 5.0


@dataclass
class Slot:
    index: int
    socks: list[tuple[str, socket.socket, bool, bool]]  # (name, sock, tls, internal)
    proc: subprocess.Popen[bytes] | None = None
    pidfd: int = -1
    ready_r: int = -1
    started: float = 0.0
    failures: int = 0
    ever_ready: bool = False
    restarts: int = 0
    pending_restart: asyncio.TimerHandle | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, port))
    s.listen(4096)
    s.set_inheritable(True)
    return s


class Supervisor:
    def __init__(self, cfg: Config, overrides: Mapping[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.overrides = dict(overrides or {})
        self.workers = cfg.server.workers or os.cpu_count() or 1
        self.slots: list[Slot] = []
        self.stopping = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.done = asyncio.Event()
        self.run_dir = os.path.join(cfg.server.state_dir, "run")
        self.metrics_dir = os.path.join(self.run_dir, "metrics")
        self.announced: list[dict[str, str]] = []
        self.exit_code = 0

    # ------------------------------------------------------------------ sockets
    def bind_all(self) -> None:
        groups: list[tuple[str, str, bool, bool]] = []
        groups += [("http", a, False, False) for a in self.cfg.server.listen]
        groups += [("https", a, True, False) for a in self.cfg.tls.listen]
        groups += [("internal", a, False, True) for a in self.cfg.server.internal_listen]
        self.slots = [Slot(i, []) for i in range(self.workers)]
        for name, addr, tls, internal in groups:
            host, port = parse_listen(addr)
            if host == "localhost":
                host = "127.0.0.1"
            first = _bind(host, port)
            port = first.getsockname()[1]
            socks = [first] + [_bind(host, port) for _ in range(self.workers - 1)]
            for slot, s in zip(self.slots, socks, strict=True):
                slot.socks.append((name, s, tls, internal))
            scheme = "https" if tls else "http"
            shown = f"[{host}]" if ":" in host else host
            self.announced.append({"kind": name, "url": f"{scheme}://{shown}:{port}"})

    def announce(self) -> None:
        os.makedirs(self.run_dir, exist_ok=True)
        tmp = os.path.join(self.run_dir, ".listeners.json.tmp")
        with open(tmp, "wb") as fh:
            fh.write(orjson.dumps({"pid": os.getpid(), "listeners": self.announced}))
        os.replace(tmp, os.path.join(self.run_dir, "listeners.json"))
        for item in self.announced:
            print(f"oca: listening {item['kind']} {item['url']}", flush=True)

    # ------------------------------------------------------------------ workers
    def _spawn(self, slot: Slot) -> None:
        assert self.loop is not None
        ready_r, ready_w = os.pipe()
        fds = [s.fileno() for _, s, _, _ in slot.socks] + [ready_w]
        spec = {
            "config": self.cfg.source,
            "overrides": self.overrides,
            "slot": slot.index,
            "metrics_dir": self.metrics_dir,
            "ready_fd": ready_w,
            "listeners": [
                {"name": n, "fd": s.fileno(), "tls": t, "internal": i} for n, s, t, i in slot.socks
            ],
        }
        env = dict(os.environ, OCA_WORKER_SPEC=orjson.dumps(spec).decode())
        proc = subprocess.Popen(
            [sys.executable, "-m", "oca.server.worker"], pass_fds=fds, env=env, close_fds=True
        )
        os.close(ready_w)
        slot.proc = proc
        slot.started = time.monotonic()
        slot.ready_r = ready_r
        slot.pidfd = os.pidfd_open(proc.pid)
        self.loop.add_reader(slot.pidfd, self._on_exit, slot)
        self.loop.add_reader(ready_r, self._on_ready, slot)
        log.info("worker %d started (pid %d)", slot.index, proc.pid)

    def _on_ready(self, slot: Slot) -> None:
        assert self.loop is not None
        try:
            data = os.read(slot.ready_r, 16)
        except OSError:
            data = b""
        self.loop.remove_reader(slot.ready_r)
        os.close(slot.ready_r)
        slot.ready_r = -1
        if b"R" not in data:
            return
        slot.failures = 0
        first_time = not slot.ever_ready
        slot.ever_ready = True
        if first_time and all(s.ever_ready for s in self.slots):
            systemd.notify(f"READY=1\nSTATUS=serving with {self.workers} worker(s)")
            print(f"oca: ready ({self.workers} worker(s))", flush=True)
            log.info("all %d workers ready", self.workers)

    def _on_exit(self, slot: Slot) -> None:
        assert self.loop is not None and slot.proc is not None
        self.loop.remove_reader(slot.pidfd)
        os.close(slot.pidfd)
        slot.pidfd = -1
        if slot.ready_r >= 0:
            self.loop.remove_reader(slot.ready_r)
            os.close(slot.ready_r)
            slot.ready_r = -1
        code = slot.proc.wait()
        pid = slot.proc.pid
        slot.proc = None
        self._retire_metrics(slot.index, pid)
        if self.stopping:
            log.info("worker %d (pid %d) exited with %s", slot.index, pid, _describe(code))
            if all(s.proc is None for s in self.slots):
                self.done.set()
            return
        lived = time.monotonic() - slot.started
        if code in (2, 3) and not slot.ever_ready:
            log.error("worker %d (pid %d) could not start (%s); stopping",
                      slot.index, pid, _describe(code))  # fmt: skip
            self.exit_code = code
            self._signal(signal.SIGTERM)
            if all(s.proc is None for s in self.slots):
                self.done.set()
            return
        slot.failures = slot.failures + 1 if lived < 5 else 1
        delay = min(0.1 * (2 ** (slot.failures - 1)), 10.0) if lived < 5 else 0.0
        slot.restarts += 1
        log.error("worker %d (pid %d) was running, now exited with %s after %.1fs, "
                  "because of a crash or kill; restarting in %.1fs",
                  slot.index, pid, _describe(code), lived, delay)  # fmt: skip
        slot.pending_restart = self.loop.call_later(delay, self._restart, slot)

    def _restart(self, slot: Slot) -> None:
        slot.pending_restart = None
        if not self.stopping:
            self._spawn(slot)

    def _retire_metrics(self, index: int, pid: int) -> None:
        src = os.path.join(self.metrics_dir, f"worker-{index}-{pid}.json")
        if os.path.exists(src):
            os.replace(src, os.path.join(self.metrics_dir, f"dead-{index}-{pid}.json"))

    def worker_health(self) -> WorkerHealth:
        """Workers alive and ready, alive and starting, and restarts so far (heartbeats)."""
        alive = [s for s in self.slots if s.proc is not None]
        starting = sum(1 for s in alive if s.ready_r >= 0)
        restarts = sum(s.restarts for s in self.slots)
        return WorkerHealth(self.workers, len(alive) - starting, starting, restarts)

    # ------------------------------------------------------------------ signals
    def _signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            log.info("SIGHUP: asking workers to reload signing keys")
            for s in self.slots:
                if s.proc is not None:
                    s.proc.send_signal(signal.SIGHUP)
            return
        if self.stopping:
            return
        self.stopping = True
        systemd.notify("STOPPING=1")
        log.info("%s: draining workers (timeout %.0fs)", signal.Signals(signum).name,
                 self.cfg.server.drain_timeout_seconds)  # fmt: skip
        for s in self.slots:
            if s.pending_restart is not None:
                s.pending_restart.cancel()
                s.pending_restart = None
            if s.proc is not None:
                s.proc.send_signal(signal.SIGTERM)
        # Stop accepting: once each worker closes its copy too, new connections are
        # refused at once (and a client tries another appliance) instead of waiting in
        # a backlog nobody will accept from.
        self.close_sockets()
        if all(s.proc is None for s in self.slots):
            self.done.set()

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        os.makedirs(self.metrics_dir, exist_ok=True)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.loop.add_signal_handler(sig, self._signal, sig)
        if self.cfg.tls.listen and self.cfg.tls.ktls == "auto":
            kt = ktls_available()
            log.info("kernel TLS %s; HTTPS uses userspace TLS",
                     "available" if kt else "not available (no tls ULP)")  # fmt: skip
        if clear_refusal(self.cfg.server.state_dir):
            log.info("removed a steering refusal flag left by an earlier run")
        for slot in self.slots:
            self._spawn(slot)
        wd = systemd.watchdog_interval()
        wd_task = asyncio.create_task(self._watchdog(wd)) if wd else None
        reporter = self._start_reporter()
        await self.done.wait()
        if wd_task is not None:
            wd_task.cancel()
        if reporter is not None:
            await reporter[0].finish(reporter[1])
        return self.exit_code

    def _start_reporter(self) -> tuple[HeartbeatReporter, asyncio.Task[None]] | None:
        """Heartbeats to the steering service (oca.health), when steering.urls is set."""
        if not self.cfg.steering.urls:
            return None
        from oca.health.reporter import HeartbeatReporter

        reporter = HeartbeatReporter(
            self.cfg, self.announced, self.worker_health, lambda: self.stopping
        )
        task = asyncio.create_task(reporter.run(), name="heartbeats")

        def ended(t: asyncio.Task[None]) -> None:
            if not t.cancelled() and t.exception() is not None:
                log.error("heartbeat reporter stopped", exc_info=t.exception())

        task.add_done_callback(ended)
        return reporter, task

    async def _watchdog(self, interval: float) -> None:
        while True:
            systemd.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def stop_deadline(self) -> None:
        """After SIGTERM: kill workers still alive past drain timeout + grace."""
        await asyncio.sleep(self.cfg.server.drain_timeout_seconds + GRACE_SECONDS)
        for s in self.slots:
            if s.proc is not None:
                log.error("worker %d (pid %d) did not drain in time; killing it",
                          s.index, s.proc.pid)  # fmt: skip
                s.proc.kill()

    def close_sockets(self) -> None:
        for slot in self.slots:
            for _, s, _, _ in slot.socks:
                s.close()


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


async def _main(sup: Supervisor) -> int:
    async def killer() -> None:
        while not sup.stopping:
            await asyncio.sleep(0.1)
        await sup.stop_deadline()

    k = asyncio.create_task(killer())
    try:
        return await sup.run()
    finally:
        k.cancel()


def run_server(cfg: Config, overrides: Mapping[str, Any] | None = None) -> int:
    # Client connections need descriptors: take the whole hard limit (the workers
    # inherit it; each sizes its connection budget from it, see oca.server.fdbudget).
    nofile = raise_soft_limit()
    if nofile.error:
        log.warning("open-file limit stays at %d (hard %d): %s",
                    nofile.soft, nofile.hard, nofile.error)  # fmt: skip
    elif nofile.soft != nofile.soft_before:
        log.info("open-file limit was %d, now %d (the hard limit), because client "
                 "connections need descriptors", nofile.soft_before, nofile.soft)  # fmt: skip
    sup = Supervisor(cfg, overrides)
    try:
        sup.bind_all()
    except OSError as exc:
        log.error("cannot bind listeners: %s", exc)
        print(f"oca serve: cannot bind listeners: {exc}", file=sys.stderr)
        return 3
    sup.announce()
    try:
        import uvloop

        return uvloop.run(_main(sup))
    except ImportError:
        return asyncio.run(_main(sup))
    finally:
        sup.close_sockets()
