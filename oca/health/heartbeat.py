"""The heartbeat wire format (appliance -> steering), version 1, and its signature.

Theory of operation
-------------------
Every ``steering.interval_seconds`` the appliance POSTs one JSON document to
``<steering URL>/v1/heartbeat`` (:class:`HeartbeatJSON`): who it is and where players
reach it, the client prefixes it serves, a health verdict with reasons, its load, its
inventory (full, a delta against what that steering replica acknowledged, or nothing
when unchanged) and the per-object request counts since the previous heartbeat. The
steering service keeps only soft state built from these documents, so a heartbeat is
self-contained apart from the inventory delta, whose ``epoch`` and ``base_gen`` let
the receiver tell whether it holds the base; when it does not, it answers
``{"ok": true, "inventory": "send-full"}`` and the next heartbeat carries the full list.

Authentication is an HMAC-SHA256 over the exact body bytes with a shared secret,
sent as ``X-Oca-Heartbeat: <key id>:<base64url without padding>`` (RFC 2104, RFC 4648
§5). The body carries ``sent_at``; the receiver refuses bodies too far from its clock,
which bounds replays. Keys rotate like the URL-signing keys: the receiver accepts every
configured key, the appliance signs with its first.

This module is pure: no I/O, and the clock is an argument.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypedDict

import orjson

from oca.errors import OcaError

__all__ = [
    "HEARTBEAT_HEADER",
    "HEARTBEAT_PATH",
    "HEARTBEAT_SCHEMA",
    "HEARTBEAT_VERSION",
    "ApplianceJSON",
    "DeltaInventoryJSON",
    "DiskJSON",
    "FillJSON",
    "FullInventoryJSON",
    "HealthJSON",
    "HeartbeatAuthError",
    "HeartbeatJSON",
    "HeartbeatReply",
    "Identity",
    "InventoryJSON",
    "LoadJSON",
    "WorkersJSON",
    "build_heartbeat",
    "encode_heartbeat",
    "parse_reply",
    "sign_heartbeat",
    "verify_heartbeat",
]

HEARTBEAT_SCHEMA: Final = "oca.heartbeat"
HEARTBEAT_VERSION: Final = 1
HEARTBEAT_PATH: Final = "/v1/heartbeat"
HEARTBEAT_HEADER: Final = "X-Oca-Heartbeat"
_TAG_RE: Final = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 bytes, base64url without padding


class ApplianceJSON(TypedDict):
    id: str
    site: str
    region: str
    lat: float | None
    lon: float | None
    urls: list[str]  # content base URLs players use
    https_urls: list[str]


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
    state: Literal["idle", "running"]
    last_run_at: float | None
    reason: str


class HealthJSON(TypedDict):
    state: Literal["healthy", "degraded", "unhealthy"]
    reasons: list[str]
    draining: bool
    serving: bool
    disks: list[DiskJSON]
    workers: WorkersJSON
    fill: FillJSON


class LoadJSON(TypedDict):
    nic_bits_per_second: float
    link_capacity_bits_per_second: float
    cpu_fraction: float
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


InventoryJSON = FullInventoryJSON | DeltaInventoryJSON


class HeartbeatJSON(TypedDict):
    schema: str
    version: int
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
    inventory: InventoryJSON | None
    requests: dict[str, int]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the appliance is and where players reach it (fixed for a supervisor's life)."""

    id: str
    site: str
    region: str
    lat: float | None
    lon: float | None
    urls: tuple[str, ...]
    https_urls: tuple[str, ...]

    def to_json(self) -> ApplianceJSON:
        return {
            "id": self.id,
            "site": self.site,
            "region": self.region,
            "lat": self.lat,
            "lon": self.lon,
            "urls": list(self.urls),
            "https_urls": list(self.https_urls),
        }


