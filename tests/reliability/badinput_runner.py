"""Sending fuzz scripts over real TCP connections, many at once, and judging the answers.

Theory of operation. :func:`run_scripts` keeps ``concurrency`` non-blocking connections
to the appliance open in one selector loop. Each connection sends its script (one
``send()`` per segment, ``TCP_NODELAY`` on, so split points reach the server as
separate segments where the kernel allows), then half-closes (``SHUT_WR``): from then
on a correct server answers what it parsed and closes, whatever the bytes were, so
every connection must end, and one that has not ended after ``timeout`` seconds is a
hang. Reading runs alongside sending, so a server answering early never deadlocks on a
full buffer. Client sockets close with ``SO_LINGER`` 0 (no TIME_WAIT), so a million
requests do not exhaust the loopback's ephemeral ports.

:func:`check_script` reads the answers with :func:`~tests.reliability.badinput_http.read_answers`
and :func:`~tests.reliability.badinput_http.check_answer`; for a structured script it
then holds them to the script's expectations: exactly one answer per request up to the
first one that closes the connection (requests after it, the smuggled tail, must never
be answered), each with its expected status, error reason, closing behaviour, object
bytes and, for a stored object, the engine's spans.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import selectors
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields

from tests.reliability.badinput_http import (
    Answer,
    Malformed,
    check_answer,
    partial_spans,
    read_answers,
)
from tests.reliability.badinput_requests import Script
from tests.reliability.badinput_site import Obj

_LINGER_ZERO = struct.pack("ii", 1, 0)


@dataclass
class WireStats:
    scripts: int = 0
    requests: int = 0  # requests sent: the fuzz inputs
    mutated_requests: int = 0  # of which in byte-mutated scripts
    answers: int = 0
    unanswered_tail: int = 0  # requests after a closing one, never answered (as required)
    bytes_sent: int = 0
    bytes_received: int = 0
    body_bytes_verified: int = 0
    resets: int = 0
    seconds: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)

    def merge(self, other: WireStats) -> None:
        for f in fields(self):
            if f.name != "statuses":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        self.statuses.update(other.statuses)

    def summary(self) -> str:
        rate = self.requests / self.seconds if self.seconds else 0.0
        return (
            f"{self.requests} requests ({self.mutated_requests} byte-mutated) on "
            f"{self.scripts} connections in {self.seconds:.1f}s ({rate:.0f}/s); "
            f"{self.answers} answers checked, {self.unanswered_tail} smuggled/tail requests "
            f"never answered, {self.body_bytes_verified} object bytes verified, "
            f"{self.bytes_sent} bytes sent, {self.bytes_received} received, "
            f"{self.resets} resets; statuses {dict(sorted(self.statuses.items()))}"
        )


def _error_matches(error: str | None, allowed: tuple[str, ...]) -> bool:
    if error is None:
        return True  # HEAD: no body to read the reason from
    return any(error.startswith(a[:-1]) if a.endswith("*") else error == a for a in allowed)


def check_script(
    script: Script, received: bytes, reset: bool, by_etag: Mapping[str, Obj], stats: WireStats
) -> None:
    """Judge what one connection got back; raises AssertionError (Malformed) on a break."""
    cases = script.cases
    if script.raw:
        answers, _ = read_answers(received, lambda i: False, cut_short=reset)
    else:
        answers, _ = read_answers(
            received, lambda i: i < len(cases) and cases[i].head, cut_short=reset
        )
    for ans in answers:
        stats.body_bytes_verified += check_answer(ans, by_etag)
        stats.statuses[ans.status] += 1
    stats.answers += len(answers)
    if script.raw:
        return
    want = script.answered
    stats.unanswered_tail += len(cases) - want
    if len(answers) != want:
        raise Malformed(
            f"{len(answers)} answers to a script that must get {want}: "
            f"{[(c.label, c.expect.statuses if c.expect else None) for c in cases]} got "
            f"{[(a.status, a.get('connection')) for a in answers]}"
        )
    for i, ans in enumerate(answers):
        exp = cases[i].expect
        assert exp is not None
        where = f"request {i} ({cases[i].label})"
        if ans.status not in exp.statuses:
            raise Malformed(f"{where}: status {ans.status}, expected {set(exp.statuses)}: {ans}")
        if exp.errors and not _error_matches(ans.error, exp.errors):
            raise Malformed(f"{where}: error {ans.error!r}, expected one of {exp.errors}")
        if ans.closes != exp.closes:
            raise Malformed(f"{where}: Connection {ans.get('connection')!r}, closes={exp.closes}")
        if exp.keep_alive_header and ans.get("connection") != "keep-alive":
            raise Malformed(f"{where}: HTTP/1.0 keep-alive not echoed: {ans}")
        obj, decision = exp.obj, exp.decision
        if obj is not None and ans.status in (200, 206, 304) and ans.get("etag") != obj.etag:
            raise Malformed(f"{where}: ETag {ans.get('etag')} is not {obj.path}'s")
        if obj is not None and decision is not None and ans.status == 206 and not ans.head:
            got = partial_spans(ans, obj)
            if got != [(s.start, s.end) for s in decision.spans]:
                raise Malformed(f"{where}: spans {got}, the engine decided {decision.spans}")


class _Conn:
    __slots__ = ("buf", "reset", "script", "segments", "shut", "sock", "started")

    def __init__(self, script: Script, address: tuple[str, int], now: float) -> None:
        self.script = script
        data, cuts = script.data, script.cuts
        bounds = [0, *cuts, len(data)]
        self.segments = [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]
        self.buf = bytearray()
        self.started = now
        self.shut = False
        self.reset = False
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if script.source != "127.0.0.1":
            sock.bind((script.source, 0))
        code = sock.connect_ex(address)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            raise ConnectionError(f"connect to {address}: {errno.errorcode.get(code, code)}")
        self.sock = sock

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        self.sock.close()


def run_scripts(
    address: tuple[str, int],
    scripts: Iterable[Script],
    by_etag: Mapping[str, Obj],
    *,
    concurrency: int = 8,
    timeout: float = 30.0,
) -> WireStats:
    """Run every script; raise AssertionError naming the script's (seed, index) on a break."""
    stats = WireStats()
    started = time.monotonic()
    sel = selectors.DefaultSelector()
    source = iter(scripts)
    live: dict[int, _Conn] = {}
    exhausted = False

    def fail(conn: _Conn, why: str) -> AssertionError:
        s = conn.script
        return AssertionError(
            f"wire fuzz seed={s.ident[0]} script={s.ident[1]}: {why}\n"
            f"sent ({len(s.data)} bytes, cuts {s.cuts}, raw={s.raw}): {s.data[:3000]!r}\n"
            f"received ({len(conn.buf)} bytes, reset={conn.reset}): {bytes(conn.buf[:3000])!r}"
        )

    def finish(conn: _Conn) -> None:
        sel.unregister(conn.sock)
        del live[conn.sock.fileno()]
        conn.close()
        stats.scripts += 1
        stats.requests += len(conn.script.cases)
        if conn.script.raw:
            stats.mutated_requests += len(conn.script.cases)
        stats.bytes_sent += len(conn.script.data)
        stats.bytes_received += len(conn.buf)
        stats.resets += conn.reset
        try:
            check_script(conn.script, bytes(conn.buf), conn.reset, by_etag, stats)
        except (AssertionError, ValueError, KeyError) as exc:
            raise fail(conn, f"{type(exc).__name__}: {exc}") from exc

    try:
        while True:
            now = time.monotonic()
            while not exhausted and len(live) < concurrency:
                script = next(source, None)
                if script is None:
                    exhausted = True
                    break
                conn = _Conn(script, address, now)
                live[conn.sock.fileno()] = conn
                sel.register(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
            if not live:
                break
            for key, events in sel.select(timeout=0.5):
                conn = key.data
                if events & selectors.EVENT_WRITE and not conn.shut:
                    _send(conn, sel)
                if events & selectors.EVENT_READ:
                    try:
                        chunk = conn.sock.recv(1 << 18)
                    except BlockingIOError:
                        continue
                    except ConnectionResetError:
                        conn.reset = True
                        chunk = b""
                    except ConnectionRefusedError as exc:
                        raise fail(conn, "connection refused: the server is gone") from exc
                    if chunk:
                        conn.buf += chunk
                    else:
                        finish(conn)
            now = time.monotonic()
            for conn in list(live.values()):
                if now - conn.started > timeout:
                    raise fail(conn, f"the connection did not end within {timeout:.0f}s (a hang)")
    finally:
        for conn in live.values():
            conn.close()
        sel.close()
        stats.seconds = time.monotonic() - started
    return stats


def _send(conn: _Conn, sel: selectors.BaseSelector) -> None:
    try:
        if conn.segments:
            seg = conn.segments[0]
            n = conn.sock.send(seg)
            if n < len(seg):
                conn.segments[0] = seg[n:]
            else:
                conn.segments.pop(0)
            if conn.segments:
                return
        conn.sock.shutdown(socket.SHUT_WR)
    except BlockingIOError:
        return
    except OSError as exc:
        if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
            raise
        conn.reset = True  # the server closed first; read whatever it sent
    conn.shut = True
    sel.modify(conn.sock, selectors.EVENT_READ, conn)


def exchange(
    address: tuple[str, int],
    data: bytes | list[bytes],
    by_etag: Mapping[str, Obj],
    *,
    heads: Iterable[int] = (),
    source: str = "127.0.0.1",
    pause: float = 0.0,
    rcvbuf: int = 0,
    wait_before_reading: float = 0.0,
    timeout: float = 20.0,
) -> tuple[list[Answer], bytes]:
    """One connection: send ``data`` (a list is sent piece by piece, ``pause`` seconds
    apart), half-close, read to the end. Returns the checked answers and the raw bytes.

    Fails if the server neither finishes nor closes within ``timeout`` (a hang), or if
    any answer is malformed (:func:`check_answer`).
    """
    pieces = [data] if isinstance(data, bytes) else data
    head_set = frozenset(heads)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source != "127.0.0.1":
            sock.bind((source, 0))
        sock.settimeout(timeout)
        sock.connect(address)
        reset = False
        try:
            for i, piece in enumerate(pieces):
                if i and pause:
                    time.sleep(pause)
                sock.sendall(piece)
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                raise
            reset = True
        if wait_before_reading:
            time.sleep(wait_before_reading)
        buf = bytearray()
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"no end within {timeout:.0f}s (a hang): {bytes(buf[:500])!r}")
            try:
                chunk = sock.recv(1 << 20)
            except ConnectionResetError:
                reset = True
                break
            except TimeoutError as exc:
                raise AssertionError(f"no end within {timeout:.0f}s (a hang)") from exc
            if not chunk:
                break
            buf += chunk
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        sock.close()
    received = bytes(buf)
    answers, cut = read_answers(received, lambda i: i in head_set, cut_short=reset)
    if cut:
        raise Malformed(f"the connection was reset inside an answer: {received[-300:]!r}")
    for ans in answers:
        check_answer(ans, by_etag)
    return answers, received
