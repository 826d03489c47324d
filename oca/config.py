"""Appliance configuration: one frozen, typed tree loaded once from TOML.

Precedence is defaults < file < ``OCA_*`` environment < CLI flags. Every key is
validated at load: unknown keys, wrong types and out-of-range values raise
:class:`ConfigError` naming the dotted key and what is allowed. Units live in key
names (``drain_timeout_seconds``, ``capacity_bytes``).

Environment overrides name the dotted key in upper case with ``__`` between levels,
for example ``OCA_SERVER__WORKERS=4`` or ``OCA_SERVER__LISTEN=127.0.0.1:80,[::1]:80``.
Values are parsed as TOML values when they parse, else taken as strings; list-typed
keys also accept a comma-separated string.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from oca.errors import ConfigError

T = TypeVar("T")


def _rng(lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    return {"min": lo, "max": hi}


@dataclass(frozen=True)
class ServerConfig:
    listen: tuple[str, ...] = ("127.0.0.1:8080",)
    # Listeners for /metrics, /healthz, /readyz only; when empty those endpoints are
    # answered on the content listeners.
    internal_listen: tuple[str, ...] = ()
    workers: int = field(default=0, metadata=_rng(0, 256))  # 0 = one per core
    drain_timeout_seconds: float = field(default=30.0, metadata=_rng(0, 3600))
    header_timeout_seconds: float = field(default=10.0, metadata=_rng(0.1, 600))
    keepalive_timeout_seconds: float = field(default=75.0, metadata=_rng(0.1, 3600))
    send_timeout_seconds: float = field(default=60.0, metadata=_rng(0.1, 3600))
    max_connections: int = field(default=20000, metadata=_rng(1, 10_000_000))
    max_request_line_bytes: int = field(default=8192, metadata=_rng(256, 1 << 20))
    max_header_bytes: int = field(default=16384, metadata=_rng(512, 1 << 22))
    max_request_body_bytes: int = field(default=0, metadata=_rng(0, 1 << 30))
    max_pipelined_requests: int = field(default=32, metadata=_rng(1, 10000))
    max_ranges: int = field(default=16, metadata=_rng(1, 1000))
    cache_control: str = "public, max-age=31536000, immutable"
    manifest_cache_control: str = "public, max-age=2"
    cors_allow_origins: tuple[str, ...] = ("*",)
    server_header: str = "oca"
    state_dir: str = "/var/lib/oca"
    access_log: str = "-"  # "-" = stderr, "" = off, otherwise a file path
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # uvloop when installed (the default); "asyncio" forces the standard library loop.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"


@dataclass(frozen=True)
class TLSConfig:
    listen: tuple[str, ...] = ()
    cert_file: str = ""
    key_file: str = ""
    ktls: Literal["auto", "off"] = "auto"


@dataclass(frozen=True)
class TierConfig:
    name: str
    paths: tuple[str, ...]
    capacity_bytes: int = field(default=0, metadata=_rng(0, None))  # 0 = the filesystem's size


@dataclass(frozen=True)
class StorageConfig:
    tiers: tuple[TierConfig, ...] = ()
    disk_check_interval_seconds: float = field(default=5.0, metadata=_rng(0.05, 3600))
    inventory_poll_seconds: float = field(default=1.0, metadata=_rng(0.05, 3600))
    open_file_cache_size: int = field(default=4096, metadata=_rng(1, 1_000_000))
    open_file_cache_ttl_seconds: float = field(default=60.0, metadata=_rng(0.1, 86400))
    io_threads: int = field(default=8, metadata=_rng(1, 512))
    # How often request counts are merged into the disks' indexes (never per request).
    access_stats_flush_seconds: float = field(default=60.0, metadata=_rng(0.1, 86400))
    # A read error quarantines the object; more than disk_error_limit distinct objects
    # failing within the window fail the disk, held failed for disk_error_hold_seconds
    # (0 = until an operator clears it). See oca.storage.errorlimit.
    disk_error_limit: int = field(default=10, metadata=_rng(1, 1_000_000))
    disk_error_window_seconds: float = field(default=600.0, metadata=_rng(1, 30 * 86400))
    disk_error_hold_seconds: float = field(default=3600.0, metadata=_rng(0, 365 * 86400))


@dataclass(frozen=True)
class AuthKey:
    id: str
    secret: str  # hex, at least 32 bytes


@dataclass(frozen=True)
class AuthConfig:
    keys: tuple[AuthKey, ...] = ()
    keys_file: str = ""  # TOML file with [[keys]] id/secret; re-read on SIGHUP
    signing_key_id: str = ""  # key used by `oca sign`; default: the first key
    default_ttl_seconds: int = field(default=6 * 3600, metadata=_rng(1, 365 * 86400))
    public_url: str = ""  # base URL printed by `oca sign`; default: the first listener


@dataclass(frozen=True)
class FillConfig:
    # Where the fill manifest comes from: an http(s) URL (the steering service) or a file.
    manifest: str = ""
    # Local time window "HH:MM-HH:MM" (may wrap midnight); each appliance starts up to
    # window_jitter_seconds late, by a fixed offset derived from its hostname.
    window: str = "02:00-14:00"
    window_jitter_seconds: float = field(default=1800.0, metadata=_rng(0, 86400))
    max_fill_rate_bits: int = field(default=1_000_000_000, metadata=_rng(8_000, 10**12))
    # Appliances at the same site (base URLs of their content listeners), tried in order
    # before the origin.
    peers: tuple[str, ...] = ()
    headroom_fraction: float = field(default=0.05, metadata=_rng(0.0, 0.9))
    concurrency: int = field(default=4, metadata=_rng(1, 256))
    attempts_per_source: int = field(default=2, metadata=_rng(1, 100))
    retry_backoff_seconds: float = field(default=1.0, metadata=_rng(0.0, 3600))
    connect_timeout_seconds: float = field(default=10.0, metadata=_rng(0.1, 600))
    read_timeout_seconds: float = field(default=60.0, metadata=_rng(0.1, 3600))
    # Objects requested this recently count as being served and are never evicted.
    pin_recent_seconds: float = field(default=300.0, metadata=_rng(0, 86400))
    progress_interval_seconds: float = field(default=10.0, metadata=_rng(0.1, 3600))
    half_life_seconds: float = field(default=24 * 3600.0, metadata=_rng(1, 365 * 86400))
    forecast_weight: float = field(default=1.0, metadata=_rng(0, 1e6))
    probation_fraction: float = field(default=0.05, metadata=_rng(0.001, 0.9))


@dataclass(frozen=True)
class PeeringConfig:
    # This appliance's name towards its peers and the control plane (default: the host
    # name) and its site.
    appliance_id: str = ""
    site: str = "default"
    # Content listeners of the other appliances at the site (base URLs), best first.
    peers: tuple[str, ...] = ()
    # Shared secrets (hex, at least 32 bytes) authenticating requests between
    # appliances: the first signs, every one verifies (rotation). Required with peers.
    keys: tuple[str, ...] = ()
    summary_refresh_seconds: float = field(default=5.0, metadata=_rng(0.05, 3600))
    request_timeout_seconds: float = field(default=5.0, metadata=_rng(0.1, 600))
    # A failing peer is retried after 1 s, doubling up to this.
    backoff_max_seconds: float = field(default=60.0, metadata=_rng(0.1, 3600))


@dataclass(frozen=True)
class MissConfig:
    # false: serve local objects only and answer 404 for the rest (steering-only sites).
    enabled: bool = True
    # Base URLs of the origin; an object's path is appended. Tried after the peers.
    origins: tuple[str, ...] = ()
    max_upstream_transfers: int = field(default=32, metadata=_rng(1, 10000))
    max_upstream_connections: int = field(default=64, metadata=_rng(1, 10000))
    connect_timeout_seconds: float = field(default=3.0, metadata=_rng(0.05, 600))
    read_timeout_seconds: float = field(default=10.0, metadata=_rng(0.05, 3600))
    # How long "no source has it" is remembered before asking again.
    negative_ttl_seconds: float = field(default=10.0, metadata=_rng(0, 86400))
    # Keep what was fetched (installed after verification) or only pass it through.
    install: bool = True
    # Tier misses are installed in; "" = the last (capacity) tier: one request does
    # not make an object hot, and the nightly mover promotes what keeps being asked for.
    tier: str = ""
    # Cap on the bytes/s all miss transfers of one worker pull upstream; 0 = none.
    max_rate_bits: int = field(default=0, metadata=_rng(0, 10**12))
    max_object_bytes: int = field(default=64 << 30, metadata=_rng(1, 1 << 50))


@dataclass(frozen=True)
class SteeringConfig:
    """Heartbeats to the steering service (see docs/config.md and oca.health)."""

    # Base URLs of the steering service's replicas; each gets every heartbeat.
    urls: tuple[str, ...] = ()
    # Shared secrets signing heartbeats (X-Oca-Heartbeat): the first signs.
    keys: tuple[AuthKey, ...] = ()
    interval_seconds: float = field(default=2.0, metadata=_rng(0.1, 3600))
    request_timeout_seconds: float = field(default=5.0, metadata=_rng(0.1, 600))
    region: str = "default"
    latitude: float | None = field(default=None, metadata=_rng(-90, 90))
    longitude: float | None = field(default=None, metadata=_rng(-180, 180))
    # Content base URLs players use; default: the bound content listeners.
    public_urls: tuple[str, ...] = ()
    public_https_urls: tuple[str, ...] = ()
    # Client prefixes served, merged with those read from the routing table.
    prefixes: tuple[str, ...] = ()
    # Routing table a BGP daemon installs the ISP's routes in (0 = do not read routes),
    # the route protocols to take from it (numbers or names such as "bird", "bgp";
    # empty = any) and the network namespace to read it in ("" = this one).
    routes_table: int = field(default=0, metadata=_rng(0, 2**32 - 1))
    routes_protocols: tuple[int | str, ...] = ()
    routes_netns: str = ""
    # Link capacity (bits/s) the NIC load is measured against; 0 = the NICs' speed.
    link_capacity_bits: int = field(default=0, metadata=_rng(0, 10**14))
    # NICs whose traffic counts; empty = every non-loopback NIC that is up.
    interfaces: tuple[str, ...] = ()
    # With every steering URL unreachable: keep serving this long, then follow the policy.
    grace_seconds: float = field(default=600.0, metadata=_rng(0, 365 * 86400))
    unreachable_policy: Literal["serve", "stop"] = "serve"


@dataclass(frozen=True)
class Config:
    server: ServerConfig = ServerConfig()
    tls: TLSConfig = TLSConfig()
    storage: StorageConfig = StorageConfig()
    auth: AuthConfig = AuthConfig()
    fill: FillConfig = FillConfig()
    peering: PeeringConfig = PeeringConfig()
    miss: MissConfig = MissConfig()
    steering: SteeringConfig = SteeringConfig()
    source: str = ""  # file the config was loaded from ("" for defaults)


# --------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(key, f"must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, key)
            except ConfigError as exc:
                errors.append(exc.detail)
        raise ConfigError(key, "; ".join(errors))
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"must be a list, got {type(value).__name__}")
        return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"must be a table, got {type(value).__name__}")
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {value!r}")
        return value
    raise ConfigError(key, f"unsupported type {_type_name(tp)}")  # pragma: no cover


def _build(cls: type[T], data: Mapping[str, Any], prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for k in data:
        if k not in fields or k == "source":
            allowed = ", ".join(n for n in fields if n != "source")
            raise ConfigError(_join(prefix, k), f"unknown key (allowed here: {allowed})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = _join(prefix, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(key, "is required")
            continue
        value = _convert(data[name], hints[name], key)
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if lo is not None and value < lo:
            raise ConfigError(key, f"must be >= {lo}, got {value}")
        if hi is not None and value > hi:
            raise ConfigError(key, f"must be <= {hi}, got {value}")
        kwargs[name] = value
    return cls(**kwargs)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, raw in env.items():
        if not name.startswith("OCA_") or "__" not in name:
            continue
        parts = [p.lower() for p in name[4:].split("__")]
        node = data
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(".".join(parts), f"environment variable {name} names a non-table")
            node = child
        node[parts[-1]] = _parse_env_value(raw)


def parse_listen(addr: str, key: str = "listen") -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port`` into (host, port), validating both."""
    host, sep, port_s = addr.rpartition(":")
    if not sep or not port_s.isdigit():
        raise ConfigError(key, f"{addr!r} is not host:port")
    port = int(port_s)
    if not 0 <= port <= 65535:
        raise ConfigError(key, f"port {port} out of range 0..65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host not in ("", "*", "localhost"):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(key, f"{host!r} is not an IP address") from None
    return ("0.0.0.0" if host in ("", "*") else host), port


def _validate(cfg: Config) -> None:
    for i, a in enumerate(cfg.server.listen):
        parse_listen(a, f"server.listen[{i}]")
    for i, a in enumerate(cfg.server.internal_listen):
        parse_listen(a, f"server.internal_listen[{i}]")
    for i, a in enumerate(cfg.tls.listen):
        parse_listen(a, f"tls.listen[{i}]")
    if cfg.tls.listen and not (cfg.tls.cert_file and cfg.tls.key_file):
        raise ConfigError(
            "tls.cert_file", "tls.listen is set, so cert_file and key_file are required"
        )
    if cfg.tls.listen:
        for key in ("cert_file", "key_file"):
            path = getattr(cfg.tls, key)
            if not os.access(path, os.R_OK):
                raise ConfigError(f"tls.{key}", f"{path} does not exist or is not readable")
    if not cfg.server.listen and not cfg.tls.listen:
        raise ConfigError("server.listen", "no listener: set server.listen or tls.listen")
    if not cfg.storage.tiers:
        raise ConfigError("storage.tiers", "at least one tier with one path is required")
    names: set[str] = set()
    paths: set[str] = set()
    for i, t in enumerate(cfg.storage.tiers):
        key = f"storage.tiers[{i}]"
        if not t.name or not t.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"{key}.name", f"{t.name!r} must be a non-empty [A-Za-z0-9_-] name")
        if t.name in names:
            raise ConfigError(f"{key}.name", f"duplicate tier name {t.name!r}")
        names.add(t.name)
        if not t.paths:
            raise ConfigError(f"{key}.paths", "must list at least one directory")
        for j, p in enumerate(t.paths):
            norm = os.path.normpath(os.path.abspath(p))
            if norm in paths:
                raise ConfigError(f"{key}.paths[{j}]", f"{p!r} is used twice")
            paths.add(norm)
    parse_window(cfg.fill.window, "fill.window")
    for i, peer in enumerate(cfg.fill.peers):
        if not peer.startswith(("http://", "https://")):
            raise ConfigError(f"fill.peers[{i}]", f"expected an http(s) base URL, got {peer!r}")
    _validate_peering(cfg)
    _validate_steering(cfg.steering)
    ids: set[str] = set()
    for i, k in enumerate(cfg.auth.keys):
        _validate_key(k, f"auth.keys[{i}]")
        if k.id in ids:
            raise ConfigError(f"auth.keys[{i}].id", f"duplicate key id {k.id!r}")
        ids.add(k.id)
    if cfg.auth.signing_key_id and not cfg.auth.keys_file and cfg.auth.signing_key_id not in ids:
        raise ConfigError(
            "auth.signing_key_id", f"{cfg.auth.signing_key_id!r} is not among auth.keys"
        )


