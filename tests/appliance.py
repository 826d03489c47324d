"""Run a real appliance (``python -m oca serve``) in a child process for tests."""

from __future__ import annotations

import contextlib
import os
import secrets
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import orjson
import trustme


@dataclass
class Appliance:
    root: Path
    workers: int = 1
    keys: dict[str, str] = field(default_factory=dict)  # id -> hex secret
    tls_cert: tuple[str, str] | None = None  # (cert_file, key_file)
    internal: bool = False
    extra: str = ""  # raw TOML appended to [server]
    storage_extra: str = ""  # raw TOML appended to [storage]
    sections: str = ""  # raw TOML tables appended at the end ([peering], [miss], ...)
    listen: str = "127.0.0.1:0"
    tiers: tuple[tuple[str, int], ...] = (("ssd", 2), ("hdd", 1))
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    urls: dict[str, str] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        return self.root / "oca.toml"

    def disk_paths(self, tier: str) -> list[Path]:
        for name, n in self.tiers:
            if name == tier:
                return [self.root / f"{name}{i}" for i in range(n)]
        raise KeyError(tier)

    def write_config(self) -> Path:
        lines = [
            "[server]",
            f'listen = ["{self.listen}"]',
            f"workers = {self.workers}",
            f'state_dir = "{self.root}/state"',
            f'access_log = "{self.root}/access.log"',
            "drain_timeout_seconds = 20",
        ]
        if self.internal:
            lines.append('internal_listen = ["127.0.0.1:0"]')
        lines.append(self.extra)
        if self.tls_cert:
            lines += [
                "[tls]",
                'listen = ["127.0.0.1:0"]',
                f'cert_file = "{self.tls_cert[0]}"',
                f'key_file = "{self.tls_cert[1]}"',
            ]
        lines += ["[storage]", "disk_check_interval_seconds = 0.2", "inventory_poll_seconds = 0.2"]
        lines.append(self.storage_extra)
        for name, n in self.tiers:
            paths = ", ".join(f'"{self.root}/{name}{i}"' for i in range(n))
            lines += ["[[storage.tiers]]", f'name = "{name}"', f"paths = [{paths}]"]
        if self.keys:
            lines.append("[auth]")
            items = ", ".join(f'{{ id = "{k}", secret = "{v}" }}' for k, v in self.keys.items())
            lines.append(f"keys = [{items}]")
        lines.append(self.sections)
        self.config_path.write_text("\n".join(lines) + "\n")
        return self.config_path

    def oca(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "oca", *args],
            capture_output=True,
            text=True,
            check=check,
            env={**os.environ, **self.env},
            timeout=120,
        )

    def import_tree(self, src: Path, tier: str | None = None) -> None:
        self.write_config()
        args = ["store", "import", "-c", str(self.config_path), str(src)]
        if tier is not None:
            args += ["--tier", tier]
        self.oca(*args)

    def start(self, timeout: float = 30.0) -> Appliance:
        self.write_config()
        with open(self.root / "server.log", "ab") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "oca", "serve", "-c", str(self.config_path)],
                stdout=subprocess.PIPE,
                stderr=log,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        self._wait_for("oca: ready", timeout)
        return self

    def _wait_for(self, marker: str, timeout: float) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        buf = b""
        while time.monotonic() < deadline:
            if not sel.select(timeout=0.1):
                if self.proc.poll() is not None:
                    break
                continue
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.decode()
                self.output.append(text)
                if text.startswith("oca: listening "):
                    kind, url = text.split()[2:4]
                    self.urls[kind] = url
                if marker in text:
                    sel.close()
                    return
        sel.close()
        log = (self.root / "server.log").read_text(errors="replace")[-4000:]
        raise RuntimeError(f"appliance did not become ready; output={self.output}\n{log}")

    @property
    def url(self) -> str:
        return self.urls["http"]

    @property
    def host_port(self) -> tuple[str, int]:
        hp = self.url.split("://", 1)[1]
        host, port = hp.rsplit(":", 1)
        return host, int(port)

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(x) for x in out.stdout.split()]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # Workers share the supervisor's process group: none may outlive it, even when
        # the supervisor itself died without stopping them.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        code = self.proc.returncode
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None
        return code

    def log_text(self) -> str:
        return (self.root / "server.log").read_text(errors="replace")


