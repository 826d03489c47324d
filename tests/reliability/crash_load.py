"""Clients that check every byte an appliance sends them, while things are being killed.

Theory of operation
-------------------
Each client thread loops: pick an appliance and an object, ask for the whole object, one
byte range or several (``multipart/byteranges``), read the response and compare every
body byte it got with the source file at the offset the response claims. The objects
come from :class:`ContentSet`, which hands out some never-asked-for objects on purpose so
that a steady share of requests takes the miss path (peer, then origin) while the
appliance stores what it pulls.

A kill can end a response at any byte. What a client may see, and how it is judged:

- a complete response (``Content-Length`` bytes arrived) of 200 or 206: every byte is
  compared; the status, ``Content-Range`` and length must answer what was asked;
- a response that stops before ``Content-Length`` (the connection closed or was reset):
  the client can tell it is incomplete, so it is *cut*, not wrong; the bytes it did get
  are still compared with the source;
- a connection refused, reset or closed before any response head: *unreachable*;
- a 502/503/504 (the appliance says it could not serve it now): *refused*;
- anything else (another status, a wrong byte, a wrong ``Content-Range``, more bytes
  than announced) is a failure, recorded with what was asked and what came back.

``bytes_verified`` counts the body bytes compared with the source (multipart headers
excluded); every one of them matched, or there is a failure on record.
"""

from __future__ import annotations

import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.appliance import parse_head

Span = tuple[int, int]  # first, last (inclusive)