_APPLIANCE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _validate_peering(cfg: Config) -> None:
    p, m = cfg.peering, cfg.miss
    if p.appliance_id and not _APPLIANCE_ID.fullmatch(p.appliance_id):
        raise ConfigError(
            "peering.appliance_id", f"{p.appliance_id!r} must be 1-64 of [A-Za-z0-9._-]"
        )
    if not 1 <= len(p.site) <= 256:
        raise ConfigError("peering.site", "must be 1-256 characters")
    for i, peer in enumerate(p.peers):
        if not peer.startswith(("http://", "https://")):
            raise ConfigError(f"peering.peers[{i}]", f"expected an http(s) base URL, got {peer!r}")
    for i, k in enumerate(p.keys):
        try:
            raw = bytes.fromhex(k)
        except ValueError:
            raise ConfigError(f"peering.keys[{i}]", "must be hex") from None
        if len(raw) < 32:
            raise ConfigError(f"peering.keys[{i}]", f"must be at least 32 bytes, got {len(raw)}")
    if p.peers and not p.keys:
        raise ConfigError("peering.keys", "peering.peers is set, so a shared peer key is required")
    for i, origin in enumerate(m.origins):
        if not origin.startswith(("http://", "https://")):
            raise ConfigError(f"miss.origins[{i}]", f"expected an http(s) base URL, got {origin!r}")
    if m.tier and m.tier not in {t.name for t in cfg.storage.tiers}:
        raise ConfigError("miss.tier", f"{m.tier!r} is not a configured tier")


