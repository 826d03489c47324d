"""The demo's layout and the configuration files it generates.

Every process the demo starts reads an ordinary config file written here, the same
files a real deployment uses: ``origin.toml`` (an ``oca serve`` appliance holding every
title, without URL tokens, standing in for the content provider's origin),
``a1.toml``/``a2.toml`` (two appliances peering at site A), ``b1.toml`` (the one
appliance of site B) and ``steering.toml`` (the steering service). ``oca demo
--print-configs`` prints them.

Site A announces ``127.0.0.0/8``, so a player on this machine is steered there first;
site B announces a documentation prefix (``192.0.2.0/24``) and is the fallback. Keys are
random, made once per working directory and kept in ``keys.json`` beside the configs, so
a demo restarted with ``--dir`` keeps its signed URLs valid.
"""

from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

import orjson

from oca.demo.content import PATTERN_TITLE, SYNTHETIC_TITLES, synthetic_title_id
from steering.files import write_atomic

#: Offsets from the base port: the page, then the processes in start order.
PORT_OFFSETS = {"page": 0, "steering": 1, "origin": 2, "a1": 3, "a2": 4, "b1": 5}
APPLIANCES = ("a1", "a2", "b1")


@dataclass(frozen=True, slots=True)
class Site:
    name: str
    prefixes: tuple[str, ...]
    latitude: float
    longitude: float


SITES = {
    "a1": Site("site-a", ("127.0.0.0/8",), 50.11, 8.68),
    "a2": Site("site-a", ("127.0.0.0/8",), 50.11, 8.68),
    "b1": Site("site-b", ("192.0.2.0/24",), 52.37, 4.90),
}
REGION = "demo"
URL_KEY_ID = "demo-url"
HEARTBEAT_KEY_ID = "demo-hb"