def make_tls(directory: Path) -> tuple[str, str, ssl.SSLContext]:
    """A trustme CA's certificate for localhost/127.0.0.1 written to ``directory``:
    (cert file, key file, a client context that trusts only that CA, ALPN http/1.1)."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_file, key_file = directory / "server.pem", directory / "server.key"
    for i, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(str(cert_file), append=i > 0)
    cert.private_key_pem.write_to_path(str(key_file))
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(ctx)
    ctx.set_alpn_protocols(["http/1.1"])
    return str(cert_file), str(key_file), ctx


def free_port() -> int:
    """A loopback port that was free a moment ago (for configs that must name their
    peers' addresses before those peers start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_key() -> str:
    return secrets.token_hex(32)


def raw_request(
    host: str,
    port: int,
    data: bytes,
    *,
    read_timeout: float = 5.0,
    tls: ssl.SSLContext | None = None,
) -> bytes:
    """Send raw bytes, read until the server closes (or the timeout)."""
    s: socket.socket = socket.create_connection((host, port), timeout=read_timeout)
    if tls is not None:
        s = tls.wrap_socket(s, server_hostname="localhost")
    try:
        s.sendall(data)
        chunks = []
        while True:
            try:
                c = s.recv(1 << 16)
            except (TimeoutError, ConnectionResetError):
                break
            if not c:
                break
            chunks.append(c)
        return b"".join(chunks)
    finally:
        s.close()


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status and headers (lower-case names) of one response head, without the CRLFCRLF."""
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers


def parse_responses(data: bytes) -> Iterable[tuple[int, dict[str, str], bytes]]:
    """Split a byte stream of HTTP/1.1 responses (Content-Length framed)."""
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        status, headers = parse_head(head)
        n = int(headers.get("content-length", "0"))
        if status in (204, 304):
            n = 0
        yield status, headers, rest[:n]
        data = rest[n:]


def listeners_file(root: Path) -> dict[str, object]:
    return dict(orjson.loads((root / "state" / "run" / "listeners.json").read_bytes()))


_T = TypeVar("_T")


def fetch(
    host: str,
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    method: str = "GET",
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection (``Connection: close``): status, headers, body."""
    lines = [f"{method} {path} HTTP/1.1", "Host: oca.test", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    data = raw_request(host, port, ("\r\n".join(lines) + "\r\n\r\n").encode(), read_timeout=timeout)
    if not data:
        raise ConnectionError(f"{method} {path}: the server closed without answering")
    status, hdrs, body = next(iter(parse_responses(data)))
    return status, hdrs, body


def remove_disk(path: str | Path) -> None:
    """Make a disk of a running appliance disappear: renamed away in one step, then
    deleted. (Deleting it in place races with the appliance's own disk probes, which
    create and unlink files in it meanwhile.)"""
    path = Path(path)
    gone = path.with_name(f"{path.name}.removed-{secrets.token_hex(4)}")
    os.rename(path, gone)
    shutil.rmtree(gone, ignore_errors=True)


def wait_until(
    predicate: Callable[[], _T], timeout: float, what: str, interval: float = 0.05
) -> _T:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read exactly one Content-Length framed response from a keep-alive connection."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head; got {buf[:200]!r}")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    n = 0 if status in (204, 304) else int(headers.get("content-length", "0"))
    while len(body) < n:
        chunk = sock.recv(min(1 << 20, n - len(body)))
        if not chunk:
            raise ConnectionError(f"closed after {len(body)} of {n} body bytes")
        body += chunk
    if len(body) > n:
        raise AssertionError(f"{len(body) - n} unexpected bytes after the response")
    return status, headers, body