def _validate_steering(s: SteeringConfig) -> None:
    from oca.health.routes import protocol_number

    for key, urls in (
        ("urls", s.urls),
        ("public_urls", s.public_urls),
        ("public_https_urls", s.public_https_urls),
    ):
        for i, url in enumerate(urls):
            if not url.startswith(("http://", "https://")) or len(url) < 10:
                raise ConfigError(f"steering.{key}[{i}]", f"expected an http(s) URL, got {url!r}")
        if len(set(urls)) != len(urls):
            raise ConfigError(f"steering.{key}", "lists a URL twice")
    ids: set[str] = set()
    for i, k in enumerate(s.keys):
        _validate_key(k, f"steering.keys[{i}]")
        if k.id in ids:
            raise ConfigError(f"steering.keys[{i}].id", f"duplicate key id {k.id!r}")
        ids.add(k.id)
    if s.urls and not s.keys:
        raise ConfigError("steering.keys", "steering.urls is set, so a heartbeat key is required")
    if not 1 <= len(s.region) <= 256:
        raise ConfigError("steering.region", "must be 1-256 characters")
    for i, prefix in enumerate(s.prefixes):
        try:
            ipaddress.ip_network(prefix)
        except ValueError as exc:
            raise ConfigError(f"steering.prefixes[{i}]", f"{prefix!r}: {exc}") from None
    for i, proto in enumerate(s.routes_protocols):
        try:
            protocol_number(proto)
        except ValueError as exc:
            raise ConfigError(f"steering.routes_protocols[{i}]", str(exc)) from None
    if s.routes_netns and not re.fullmatch(r"[A-Za-z0-9._-]{1,255}", s.routes_netns):
        raise ConfigError("steering.routes_netns", f"{s.routes_netns!r} is not a namespace name")
    for i, nic in enumerate(s.interfaces):
        if not nic or "/" in nic or len(nic) > 15:
            raise ConfigError(f"steering.interfaces[{i}]", f"{nic!r} is not an interface name")


