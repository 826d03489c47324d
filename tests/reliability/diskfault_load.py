"""Players that check every byte: keep-alive clients fetching objects while disks break.

Each client thread keeps one HTTP/1.1 connection open and asks for random objects,
whole or by byte range (as DASH players do), and holds every answer against the
source bytes:

- a complete 200/206 must carry exactly the expected bytes (for a 206, the span its
  Content-Range names, which must be the span asked for): anything else is **wrong**;
- a 404 or 503 is a refusal, which is allowed while a disk fails;
- a body that stops short of its Content-Length is a **cut**, allowed only because the
  server then closes the connection, so the client knows the response is incomplete;
  the bytes that did arrive must still be the object's;
- a connection closed before any head is counted and reopened.

Every outcome is tallied per path, so a test can hold the objects on healthy disks to
"only complete and correct" while the objects of the broken disk may be refused or cut.
"""

from __future__ import annotations

import random
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.I)
_RANGE = re.compile(rb"\r\ncontent-range: *bytes (\d+)-(\d+)/(\d+)", re.I)


@dataclass
class Tally:
    ok: Counter[str] = field(default_factory=Counter)  # path -> complete, correct answers
    refused: Counter[str] = field(default_factory=Counter)  # path -> 404/503
    cut: Counter[str] = field(default_factory=Counter)  # path -> short body, then closed
    closed: int = 0  # connections closed before a head
    wrong: list[str] = field(default_factory=list)  # what was wrong, for the assertion
    verified_bytes: int = 0
    statuses: Counter[int] = field(default_factory=Counter)

    def requests(self) -> int:
        return sum(self.ok.values()) + sum(self.refused.values()) + sum(self.cut.values())

    def merge(self, other: Tally) -> None:
        self.ok.update(other.ok)
        self.refused.update(other.refused)
        self.cut.update(other.cut)
        self.closed += other.closed
        self.wrong.extend(other.wrong)
        self.verified_bytes += other.verified_bytes
        self.statuses.update(other.statuses)


class VerifyingClients:
    """``threads`` clients over ``files`` until :meth:`stop`; :meth:`take` hands over the
    tally so far and starts a new one (to split before and after a fault)."""

    def __init__(
        self,
        host_port: tuple[str, int],
        files: dict[str, bytes],
        *,
        threads: int = 4,
        seed: int = 1,
        paths: list[str] | None = None,
    ) -> None:
        self.host_port = host_port
        self.files = files
        self.paths = paths or sorted(files)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._tally = Tally()
        self._total = Tally()
        self._threads = [
            threading.Thread(target=self._run, args=(random.Random(seed * 1000 + i),), daemon=True)
            for i in range(threads)
        ]
        self.errors: list[BaseException] = []

    def __enter__(self) -> VerifyingClients:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> Tally:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        assert not any(t.is_alive() for t in self._threads), "a client thread hung"
        assert not self.errors, f"client thread failed: {self.errors[0]!r}"
        self.take()
        return self._total

    def take(self) -> Tally:
        with self._lock:
            got, self._tally = self._tally, Tally()
            self._total.merge(got)
        return got

    def wait_requests(self, n: int, timeout: float = 30.0) -> None:
        """Wait until ``n`` more answers were tallied (the clients are really running)."""
        with self._lock:
            start = self._tally.requests() + self._total.requests()
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                done = self._tally.requests() + self._total.requests() - start
            if done >= n:
                return
            assert not self.errors, f"client thread failed: {self.errors[0]!r}"
            assert time.monotonic() < deadline, f"only {done} of {n} answers in {timeout}s"
            time.sleep(0.02)

    # ------------------------------------------------------------------ one client
    def _run(self, rng: random.Random) -> None:
        sock: socket.socket | None = None
        try:
            while not self._stop.is_set():
                if sock is None:
                    sock = socket.create_connection(self.host_port, timeout=15)
                path = rng.choice(self.paths)
                if not self._one(sock, path, rng):
                    sock.close()
                    sock = None
        except BaseException as exc:  # surfaced by stop()
            self.errors.append(exc)
        finally:
            if sock is not None:
                sock.close()

    def _record(self, fn: str, path: str, n: int = 0, status: int = 0) -> None:
        with self._lock:
            t = self._tally
            getattr(t, fn)[path] += 1
            t.verified_bytes += n
            if status:
                t.statuses[status] += 1

    def _one(self, sock: socket.socket, path: str, rng: random.Random) -> bool:
        """One request; False when the connection is done for."""
        data = self.files[path]
        want = (0, len(data) - 1)
        req = f"GET {path} HTTP/1.1\r\nHost: oca.test\r\n"
        if rng.random() < 0.5 and len(data) > 2:
            a = rng.randrange(len(data) - 1)
            b = rng.randrange(a, len(data))
            want = (a, b)
            req += f"Range: bytes={a}-{b}\r\n"
        sock.sendall((req + "\r\n").encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = _recv(sock)
            if not chunk:
                with self._lock:
                    self._tally.closed += 1
                return False
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        m = _LENGTH.search(head)
        length = int(m.group(1)) if m else 0
        while len(body) < length:
            chunk = _recv(sock)
            if not chunk:
                break
            body += chunk
        if len(body) > length:
            self._wrong(path, f"{len(body) - length} bytes past Content-Length {length}")
            return False
        if status in (404, 503):
            self._record("refused", path, status=status)
            return len(body) == length and b"connection: close" not in head.lower()
        if status not in (200, 206):
            self._wrong(path, f"unexpected status {status}: {head[:200]!r}")
            return False
        first, last = 0, len(data) - 1
        if status == 206:
            r = _RANGE.search(head)
            if r is None:
                self._wrong(path, "206 without Content-Range")
                return False
            first, last, total = (int(x) for x in r.groups())
            if (first, last) != want or total != len(data):
                self._wrong(path, f"206 for {first}-{last}/{total}, asked {want}")
                return False
        expected = data[first : last + 1]
        if length != len(expected):
            self._wrong(path, f"Content-Length {length}, the span has {len(expected)} bytes")
            return False
        if len(body) < length:  # the server cut it and closed: visible as incomplete
            if not expected.startswith(body):
                self._wrong(path, f"a cut response's {len(body)} bytes are not the object's")
            self._record("cut", path, len(body), status)
            return False
        if body != expected:
            self._wrong(path, f"complete {status} with wrong bytes ({length} bytes)")
            return False
        self._record("ok", path, len(body), status)
        return True

    def _wrong(self, path: str, what: str) -> None:
        with self._lock:
            self._tally.wrong.append(f"{path}: {what}")


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1 << 18)
    except (ConnectionResetError, TimeoutError):
        return b""