REFUSED_STATUSES = frozenset({502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_BOUNDARY = re.compile(r'multipart/byteranges;\s*boundary="?([^";]+)"?')


class ContentSet:
    """The source bytes of every object and which ones clients may ask for (thread-safe).

    ``fresh`` objects are handed to each appliance once, in order, at most
    ``fresh_per_second`` a second, so that requests for them miss there all along the
    run; ``current`` objects are part of the fill round being pre-positioned (asked for
    while the fill stores them); everything published so far is fair game after.
    ``register`` adds source bytes that no client asks for (yet).
    """

    def __init__(self, fresh_per_second: float = 5.0) -> None:
        self._lock = threading.Lock()
        self.files: dict[str, bytes] = {}
        self._asked: list[str] = []
        self._fresh: list[str] = []
        self._fresh_next: dict[int, int] = {}
        self._fresh_due: dict[int, float] = {}
        self._fresh_gap = 1.0 / fresh_per_second
        self._current: list[str] = []

    def register(self, files: dict[str, bytes]) -> None:
        with self._lock:
            self.files.update(files)

    def publish(self, files: dict[str, bytes], *, fresh: bool = False,
                current: bool = False) -> None:  # fmt: skip
        with self._lock:
            self.files.update(files)
            if fresh:
                self._fresh.extend(files)
            else:
                self._asked.extend(files)
            if current:
                self._current = list(files)

    def source(self, path: str) -> bytes:
        return self.files[path]

    def pick(self, target: int, rng: random.Random) -> str:
        with self._lock:
            roll = rng.random()
            i = self._fresh_next.get(target, 0)
            now = time.monotonic()
            if i < len(self._fresh) and now >= self._fresh_due.get(target, 0.0):
                self._fresh_due[target] = now + self._fresh_gap
                self._fresh_next[target] = i + 1
                path = self._fresh[i]
                self._asked.append(path)
                return path
            if roll < 0.15 and self._current:
                return rng.choice(self._current)
            return rng.choice(self._asked)


@dataclass
class Tally:
    requests: int = 0
    complete: int = 0
    cut: int = 0
    refused: int = 0
    unreachable: int = 0
    timeouts: int = 0
    bytes_verified: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        for name in ("requests", "complete", "cut", "refused", "unreachable", "timeouts",
                     "bytes_verified"):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.kinds.update(other.kinds)
        self.statuses.update(other.statuses)
        self.failures.extend(other.failures)


class WrongAnswer(Exception):
    """The response contradicts the source or the request."""


@dataclass(frozen=True)
class Ask:
    kind: str  # "whole", "range", "multi"
    header: str  # the Range value, "" for none
    spans: tuple[Span, ...]  # what was asked, resolved against the size


def make_ask(size: int, rng: random.Random) -> Ask:
    roll = rng.random()
    if roll < 0.3 or size < 8:
        return Ask("whole", "", ((0, size - 1),))
    if roll < 0.7:
        shape = rng.random()
        if shape < 0.2:
            n = rng.randint(1, size)
            return Ask("range", f"bytes=-{n}", ((size - n, size - 1),))
        first = rng.randrange(size)
        if shape < 0.35:
            return Ask("range", f"bytes={first}-", ((first, size - 1),))
        last = rng.randint(first, min(size - 1, first + rng.choice((1, 100, 4096, 1 << 20))))
        return Ask("range", f"bytes={first}-{last}", ((first, last),))
    cuts = sorted(rng.sample(range(1, size), min(size - 1, 2 * rng.randint(2, 4))))
    spans = []
    for i in range(0, len(cuts) - 1, 2):
        first, last = cuts[i], cuts[i + 1] - 1
        if spans and first <= spans[-1][1] + 1:
            continue  # keep them apart: a server may merge touching ranges
        spans.append((first, last))
    if len(spans) < 2:
        return Ask("range", f"bytes={spans[0][0]}-{spans[0][1]}", (spans[0],))
    value = ",".join(f"{a}-{b}" for a, b in spans)
    return Ask("multi", f"bytes={value}", tuple(spans))


class _Conn:
    """One keep-alive connection; ``exchange`` returns (status, headers, body, complete)."""

    def __init__(self, addr: tuple[str, int], timeout: float) -> None:
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def _more(self) -> bytes:
        return self.sock.recv(1 << 18)

    def exchange(self, path: str, rng_header: str) -> tuple[int, dict[str, str], bytes, bool]:
        lines = [f"GET {path} HTTP/1.1", "Host: oca.test"]
        if rng_header:
            lines.append(f"Range: {rng_header}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            chunk = self._more()
            if not chunk:
                raise ConnectionError("closed before a response head")
            self.buf += chunk
        head, _, body = self.buf.partition(b"\r\n\r\n")
        self.buf = b""
        status, headers = parse_head(head)
        if "content-length" not in headers:
            raise WrongAnswer(f"{status} without Content-Length")
        n = int(headers["content-length"])
        complete = True
        while len(body) < n:
            try:
                chunk = self._more()
            except (ConnectionError, TimeoutError, OSError):
                chunk = b""
            if not chunk:
                complete = False
                break
            body += chunk
        if len(body) > n:
            raise WrongAnswer(f"{len(body) - n} bytes past Content-Length {n}")
        return status, headers, body, complete


def _check_slice(src: bytes, first: int, data: bytes) -> None:
    want = src[first : first + len(data)]
    if data != want:
        at = next(i for i, (a, b) in enumerate(zip(data, want, strict=False)) if a != b)
        raise WrongAnswer(f"byte {first + at} differs from the source")


def _content_range(value: str, size: int) -> Span:
    m = _CONTENT_RANGE.fullmatch(value)
    if m is None:
        raise WrongAnswer(f"bad Content-Range {value!r}")
    first, last, total = map(int, m.groups())
    if total != size or not 0 <= first <= last < size:
        raise WrongAnswer(f"Content-Range {value!r} for a {size}-byte object")
    return first, last


def _inside(span: Span, asked: tuple[Span, ...]) -> bool:
    return any(a <= span[0] and span[1] <= b for a, b in asked)


def verify(src: bytes, ask: Ask, status: int, headers: dict[str, str], body: bytes,
           complete: bool) -> int:  # fmt: skip
    """Compare what arrived with the source; the number of body bytes compared."""
    size = len(src)
    n = int(headers["content-length"])
    if status == 200:
        if n != size:
            raise WrongAnswer(f"200 with Content-Length {n} for a {size}-byte object")
        _check_slice(src, 0, body)
        return len(body)
    if status != 206 or ask.kind == "whole":
        raise WrongAnswer(f"status {status}")
    ctype = headers.get("content-type", "")
    m = _BOUNDARY.fullmatch(ctype)
    if m is None:
        first, last = _content_range(headers.get("content-range", ""), size)
        if n != last - first + 1:
            raise WrongAnswer(f"Content-Length {n} for Content-Range {first}-{last}")
        if ask.kind == "range" and (first, last) != ask.spans[0]:
            raise WrongAnswer(f"asked {ask.header}, got {first}-{last}")
        if ask.kind == "multi" and not _inside((first, last), ask.spans):
            raise WrongAnswer(f"asked {ask.header}, got {first}-{last}")
        _check_slice(src, first, body)
        return len(body)
    return _verify_multipart(src, ask, m.group(1).encode(), body, complete)


def _verify_multipart(src: bytes, ask: Ask, boundary: bytes, body: bytes,
                      complete: bool) -> int:  # fmt: skip
    size = len(src)
    pos = checked = parts = 0
    delim = b"\r\n--" + boundary
    while True:
        rest = body[pos : pos + len(delim)]
        if not delim.startswith(rest):
            raise WrongAnswer("multipart body does not continue with the boundary")
        if len(rest) < len(delim):
            break  # cut inside the delimiter
        pos += len(delim)
        if body[pos : pos + 2] == b"--":
            tail = body[pos:]
            if not b"--\r\n".startswith(tail) or (complete and tail != b"--\r\n"):
                raise WrongAnswer("the closing boundary is malformed or followed by bytes")
            if complete and parts == 0:
                raise WrongAnswer("multipart body without parts")
            return checked
        end = body.find(b"\r\n\r\n", pos)
        if end < 0:
            break  # cut inside the part's header
        _, part_headers = parse_head(b"HTTP/1.1 206 x" + body[pos:end])
        first, last = _content_range(part_headers.get("content-range", ""), size)
        if not _inside((first, last), ask.spans):
            raise WrongAnswer(f"part {first}-{last} was not asked for ({ask.header})")
        data = body[end + 4 : end + 4 + (last - first + 1)]
        _check_slice(src, first, data)
        checked += len(data)
        parts += 1
        pos = end + 4 + len(data)
        if len(data) < last - first + 1:
            break
    if complete:
        raise WrongAnswer("complete multipart body without its closing boundary")
    return checked


class VerifyingClients:
    """``threads`` clients asking ``targets()`` (the appliances' addresses) for objects."""

    def __init__(self, content: ContentSet, targets: Callable[[], list[tuple[str, int]]],
                 *, threads: int, seed: int, timeout: float = 20.0) -> None:  # fmt: skip
        self.content = content
        self.targets = targets
        self.seed = seed
        self.timeout = timeout
        self.stop_event = threading.Event()
        self.tallies = [Tally() for _ in range(threads)]
        self.threads = [
            threading.Thread(target=self._run, args=(i,), name=f"crash-client-{i}", daemon=True)
            for i in range(threads)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> Tally:
        self.stop_event.set()
        for t in self.threads:
            t.join(self.timeout + 10)
        total = Tally()
        for t in self.tallies:
            total.add(t)
        return total

    def total(self) -> Tally:
        total = Tally()
        for t in self.tallies:
            total.add(t)
        return total

    def _run(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        tally = self.tallies[index]
        conns: dict[int, _Conn] = {}
        try:
            while not self.stop_event.is_set():
                targets = self.targets()
                target = rng.randrange(len(targets))
                path = self.content.pick(target, rng)
                src = self.content.source(path)
                ask = make_ask(len(src), rng)
                self._one(tally, conns, target, targets[target], path, src, ask)
        finally:
            for c in conns.values():
                c.close()

    def _one(self, tally: Tally, conns: dict[int, _Conn], target: int, addr: tuple[str, int],
             path: str, src: bytes, ask: Ask) -> None:  # fmt: skip
        tally.requests += 1
        tally.kinds[ask.kind] += 1
        conn = conns.get(target)
        try:
            if conn is None:
                conn = conns[target] = _Conn(addr, self.timeout)
            status, headers, body, complete = conn.exchange(path, ask.header)
        except TimeoutError:
            tally.timeouts += 1
            self._drop(conns, target)
            return
        except (ConnectionError, OSError):
            tally.unreachable += 1
            self._drop(conns, target)
            time.sleep(0.02)  # the appliance may be restarting
            return
        except WrongAnswer as exc:
            tally.failures.append(f"{path} {ask.header or 'whole'}: {exc}")
            self._drop(conns, target)
            return
        tally.statuses[status] += 1
        if status in REFUSED_STATUSES:
            tally.refused += 1
            if not complete or headers.get("connection", "").lower() == "close":
                self._drop(conns, target)
            return
        try:
            tally.bytes_verified += verify(src, ask, status, headers, body, complete)
        except WrongAnswer as exc:
            got = headers.get("content-range") or headers.get("content-type", "")
            said = body[:200].decode("latin-1") if status >= 300 else ""
            tally.failures.append(
                f"{path} ({len(src)} bytes) {ask.header or 'whole'}: {status} {got}: {exc} {said}"
                f" at {time.time():.3f}"
            )
            self._drop(conns, target)
            return
        if complete:
            tally.complete += 1
            if headers.get("connection", "").lower() == "close":
                self._drop(conns, target)
        else:
            tally.cut += 1
            self._drop(conns, target)

    @staticmethod
    def _drop(conns: dict[int, _Conn], target: int) -> None:
        conn = conns.pop(target, None)
        if conn is not None:
            conn.close()