def appliance_id(cfg: Config) -> str:
    """This appliance's name: ``peering.appliance_id`` or the host name."""
    if cfg.peering.appliance_id:
        return cfg.peering.appliance_id
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64]
    return name or "oca"


def parse_window(text: str, key: str = "fill.window") -> tuple[int, int]:
    """``"HH:MM-HH:MM"`` as (start, end) minutes after midnight; end may be before start
    (the window wraps midnight) but not equal to it."""
    try:
        a, b = text.split("-")
        minutes = []
        for part in (a, b):
            hh, mm = part.strip().split(":")
            h, m = int(hh), int(mm)
            if not (0 <= h <= 23 and 0 <= m <= 59):
                raise ValueError
            minutes.append(h * 60 + m)
    except ValueError:
        raise ConfigError(key, f"expected HH:MM-HH:MM in local time, got {text!r}") from None
    if minutes[0] == minutes[1]:
        raise ConfigError(key, f"{text!r} is empty: start and end are the same")
    return minutes[0], minutes[1]


def _validate_key(k: AuthKey, key: str) -> None:
    if not k.id or not all(c.isalnum() or c in "_-" for c in k.id) or len(k.id) > 32:
        raise ConfigError(f"{key}.id", f"{k.id!r} must be 1-32 characters of [A-Za-z0-9_-]")
    try:
        raw = bytes.fromhex(k.secret)
    except ValueError:
        raise ConfigError(f"{key}.secret", "must be hex") from None
    if len(raw) < 32:
        raise ConfigError(
            f"{key}.secret", f"must be at least 32 bytes (64 hex digits), got {len(raw)}"
        )


