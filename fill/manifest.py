"""The fill manifest: what an appliance should hold tomorrow (wire format, version 1).

The control plane (the steering service) hands each appliance a manifest as JSON over
HTTP; a local file works too. It lists the objects the appliance should hold, each with
its size and sha256 (the fill verifies every byte against them before an object becomes
visible), a predicted popularity (expected requests per day in the appliance's region:
only relative values matter), the preferred tier, and where to fetch it from (origin
URLs; the appliance's peers come from its own config). The format is documented in
``docs/fill.md``.

Parsing is strict: a manifest that is not exactly this shape is rejected as a whole with
a :class:`ManifestError` that names the offending field (``objects[12].sha256: ...``),
because a half-understood manifest could evict the wrong things.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, NotRequired, TypedDict

import orjson

from oca.errors import OcaError
from oca.storage.inventory import validate_object_path

MANIFEST_SCHEMA: Final = "oca.fill-manifest"
MANIFEST_VERSION: Final = 1
MAX_MANIFEST_BYTES: Final = 256 << 20

_SHA256 = re.compile(r"[0-9a-f]{64}")
_TIER = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class ManifestError(OcaError):
    """A manifest cannot be fetched, parsed or validated; ``field`` names where."""

    def __init__(self, field: str, detail: str) -> None:
        self.field = field
        self.detail = detail
        super().__init__(f"{field}: {detail}" if field else detail)


# ------------------------------------------------------------------ wire format
class ManifestObjectJSON(TypedDict):
    path: str
    size: int
    sha256: str
    popularity: float
    tier: NotRequired[str]
    sources: list[str]
    title: NotRequired[str]


class ManifestJSON(TypedDict):
    schema: str
    version: int
    generated_at: float
    appliance: NotRequired[str]
    objects: list[ManifestObjectJSON]


# ------------------------------------------------------------------ parsed form
@dataclass(frozen=True, slots=True)
class ManifestObject:
    path: str
    size: int
    sha256: str
    popularity: float
    """Predicted requests per day in this appliance's region (relative values matter)."""
    tier: str | None
    """Preferred tier; None lets the appliance place it by popularity."""
    sources: tuple[str, ...]
    """Origin URLs, tried after the appliance's peers, in this order."""
    title: str | None
    """Group that shares a forecast (e.g. ``/titles/tos``); None: the object's directory."""


@dataclass(frozen=True, slots=True)
class Manifest:
    generated_at: float
    appliance: str | None
    objects: tuple[ManifestObject, ...]

    def by_path(self) -> dict[str, ManifestObject]:
        return {o.path: o for o in self.objects}

    @property
    def total_bytes(self) -> int:
        return sum(o.size for o in self.objects)


