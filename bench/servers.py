"""The two servers under test: the appliance (``oca serve``) and an nginx baseline.

Both are started in their own session (process group) so that stopping them reaches
every process they spawned: SIGTERM first (the appliance drains, nginx shuts down
fast), SIGKILL to the group after a timeout. Each :class:`ServerProcess` knows its
worker processes (the supervisor's or the nginx master's children), which is where the
benchmark measures server CPU and RSS.

The nginx configuration mirrors the appliance's: the same worker count, the same
listeners with ``reuseport`` (the appliance binds one ``SO_REUSEPORT`` socket per
worker), ``sendfile on``, ``tcp_nopush off`` (with it on, 64 KiB range responses stall
about 40 ms each on Linux), no access log, long keep-alive, TLS 1.2/1.3 with the same
certificate and a session cache, and no HTTP/2.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil  # type: ignore[import-untyped, unused-ignore]

from bench.content import ContentFile
from oca.config import load_config
from oca.storage.store import Store


class ServerError(Exception):
    """A server could not be started; the message carries its log's tail."""


@dataclass
class ServerProcess:
    name: str
    proc: subprocess.Popen[bytes]
    urls: dict[str, str]  # "http" / "https" -> base URL
    log_path: Path
    files: dict[str, str] = field(default_factory=dict)  # object path -> file served

    def worker_pids(self) -> list[int]:
        try:
            return sorted(c.pid for c in psutil.Process(self.proc.pid).children())
        except psutil.Error:
            return []

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL to the whole process group; returns the exit code."""
        if self.proc.poll() is None:
            family = self._family()
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
            _kill_leftovers(family)
        return self.proc.returncode

    def _family(self) -> list[psutil.Process]:
        try:
            return list(psutil.Process(self.proc.pid).children(recursive=True))
        except psutil.Error:
            return []

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _kill_leftovers(procs: Sequence[psutil.Process]) -> None:
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if p.is_running():
                p.kill()


def pin_prefix(cpus: str | None) -> list[str]:
    return [] if cpus is None else ["taskset", "-c", cpus]


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def make_certificate(directory: Path) -> tuple[str, str]:
    """A self-signed ECDSA P-256 certificate for localhost/127.0.0.1 (reused if present)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    if cert.exists() and key.exists():
        return str(cert), str(key)
    if shutil.which("openssl") is None:
        raise ServerError("openssl not found: cannot make a certificate for HTTPS")
    directory.mkdir(parents=True, exist_ok=True)
    cmd = [
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "365", "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise ServerError(f"openssl req failed: {out.stderr.strip()[-500:]}")
    return str(cert), str(key)


# ---------------------------------------------------------------------- oca


def write_oca_config(
    path: Path,
    *,
    host: str,
    workers: int,
    state_dir: Path,
    store_dirs: Sequence[Path],
    tls: tuple[str, str] | None,
) -> Path:
    listen = f"{url_host(host)}:0"
    lines = [
        "# Written by `oca bench serve`.",
        "[server]",
        f'listen = ["{listen}"]',
        f"workers = {workers}",
        f'state_dir = "{state_dir}"',
        'access_log = ""',
    ]
    if tls is not None:
        lines += [
            "[tls]",
            f'listen = ["{listen}"]',
            f'cert_file = "{tls[0]}"',
            f'key_file = "{tls[1]}"',
        ]
    paths = ", ".join(f'"{p}"' for p in store_dirs)
    lines += ["[[storage.tiers]]", 'name = "ssd"', f"paths = [{paths}]"]
    path.write_text("\n".join(lines) + "\n")
    return path


def import_content(config: Path, content_root: Path) -> str:
    """``oca store import``: copy the content tree into the appliance's store."""
    out = subprocess.run(
        [sys.executable, "-m", "oca", "store", "import", "-c", str(config), str(content_root)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise ServerError(f"oca store import failed ({out.returncode}): {out.stdout}{out.stderr}")
    return out.stdout.strip()


def stored_files(config: Path) -> dict[str, str]:
    """Object path -> the file in the store that the appliance serves for it."""
    cfg = load_config(str(config))
    with Store.open(cfg.storage, create=False) as store:
        return {rec.path: store.file_path(rec) for rec in store.records()}


def start_oca(
    config: Path, log_dir: Path, *, cpus: str | None, timeout: float = 60.0
) -> ServerProcess:
    stdout_path, log_path = log_dir / "oca-stdout.log", log_dir / "oca-server.log"
    with open(stdout_path, "wb") as out, open(log_path, "wb") as err:
        proc = subprocess.Popen(
            [*pin_prefix(cpus), sys.executable, "-m", "oca", "serve", "-c", str(config)],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = ServerProcess("oca", proc, {}, log_path)
    deadline = time.monotonic() + timeout
    try:
        while True:
            text = stdout_path.read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith("oca: listening "):
                    kind, url = line.split()[2:4]
                    server.urls[kind] = url
            if "oca: ready" in text:
                return server
            if proc.poll() is not None:
                raise ServerError(f"oca serve exited {proc.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise ServerError(
                    f"oca serve not ready after {timeout:.0f} s:\n{server.log_tail()}"
                )
            time.sleep(0.05)
    except BaseException:
        server.stop()
        raise


# ---------------------------------------------------------------------- nginx


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def nginx_version(binary: str) -> str:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: ")


def _nginx_modules_without(binary: str) -> set[str]:
    out = subprocess.run([binary, "-V"], capture_output=True, text=True)
    text = out.stderr + out.stdout
    return {m for m in ("fastcgi", "uwsgi", "scgi") if f"--without-http_{m}_module" in text}


def nginx_config(
    *,
    workers: int,
    host: str,
    http_port: int,
    https_port: int | None,
    tls: tuple[str, str] | None,
    root: Path,
    prefix: Path,
    temp_modules: Sequence[str] = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"),
    as_root: bool = False,
) -> str:
    """An nginx.conf equivalent to the appliance's benchmark config."""
    h = url_host(host)
    temp = "\n".join(f"    {m}_temp_path {prefix}/tmp/{m};" for m in temp_modules)
    listeners = [f"        listen {h}:{http_port} reuseport;"]
    ssl = ""
    if tls is not None and https_port is not None:
        listeners.append(f"        listen {h}:{https_port} ssl reuseport;")
        ssl = f"""
        ssl_certificate {tls[0]};
        ssl_certificate_key {tls[1]};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_timeout 1h;"""
    user = "user root;\n" if as_root else ""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    worker_connections = 4096 if soft == resource.RLIM_INFINITY else max(64, min(4096, soft // 2))
    return f"""# Written by `oca bench serve`: the nginx baseline, like the appliance config.
{user}worker_processes {workers};
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections {worker_connections};
}}
http {{
    types {{
        video/mp4 mp4;
        video/iso.segment m4s;
    }}
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush off;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 75;
{temp}
    server {{
{chr(10).join(listeners)}
        server_name localhost;
        root {root};{ssl}
        location / {{
        }}
    }}
}}
"""


def start_nginx(
    root: Path,
    prefix: Path,
    *,
    host: str,
    workers: int,
    tls: tuple[str, str] | None,
    cpus: str | None,
    binary: str,
    timeout: float = 30.0,
) -> ServerProcess:
    prefix.mkdir(parents=True, exist_ok=True)
    without = _nginx_modules_without(binary)
    modules = [m for m in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi") if m not in without]
    for m in modules:
        (prefix / "tmp" / m).mkdir(parents=True, exist_ok=True)
    http_port = free_port(host)
    https_port = free_port(host) if tls is not None else None
    conf = prefix / "nginx.conf"
    conf.write_text(
        nginx_config(
            workers=workers,
            host=host,
            http_port=http_port,
            https_port=https_port,
            tls=tls,
            root=root.resolve(),
            prefix=prefix.resolve(),
            temp_modules=modules,
            as_root=os.geteuid() == 0,
        )
    )
    log_path = prefix / "error.log"
    with open(prefix / "stderr.log", "wb") as err:
        proc = subprocess.Popen(
            [*pin_prefix(cpus), binary, "-c", str(conf), "-p", str(prefix), "-e", str(log_path)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    h = url_host(host)
    urls = {"http": f"http://{h}:{http_port}"}
    if https_port is not None:
        urls["https"] = f"https://{h}:{https_port}"
    server = ServerProcess("nginx", proc, urls, log_path)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                stderr = (prefix / "stderr.log").read_text(errors="replace")
                raise ServerError(f"nginx exited {proc.returncode}:\n{stderr}{server.log_tail()}")
            if len(server.worker_pids()) >= workers and _accepts(host, http_port):
                return server
            if time.monotonic() > deadline:
                raise ServerError(f"nginx not ready after {timeout:.0f} s:\n{server.log_tail()}")
            time.sleep(0.05)
    except BaseException:
        server.stop()
        raise


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def check_range_response(url: str, f: ContentFile, root: Path) -> str | None:
    """One ranged GET; None when the bytes match the file, else what was wrong."""
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    conn: http.client.HTTPConnection
    if scheme == "https":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the benchmark's own self-signed certificate
        conn = http.client.HTTPSConnection(host, port, timeout=10, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=10)
    first, last = min(100, f.size - 1), min(f.size - 1, 100 + 65535)
    try:
        conn.request("GET", f.url_path, headers={"Range": f"bytes={first}-{last}"})
        resp = conn.getresponse()
        body = resp.read()
    except OSError as exc:
        return f"{scheme} GET {f.url_path} failed: {exc}"
    finally:
        conn.close()
    with open(root / f.rel, "rb") as fh:
        fh.seek(first)
        want = fh.read(last - first + 1)
    if resp.status != 206 or body != want:
        return (
            f"{scheme} GET {f.url_path} Range bytes={first}-{last}: status {resp.status}, "
            f"{len(body)} bytes, {'matching' if body == want else 'NOT matching'} the file"
        )
    return None
