"""Run the real steering service (``python -m oca steering``) in a child process."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

REPO_ROOT = Path(__file__).resolve().parents[2]
PATTERN = REPO_ROOT / "oca" / "media"  # holds pattern/manifest.mpd: title "pattern"


def new_key() -> str:
    return secrets.token_hex(32)


def build_catalog(out: Path, source: Path, origin: str, url_prefix: str = "/titles") -> None:
    subprocess.run(
        [sys.executable, "-m", "oca", "catalog", "build", "--out", str(out),
         "--url-prefix", url_prefix, "--origin", origin, str(source)],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def steering_section(urls: list[str], key_id: str, secret: str, **values: Any) -> str:
    """The appliance's [steering] table for tests (fast heartbeats on loopback)."""
    listed = ", ".join(f'"{u}"' for u in urls)
    lines = [
        "[steering]",
        f"urls = [{listed}]",
        f'keys = [{{ id = "{key_id}", secret = "{secret}" }}]',
        f"interval_seconds = {values.pop('interval', 0.3)}",
        "request_timeout_seconds = 1",
        'interfaces = ["lo"]',
        f"link_capacity_bits = {values.pop('link_capacity_bits', 10**11)}",
    ]
    for k, v in values.items():
        lines.append(f"{k} = {orjson.dumps(v).decode()}")
    return "\n".join(lines) + "\n"


@dataclass
class Steering:
    root: Path
    heartbeat_keys: dict[str, str] = field(default_factory=dict)
    url_keys: dict[str, str] = field(default_factory=dict)
    listen: str = "127.0.0.1:0"
    extra: str = ""  # raw TOML tables appended
    service_extra: str = ""  # raw TOML appended to [service]
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""

    @property
    def config_path(self) -> Path:
        return self.root / "steering.toml"

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.json"

    def write_config(self) -> Path:
        def keys(d: dict[str, str]) -> str:
            return ", ".join(f'{{ id = "{k}", secret = "{v}" }}' for k, v in d.items())

        text = f"""
[service]
listen = ["{self.listen}"]
state_dir = "{self.root}/state"
catalog = "{self.catalog_path}"
log_level = "debug"
{self.service_extra}

[heartbeat]
keys = [{keys(self.heartbeat_keys)}]
missed_heartbeats = 3

[urls]
keys = [{keys(self.url_keys)}]

{self.extra}
"""
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(text)
        return self.config_path

    def command(self, netns: str | None = None) -> list[str]:
        """The service's command line (subclasses wrap it, e.g. in a sandbox)."""
        cmd = [sys.executable, "-m", "oca", "steering", "-c", str(self.config_path)]
        return ["ip", "netns", "exec", netns, *cmd] if netns else cmd

    def start(self, timeout: float = 20.0, netns: str | None = None) -> Steering:
        self.write_config()
        cmd = self.command(netns)
        log = open(self.root / "steering.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=log, cwd=REPO_ROOT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                break
            if line.startswith("oca-steering: listening "):
                self.url = line.split()[-1]
                return self
        self.stop()
        raise RuntimeError(f"steering did not start:\n{self.log_text()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None
        return code

    def log_text(self) -> str:
        try:
            return (self.root / "steering.log").read_text(errors="replace")
        except OSError:
            return ""

    def request(
        self, path: str, *, method: str = "GET", body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
        req = urllib.request.Request(
            self.url + path, data=body, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers.items()), exc.read()

    def json(self, path: str, **kw: Any) -> tuple[int, Any]:
        status, _, body = self.request(path, **kw)
        return status, orjson.loads(body)

    def fleet(self) -> dict[str, dict[str, Any]]:
        status, doc = self.json("/v1/fleet")
        assert status == 200, doc
        return {a["id"]: a for a in doc["appliances"]}
