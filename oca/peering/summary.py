"""Inventory summaries: what an appliance holds, published to its peers as a Bloom filter
plus generation-numbered deltas.

Theory of operation
-------------------
Appliances at one site serve each other's misses: before filling an object from
upstream, an appliance asks a peer that probably holds it. "Probably" comes from the
peer's *inventory summary*, polled in the background, so the request path decides
locally and never waits on a peer to learn whether asking is worthwhile.

- **Bloom filter.** A full summary carries a :class:`~oca.peering.bloom.BloomFilter`
  over every object path the publisher holds: about 10 bits per path at a 1 % false
  positive rate, whatever the path lengths, instead of the paths themselves. A false
  positive costs one peer request answered with 404, after which the consumer falls
  back to its normal fill; a false negative never happens for a fresh view, so an
  object a peer holds is never filled from upstream for want of knowing.
- **Generation.** The publisher numbers each change of its set. A consumer polls with
  the epoch and generation of its view; an unchanged publisher answers *not modified*
  (``None`` from :meth:`InventorySummary.answer`), which makes idle polls cheap.
- **Deltas.** A Bloom filter cannot forget a member, and resending the whole filter on
  every change would cost more than the change. So the publisher keeps the
  ``(added, removed)`` sets of its last ``history`` generations and answers a consumer
  a few generations behind with their merge: the exact difference between the set at
  the consumer's generation (``base``) and the current set. The consumer keeps the
  filter from its last full summary and two exact sets on top of it, ``added`` and
  ``removed`` (:class:`PeerView`); a removed path is reported absent exactly, not
  subject to the filter. When the merged delta would be large (more than
  ``max(256, count // 8)`` entries), the consumer is too far behind (beyond the
  history window) or in another epoch, the publisher sends a full summary instead, and
  a consumer whose overlay grows large asks for one by polling without a generation.
- **Epoch.** Generations count from 0 in each publisher process, so they are only
  comparable within one *epoch*: an opaque token the publisher draws at start. A
  consumer presenting another epoch's generation always gets a full summary, and a
  delta is applied only on top of a view of the same epoch and exactly its ``base``
  generation; anything else is refused as stale, never merged into a wrong view.

Wire format (schema ``oca.peer-summary``, version 1)
----------------------------------------------------
JSON objects, :class:`SummaryFullJSON` and :class:`SummaryDeltaJSON`. The Bloom
filter travels as ``{"m": bits, "k": probes, "bits": standard base64 of the bit
array}``; its bit positions are part of the contract (see :mod:`oca.peering.bloom`).
:func:`parse_summary` validates strictly: every field present with its exact type
(a JSON ``true`` is not an integer), no unknown fields (a new field means a new
version), paths start with ``/``, and each error names the offending field.

This module is pure: no I/O, no clock; the caller polls and publishes.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, TypedDict

import orjson

from oca.errors import OcaError
from oca.peering.auth import is_appliance_id
from oca.peering.bloom import MAX_K, BloomFilter

__all__ = [
    "SUMMARY_SCHEMA",
    "SUMMARY_VERSION",
    "BloomJSON",
    "InventorySummary",
    "PeerView",
    "SummaryDeltaJSON",
    "SummaryError",
    "SummaryFullJSON",
    "SummaryJSON",
    "delta_limit",
    "parse_summary",
]

SUMMARY_SCHEMA: Final = "oca.peer-summary"
SUMMARY_VERSION: Final = 1

_MIN_DELTA_LIMIT: Final = 256
_MIN_BLOOM_CAPACITY: Final = 1024
_MAX_SITE_CHARS: Final = 256
_EPOCH_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")


class BloomJSON(TypedDict):
    """A Bloom filter on the wire: ``m`` bits, ``k`` probes, the array in base64."""

    m: int
    k: int
    bits: str


class SummaryFullJSON(TypedDict):
    """Everything the publisher holds at ``generation``, as a Bloom filter."""

    schema: Literal["oca.peer-summary"]
    version: Literal[1]
    kind: Literal["full"]
    appliance: str
    site: str
    epoch: str
    generation: int
    count: int
    bloom: BloomJSON


class SummaryDeltaJSON(TypedDict):
    """The exact change from the publisher's set at ``base`` to its set at ``generation``."""

    schema: Literal["oca.peer-summary"]
    version: Literal[1]
    kind: Literal["delta"]
    appliance: str
    site: str
    epoch: str
    base: int
    generation: int
    added: list[str]
    removed: list[str]


SummaryJSON = SummaryFullJSON | SummaryDeltaJSON


class SummaryError(OcaError):
    """A summary is malformed, or a delta does not apply to the view it is given."""

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        self.field = field
        self.detail = detail
        super().__init__(f"{field}: {detail}" if field else detail)


