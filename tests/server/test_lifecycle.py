"""Process lifecycle of ``oca serve``: worker restarts, graceful drain, startup checks."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.appliance import (
    Appliance,
    fetch,
    listeners_file,
    read_response,
    wait_until,
    write_tree,
)

SEGMENTS = {f"/titles/life/seg-{i:02d}.m4s": os.urandom(64 << 10) for i in range(8)}


# ---------------------------------------------------------------- worker killed under load


@dataclass
class Load:
    """Threads looping GETs on keep-alive connections, reconnecting after errors."""

    addr: tuple[str, int]
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    ok: int = 0
    conn_errors: int = 0
    wrong: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, n: int) -> None:
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(n)]
        for t in self.threads:
            t.start()

    def _run(self, i: int) -> None:
        paths = list(SEGMENTS)
        k = i
        while not self.stop.is_set():
            try:
                sock = socket.create_connection(self.addr, timeout=5)
            except OSError:
                with self.lock:
                    self.conn_errors += 1
                continue
            try:
                while not self.stop.is_set():
                    path = paths[k % len(paths)]
                    k += 1
                    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: oca.test\r\n\r\n".encode())
                    status, _, body = read_response(sock)
                    if status != 200 or body != SEGMENTS[path]:
                        with self.lock:
                            self.wrong.append(f"{path}: {status}, {len(body)} bytes")
                        continue
                    with self.lock:
                        self.ok += 1
            except OSError:  # ConnectionError included: the killed worker's connections
                with self.lock:
                    self.conn_errors += 1
            finally:
                sock.close()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


def test_killed_worker_is_replaced_and_serving_resumes(tmp_path: Path) -> None:
    app = Appliance(tmp_path, workers=2, tiers=(("ssd", 1),))
    app.import_tree(write_tree(tmp_path / "src", SEGMENTS))
    app.start()
    load = Load(app.host_port)
    try:
        before = app.worker_pids()
        assert len(before) == 2
        load.start(4)
        wait_until(lambda: load.ok >= 200, 15, "the load to get going")

        victim = before[0]
        os.kill(victim, signal.SIGKILL)

        def replaced() -> list[int]:
            pids = app.worker_pids()
            return pids if len(pids) == 2 and victim not in pids else []

        after = wait_until(replaced, 15, "the supervisor to start a replacement worker")
        assert before[1] in after

        resumed_from = load.ok
        wait_until(lambda: load.ok >= resumed_from + 200, 15, "the load to continue")
        for path, data in list(SEGMENTS.items()) * 5:  # fresh connections, both workers
            status, _, body = fetch(*app.host_port, path)
            assert (status, body) == (200, data)
    finally:
        load.finish()
        code = app.stop()
    assert not load.wrong, load.wrong[:5]
    assert code == 0
    log = app.log_text()
    assert f"(pid {victim}) was running, now exited with signal SIGKILL" in log
    assert "restarting in" in log


# ---------------------------------------------------------------- SIGTERM mid-transfer

BIG = "/titles/big/v1080.mp4"
BIG_BYTES = 200 << 20
MIB = 1 << 20


@pytest.fixture
def big_tree(tmp_path: Path) -> tuple[Path, str]:
    """A 200 MiB file: random first and last MiB, a sparse hole between."""
    src = tmp_path / "src"
    f = src / BIG.lstrip("/")
    f.parent.mkdir(parents=True)
    with open(f, "wb") as fh:
        fh.write(os.urandom(MIB))
        fh.truncate(BIG_BYTES - MIB)
        fh.seek(BIG_BYTES - MIB)
        fh.write(os.urandom(MIB))
    with open(f, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    write_tree(src, {"/titles/big/small.m4s": b"s" * 1000})
    return src, digest


def test_sigterm_finishes_the_transfer_in_flight_and_refuses_new_ones(
    tmp_path: Path, big_tree: tuple[Path, str]
) -> None:
    src, digest = big_tree
    app = Appliance(tmp_path, tiers=(("ssd", 1),))
    app.import_tree(src)
    app.start()
    try:
        sigterm_at, digest_read = _download_across_sigterm(app)
        assert digest_read == digest
        assert app.proc is not None
        code = app.proc.wait(timeout=20)
        exited_after = time.monotonic() - sigterm_at
    finally:
        app.stop()
    assert code == 0
    assert exited_after < 20  # drain_timeout_seconds in the test config
    log = app.log_text()
    # The download (and perhaps a probe accepted before the worker saw SIGTERM) were open.
    assert re.search(r"worker 0 drained: [12] connection\(s\) open at SIGTERM, 0 cut", log), log


def _download_across_sigterm(app: Appliance) -> tuple[float, str]:
    """Fetch BIG slowly, sending SIGTERM to the supervisor after 8 MiB and checking
    that new connections are then refused; (time of SIGTERM, sha256 of the body)."""
    assert app.proc is not None
    host, port = app.host_port
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    sock.settimeout(10)
    try:
        sock.connect((host, port))
        sock.sendall(f"GET {BIG} HTTP/1.1\r\nHost: oca.test\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(65536)
        head, _, first = buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert f"Content-Length: {BIG_BYTES}".encode() in head

        # A slow reader: about 50 MiB/s, so the whole body takes about four seconds.
        h = hashlib.sha256(first)
        got = len(first)
        rate = 50 * MIB
        started = time.monotonic()
        sigterm_at = None
        while got < BIG_BYTES:
            chunk = sock.recv(min(65536, BIG_BYTES - got))
            assert chunk, f"connection closed after {got} of {BIG_BYTES} bytes"
            h.update(chunk)
            got += len(chunk)
            if sigterm_at is None and got >= 8 * MIB:
                app.proc.send_signal(signal.SIGTERM)
                sigterm_at = time.monotonic()
                assert _wait_refused(host, port) < 5
            ahead = got / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        assert sigterm_at is not None
        assert time.monotonic() - sigterm_at > 1, "the download ended before the drain began"
        # Draining: the response completed, then the server closes the connection.
        assert sock.recv(1) == b""
    finally:
        sock.close()
    return sigterm_at, h.hexdigest()


def _probe(host: str, port: int) -> str:
    """One new connection asking for a small object: "served", "refused" or "hung"."""
    try:
        sock = socket.create_connection((host, port), timeout=1)
    except ConnectionRefusedError:
        return "refused"
    try:
        sock.sendall(b"GET /titles/big/small.m4s HTTP/1.1\r\nHost: oca.test\r\n\r\n")
        sock.settimeout(2)
        status, _, _ = read_response(sock)
    except TimeoutError:
        return "hung"  # accepted by the kernel, answered by nobody
    except ConnectionError:
        return "refused"  # reset: the listener closed before accepting it
    finally:
        sock.close()
    if status == 503:
        return "refused"
    assert status == 200
    return "served"


def _wait_refused(host: str, port: int) -> float:
    """Seconds until a new connection is refused; connections accepted before the worker
    saw SIGTERM are still answered (a small object), later ones must not hang."""
    start = time.monotonic()
    while time.monotonic() < start + 5:
        outcome = _probe(host, port)
        if outcome == "refused":
            return time.monotonic() - start
        assert outcome == "served", "a new connection after SIGTERM was accepted, never answered"
    raise AssertionError("new connections were still served 5 s after SIGTERM")


# ---------------------------------------------------------------- startup


def _run_serve(config: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oca", "serve", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "oca.toml"
    config.write_text(
        "[server]\n"
        'listen = ["127.0.0.1:0"]\n'
        "max_conections = 5\n"
        "[[storage.tiers]]\n"
        'name = "ssd"\n'
        f'paths = ["{tmp_path}/ssd0"]\n'
    )
    res = _run_serve(config)
    assert res.returncode == 2
    assert "server.max_conections" in res.stderr
    assert "unknown key" in res.stderr
    assert "oca: ready" not in res.stdout
    assert "oca: listening" not in res.stdout


@pytest.fixture
def ready_app(tmp_path: Path) -> Iterator[Appliance]:
    app = Appliance(tmp_path, workers=2, tiers=(("ssd", 1),))
    app.import_tree(write_tree(tmp_path / "src", SEGMENTS))
    yield app
    app.stop()


def test_ready_is_printed_after_the_listeners_serve(ready_app: Appliance) -> None:
    app = ready_app
    app.start()
    # The harness returned on the "oca: ready" line; everything below must hold at once.
    assert [line.split()[1] for line in app.output] == ["listening", "ready"]
    assert app.output[-1] == "oca: ready (2 worker(s))"
    listeners = listeners_file(app.root)
    assert listeners["listeners"] == [{"kind": "http", "url": app.url}]
    path, data = next(iter(SEGMENTS.items()))
    for _ in range(10):  # fresh connections: both workers' sockets answer
        status, _, body = fetch(*app.host_port, path)
        assert (status, body) == (200, data)
    log = app.log_text()
    ready_at = log.index("all 2 workers ready")
    assert log.index("worker 1 started") < ready_at
    assert log.index("now ok with") < ready_at  # the store was opened first
    assert len(app.worker_pids()) == 2