def build_heartbeat(
    *,
    identity: Identity,
    boot_id: str,
    seq: int,
    sent_at: float,
    interval_seconds: float,
    prefixes: Sequence[str],
    health: HealthJSON,
    load: LoadJSON,
    inventory: InventoryJSON | None,
    requests: Mapping[str, int],
) -> HeartbeatJSON:
    """One heartbeat document; capacity and use are the sums over the healthy disks."""
    ok = [d for d in health["disks"] if d["state"] == "ok"]
    return {
        "schema": HEARTBEAT_SCHEMA,
        "version": HEARTBEAT_VERSION,
        "appliance": identity.to_json(),
        "boot_id": boot_id,
        "seq": seq,
        "sent_at": sent_at,
        "interval_seconds": interval_seconds,
        "prefixes": list(prefixes),
        "health": health,
        "load": load,
        "capacity_bytes": sum(d["capacity_bytes"] for d in ok),
        "used_bytes": sum(d["used_bytes"] for d in ok),
        "inventory": inventory,
        "requests": dict(requests),
    }


def encode_heartbeat(doc: HeartbeatJSON) -> bytes:
    return orjson.dumps(doc)


# --------------------------------------------------------------------------- signature


class HeartbeatAuthError(OcaError):
    """A heartbeat signature header is malformed, names an unknown key or does not match."""

    def __init__(self, reason: Literal["malformed", "unknown-key", "bad-signature"]) -> None:
        self.reason = reason
        super().__init__(reason)


def _mac(secret: bytes, body: bytes) -> bytes:
    return hmac.new(secret, body, hashlib.sha256).digest()


def sign_heartbeat(key_id: str, secret: bytes, body: bytes) -> str:
    """The ``X-Oca-Heartbeat`` value for ``body``."""
    if not key_id or ":" in key_id:
        raise ValueError(f"key id {key_id!r} must be non-empty and contain no ':'")
    if not secret:
        raise ValueError("the secret must not be empty")
    tag = base64.urlsafe_b64encode(_mac(secret, body)).rstrip(b"=").decode("ascii")
    return f"{key_id}:{tag}"


def verify_heartbeat(value: str, body: bytes, keys: Mapping[str, bytes]) -> str:
    """The key id a valid ``X-Oca-Heartbeat`` value was made with; raises
    :class:`HeartbeatAuthError` otherwise."""
    key_id, sep, tag = value.partition(":")
    if not sep or not key_id or not _TAG_RE.fullmatch(tag):
        raise HeartbeatAuthError("malformed")
    try:
        mac = base64.urlsafe_b64decode(tag + "=")
    except (binascii.Error, ValueError):
        raise HeartbeatAuthError("malformed") from None
    secret = keys.get(key_id)
    if secret is None:
        raise HeartbeatAuthError("unknown-key")
    if not hmac.compare_digest(_mac(secret, body), mac):
        raise HeartbeatAuthError("bad-signature")
    return key_id


# --------------------------------------------------------------------------- reply


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    """What one steering replica answered: ``ok`` False carries the failure's reason."""

    ok: bool
    send_full: bool = False
    reason: str = ""


def parse_reply(status: int, body: bytes) -> HeartbeatReply:
    """Interpret a steering replica's answer to one heartbeat (status and body)."""
    doc: Any = None
    try:
        doc = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        doc = None
    if status != 200:
        detail = ""
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            detail = f": {doc['error'][:200]}"
        elif body:
            detail = f": {body[:120].decode('utf-8', 'replace').strip()}"
        return HeartbeatReply(False, reason=f"HTTP {status}{detail}")
    if not isinstance(doc, dict) or doc.get("ok") is not True:
        return HeartbeatReply(False, reason='HTTP 200 with a body that is not {"ok": true, ...}')
    inventory = doc.get("inventory", "ok")
    if inventory not in ("ok", "send-full"):
        return HeartbeatReply(False, reason=f"unknown inventory answer {inventory!r}")
    return HeartbeatReply(True, send_full=inventory == "send-full")
