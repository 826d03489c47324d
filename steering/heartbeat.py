"""The heartbeat wire format (appliance -> steering), version 1: strict validation.

Theory of operation
-------------------
Every appliance POSTs one JSON document per ``interval_seconds`` to the steering service
(``/v1/heartbeat``). The service keeps only soft state built from these documents, so
each one is self-contained: identity and reachability (``appliance``), the client
prefixes the appliance serves, a health verdict with its reasons, load, capacity, the
inventory (``full``, a ``delta`` against the generation this replica acknowledged, or
absent when unchanged) and the per-object request counts since the previous heartbeat.

:func:`parse_heartbeat` turns a decoded document into a frozen :class:`Heartbeat`, or
raises :class:`HeartbeatError` naming the first offending field with a JSON-path-like
name (``health.state``, ``inventory.added[3]``) and what was expected. It is strict in
the way :mod:`oca.peering.summary` is: every required field present with its exact type
(a JSON ``true`` is not a number), no unknown fields (a new field means a new version),
bounded lists and strings, finite numbers. Prefixes are parsed with :mod:`ipaddress`;
host bits are dropped (``10.1.0.7/24`` means ``10.1.0.0/24``) and the list is
de-duplicated and sorted, so two replicas hold the same normalised set whatever the
order the appliance sent them in. Optional fields: ``appliance.lat``/``lon`` (null or
absent when unknown), ``appliance.https_urls``, ``health.disks``/``workers``/``fill``,
``load`` fields other than ``load_fraction`` and ``connections``, ``inventory`` (absent
or null: unchanged) and ``requests`` (absent: none).

The signature (``X-Oca-Heartbeat``) and the clock-skew check are the service's: they
concern the body's bytes and the receiving clock, not its content. This module is pure.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, NotRequired, TypedDict, cast

__all__ = [
    "HEARTBEAT_SCHEMA",
    "HEARTBEAT_VERSION",
    "DeltaInventory",
    "DiskReport",
    "FillReport",
    "FullInventory",
    "HealthState",
    "Heartbeat",
    "HeartbeatError",
    "HeartbeatJSON",
    "IPNetwork",
    "WorkersReport",
    "parse_heartbeat",
    "parse_inventory",
]

HEARTBEAT_SCHEMA: Final = "oca.heartbeat"
HEARTBEAT_VERSION: Final = 1

HealthState = Literal["healthy", "degraded", "unhealthy"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

HEALTH_STATES: Final[tuple[HealthState, ...]] = ("healthy", "degraded", "unhealthy")
MAX_PREFIXES: Final = 65536  # routes learned over BGP can be many
MAX_URLS: Final = 16
MAX_REASONS: Final = 256
MAX_DISKS: Final = 1024
MAX_TEXT: Final = 4096
MAX_NAME: Final = 256
MAX_INTERVAL_SECONDS: Final = 86400.0
_ID_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_SPACE_RE: Final = re.compile(r"\s")
_PREFIX_CACHE_SIZE: Final = 4096
# Appliances repeat their prefixes in every heartbeat: parsed lists, by their text.
_prefix_cache: dict[tuple[str, ...], tuple[IPNetwork, ...]] = {}


class HeartbeatError(ValueError):
    """A heartbeat is malformed: ``field`` names where, ``detail`` says what is wrong."""

    def __init__(self, field: str, detail: str) -> None:
        self.field = field
        self.detail = detail
        super().__init__(f"{field}: {detail}")


# --------------------------------------------------------------------------- wire format


class ApplianceJSON(TypedDict):
    id: str
    site: str
    region: str
    lat: NotRequired[float | None]
    lon: NotRequired[float | None]
    urls: list[str]
    https_urls: NotRequired[list[str]]


class DiskJSON(TypedDict):
    tier: str
    path: str
    state: Literal["ok", "failed"]
    reason: str
    capacity_bytes: int
    used_bytes: int


class WorkersJSON(TypedDict):
    configured: int
    running: int
    restarts: int


class FillJSON(TypedDict):
    state: str
    last_run_at: float | None
    reason: str


class HealthJSON(TypedDict):
    state: HealthState
    reasons: list[str]
    draining: bool
    serving: bool
    disks: NotRequired[list[DiskJSON]]
    workers: NotRequired[WorkersJSON]
    fill: NotRequired[FillJSON]


class LoadJSON(TypedDict):
    nic_bits_per_second: NotRequired[float | None]
    link_capacity_bits_per_second: NotRequired[float | None]
    cpu_fraction: NotRequired[float | None]
    connections: int
    load_fraction: float


class FullInventoryJSON(TypedDict):
    kind: Literal["full"]
    epoch: str
    gen: int
    objects: list[str]


class DeltaInventoryJSON(TypedDict):
    kind: Literal["delta"]
    epoch: str
    base_gen: int
    gen: int
    added: list[str]
    removed: list[str]


class HeartbeatJSON(TypedDict):
    schema: Literal["oca.heartbeat"]
    version: Literal[1]
    appliance: ApplianceJSON
    boot_id: str
    seq: int
    sent_at: float
    interval_seconds: float
    prefixes: list[str]
    health: HealthJSON
    load: LoadJSON
    capacity_bytes: int
    used_bytes: int
    inventory: NotRequired[FullInventoryJSON | DeltaInventoryJSON | None]
    requests: NotRequired[dict[str, int]]


# --------------------------------------------------------------------------- parsed form


@dataclass(frozen=True, slots=True)
class DiskReport:
    tier: str
    path: str
    state: Literal["ok", "failed"]
    reason: str
    capacity_bytes: int
    used_bytes: int


@dataclass(frozen=True, slots=True)
class WorkersReport:
    configured: int
    running: int
    restarts: int


@dataclass(frozen=True, slots=True)
class FillReport:
    state: str
    last_run_at: float | None
    reason: str


@dataclass(frozen=True, slots=True)
class FullInventory:
    """Every object the appliance holds, as of generation ``gen`` of ``epoch``."""

    epoch: str
    gen: int
    objects: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DeltaInventory:
    """The change from generation ``base_gen`` to ``gen`` of ``epoch``."""

    epoch: str
    base_gen: int
    gen: int
    added: tuple[str, ...]
    removed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A validated heartbeat (see the module docstring for the wire format)."""

    appliance_id: str
    site: str
    region: str
    lat: float | None
    lon: float | None
    urls: tuple[str, ...]
    https_urls: tuple[str, ...]
    boot_id: str
    seq: int
    sent_at: float
    interval_seconds: float
    prefixes: tuple[IPNetwork, ...]
    state: HealthState
    reasons: tuple[str, ...]
    draining: bool
    serving: bool
    load_fraction: float
    connections: int
    capacity_bytes: int
    used_bytes: int
    disks: tuple[DiskReport, ...] = ()
    workers: WorkersReport | None = None
    fill: FillReport | None = None
    nic_bits_per_second: float | None = None
    link_capacity_bits_per_second: float | None = None
    cpu_fraction: float | None = None
    inventory: FullInventory | DeltaInventory | None = None
    requests: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> HeartbeatJSON:
        """The wire form; :func:`parse_heartbeat` of it gives an equal heartbeat."""
        appliance: ApplianceJSON = {
            "id": self.appliance_id,
            "site": self.site,
            "region": self.region,
            "lat": self.lat,
            "lon": self.lon,
            "urls": list(self.urls),
            "https_urls": list(self.https_urls),
        }
        health: HealthJSON = {
            "state": self.state,
            "reasons": list(self.reasons),
            "draining": self.draining,
            "serving": self.serving,
            "disks": [
                {"tier": d.tier, "path": d.path, "state": d.state, "reason": d.reason,
                 "capacity_bytes": d.capacity_bytes, "used_bytes": d.used_bytes}
                for d in self.disks
            ],
        }  # fmt: skip
        if self.workers is not None:
            w = self.workers
            health["workers"] = {
                "configured": w.configured, "running": w.running, "restarts": w.restarts
            }  # fmt: skip
        if self.fill is not None:
            f = self.fill
            health["fill"] = {"state": f.state, "last_run_at": f.last_run_at, "reason": f.reason}
        load: LoadJSON = {"connections": self.connections, "load_fraction": self.load_fraction}
        if self.nic_bits_per_second is not None:
            load["nic_bits_per_second"] = self.nic_bits_per_second
        if self.link_capacity_bits_per_second is not None:
            load["link_capacity_bits_per_second"] = self.link_capacity_bits_per_second
        if self.cpu_fraction is not None:
            load["cpu_fraction"] = self.cpu_fraction
        doc: HeartbeatJSON = {
            "schema": "oca.heartbeat",
            "version": 1,
            "appliance": appliance,
            "boot_id": self.boot_id,
            "seq": self.seq,
            "sent_at": self.sent_at,
            "interval_seconds": self.interval_seconds,
            "prefixes": [str(p) for p in self.prefixes],
            "health": health,
            "load": load,
            "capacity_bytes": self.capacity_bytes,
            "used_bytes": self.used_bytes,
        }
        inv = self.inventory
        if isinstance(inv, FullInventory):
            doc["inventory"] = {
                "kind": "full", "epoch": inv.epoch, "gen": inv.gen, "objects": list(inv.objects)
            }  # fmt: skip
        elif isinstance(inv, DeltaInventory):
            doc["inventory"] = {
                "kind": "delta", "epoch": inv.epoch, "base_gen": inv.base_gen, "gen": inv.gen,
                "added": list(inv.added), "removed": list(inv.removed),
            }  # fmt: skip
        if self.requests:
            doc["requests"] = dict(self.requests)
        return doc