def parse_manifest(data: bytes) -> Manifest:
    """Parse and validate the JSON bytes of a manifest (see the module docstring)."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError("", f"manifest is {len(data)} bytes; the limit is {MAX_MANIFEST_BYTES}")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ManifestError("", f"not valid JSON: {exc}") from None
    return manifest_from_json(doc)


def manifest_from_json(doc: Any) -> Manifest:
    if not isinstance(doc, dict):
        raise ManifestError("", f"expected a JSON object, got {_kind(doc)}")
    _no_unknown(doc, "", {"schema", "version", "generated_at", "appliance", "objects"})
    schema = _req(doc, "", "schema", str)
    if schema != MANIFEST_SCHEMA:
        raise ManifestError("schema", f"expected {MANIFEST_SCHEMA!r}, got {schema!r}")
    version = _req(doc, "", "version", int)
    if version != MANIFEST_VERSION:
        raise ManifestError(
            "version",
            f"version {version} is not supported (this appliance reads {MANIFEST_VERSION})",
        )
    generated_at = _number(_req(doc, "", "generated_at", (int, float)), "generated_at", lo=0)
    appliance = doc.get("appliance")
    if appliance is not None and (not isinstance(appliance, str) or not appliance):
        raise ManifestError("appliance", "expected a non-empty string")
    items = _req(doc, "", "objects", list)
    objects: list[ManifestObject] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        obj = _object(item, f"objects[{i}]")
        if obj.path in seen:
            raise ManifestError(
                f"objects[{i}].path",
                f"{obj.path!r} is listed twice (also objects[{seen[obj.path]}])",
            )
        seen[obj.path] = i
        objects.append(obj)
    return Manifest(float(generated_at), appliance, tuple(objects))


def manifest_to_json(m: Manifest) -> ManifestJSON:
    """The wire form of ``m`` (what the steering service serves)."""
    out: list[ManifestObjectJSON] = []
    for o in m.objects:
        item: ManifestObjectJSON = {
            "path": o.path,
            "size": o.size,
            "sha256": o.sha256,
            "popularity": o.popularity,
            "sources": list(o.sources),
        }
        if o.tier is not None:
            item["tier"] = o.tier
        if o.title is not None:
            item["title"] = o.title
        out.append(item)
    doc: ManifestJSON = {
        "schema": MANIFEST_SCHEMA,
        "version": MANIFEST_VERSION,
        "generated_at": m.generated_at,
        "objects": out,
    }
    if m.appliance is not None:
        doc["appliance"] = m.appliance
    return doc


def _object(item: Any, where: str) -> ManifestObject:
    if not isinstance(item, dict):
        raise ManifestError(where, f"expected a JSON object, got {_kind(item)}")
    _no_unknown(item, where, {"path", "size", "sha256", "popularity", "tier", "sources", "title"})
    path = _req(item, where, "path", str)
    why = validate_object_path(path)
    if why is not None or path.startswith("/t/"):
        why = why or "the /t/ prefix is reserved for signed URLs"
        raise ManifestError(f"{where}.path", f"{path!r} {why}")
    size = _req(item, where, "size", int)
    if size < 0:
        raise ManifestError(f"{where}.size", f"must be >= 0, got {size}")
    sha = _req(item, where, "sha256", str)
    if not _SHA256.fullmatch(sha):
        raise ManifestError(f"{where}.sha256", f"expected 64 lower-case hex digits, got {sha!r}")
    pop = _number(_req(item, where, "popularity", (int, float)), f"{where}.popularity", lo=0)
    tier = item.get("tier")
    if tier is not None and (not isinstance(tier, str) or not _TIER.fullmatch(tier)):
        raise ManifestError(f"{where}.tier", f"expected a tier name, got {tier!r}")
    sources = _req(item, where, "sources", list)
    for j, src in enumerate(sources):
        if not isinstance(src, str) or not src.startswith(("http://", "https://")):
            raise ManifestError(f"{where}.sources[{j}]", f"expected an http(s) URL, got {src!r}")
    title = item.get("title")
    if title is not None and (not isinstance(title, str) or not title):
        raise ManifestError(f"{where}.title", "expected a non-empty string")
    return ManifestObject(path, size, sha, float(pop), tier, tuple(sources), title)


def _req(doc: Mapping[str, Any], where: str, key: str, kind: type | tuple[type, ...]) -> Any:
    name = f"{where}.{key}" if where else key
    if key not in doc:
        raise ManifestError(name, "is missing")
    value = doc[key]
    # bool is an int to Python, never to a manifest.
    if isinstance(value, bool) or not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ManifestError(name, f"expected {want}, got {_kind(value)}")
    return value


def _number(value: float, name: str, lo: float) -> float:
    if not math.isfinite(value) or value < lo:
        raise ManifestError(name, f"must be a finite number >= {lo}, got {value!r}")
    return value


def _no_unknown(doc: Mapping[str, Any], where: str, allowed: set[str]) -> None:
    for key in doc:
        if key not in allowed:
            name = f"{where}.{key}" if where else key
            raise ManifestError(name, f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
