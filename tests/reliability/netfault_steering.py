"""The steered pair the network-fault tests take steering away from, or stop.

:class:`SteeredPair` is the real steering service on a fixed loopback port (so that it
can be stopped and started again where the appliances expect it) and two appliances,
``a1`` and ``a2``, holding the test-pattern title and beating every ``INTERVAL``
seconds. Steering counts an appliance gone after ``MISSED`` missed heartbeats
(``tests.steering.live`` configures ``missed_heartbeats = 3``), so the detection
interval is ``MISSED * INTERVAL``; its content steering manifests carry a ``TTL``-second
TTL. Processes are stopped with SIGSTOP on their whole process group, as a hung host (or
a debugger, or a kernel stall) stops them: the kernel keeps accepting connections on
their listening sockets, nothing answers.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from tests.appliance import Appliance, free_port, wait_until
from tests.peering.origin_proc import OriginProcess
from tests.steering.live import PATTERN, Steering, build_catalog, new_key, steering_section

INTERVAL = 0.5
MISSED = 3
DETECTION_SECONDS = MISSED * INTERVAL
TTL = 2
NAMES = ("a1", "a2")


class SteeredPair:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tree = root / "tree"
        shutil.copytree(PATTERN / "pattern", self.tree / "titles" / "pattern")
        self.port = free_port()
        self.steering = Steering(
            root / "steering", heartbeat_keys={"hb": new_key()}, url_keys={"u1": new_key()},
            listen=f"127.0.0.1:{self.port}",
            extra=f"[content_steering]\nttl_seconds = {TTL}\n"
                  "[ranking]\noverload_threshold = 50.0\n",
        )  # fmt: skip
        self.apps: dict[str, Appliance] = {}
        self.origin = OriginProcess(self.tree)  # where steering reads the MPDs it rewrites

    @property
    def steering_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.steering.root.mkdir()
        self.origin.start()
        build_catalog(self.steering.catalog_path, self.tree / "titles", self.origin.url)
        self.steering.start()
        (hb_id, hb_key), = self.steering.heartbeat_keys.items()  # fmt: skip
        for name in NAMES:
            section = f'[peering]\nappliance_id = "{name}"\nsite = "s1"\n' + steering_section(
                [self.steering_url], hb_id, hb_key, interval=INTERVAL, region="r1"
            )
            app = Appliance(self.root / name, sections=section, tiers=(("ssd", 1),))
            app.root.mkdir()
            app.import_tree(self.tree)
            self.apps[name] = app.start()
        self.wait_in_rotation(NAMES, 30)

    def stop(self) -> None:
        for app in self.apps.values():
            if app.proc is not None:  # a stopped group must be woken to hear SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(app.proc.pid, signal.SIGCONT)
            app.stop()
        if self.steering.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.steering.proc.pid, signal.SIGCONT)
        self.steering.stop()
        self.origin.stop()

    # ------------------------------------------------------------------ what steering says
    def statuses(self) -> dict[str, str]:
        """appliance -> status in steering's fleet ({} when steering does not answer)."""
        try:
            return {k: str(v["status"]) for k, v in self.steering.fleet().items()}
        except OSError:
            return {}

    def in_rotation(self, names: tuple[str, ...]) -> bool:
        s = self.statuses()
        return all(s.get(n) == "in-rotation" for n in names)

    def wait_in_rotation(self, names: tuple[str, ...], timeout: float) -> float:
        """Seconds until every one of ``names`` is in rotation."""
        started = time.monotonic()
        wait_until(lambda: self.in_rotation(names), timeout, f"{names} in rotation",
                   interval=0.02)  # fmt: skip
        return time.monotonic() - started

    def priority(self, pathway: str) -> list[str]:
        """PATHWAY-PRIORITY of the content steering manifest a player on ``pathway`` gets."""
        q = f"/v1/steering/pattern?pathways={','.join(NAMES)}&_DASH_pathway={pathway}"
        status, doc = self.steering.json(q)
        assert status == 200, doc
        return [str(p) for p in doc["PATHWAY-PRIORITY"]]

    # ------------------------------------------------------------------ the appliances' side
    def contact(self, name: str) -> dict[str, Any]:
        """The appliance's own view of steering (``state_dir/run/steering.json``)."""
        path = self.apps[name].root / "state" / "run" / "steering.json"
        with contextlib.suppress(OSError, orjson.JSONDecodeError):
            return dict(orjson.loads(path.read_bytes()))
        return {}

    def heartbeats(self, name: str) -> tuple[str, str]:
        """(state, reason) of ``name``'s heartbeats to steering, as ``steering.json`` says."""
        urls = self.contact(name).get("urls") or [{}]
        return str(urls[0].get("state", "")), str(urls[0].get("reason", ""))


