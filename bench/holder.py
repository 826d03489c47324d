"""Hold thousands of client connections open against a server: idle players and slowloris.

Theory of operation. One process, one event loop (uvloop when installed), one
``asyncio.Protocol`` per connection and one ticker for all of them: no task, thread or
timer per connection, so 10,000 connections cost a few tens of MiB and little CPU (the
load generator shares a core with this process). Two kinds of connection:

- *idle*: connects, sends one small ranged GET (the first KiB of an object), reads the
  answer, then sits on the keep-alive connection doing nothing, like a player between
  segments. With ``refresh_s`` > 0 it repeats the request that often (jittered), which
  keeps it inside the server's keep-alive timeout.
- *slowloris*: sends a request line and ``Host``, then one byte of a header that never
  ends every ``trickle_s``. A server with a header timeout answers 408 and closes.

Whatever the server closes is counted (how, after how long, with which status) and,
until :meth:`Holder.release`, opened again after a short pause (1 s after a refusal,
as its ``Retry-After`` asks), so the count stays up. Connects are limited to
``connect_concurrency`` in flight, so the server's listen backlog never overflows. The
process raises its own soft ``RLIMIT_NOFILE`` to the hard limit.

Run as a child process, ``python -m bench.holder SPEC-JSON``, it is driven by lines on
stdin (``stats``, ``release``; end of input stops it) and answers each with one JSON line
(:class:`HolderStats`) on stdout. :class:`HolderProcess` is the parent's handle; ``oca
bench load`` and the reliability tests both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import os
import random
import resource
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

import orjson

REPO = Path(__file__).resolve().parent.parent
Kind = Literal["idle", "slow"]
TICK_S = 0.25
REFUSED_PAUSE_S = 1.0  # a 503 carries Retry-After: 1
RECONNECT_PAUSE_S = 0.05
LIFETIMES_KEPT = 2000
IDLE_RANGE_BYTES = 1024


@dataclass(frozen=True)
class HolderSpec:
    host: str
    port: int
    idle: int  # idle keep-alive connections to hold
    slowloris: int  # slowloris connections to hold
    path: str  # the object the idle connections ask for (first KiB)
    trickle_s: float = 3.0  # slowloris: one header byte this often
    refresh_s: float = 0.0  # idle: repeat the request this often (0: never)
    connect_concurrency: int = 256
    reconnect: bool = True
    # The first connections start at random instants over this many seconds, so that
    # their timeouts (and reconnects) are spread out too rather than all at one instant.
    spread_s: float = 0.0


class LifetimeJSON(TypedDict):
    count: int  # server closes recorded (the last LIFETIMES_KEPT kept for the spread)
    min_s: float
    median_s: float
    max_s: float


class HolderStats(TypedDict):
    pid: int
    nofile: int  # this process's soft RLIMIT_NOFILE
    target: int  # idle + slowloris
    open: int  # connected now (both kinds)
    idle_open: int
    idle_held: int  # idle connections that got their answer and are sitting idle now
    slow_open: int
    connects: int  # successful connects since start
    connect_errors: dict[str, int]  # by errno name
    idle_statuses: dict[str, int]  # status of every answer on idle connections
    idle_bytes: int  # body bytes read on idle connections
    idle_closed: int  # idle connections the server closed
    idle_closed_refused: int  # ... of which right after a 503
    idle_lifetime: LifetimeJSON  # connect to server close, idle connections
    slow_bytes_sent: int  # header bytes trickled
    slow_closed: int  # slowloris connections the server closed
    slow_statuses: dict[str, int]  # statuses the server answered them with (408 expected)
    slow_closed_silently: int  # closed without any answer
    slow_reset: int  # closed by a reset (ECONNRESET)
    slow_lifetime: LifetimeJSON  # connect to server close, slowloris connections
    reconnects: int
    released: bool
    cpu_s: float  # this process's user+system CPU seconds


def _lifetime(values: deque[float], count: int) -> LifetimeJSON:
    if not values:
        return {"count": count, "min_s": 0.0, "median_s": 0.0, "max_s": 0.0}
    return {
        "count": count,
        "min_s": round(min(values), 3),
        "median_s": round(statistics.median(values), 3),
        "max_s": round(max(values), 3),
    }


class _Conn(asyncio.Protocol):
    """One held connection; all decisions are the holder's."""

    __slots__ = ("body_left", "buf", "closed_by_us", "got_answer", "holder", "kind",
                 "last_status", "next_at", "opened", "transport", "waiting")  # fmt: skip

    def __init__(self, holder: Holder, kind: Kind) -> None:
        self.holder = holder
        self.kind: Kind = kind
        self.transport: Any = None  # an asyncio or uvloop transport
        self.buf = b""
        self.body_left = -1  # -1: reading a head
        self.waiting = False  # idle: a request is out, its answer not complete
        self.got_answer = False
        self.last_status = 0
        self.closed_by_us = False
        self.opened = 0.0
        self.next_at = 0.0  # slow: next byte; idle: next refresh

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.opened = time.monotonic()
        self.holder.opened(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.buf:
            if self.body_left < 0:
                head, sep, rest = self.buf.partition(b"\r\n\r\n")
                if not sep:
                    return
                self.buf = rest
                status, length = _parse_head(head)
                self.last_status = status
                self.got_answer = True
                self.holder.answered(self, status)
                self.body_left = length
            n = min(self.body_left, len(self.buf))
            self.body_left -= n
            self.buf = self.buf[n:]
            if self.kind == "idle":
                self.holder.stats["idle_bytes"] += n
            if self.body_left == 0:
                self.body_left = -1
                self.waiting = False
            elif self.body_left > 0:
                return

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.holder.lost(self, exc)


def _parse_head(head: bytes) -> tuple[int, int]:
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return 0, 0
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            with contextlib.suppress(ValueError):
                length = int(value.strip())
    return status, length


class Holder:
    """Opens and keeps ``spec.idle`` + ``spec.slowloris`` connections until released."""

    def __init__(self, spec: HolderSpec, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.loop = loop
        self.rng = random.Random(os.getpid())
        self.conns: set[_Conn] = set()
        self.sem = asyncio.Semaphore(spec.connect_concurrency)
        self.pending: set[asyncio.Task[None]] = set()
        self.released = False
        self.idle_life: deque[float] = deque(maxlen=LIFETIMES_KEPT)
        self.slow_life: deque[float] = deque(maxlen=LIFETIMES_KEPT)
        host = spec.host
        self.request = (
            f"GET {spec.path} HTTP/1.1\r\nHost: {host}\r\n"
            f"Range: bytes=0-{IDLE_RANGE_BYTES - 1}\r\n\r\n"
        ).encode()
        self.slow_head = f"GET {spec.path} HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode()
        self.stats: dict[str, Any] = {
            "connects": 0,
            "connect_errors": {},
            "idle_statuses": {},
            "idle_bytes": 0,
            "idle_closed": 0,
            "idle_closed_refused": 0,
            "slow_bytes_sent": 0,
            "slow_closed": 0,
            "slow_statuses": {},
            "slow_closed_silently": 0,
            "slow_reset": 0,
            "reconnects": 0,
        }

    # ---------------------------------------------------------------- opening
    def start(self) -> None:
        spread = self.spec.spread_s
        for _ in range(self.spec.idle):
            self._open("idle", self.rng.uniform(0, spread) if spread else 0.0)
        for _ in range(self.spec.slowloris):
            self._open("slow", self.rng.uniform(0, spread) if spread else 0.0)

    def _open(self, kind: Kind, delay: float) -> None:
        task = self.loop.create_task(self._connect(kind, delay))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _connect(self, kind: Kind, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        while not self.released:
            async with self.sem:
                if self.is_released():  # while this one waited for a slot
                    return
                try:
                    await self.loop.create_connection(
                        lambda: _Conn(self, kind), self.spec.host, self.spec.port
                    )
                    return
                except OSError as exc:
                    name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
                    errs = self.stats["connect_errors"]
                    errs[name] = errs.get(name, 0) + 1
            await asyncio.sleep(REFUSED_PAUSE_S)

    def is_released(self) -> bool:
        return self.released

    def opened(self, c: _Conn) -> None:
        assert c.transport is not None
        self.stats["connects"] += 1
        if self.released:
            c.closed_by_us = True
            c.transport.close()
            return
        self.conns.add(c)
        now = time.monotonic()
        if c.kind == "idle":
            c.waiting = True
            c.transport.write(self.request)
            if self.spec.refresh_s > 0:
                c.next_at = now + self.rng.uniform(0.5, 1.0) * self.spec.refresh_s
        else:
            c.transport.write(self.slow_head)
            self.stats["slow_bytes_sent"] += len(self.slow_head)
            c.next_at = now + self.rng.uniform(0.0, 1.0) * self.spec.trickle_s

    # ---------------------------------------------------------------- events
    def answered(self, c: _Conn, status: int) -> None:
        key = "idle_statuses" if c.kind == "idle" else "slow_statuses"
        d = self.stats[key]
        d[str(status)] = d.get(str(status), 0) + 1

    def lost(self, c: _Conn, exc: Exception | None) -> None:
        self.conns.discard(c)
        if c.closed_by_us:
            return
        life = time.monotonic() - c.opened
        if c.kind == "idle":
            self.stats["idle_closed"] += 1
            self.idle_life.append(life)
            if c.last_status == 503:
                self.stats["idle_closed_refused"] += 1
        else:
            self.stats["slow_closed"] += 1
            self.slow_life.append(life)
            if isinstance(exc, ConnectionResetError):
                self.stats["slow_reset"] += 1
            elif not c.got_answer:
                self.stats["slow_closed_silently"] += 1
        if self.spec.reconnect and not self.released:
            self.stats["reconnects"] += 1
            pause = REFUSED_PAUSE_S if c.last_status == 503 else RECONNECT_PAUSE_S
            self._open(c.kind, pause)

    async def tick(self) -> None:
        """Trickle slowloris bytes and send due refreshes, every :data:`TICK_S`."""
        byte = b"a"
        while not self.released:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            for c in list(self.conns):
                if c.transport is None or c.closed_by_us or c.next_at > now:
                    continue
                if c.kind == "slow":
                    c.transport.write(byte)
                    self.stats["slow_bytes_sent"] += 1
                    c.next_at = now + self.spec.trickle_s
                elif self.spec.refresh_s > 0:
                    c.next_at = now + self.spec.refresh_s
                    if not c.waiting:
                        c.waiting = True
                        c.transport.write(self.request)

    async def release(self) -> None:
        """Close every connection (FIN) and stop reconnecting."""
        self.released = True
        for t in list(self.pending):
            t.cancel()
        await asyncio.gather(*self.pending, return_exceptions=True)
        for c in list(self.conns):
            c.closed_by_us = True
            if c.transport is not None:
                c.transport.close()
        deadline = time.monotonic() + 30
        while self.conns and time.monotonic() < deadline:  # until every connection_lost
            await asyncio.sleep(0.05)

    # ---------------------------------------------------------------- report
    def snapshot(self) -> HolderStats:
        idle = [c for c in self.conns if c.kind == "idle"]
        r = resource.getrusage(resource.RUSAGE_SELF)
        s = self.stats
        return {
            "pid": os.getpid(),
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            "target": self.spec.idle + self.spec.slowloris,
            "open": len(self.conns),
            "idle_open": len(idle),
            "idle_held": sum(1 for c in idle if c.got_answer and not c.waiting),
            "slow_open": len(self.conns) - len(idle),
            "connects": s["connects"],
            "connect_errors": dict(s["connect_errors"]),
            "idle_statuses": dict(s["idle_statuses"]),
            "idle_bytes": s["idle_bytes"],
            "idle_closed": s["idle_closed"],
            "idle_closed_refused": s["idle_closed_refused"],
            "idle_lifetime": _lifetime(self.idle_life, s["idle_closed"]),
            "slow_bytes_sent": s["slow_bytes_sent"],
            "slow_closed": s["slow_closed"],
            "slow_statuses": dict(s["slow_statuses"]),
            "slow_closed_silently": s["slow_closed_silently"],
            "slow_reset": s["slow_reset"],
            "slow_lifetime": _lifetime(self.slow_life, s["slow_closed"]),
            "reconnects": s["reconnects"],
            "released": self.released,
            "cpu_s": round(r.ru_utime + r.ru_stime, 3),
        }


# -------------------------------------------------------------------- child process


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def _serve(spec: HolderSpec) -> int:
    loop = asyncio.get_running_loop()
    holder = Holder(spec, loop)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    holder.start()
    ticker = loop.create_task(holder.tick())

    def answer() -> None:
        sys.stdout.write(orjson.dumps(holder.snapshot()).decode() + "\n")
        sys.stdout.flush()

    while True:
        line = (await reader.readline()).decode().strip()
        if not line:
            break
        if line == "release":
            await holder.release()
        answer()
    if not holder.released:
        await holder.release()
    ticker.cancel()
    await asyncio.gather(ticker, return_exceptions=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = HolderSpec(**orjson.loads(args[0]))
    nofile = raise_nofile()
    need = spec.idle + spec.slowloris + 64
    if 0 <= nofile < need:
        print(f"bench.holder: the open-file limit {nofile} cannot hold {need} descriptors",
              file=sys.stderr)  # fmt: skip
        return 3
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides
    try:
        import uvloop

        return uvloop.run(_serve(spec))
    except ImportError:
        return asyncio.run(_serve(spec))


# -------------------------------------------------------------------- parent's handle


class HolderError(Exception):
    """The holder process failed or did not answer; the message says what it printed."""


class HolderProcess:
    """A holder child process: ``stats()``, ``wait_open()``, ``release()``, ``stop()``."""

    def __init__(self, spec: HolderSpec, *, cpus: str | None = None, log_path: Path) -> None:
        self.spec = spec
        self.log_path = log_path
        spec_json = orjson.dumps(dataclasses.asdict(spec)).decode()
        cmd = [sys.executable, "-m", "bench.holder", spec_json]
        if cpus is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", cpus, *cmd]
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=REPO,
                start_new_session=True,
            )
        self.pid = self.proc.pid
        self._buf = b""

    def _ask(self, command: str, timeout: float) -> HolderStats:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(command.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise HolderError(f"the holder exited: {self._log_tail()}") from None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HolderError(f"no answer to {command!r} within {timeout:.0f} s")
                if not sel.select(min(left, 0.5)):
                    if self.proc.poll() is not None:
                        raise HolderError(f"the holder exited: {self._log_tail()}")
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
                if not chunk:
                    raise HolderError(f"the holder exited: {self._log_tail()}")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        stats: HolderStats = orjson.loads(line)
        return stats

    def stats(self, timeout: float = 30.0) -> HolderStats:
        return self._ask("stats", timeout)

    def wait_open(self, count: int, timeout: float, *, held: bool = True) -> HolderStats:
        """Poll until ``count`` connections are open (idle ones answered, if ``held``)."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.stats()
            have = s["idle_held"] + s["slow_open"] if held else s["open"]
            if have >= count:
                return s
            if time.monotonic() > deadline:
                raise HolderError(
                    f"only {have} of {count} connections open after {timeout:.0f} s: {s}"
                )
            time.sleep(0.2)

    def release(self, timeout: float = 60.0) -> HolderStats:
        return self._ask("release", timeout)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # nothing of it may outlive it
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def __enter__(self) -> HolderProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
