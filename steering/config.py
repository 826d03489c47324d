"""Steering service configuration: one frozen, typed tree loaded from ``steering.toml``.

The rules are the appliance's (see ``docs/config.md``): defaults < file < ``OCA_STEERING_*``
environment; every key is validated at load and an error names the dotted key; units
live in key names. The steering service is deployed on control-plane hosts apart from
the appliances, so this module carries its own small loader rather than importing the
appliance package.

A minimal file::

    [service]
    listen = ["0.0.0.0:8090"]
    public_url = "https://steer.example.net"

    [urls]
    keys = [{ id = "k1", secret = "<64 hex digits>" }]

    [heartbeat]
    keys = [{ id = "site-key", secret = "<64 hex digits>" }]
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")

ENV_PREFIX = "OCA_STEERING_"


class SteeringConfigError(Exception):
    """A configuration value is missing, malformed or out of range; ``key`` names it."""

    def __init__(self, key: str, detail: str) -> None:
        self.key = key
        self.detail = detail
        super().__init__(f"{key}: {detail}" if key else detail)


def _rng(lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    return {"min": lo, "max": hi}


@dataclass(frozen=True)
class Key:
    id: str
    secret: str  # hex, at least 32 bytes


@dataclass(frozen=True)
class ServiceConfig:
    listen: tuple[str, ...] = ("127.0.0.1:8090",)
    # The URL players and appliances reach this service at (RELOAD-URI, ContentSteering);
    # default: the first listener.
    public_url: str = ""
    # Proxies (addresses or CIDR blocks) whose X-Forwarded-For is believed; the client is
    # the connection's peer address otherwise.
    trusted_proxies: tuple[str, ...] = ()
    # Who may add titles (POST /v1/catalog/titles); loopback by default.
    admin_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    state_dir: str = "/var/lib/oca-steering"
    # The catalog file (`oca catalog build --out`); default: state_dir/catalog.json.
    # Re-read on SIGHUP; titles added over HTTP are written back to it.
    catalog: str = ""
    # Fleet and popularity written to state_dir this often for a warm start; 0 = never.
    snapshot_interval_seconds: float = field(default=30.0, metadata=_rng(0, 86400))
    log_level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True)
class HeartbeatConfig:
    # Shared secrets appliances sign heartbeats with (X-Oca-Heartbeat); any one verifies.
    keys: tuple[Key, ...] = ()
    # An appliance is out of rotation after this many of its intervals without a beat.
    missed_heartbeats: float = field(default=3.0, metadata=_rng(1, 1000))
    forget_after_seconds: float = field(default=3600.0, metadata=_rng(1, 365 * 86400))
    max_clock_skew_seconds: float = field(default=300.0, metadata=_rng(1, 86400))
    max_body_bytes: int = field(default=256 << 20, metadata=_rng(1024, 1 << 32))


@dataclass(frozen=True)
class RankingConfig:
    max_results: int = field(default=10, metadata=_rng(1, 1000))
    overload_threshold: float = field(default=0.85, metadata=_rng(0.01, 100))
    # Rank appliances whose site-mate holds the title (they fetch it by peering).
    site_peering: bool = True
    # When no appliance holds a title, rank every eligible one (they fetch on a miss).
    allow_miss: bool = False


@dataclass(frozen=True)
class UrlsConfig:
    # URL-signing keys shared with the appliances ([auth] keys there); the signing key
    # is signing_key_id or the first. Without keys, URLs are handed out unsigned.
    keys: tuple[Key, ...] = ()
    signing_key_id: str = ""
    token_ttl_seconds: int = field(default=6 * 3600, metadata=_rng(10, 30 * 86400))
    # Bind tokens to the client: "none", its "address", or its /24 (IPv4) or /48 (IPv6).
    bind_client: Literal["none", "address", "prefix"] = "none"
    scheme: Literal["http", "https"] = "http"


@dataclass(frozen=True)
class ContentSteeringConfig:
    ttl_seconds: int = field(default=10, metadata=_rng(1, 86400))
    # A player reporting less throughput than this on its pathway is moved off it;
    # 0 = never judge by throughput.
    min_throughput_bits: int = field(default=0, metadata=_rng(0, 10**12))


@dataclass(frozen=True)
class Boost:
    title: str
    # While active, the title's score is at least this many requests per day (e.g. the
    # release's marketing forecast) and its observed score is multiplied by `factor`.
    requests_per_day: float = field(default=0.0, metadata=_rng(0, 1e12))
    factor: float = field(default=1.0, metadata=_rng(0, 1e6))
    # Window in unix seconds; 0 = from release_lead_seconds before the title's release
    # (or now when it has none) / no end.
    starts_at: float = 0.0
    until: float = 0.0
    region: str = ""  # "" = every region


@dataclass(frozen=True)
class FillPlanConfig:
    half_life_seconds: float = field(default=24 * 3600.0, metadata=_rng(1, 365 * 86400))
    headroom_fraction: float = field(default=0.05, metadata=_rng(0, 0.9))
    # Expected requests per day one replica in a site is planned to carry; hotter titles
    # get more replicas, up to every appliance of the site.
    requests_per_replica: float = field(default=10000.0, metadata=_rng(1e-6, 1e12))
    # Boost an upcoming release this long before its catalog release_at.
    release_lead_seconds: float = field(default=2 * 86400.0, metadata=_rng(0, 365 * 86400))
    release_requests_per_day: float = field(default=0.0, metadata=_rng(0, 1e12))
    boosts: tuple[Boost, ...] = ()


@dataclass(frozen=True)
class SteeringConfig:
    service: ServiceConfig = ServiceConfig()
    heartbeat: HeartbeatConfig = HeartbeatConfig()
    ranking: RankingConfig = RankingConfig()
    urls: UrlsConfig = UrlsConfig()
    content_steering: ContentSteeringConfig = ContentSteeringConfig()
    fill: FillPlanConfig = FillPlanConfig()
    source: str = ""


# ------------------------------------------------------------------------------ loading
def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise SteeringConfigError(key, f"must be one of {', '.join(map(repr, allowed))}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise SteeringConfigError(key, f"must be a list, got {type(value).__name__}")
        (arg,) = typing.get_args(tp)[:1]
        return tuple(_convert(v, arg, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise SteeringConfigError(key, f"must be a table, got {type(value).__name__}")
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise SteeringConfigError(key, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SteeringConfigError(key, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SteeringConfigError(key, f"must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SteeringConfigError(key, f"must be a string, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):  # pragma: no cover - not used yet
        raise SteeringConfigError(key, "unsupported union type")
    raise SteeringConfigError(key, f"unsupported type {tp!r}")  # pragma: no cover


def _build(cls: type[T], data: Mapping[str, Any], prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for k in data:
        if k not in fields or k == "source":
            allowed = ", ".join(n for n in fields if n != "source")
            raise SteeringConfigError(_join(prefix, k), f"unknown key (allowed here: {allowed})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = _join(prefix, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SteeringConfigError(key, "is required")
            continue
        value = _convert(data[name], hints[name], key)
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if lo is not None and value < lo:
            raise SteeringConfigError(key, f"must be >= {lo}, got {value}")
        if hi is not None and value > hi:
            raise SteeringConfigError(key, f"must be <= {hi}, got {value}")
        kwargs[name] = value
    return cls(**kwargs)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        node = data
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise SteeringConfigError(".".join(parts), f"{name} names a non-table")
            node = child
        try:
            node[parts[-1]] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            node[parts[-1]] = raw


def parse_listen(addr: str, key: str) -> tuple[str, int]:
    host, sep, port_s = addr.rpartition(":")
    if not sep or not port_s.isdigit() or int(port_s) > 65535:
        raise SteeringConfigError(key, f"{addr!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port_s)


def _check_key(k: Key, key: str) -> None:
    if not k.id or len(k.id) > 64 or not all(c.isalnum() or c in "_-" for c in k.id):
        raise SteeringConfigError(f"{key}.id", "must be 1-64 characters of [A-Za-z0-9_-]")
    try:
        raw = bytes.fromhex(k.secret)
    except ValueError:
        raise SteeringConfigError(f"{key}.secret", "must be hex") from None
    if len(raw) < 32:
        raise SteeringConfigError(f"{key}.secret", "must be at least 32 bytes (64 hex digits)")


def _validate(cfg: SteeringConfig) -> None:
    if not cfg.service.listen:
        raise SteeringConfigError("service.listen", "needs at least one address")
    for i, addr in enumerate(cfg.service.listen):
        parse_listen(addr, f"service.listen[{i}]")
    for name, nets in (
        ("service.trusted_proxies", cfg.service.trusted_proxies),
        ("service.admin_networks", cfg.service.admin_networks),
    ):
        for i, net in enumerate(nets):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise SteeringConfigError(f"{name}[{i}]", f"{net!r} is not an address") from None
    for section, keys in (("urls.keys", cfg.urls.keys), ("heartbeat.keys", cfg.heartbeat.keys)):
        seen: set[str] = set()
        for i, k in enumerate(keys):
            _check_key(k, f"{section}[{i}]")
            if k.id in seen:
                raise SteeringConfigError(f"{section}[{i}].id", f"duplicate key id {k.id!r}")
            seen.add(k.id)
    ids = {k.id for k in cfg.urls.keys}
    if cfg.urls.signing_key_id and cfg.urls.signing_key_id not in ids:
        raise SteeringConfigError("urls.signing_key_id", "names no key in urls.keys")
    if cfg.service.public_url and not cfg.service.public_url.startswith(("http://", "https://")):
        raise SteeringConfigError("service.public_url", "must be an http(s) URL")


def load_steering_config(
    path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None
) -> SteeringConfig:
    """Load and validate ``path`` (None: defaults) with environment overrides."""
    data: dict[str, Any] = {}
    source = ""
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SteeringConfigError("", f"config file {source} does not exist") from None
        except OSError as exc:
            raise SteeringConfigError("", f"cannot read {source}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SteeringConfigError("", f"{source} is not valid TOML: {exc}") from None
    _apply_env(data, os.environ if env is None else env)
    cfg = dataclasses.replace(_build(SteeringConfig, data, ""), source=source)
    _validate(cfg)
    return cfg