@dataclass(frozen=True, slots=True)
class Keys:
    url: str  # [auth] keys of the appliances = [urls] keys of steering
    heartbeat: str  # [steering] keys of the appliances = [heartbeat] keys of steering
    peering: str  # [peering] keys shared by site A

    @staticmethod
    def load_or_create(path: Path, persist: bool = True) -> Keys:
        """The keys saved at ``path``, else new ones (saved there when ``persist``)."""
        if path.exists():
            doc = orjson.loads(path.read_bytes())
            return Keys(doc["url"], doc["heartbeat"], doc["peering"])
        keys = Keys(secrets.token_hex(32), secrets.token_hex(32), secrets.token_hex(32))
        if not persist:
            return keys
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"url": keys.url, "heartbeat": keys.heartbeat, "peering": keys.peering}
        write_atomic(str(path), orjson.dumps(doc), prefix=".keys-")  # mode 0600 (mkstemp)
        return keys


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports the kernel had free a moment ago (bound together, then
    released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass(frozen=True, slots=True)
class Layout:
    work: Path
    ports: dict[str, int]
    keys: Keys
    workers: int = 1

    @staticmethod
    def make(work: Path, base_port: int, workers: int, persist: bool = True) -> Layout:
        if base_port:
            ports = {name: base_port + off for name, off in PORT_OFFSETS.items()}
        else:
            ports = dict(zip(PORT_OFFSETS, free_ports(len(PORT_OFFSETS)), strict=True))
        return Layout(work, ports, Keys.load_or_create(work / "keys.json", persist), workers)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def config_path(self, name: str) -> Path:
        return self.work / f"{name}.toml"

    def dir(self, name: str) -> Path:
        return self.work / name

    # ------------------------------------------------------------------ configs
    def configs(self) -> dict[str, str]:
        """File name -> text, in start order."""
        out = {"origin.toml": self.origin_config(), "steering.toml": self.steering_config()}
        for name in APPLIANCES:
            out[f"{name}.toml"] = self.appliance_config(name)
        return out

    def _server(self, name: str, drain_seconds: int) -> str:
        d = self.dir(name)
        return f"""[server]
listen = ["127.0.0.1:{self.ports[name]}"]
workers = {self.workers}
state_dir = "{d}/state"
access_log = "{d}/access.log"
drain_timeout_seconds = {drain_seconds}
"""

    def origin_config(self) -> str:
        d = self.dir("origin")
        return f"""# oca demo: the origin. An `oca serve` appliance holding every title, without URL
# tokens; the appliances fill from it and fetch their misses from it.
{self._server("origin", 2)}
[[storage.tiers]]
name = "hdd"
paths = ["{d}/hdd0"]

[miss]
enabled = false

[peering]
appliance_id = "origin"
site = "origin"
"""

    def appliance_config(self, name: str) -> str:
        site = SITES[name]
        d = self.dir(name)
        mates = [m for m in APPLIANCES if m != name and SITES[m].name == site.name]
        peer_urls = ", ".join(f'"{self.url(m)}"' for m in mates)
        peering = f'peers = [{peer_urls}]\nkeys = ["{self.keys.peering}"]\n' if mates else ""
        prefixes = ", ".join(f'"{p}"' for p in site.prefixes)
        steer = self.url("steering")
        return f"""# oca demo: appliance {name} at {site.name}. Copy and adjust for a real
# appliance: listen on the public address (and [tls]), one storage path per disk, real keys.
{self._server(name, 3)}
[[storage.tiers]]
name = "ssd"
paths = ["{d}/ssd0"]

[[storage.tiers]]
name = "hdd"
paths = ["{d}/hdd0"]

[auth]
keys = [{{ id = "{URL_KEY_ID}", secret = "{self.keys.url}" }}]

[peering]
appliance_id = "{name}"
site = "{site.name}"
{peering}
[miss]
origins = ["{self.url("origin")}"]

[fill]
manifest = "{steer}/v1/fill/{name}"
peers = [{peer_urls}]
window_jitter_seconds = 0
progress_interval_seconds = 1

[steering]
urls = ["{steer}"]
keys = [{{ id = "{HEARTBEAT_KEY_ID}", secret = "{self.keys.heartbeat}" }}]
interval_seconds = 1
region = "{REGION}"
latitude = {site.latitude}
longitude = {site.longitude}
prefixes = [{prefixes}]
# loopback traffic: measured against a 10 Gbit/s link
interfaces = ["lo"]
link_capacity_bits = 10000000000
"""

    def steering_config(self) -> str:
        d = self.dir("steering")
        return f"""# oca demo: the steering service. Every appliance heartbeats to it; players ask
# it for ranked, signed URLs, rewritten MPDs and content steering manifests.
[service]
listen = ["127.0.0.1:{self.ports["steering"]}"]
state_dir = "{d}/state"
catalog = "{d}/catalog.json"
snapshot_interval_seconds = 10
log_level = "warning"

[heartbeat]
keys = [{{ id = "{HEARTBEAT_KEY_ID}", secret = "{self.keys.heartbeat}" }}]
missed_heartbeats = 3

[urls]
keys = [{{ id = "{URL_KEY_ID}", secret = "{self.keys.url}" }}]

[ranking]
# every process of the demo shares this machine's CPUs: do not judge appliances by load
overload_threshold = 50.0

[content_steering]
ttl_seconds = 10

# Expected popularity, as a content provider announces releases: the playable title
# everywhere, the synthetic ones falling off as 1/rank (Zipf). Hot titles get a replica
# on every appliance of a site, the rest one replica per site, placed by hashing.
{self._boosts()}"""

    def _boosts(self) -> str:
        rows = [(PATTERN_TITLE, 100_000)]
        rows += [(synthetic_title_id(n), 30_000 // n) for n in range(1, SYNTHETIC_TITLES + 1)]
        return "".join(f'[[fill.boosts]]\ntitle = "{t}"\nrequests_per_day = {r}\n' for t, r in rows)

    def write_configs(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        for fname, text in self.configs().items():
            (self.work / fname).write_text(text)