def disk_snapshot(app: Appliance) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime_ns) of every file on ``app``'s disks, but the health
    probe files the running appliance writes and removes under ``.oca`` meanwhile."""
    out = {}
    for tier, _n in app.tiers:
        for disk in app.disk_paths(tier):
            for p in sorted(disk.rglob("*")):
                if p.parent.name == ".oca" and p.name.startswith("probe-"):
                    continue
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    out[str(p.relative_to(app.root))] = (st.st_size, st.st_mtime_ns)
    return out


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[float]:
    """SIGSTOP the process group ``pid`` leads; SIGCONT it on the way out. Yields the
    monotonic time of the stop."""
    os.killpg(pid, signal.SIGSTOP)
    try:
        yield time.monotonic()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGCONT)


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


class BlackholedSteering:
    """The steering service alone in a network namespace, reached over a veth pair at
    ``url``. :meth:`blackhole` drops everything it would send back to the root
    namespace (a blackhole route to the veth's far end inside the namespace): the
    appliances' SYNs get no answer, so connecting times out, as when a firewall drops a
    port. :meth:`restore` removes the route. Namespace and veth names carry a random
    tag and are removed on :meth:`close`, whatever happened."""

    def __init__(self, root: Path, heartbeat_keys: dict[str, str]) -> None:
        tag = secrets.token_hex(3)
        self.ns, self.host_if, self.ns_if = f"nfb-{tag}", f"nfb{tag}h", f"nfb{tag}n"
        net = f"10.213.{secrets.randbelow(250) + 2}"
        self.host_ip, self.ns_ip = f"{net}.1", f"{net}.2"
        self.port = free_port()
        self.url = f"http://{self.ns_ip}:{self.port}"
        self.steering = Steering(
            root, heartbeat_keys=heartbeat_keys, url_keys={"u1": new_key()},
            listen=f"0.0.0.0:{self.port}",
        )  # fmt: skip
        self.made = False

    def start(self, tree: Path) -> None:
        _ip("netns", "add", self.ns)
        self.made = True
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _ip("link", "set", self.ns_if, "netns", self.ns)
        _ip("addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        _ip("-n", self.ns, "addr", "add", f"{self.ns_ip}/24", "dev", self.ns_if)
        _ip("-n", self.ns, "link", "set", self.ns_if, "up")
        _ip("-n", self.ns, "link", "set", "lo", "up")
        self.steering.root.mkdir(parents=True)
        build_catalog(self.steering.catalog_path, tree / "titles", "http://127.0.0.1:9")
        self.steering.start(netns=self.ns)
        self.steering.url = self.url  # it printed its wildcard listener

    def blackhole(self) -> None:
        _ip("-n", self.ns, "route", "add", "blackhole", f"{self.host_ip}/32")

    def restore(self) -> None:
        _ip("-n", self.ns, "route", "del", "blackhole", f"{self.host_ip}/32", check=False)

    def close(self) -> None:
        try:
            self.steering.stop()
        finally:
            if self.made:
                _ip("link", "del", self.host_if, check=False)
                _ip("netns", "del", self.ns, check=False)