def delta_limit(count: int) -> int:
    """The most entries a delta may carry for a set of ``count`` paths."""
    return max(_MIN_DELTA_LIMIT, count // 8)


def _is_epoch(text: object) -> bool:
    return isinstance(text, str) and _EPOCH_RE.fullmatch(text) is not None


def _is_path(text: object) -> bool:
    return isinstance(text, str) and text.startswith("/")


@dataclass(frozen=True, slots=True)
class _Change:
    """What one generation changed: paths that appeared and paths that went away."""

    added: frozenset[str]
    removed: frozenset[str]


# --------------------------------------------------------------------------- publisher


class InventorySummary:
    """The publishing side: tracks one appliance's path set and answers polls.

    Not thread-safe; one owner calls :meth:`update` (from its inventory loop) and
    :meth:`answer` (from the handler that serves polls) on the same event loop.
    """

    __slots__ = (
        "_appliance",
        "_bloom",
        "_changes",
        "_epoch",
        "_fpr",
        "_generation",
        "_paths",
        "_site",
    )

    def __init__(
        self,
        appliance: str,
        site: str,
        epoch: str,
        *,
        history: int = 64,
        fpr: float = 0.01,
    ) -> None:
        if not is_appliance_id(appliance):
            raise ValueError(f"appliance {appliance!r}: expected 1-64 of [A-Za-z0-9._-]")
        if not isinstance(site, str) or not 1 <= len(site) <= _MAX_SITE_CHARS:
            raise ValueError(f"site {site!r}: expected 1-{_MAX_SITE_CHARS} characters")
        if not _is_epoch(epoch):
            raise ValueError(f"epoch {epoch!r}: expected 1-64 of [A-Za-z0-9._-]")
        if isinstance(history, bool) or not isinstance(history, int) or history < 0:
            raise ValueError(f"history must be a non-negative integer, got {history!r}")
        if not 0.0 < fpr < 1.0:
            raise ValueError(f"fpr must lie strictly between 0 and 1, got {fpr!r}")
        self._appliance = appliance
        self._site = site
        self._epoch = epoch
        self._fpr = fpr
        self._paths: frozenset[str] = frozenset()
        self._generation = 0
        self._changes: deque[_Change] = deque(maxlen=history)
        self._bloom: BloomJSON | None = None

    @property
    def appliance(self) -> str:
        return self._appliance

    @property
    def site(self) -> str:
        return self._site

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def generation(self) -> int:
        """How many times the set has changed in this epoch."""
        return self._generation

    @property
    def count(self) -> int:
        """How many paths the set holds."""
        return len(self._paths)

    def update(self, paths: Collection[str]) -> bool:
        """Replace the set with ``paths``; whether it changed (and the generation moved)."""
        if isinstance(paths, str):
            raise TypeError("paths must be a collection of paths, not one string")
        new = paths if isinstance(paths, frozenset) else frozenset(paths)
        old = self._paths
        added = new - old
        removed = old - new
        if not added and not removed:
            return False
        # Paths already in the set were checked when they arrived.
        for path in added:
            if not _is_path(path):
                raise ValueError(f"path {path!r}: expected a str starting with '/'")
        self._paths = new
        self._generation += 1
        self._changes.append(_Change(added, removed))
        self._bloom = None
        return True

    def full(self) -> SummaryFullJSON:
        """The full summary of the current set."""
        if self._bloom is None:
            capacity = max(len(self._paths), _MIN_BLOOM_CAPACITY)
            bloom = BloomFilter.for_capacity(capacity, self._fpr)
            for path in self._paths:
                bloom.add(path)
            bits = base64.b64encode(bloom.to_bytes()).decode("ascii")
            self._bloom = {"m": bloom.m_bits, "k": bloom.k, "bits": bits}
        bloom_json = self._bloom
        return {
            "schema": SUMMARY_SCHEMA,
            "version": SUMMARY_VERSION,
            "kind": "full",
            "appliance": self._appliance,
            "site": self._site,
            "epoch": self._epoch,
            "generation": self._generation,
            "count": len(self._paths),
            "bloom": {"m": bloom_json["m"], "k": bloom_json["k"], "bits": bloom_json["bits"]},
        }

    def answer(self, since_epoch: str | None, since_generation: int | None) -> SummaryJSON | None:
        """The reply to a consumer whose view is at ``(since_epoch, since_generation)``.

        ``None`` means not modified; a delta when the consumer is in this epoch, within
        the history window and the delta is small; a full summary otherwise.
        """
        if since_epoch != self._epoch or since_generation is None:
            return self.full()
        if since_generation == self._generation:
            return None
        merged = self._merge_since(since_generation)
        if merged is None:
            return self.full()
        added, removed = merged
        if len(added) + len(removed) > delta_limit(len(self._paths)):
            return self.full()
        return {
            "schema": SUMMARY_SCHEMA,
            "version": SUMMARY_VERSION,
            "kind": "delta",
            "appliance": self._appliance,
            "site": self._site,
            "epoch": self._epoch,
            "base": since_generation,
            "generation": self._generation,
            "added": sorted(added),
            "removed": sorted(removed),
        }

    def _merge_since(self, base: int) -> tuple[set[str], set[str]] | None:
        """``(added, removed)`` turning the set at ``base`` into the current set.

        None when ``base`` is not a generation of the retained history. Invariant
        over the merge, with ``S_base`` the set at ``base`` and ``S`` the set so far:
        ``added`` is disjoint from ``S_base``, ``removed`` is a subset of ``S_base``,
        and ``S = (S_base - removed) | added``.
        """
        behind = self._generation - base
        if base < 0 or behind <= 0 or behind > len(self._changes):
            return None
        added: set[str] = set()
        removed: set[str] = set()
        for i in range(len(self._changes) - behind, len(self._changes)):
            change = self._changes[i]
            for path in change.added:
                if path in removed:
                    removed.discard(path)  # was in S_base, went away, came back
                else:
                    added.add(path)
            for path in change.removed:
                if path in added:
                    added.discard(path)  # was not in S_base: came and went
                else:
                    removed.add(path)
        return added, removed


# --------------------------------------------------------------------------- parsing


def _require(data: Mapping[str, object], names: Sequence[str], prefix: str) -> None:
    for name in names:
        if name not in data:
            raise SummaryError("missing", field=prefix + name)
    for name in data:
        if name not in names:
            raise SummaryError("unknown field", field=prefix + str(name))


def _int(data: Mapping[str, object], name: str, low: int, high: int | None = None) -> int:
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise SummaryError(f"expected an integer, got {type(value).__name__}", field=name)
    if value < low or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise SummaryError(f"{value} is out of range ({bounds})", field=name)
    return value


def _str(data: Mapping[str, object], name: str) -> str:
    value = data[name]
    if not isinstance(value, str):
        raise SummaryError(f"expected a string, got {type(value).__name__}", field=name)
    return value


def _paths(data: Mapping[str, object], name: str) -> list[str]:
    value = data[name]
    if not isinstance(value, list):
        raise SummaryError(f"expected a list, got {type(value).__name__}", field=name)
    for i, path in enumerate(value):
        if not _is_path(path):
            raise SummaryError("expected a string starting with '/'", field=f"{name}[{i}]")
    return list(value)


def _decode_bits(text: str, m_bits: int, k: int) -> BloomFilter:
    """The filter a wire ``bloom`` object describes; SummaryError names what is wrong."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise SummaryError("not base64", field="bloom.bits") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise SummaryError("not canonical base64", field="bloom.bits")
    if len(raw) != m_bits // 8:
        raise SummaryError(f"{len(raw)} bytes, expected m / 8 = {m_bits // 8}", field="bloom.bits")
    return BloomFilter.from_bytes(m_bits, k, raw)


_COMMON_FIELDS: Final = ("schema", "version", "kind", "appliance", "site", "epoch", "generation")
_FULL_FIELDS: Final = (*_COMMON_FIELDS, "count", "bloom")
_DELTA_FIELDS: Final = (*_COMMON_FIELDS, "base", "added", "removed")
_BLOOM_FIELDS: Final = ("m", "k", "bits")


def parse_summary(raw: bytes | bytearray | memoryview | Mapping[str, object]) -> SummaryJSON:
    """A validated summary from JSON bytes or an already decoded object."""
    data: object
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise SummaryError("not JSON", field="summary") from None
    else:
        data = raw
    if not isinstance(data, Mapping):
        raise SummaryError(f"expected an object, got {type(data).__name__}", field="summary")

    for name in ("schema", "version", "kind"):
        if name not in data:
            raise SummaryError("missing", field=name)
    if data["schema"] != SUMMARY_SCHEMA:
        raise SummaryError(f"expected {SUMMARY_SCHEMA!r}, got {data['schema']!r}", field="schema")
    if _int(data, "version", 0) != SUMMARY_VERSION:
        raise SummaryError(f"unsupported version {data['version']}", field="version")
    kind = data["kind"]
    if kind not in ("full", "delta"):
        raise SummaryError(f"expected 'full' or 'delta', got {kind!r}", field="kind")
    _require(data, _FULL_FIELDS if kind == "full" else _DELTA_FIELDS, "")

    appliance = _str(data, "appliance")
    if not is_appliance_id(appliance):
        raise SummaryError("expected 1-64 of [A-Za-z0-9._-]", field="appliance")
    site = _str(data, "site")
    if not 1 <= len(site) <= _MAX_SITE_CHARS:
        raise SummaryError(f"expected 1-{_MAX_SITE_CHARS} characters", field="site")
    epoch = _str(data, "epoch")
    if not _is_epoch(epoch):
        raise SummaryError("expected 1-64 of [A-Za-z0-9._-]", field="epoch")
    generation = _int(data, "generation", 0)

    if kind == "full":
        count = _int(data, "count", 0)
        bloom = data["bloom"]
        if not isinstance(bloom, Mapping):
            raise SummaryError(f"expected an object, got {type(bloom).__name__}", field="bloom")
        _require(bloom, _BLOOM_FIELDS, "bloom.")
        try:
            m_bits = _int(bloom, "m", 8)
            k = _int(bloom, "k", 1, MAX_K)
            bits = _str(bloom, "bits")
        except SummaryError as error:
            raise SummaryError(error.detail, field=f"bloom.{error.field}") from None
        if m_bits % 8 != 0:
            raise SummaryError(f"{m_bits} is not a multiple of 8", field="bloom.m")
        _decode_bits(bits, m_bits, k)
        return {
            "schema": SUMMARY_SCHEMA,
            "version": SUMMARY_VERSION,
            "kind": "full",
            "appliance": appliance,
            "site": site,
            "epoch": epoch,
            "generation": generation,
            "count": count,
            "bloom": {"m": m_bits, "k": k, "bits": bits},
        }

    base = _int(data, "base", 0)
    if base >= generation:
        raise SummaryError(f"{base} is not below generation {generation}", field="base")
    added = _paths(data, "added")
    removed = _paths(data, "removed")
    both = set(added).intersection(removed)
    if both:
        raise SummaryError(f"{min(both)!r} is also in added", field="removed")
    return {
        "schema": SUMMARY_SCHEMA,
        "version": SUMMARY_VERSION,
        "kind": "delta",
        "appliance": appliance,
        "site": site,
        "epoch": epoch,
        "base": base,
        "generation": generation,
        "added": added,
        "removed": removed,
    }


# --------------------------------------------------------------------------- consumer


@dataclass(frozen=True, slots=True)
class PeerView:
    """The consuming side: what one peer holds, as of its last summary.

    ``bloom`` covers the peer's set at its last full summary; ``added`` and
    ``removed`` are the exact changes received since, as deltas. Each applied
    summary gives a new view; a view is never modified in place.
    """

    appliance: str
    site: str
    epoch: str
    generation: int
    count: int
    bloom: BloomFilter = field(hash=False)
    added: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()

    @classmethod
    def from_full(cls, data: SummaryFullJSON) -> PeerView:
        """A view from a full summary (as returned by :func:`parse_summary`)."""
        if data["kind"] != "full":
            raise SummaryError(f"expected 'full', got {data['kind']!r}", field="kind")
        wire = data["bloom"]
        try:
            bloom = _decode_bits(wire["bits"], wire["m"], wire["k"])
        except ValueError as error:
            raise SummaryError(str(error), field="bloom") from None
        return cls(
            appliance=data["appliance"],
            site=data["site"],
            epoch=data["epoch"],
            generation=data["generation"],
            count=data["count"],
            bloom=bloom,
        )

    def apply(self, data: SummaryJSON) -> PeerView:
        """The view after ``data``: a full summary replaces it, a delta extends it.

        Raises :class:`SummaryError` ("stale delta") for a delta of another appliance
        or epoch, or whose base is not this view's generation.
        """
        if data["kind"] == "full":
            return PeerView.from_full(data)
        if data["appliance"] != self.appliance:
            raise SummaryError(
                f"stale delta: appliance {data['appliance']!r} is not {self.appliance!r}"
            )
        if data["epoch"] != self.epoch:
            raise SummaryError(
                f"stale delta: epoch {data['epoch']!r} is not the view's epoch {self.epoch!r}"
            )
        if data["base"] != self.generation:
            raise SummaryError(
                f"stale delta: base {data['base']} is not the view's generation {self.generation}"
            )
        added = frozenset(data["added"])
        removed = frozenset(data["removed"])
        return PeerView(
            appliance=self.appliance,
            site=data["site"],
            epoch=self.epoch,
            generation=data["generation"],
            count=max(self.count + len(added) - len(removed), 0),
            bloom=self.bloom,
            added=(self.added - removed) | added,
            removed=(self.removed - added) | removed,
        )

    def may_hold(self, path: str) -> bool:
        """Whether the peer may hold ``path``: never False for a path it holds."""
        if path in self.removed:
            return False
        return path in self.added or path in self.bloom

    @property
    def delta_entries(self) -> int:
        """How many exact entries sit on top of the filter; poll for a full one when large."""
        return len(self.added) + len(self.removed)
