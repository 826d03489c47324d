"""Fixtures for heartbeat tests: a steering stand-in and appliances that report to it."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.appliance import Appliance, write_tree
from tests.health.steering_stub import SteeringStub

KEY_ID = "hb1"
APPLIANCE_ID = "oca-hb-1"
SITE = "ix-test"
REGION = "eu-test"
STATIC_PREFIXES = ["10.1.0.0/24", "2001:db8:1::/48"]

FILES = {f"/titles/hb/v720/seg-{i:05d}.m4s": os.urandom(3000 + i) for i in range(1, 7)}
FILES["/titles/hb/manifest.mpd"] = b"<MPD/>"


@pytest.fixture(scope="module")
def secret() -> str:
    return secrets.token_hex(32)


def steering_section(
    urls: list[str],
    secret: str,
    *,
    interval: float = 0.3,
    grace: float = 600.0,
    policy: str = "serve",
    extra: str = "",
) -> str:
    listed = ", ".join(f'"{u}"' for u in urls)
    prefixes = ", ".join(f'"{p}"' for p in STATIC_PREFIXES)
    return f"""
[peering]
appliance_id = "{APPLIANCE_ID}"
site = "{SITE}"

[steering]
urls = [{listed}]
keys = [{{ id = "{KEY_ID}", secret = "{secret}" }}]
interval_seconds = {interval}
request_timeout_seconds = 1
region = "{REGION}"
latitude = 50.1
longitude = 8.7
prefixes = [{prefixes}]
interfaces = ["lo"]
link_capacity_bits = 1000000000
grace_seconds = {grace}
unreachable_policy = "{policy}"
{extra}
"""


def new_appliance(root: Path, sections: str, workers: int = 2) -> Appliance:
    """An appliance holding FILES (imported before it starts), not started yet."""
    app = Appliance(
        root,
        workers=workers,
        internal=False,
        storage_extra="access_stats_flush_seconds = 0.2",
        sections=sections,
    )
    app.import_tree(write_tree(root / "src", FILES))
    return app


def stop_checked(app: Appliance) -> None:
    code = app.stop()
    log = app.log_text()
    assert code == 0, f"appliance exited with {code}\n{log[-4000:]}"
    assert "Traceback" not in log, log[-8000:]


@pytest.fixture
def stub(secret: str) -> Iterator[SteeringStub]:
    with SteeringStub({KEY_ID: bytes.fromhex(secret)}) as s:
        yield s


@pytest.fixture
def appliance_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[str], Appliance]]:
    started: list[Appliance] = []

    def make(sections: str, workers: int = 2) -> Appliance:
        app = new_appliance(tmp_path_factory.mktemp("appliance"), sections, workers)
        started.append(app)
        return app.start()

    try:
        yield make
    finally:
        for app in started:
            stop_checked(app)


# --------------------------------------------------------------------------- netns


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace with routes as a BGP daemon would install them."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    name = f"oca-hb-{secrets.token_hex(3)}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        _ip("netns", "del", name, check=False)