# --------------------------------------------------------------------------- validation


def _object(value: object, name: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise HeartbeatError(name, f"expected an object, got {_kind(value)}")
    return value


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _fields(
    data: Mapping[str, object], required: tuple[str, ...], optional: tuple[str, ...], at: str
) -> None:
    for name in required:
        if name not in data:
            raise HeartbeatError(at + name, "missing")
    if len(data) > len(required):
        for name in data:
            if name not in required and name not in optional:
                raise HeartbeatError(at + str(name), "unknown field")


def _int(value: object, name: str, low: int = 0) -> int:
    if type(value) is not int:
        raise HeartbeatError(name, f"expected an integer, got {_kind(value)}")
    if value < low:
        raise HeartbeatError(name, f"{value} is below {low}")
    return value


def _number(value: object, name: str, low: float = 0.0, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise HeartbeatError(name, f"expected a number, got {_kind(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise HeartbeatError(name, "expected a finite number")
    if not low <= number <= high:
        bounds = f"{low:g}..{high:g}" if math.isfinite(high) else f">= {low:g}"
        raise HeartbeatError(name, f"{number:g} is out of range ({bounds})")
    return number


def _optional_number(
    data: Mapping[str, object], key: str, name: str, low: float, high: float = math.inf
) -> float | None:
    value = data.get(key)
    return None if value is None else _number(value, name, low, high)


def _bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise HeartbeatError(name, f"expected true or false, got {_kind(value)}")
    return value


def _text(value: object, name: str, limit: int = MAX_TEXT, *, empty: bool = True) -> str:
    if not isinstance(value, str):
        raise HeartbeatError(name, f"expected a string, got {_kind(value)}")
    if len(value) > limit:
        raise HeartbeatError(name, f"longer than {limit} characters")
    if not empty and not value:
        raise HeartbeatError(name, "must not be empty")
    return value


def _token(value: object, name: str) -> str:
    if not isinstance(value, str) or _TOKEN_RE.fullmatch(value) is None:
        raise HeartbeatError(name, "expected 1-128 of [A-Za-z0-9._:-]")
    return value


def _list(value: object, name: str, limit: int) -> list[object]:
    if not isinstance(value, list):
        raise HeartbeatError(name, f"expected a list, got {_kind(value)}")
    if len(value) > limit:
        raise HeartbeatError(name, f"more than {limit} entries")
    return value


def _texts(value: object, name: str, limit: int) -> tuple[str, ...]:
    return tuple(_text(v, f"{name}[{i}]") for i, v in enumerate(_list(value, name, limit)))


def _urls(value: object, name: str, schemes: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for i, url in enumerate(_list(value, name, MAX_URLS)):
        if not isinstance(url, str) or not url.startswith(schemes) or len(url) > 2048:
            raise HeartbeatError(f"{name}[{i}]", f"expected a URL starting with {schemes[-1]}")
        if _SPACE_RE.search(url):
            raise HeartbeatError(f"{name}[{i}]", "a URL must not contain white space")
        out.append(url)
    return tuple(out)


def _paths(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise HeartbeatError(name, f"expected a list, got {_kind(value)}")
    for i, path in enumerate(value):
        if type(path) is not str or not path.startswith("/"):
            raise HeartbeatError(f"{name}[{i}]", "expected a string starting with '/'")
    return tuple(value)


def _prefixes(value: object) -> tuple[IPNetwork, ...]:
    items = _list(value, "prefixes", MAX_PREFIXES)
    if all(type(text) is str for text in items):
        key = cast("tuple[str, ...]", tuple(items))
        cached = _prefix_cache.get(key)
        if cached is None:
            cached = _parse_prefixes(items)
            if len(_prefix_cache) >= _PREFIX_CACHE_SIZE:
                _prefix_cache.clear()
            _prefix_cache[key] = cached
        return cached
    return _parse_prefixes(items)


def _parse_prefixes(items: list[object]) -> tuple[IPNetwork, ...]:
    nets: set[IPNetwork] = set()
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise HeartbeatError(f"prefixes[{i}]", f"expected a string, got {_kind(text)}")
        try:
            nets.add(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise HeartbeatError(
                f"prefixes[{i}]", f"{text[:64]!r} is not an IP network (e.g. 10.1.0.0/24)"
            ) from None
    return tuple(sorted(nets, key=lambda n: (n.version, int(n.network_address), n.prefixlen)))


def _appliance(value: object) -> tuple[str, str, str, float | None, float | None, tuple[str, ...],
                                       tuple[str, ...]]:  # fmt: skip
    data = _object(value, "appliance")
    _fields(data, ("id", "site", "region", "urls"), ("lat", "lon", "https_urls"), "appliance.")
    ident = data["id"]
    if not isinstance(ident, str) or _ID_RE.fullmatch(ident) is None:
        raise HeartbeatError("appliance.id", "expected 1-64 of [A-Za-z0-9._-]")
    site = _text(data["site"], "appliance.site", MAX_NAME, empty=False)
    region = _text(data["region"], "appliance.region", MAX_NAME, empty=False)
    lat = _optional_number(data, "lat", "appliance.lat", -90.0, 90.0)
    lon = _optional_number(data, "lon", "appliance.lon", -180.0, 180.0)
    urls = _urls(data["urls"], "appliance.urls", ("http://", "https://"))
    https = _urls(data.get("https_urls", []), "appliance.https_urls", ("https://",))
    return ident, site, region, lat, lon, urls, https


def _disks(value: object) -> tuple[DiskReport, ...]:
    out = []
    names = ("tier", "path", "state", "reason", "capacity_bytes", "used_bytes")
    for i, item in enumerate(_list(value, "health.disks", MAX_DISKS)):
        at = f"health.disks[{i}]"
        d = _object(item, at)
        _fields(d, names, (), at + ".")
        state = d["state"]
        if state != "ok" and state != "failed":
            raise HeartbeatError(at + ".state", "expected one of ok, failed")
        out.append(
            DiskReport(
                _text(d["tier"], at + ".tier", MAX_NAME),
                _text(d["path"], at + ".path"),
                state,
                _text(d["reason"], at + ".reason"),
                _int(d["capacity_bytes"], at + ".capacity_bytes"),
                _int(d["used_bytes"], at + ".used_bytes"),
            )
        )
    return tuple(out)


def _workers(value: object) -> WorkersReport:
    d = _object(value, "health.workers")
    _fields(d, ("configured", "running", "restarts"), (), "health.workers.")
    return WorkersReport(
        _int(d["configured"], "health.workers.configured"),
        _int(d["running"], "health.workers.running"),
        _int(d["restarts"], "health.workers.restarts"),
    )


def _fill(value: object) -> FillReport:
    d = _object(value, "health.fill")
    _fields(d, ("state", "last_run_at", "reason"), (), "health.fill.")
    last = d["last_run_at"]
    return FillReport(
        _text(d["state"], "health.fill.state", 64, empty=False),
        None if last is None else _number(last, "health.fill.last_run_at"),
        _text(d["reason"], "health.fill.reason"),
    )


def parse_inventory(value: object) -> FullInventory | DeltaInventory | None:
    """A heartbeat's ``inventory`` (null, full or delta); fields named ``inventory.*``."""
    if value is None:
        return None
    d = _object(value, "inventory")
    kind = d.get("kind")
    if kind == "full":
        _fields(d, ("kind", "epoch", "gen", "objects"), (), "inventory.")
        return FullInventory(
            _token(d["epoch"], "inventory.epoch"),
            _int(d["gen"], "inventory.gen"),
            _paths(d["objects"], "inventory.objects"),
        )
    if kind == "delta":
        _fields(d, ("kind", "epoch", "base_gen", "gen", "added", "removed"), (), "inventory.")
        base = _int(d["base_gen"], "inventory.base_gen")
        gen = _int(d["gen"], "inventory.gen")
        if gen <= base:
            raise HeartbeatError("inventory.gen", f"{gen} must exceed base_gen {base}")
        return DeltaInventory(
            _token(d["epoch"], "inventory.epoch"),
            base,
            gen,
            _paths(d["added"], "inventory.added"),
            _paths(d["removed"], "inventory.removed"),
        )
    if "kind" not in d:
        raise HeartbeatError("inventory.kind", "missing")
    raise HeartbeatError("inventory.kind", "expected one of full, delta")


def _requests(value: object) -> dict[str, int]:
    d = _object(value, "requests")
    out: dict[str, int] = {}
    for path, n in d.items():
        if type(path) is not str or not path.startswith("/"):
            raise HeartbeatError(
                f"requests[{str(path)[:64]!r}]", "a key must be a path starting with '/'"
            )
        if type(n) is not int or n < 0:
            raise HeartbeatError(f"requests[{path[:64]!r}]", "expected an integer >= 0")
        out[path] = n
    return out


_TOP_REQUIRED: Final = (
    "schema", "version", "appliance", "boot_id", "seq", "sent_at", "interval_seconds",
    "prefixes", "health", "load", "capacity_bytes", "used_bytes",
)  # fmt: skip
_TOP_OPTIONAL: Final = ("inventory", "requests")
_LOAD_OPTIONAL: Final = ("nic_bits_per_second", "link_capacity_bits_per_second", "cpu_fraction")


def parse_heartbeat(payload: object) -> Heartbeat:
    """The validated heartbeat of a decoded JSON document; :class:`HeartbeatError` names
    the first field that is wrong."""
    data = _object(payload, "heartbeat")
    if data.get("schema") != HEARTBEAT_SCHEMA:
        raise HeartbeatError("schema", f"expected {HEARTBEAT_SCHEMA!r}")
    if type(data.get("version")) is not int or data["version"] != HEARTBEAT_VERSION:
        raise HeartbeatError("version", f"expected {HEARTBEAT_VERSION}")
    _fields(data, _TOP_REQUIRED, _TOP_OPTIONAL, "")
    ident, site, region, lat, lon, urls, https = _appliance(data["appliance"])

    health = _object(data["health"], "health")
    _fields(
        health, ("state", "reasons", "draining", "serving"), ("disks", "workers", "fill"), "health."
    )
    state = health["state"]
    if state not in HEALTH_STATES:
        raise HeartbeatError("health.state", "expected one of healthy, degraded, unhealthy")

    load = _object(data["load"], "load")
    _fields(load, ("connections", "load_fraction"), _LOAD_OPTIONAL, "load.")

    return Heartbeat(
        appliance_id=ident,
        site=site,
        region=region,
        lat=lat,
        lon=lon,
        urls=urls,
        https_urls=https,
        boot_id=_token(data["boot_id"], "boot_id"),
        seq=_int(data["seq"], "seq"),
        sent_at=_number(data["sent_at"], "sent_at"),
        interval_seconds=_interval(data["interval_seconds"]),
        prefixes=_prefixes(data["prefixes"]),
        state=state,
        reasons=_texts(health["reasons"], "health.reasons", MAX_REASONS),
        draining=_bool(health["draining"], "health.draining"),
        serving=_bool(health["serving"], "health.serving"),
        load_fraction=_number(load["load_fraction"], "load.load_fraction", 0.0, 1e6),
        connections=_int(load["connections"], "load.connections"),
        capacity_bytes=_int(data["capacity_bytes"], "capacity_bytes"),
        used_bytes=_int(data["used_bytes"], "used_bytes"),
        disks=_disks(health["disks"]) if "disks" in health else (),
        workers=_workers(health["workers"]) if "workers" in health else None,
        fill=_fill(health["fill"]) if "fill" in health else None,
        nic_bits_per_second=_optional_number(
            load, "nic_bits_per_second", "load.nic_bits_per_second", 0.0
        ),
        link_capacity_bits_per_second=_optional_number(
            load, "link_capacity_bits_per_second", "load.link_capacity_bits_per_second", 0.0
        ),
        cpu_fraction=_optional_number(load, "cpu_fraction", "load.cpu_fraction", 0.0, 1e6),
        inventory=parse_inventory(data.get("inventory")),
        requests=_requests(data["requests"]) if "requests" in data else {},
    )


def _interval(value: object) -> float:
    interval = _number(value, "interval_seconds", 0.0, MAX_INTERVAL_SECONDS)
    if interval <= 0:
        raise HeartbeatError("interval_seconds", "must be above 0")
    return interval