def load_auth_keys(cfg: AuthConfig) -> tuple[AuthKey, ...]:
    """The configured keys plus those of ``keys_file`` (read now; called again on SIGHUP)."""
    keys = list(cfg.keys)
    if cfg.keys_file:
        try:
            with open(cfg.keys_file, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(
                "auth.keys_file", f"cannot read {cfg.keys_file}: {exc.strerror}"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("auth.keys_file", f"{cfg.keys_file}: {exc}") from None
        extra = set(data) - {"keys"}
        if extra:
            raise ConfigError(
                "auth.keys_file", f"unknown key {sorted(extra)[0]!r} in {cfg.keys_file}"
            )
        file_keys = _convert(data.get("keys", []), tuple[AuthKey, ...], "keys_file.keys")
        for i, k in enumerate(file_keys):
            _validate_key(k, f"keys_file.keys[{i}]")
        keys.extend(file_keys)
    seen: set[str] = set()
    for k in keys:
        if k.id in seen:
            raise ConfigError("auth.keys", f"duplicate key id {k.id!r}")
        seen.add(k.id)
    return tuple(keys)


def load_config(
    path: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Load and validate; ``overrides`` maps dotted keys to values (CLI flags)."""
    data: dict[str, Any] = {}
    source = ""
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("", f"config file {source} does not exist") from None
        except OSError as exc:
            raise ConfigError("", f"cannot read config file {source}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError("", f"{source} is not valid TOML: {exc}") from None
    _apply_env(data, os.environ if env is None else env)
    for dotted, value in (overrides or {}).items():
        node = data
        parts = dotted.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    cfg = _build(Config, data, "")
    cfg = dataclasses.replace(cfg, source=source)
    _validate(cfg)
    if cfg.auth.keys_file:
        load_auth_keys(cfg.auth)
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The effective configuration as plain data (``--print-config``); secrets masked."""
    out = dataclasses.asdict(cfg)
    out.pop("source", None)
    for k in out["auth"]["keys"]:
        k["secret"] = "<redacted>"
    for k in out["steering"]["keys"]:
        k["secret"] = "<redacted>"
    return out
