"""Conditional and range request decisions for one static representation (RFC 9110).

Theory of operation
-------------------
The data plane serves immutable files (DASH segments, init segments, manifests). For a
GET or HEAD it knows three facts about the selected representation — its size, a strong
entity-tag and its modification time — and receives the request's precondition and
range header fields verbatim. :func:`decide` turns those inputs into a frozen
:class:`Decision`: the status code, the byte spans to send and a short machine-readable
reason. It performs no I/O, reads no clock and never raises on hostile input, so the
protocol layer can call it per request and log the reason with the access record.

Preconditions are evaluated in the order of RFC 9110 §13.2.2:

1. ``If-Match`` (§13.1.1), strong comparison (§8.8.3.2); ``*`` is true because the
   representation exists. False → 412 ``if-match-failed``.
2. Only when ``If-Match`` is absent: ``If-Unmodified-Since`` (§13.1.4); a modification
   time after the date → 412 ``if-unmodified-since-failed``. An invalid date is ignored.
3. ``If-None-Match`` (§13.1.2), weak comparison; ``*`` matches. A match → 304
   ``if-none-match`` for GET and HEAD (412 for any other method, which the server never
   passes in).
4. Only when ``If-None-Match`` is absent: ``If-Modified-Since`` (§13.1.3); a
   modification time at or before the date → 304 ``not-modified-since``. An invalid date
   is ignored.
5. ``Range`` (§14.2) is only defined for GET; a HEAD with ``Range`` is answered as the
   HEAD of the whole representation (200 ``range-ignored-method``), which is what
   §14.2 requires ("A server MUST ignore a Range header field received with a request
   method [...] for which range handling is not defined").
6. ``If-Range`` (§13.1.5) is considered only with ``Range``. An entity-tag must match
   strongly (a weak tag never does); a date must equal the modification time exactly;
   anything else, malformed values included, means the range is ignored and the whole
   representation is sent (200 ``if-range-mismatch``).

Malformed entity-tag lists in ``If-Match`` / ``If-None-Match`` match nothing: an
unparseable ``If-Match`` therefore fails (412) and an unparseable ``If-None-Match``
lets the request proceed; being present, each still shadows its date counterpart as
§13.2.2 says.

Byte ranges (§14.1.1, §14.1.2):

- the range unit is compared case-insensitively; an unknown unit means the field is
  ignored (200 ``range-ignored-unit``, §14.2 "MUST ignore ... a range unit it does not
  understand");
- OWS is tolerated around ``=`` and around the commas of the range set, and empty list
  elements are skipped (§5.6.1); each range-spec is ``first-last``, ``first-`` or
  ``-suffix`` with ASCII digits only;
- any invalid range-spec (``last < first``, non-digits, an empty set, more than 19
  digits in a number) makes the whole field invalid and it is ignored (200
  ``range-ignored-syntax``, §14.2 allows ignoring an invalid ranges-specifier). The
  19-digit cap keeps every number below 2**63 and all parsing linear in the field's
  length;
- a ``last-pos`` past the end is clamped to ``size - 1``; a suffix longer than the
  representation selects all of it;
- a range-spec whose ``first-pos`` is at or past the end, or a suffix of length zero,
  is unsatisfiable and dropped (§14.1.2). If none remains → 416
  ``range-unsatisfiable``, which the caller answers with ``Content-Range: bytes */size``
  (:func:`unsatisfied_range`, §15.5.17). A zero-length representation satisfies no
  range at all here: §14.1.2 calls a non-zero suffix on it satisfiable, but a 206 has
  no way to express an empty span (``Content-Range`` needs ``first <= last``), so 416
  is the only precise answer.

Multiple ranges (the policy this module commits to):

- more raw range-specs than ``max_ranges`` (counted before any are dropped or merged)
  → the field is ignored and the whole representation sent (200
  ``range-ignored-too-many``); §14.2 lets a server ignore range sets that look like a
  denial-of-service attempt, and a full 200 is always a correct answer to a GET;
- otherwise the satisfiable spans are sorted by start and any that overlap or touch
  (``next.start <= current.end + 1``) are coalesced, which §14.6 explicitly allows;
- one span left → a single-part 206 ``range``; several → a ``multipart/byteranges``
  206 ``multirange`` with the parts in ascending order (:func:`multipart_plan`).

Sorting and coalescing bound the multipart body by the representation's size plus
per-part headers, so a request cannot make the server send a byte twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from oca.http.dates import parse_http_date

__all__ = [
    "Conditions",
    "Decision",
    "MultipartPlan",
    "Representation",
    "Span",
    "content_range",
    "decide",
    "decide_range",
    "multipart_plan",
    "parse_content_range",
    "unsatisfied_range",
]


@dataclass(frozen=True, slots=True)
class Representation:
    """What the server knows about the selected representation (RFC 9110 §3.2)."""

    size: int
    etag: str
    """A strong entity-tag including its quotes, e.g. ``'"9f86d081884c7d65"'``."""
    last_modified: int
    """Seconds since the epoch."""


@dataclass(frozen=True, slots=True)
class Conditions:
    """The request method and the raw values of the fields :func:`decide` reads.

    ``None`` means the field was absent; field names are matched case-insensitively by
    the caller.
    """

    method: str
    range: str | None = None
    if_range: str | None = None
    if_match: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    if_unmodified_since: str | None = None


@dataclass(frozen=True, slots=True)
class Span:
    """A byte span ``start..end``, both inclusive, as in ``Content-Range``."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.end < self.start:
            raise ValueError(f"invalid span {self.start}-{self.end}")

    @property
    def length(self) -> int:
        return self.end - self.start + 1


@dataclass(frozen=True, slots=True)
class Decision:
    """How to answer: the status, the spans of the representation to send, and why.

    ``spans`` is ``(Span(0, size - 1),)`` for a 200 (``()`` when the size is zero),
    one or more ascending, disjoint spans for a 206, and ``()`` for 304, 412 and 416.
    """

    status: int
    spans: tuple[Span, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class MultipartPlan:
    """The body of a ``multipart/byteranges`` 206 response (RFC 9110 §14.6).

    ``pieces`` interleaves literal bytes (boundaries and part headers) with spans of
    the file to send verbatim; ``content_length`` is the exact length of the whole.
    """

    boundary: str
    pieces: tuple[bytes | Span, ...]
    content_length: int
    content_type: str


# --- entity-tags (RFC 9110 §8.8.3) ---------------------------------------------------

_OWS = " \t"
_ETAGC = re.compile(r"[\x21\x23-\x7e\x80-\xff]*")


def _parse_etag_list(value: str) -> list[tuple[bool, str]] | None:
    """Parse ``#entity-tag`` into ``(weak, opaque-tag with quotes)`` pairs.

    Returns ``None`` when the value is not a valid list. An opaque-tag may contain
    commas, so the list is scanned tag by tag rather than split. Linear in the length.
    """
    tags: list[tuple[bool, str]] = []
    index, length = 0, len(value)
    while True:
        while index < length and value[index] in " \t,":
            index += 1
        if index >= length:
            return tags
        weak = value.startswith("W/", index)
        if weak:
            index += 2
        if index >= length or value[index] != '"':
            return None
        close = value.find('"', index + 1)
        if close < 0 or not _ETAGC.fullmatch(value, index + 1, close):
            return None
        tags.append((weak, value[index : close + 1]))
        index = close + 1
        while index < length and value[index] in _OWS:
            index += 1
        if index < length and value[index] != ",":
            return None


def _opaque(etag: str) -> tuple[bool, str]:
    if etag.startswith("W/"):
        return True, etag[2:]
    return False, etag


def _if_match_holds(header: str, etag: str) -> bool:
    """``If-Match`` with the strong comparison function (RFC 9110 §13.1.1, §8.8.3.2)."""
    value = header.strip(_OWS)
    rep_weak, rep_opaque = _opaque(etag)
    if value == "*":
        return True
    if rep_weak:
        return False
    if value == etag:
        return True
    tags = _parse_etag_list(value)
    if tags is None:
        return False
    return any(not weak and opaque == rep_opaque for weak, opaque in tags)


def _if_none_match_matches(header: str, etag: str) -> bool:
    """Whether ``If-None-Match`` lists the representation (weak comparison, §13.1.2)."""
    value = header.strip(_OWS)
    if value == "*" or value == etag:
        return True
    rep_opaque = _opaque(etag)[1]
    tags = _parse_etag_list(value)
    if tags is None:
        return False
    return any(opaque == rep_opaque for _, opaque in tags)


def _if_range_holds(header: str, rep: Representation) -> bool:
    """``If-Range`` (§13.1.5): a strongly matching entity-tag or the exact date."""
    value = header.strip(_OWS)
    if value.startswith(('"', "W/")):
        tags = _parse_etag_list(value)
        if tags is None or len(tags) != 1:
            return False
        weak, opaque = tags[0]
        rep_weak, rep_opaque = _opaque(rep.etag)
        return not weak and not rep_weak and opaque == rep_opaque
    date = _parse_date(value)
    return date is not None and date == rep.last_modified


def _parse_date(value: str) -> int | None:
    # No valid HTTP-date is this long; checking first keeps long junk out of the cache.
    if len(value) > 64:
        return None
    return _parse_short_date(value)


@lru_cache(maxsize=512)
def _parse_short_date(value: str) -> int | None:
    # Players repeat the same validators across requests; parsing is pure, so cache it.
    return parse_http_date(value)


# --- byte ranges (RFC 9110 §14.1) ----------------------------------------------------

_MAX_DIGITS = 19
_RANGE_SPEC = re.compile(r"([0-9]{1,19})-([0-9]{0,19})|-([0-9]{1,19})")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

_SYNTAX = "range-ignored-syntax"
_UNIT = "range-ignored-unit"

# A raw range-spec: (first, last) for an int-range (last None when open-ended), or
# (None, suffix_length) for a suffix-range.
_RawSpec = tuple[int | None, int | None]


def _parse_range(value: str) -> list[_RawSpec] | str:
    """Parse a ``Range`` field value; a list of raw specs, or the reason to ignore it."""
    unit, equals, range_set = value.partition("=")
    unit = unit.strip(_OWS)
    if not equals:
        return _SYNTAX
    if not (unit.isascii() and unit.lower() == "bytes"):
        return _UNIT if _TOKEN.fullmatch(unit) else _SYNTAX
    specs: list[_RawSpec] = []
    for element in range_set.split(","):
        spec = element.strip(_OWS)
        if not spec:
            continue
        match = _RANGE_SPEC.fullmatch(spec)
        if match is None:
            return _SYNTAX
        first_s, last_s, suffix_s = match.groups()
        if suffix_s is not None:
            specs.append((None, int(suffix_s)))
            continue
        first = int(first_s)
        last = int(last_s) if last_s else None
        if last is not None and last < first:
            return _SYNTAX
        specs.append((first, last))
    if not specs:
        return _SYNTAX
    return specs


def _satisfiable_spans(specs: list[_RawSpec], size: int) -> list[Span]:
    """Resolve raw specs against ``size``: drop unsatisfiable ones, clamp, sort, merge."""
    bounds: list[tuple[int, int]] = []
    last_byte = size - 1
    for first, last in specs:
        if first is None:
            assert last is not None
            if last == 0 or size == 0:
                continue
            bounds.append((max(0, size - last), last_byte))
        elif first < size:
            bounds.append((first, last_byte if last is None or last > last_byte else last))
    if not bounds:
        return []
    bounds.sort()
    merged: list[Span] = []
    start, end = bounds[0]
    for next_start, next_end in bounds[1:]:
        if next_start <= end + 1:
            end = max(end, next_end)
        else:
            merged.append(Span(start, end))
            start, end = next_start, next_end
    merged.append(Span(start, end))
    return merged


# --- the decision --------------------------------------------------------------------


def _full(rep: Representation, reason: str) -> Decision:
    spans = (Span(0, rep.size - 1),) if rep.size > 0 else ()
    return Decision(200, spans, reason)


_SIMPLE_RANGE = re.compile(r"bytes=([0-9]{1,18})-([0-9]{1,18})")
_UNSATISFIABLE = Decision(416, (), "range-unsatisfiable")


def decide(rep: Representation, cond: Conditions, max_ranges: int = 16) -> Decision:
    """Decide the response to a GET or HEAD of ``rep`` (RFC 9110 §13.2.2, §14.2)."""
    if cond.if_match is not None:
        if not _if_match_holds(cond.if_match, rep.etag):
            return Decision(412, (), "if-match-failed")
    elif cond.if_unmodified_since is not None:
        date = _parse_date(cond.if_unmodified_since)
        if date is not None and rep.last_modified > date:
            return Decision(412, (), "if-unmodified-since-failed")

    safe = cond.method in ("GET", "HEAD")
    if cond.if_none_match is not None:
        if _if_none_match_matches(cond.if_none_match, rep.etag):
            return Decision(304 if safe else 412, (), "if-none-match")
    elif cond.if_modified_since is not None and safe:
        date = _parse_date(cond.if_modified_since)
        if date is not None and rep.last_modified <= date:
            return Decision(304, (), "not-modified-since")

    if cond.range is None:
        return _full(rep, "full")
    if cond.method != "GET":
        return _full(rep, "range-ignored-method")
    if cond.if_range is not None and not _if_range_holds(cond.if_range, rep):
        return _full(rep, "if-range-mismatch")

    return _range_decision(rep, cond.range, max_ranges)


def decide_range(rep: Representation, range_value: str, max_ranges: int = 16) -> Decision:
    """``decide`` for a GET whose only conditional field is ``Range``.

    The hot path of a segment server: it skips building a :class:`Conditions` and
    answers exactly as ``decide(rep, Conditions("GET", range=range_value))`` would.
    """
    return _range_decision(rep, range_value, max_ranges)


def simple_span(size: int, value: str) -> tuple[int, int] | None:
    """``(start, end)`` when ``value`` is ``bytes=first-last`` and satisfiable, else None.

    The one shape players send, decided without building a :class:`Decision`: where
    this returns a span, :func:`decide_range` answers 206 with exactly that span (the
    last position clamped to the representation, §14.1.1). None means "some other
    case": the caller asks :func:`decide_range`, which decides them all.
    """
    m = _SIMPLE_RANGE.fullmatch(value)
    if m is None:
        return None
    first = int(m[1])
    last = int(m[2])
    if first > last or first >= size:
        return None
    return first, (last if last < size else size - 1)


def _range_decision(rep: Representation, value: str, max_ranges: int) -> Decision:
    """The answer to a GET's ``Range`` once the preconditions have passed (§14.2)."""
    simple = simple_span(rep.size, value)
    if simple is not None:
        return Decision(206, (Span(*simple),), "range")
    return _parsed_range_decision(rep, value, max_ranges)


def _parsed_range_decision(rep: Representation, value: str, max_ranges: int) -> Decision:
    """:func:`_range_decision` by the full §14.1.1 parser, for every shape of value."""
    specs = _parse_range(value)
    if isinstance(specs, str):
        return _full(rep, specs)
    if len(specs) > max_ranges:
        return _full(rep, "range-ignored-too-many")
    spans = _satisfiable_spans(specs, rep.size)
    if not spans:
        return _UNSATISFIABLE
    if len(spans) == 1:
        return Decision(206, (spans[0],), "range")
    return Decision(206, tuple(spans), "multirange")


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


def parse_content_range(value: str) -> tuple[int, int] | None:
    """``(first, total)`` of a 206's ``bytes first-last/total`` (§14.4), or None when the
    value is not that shape or is inconsistent (``last`` before ``first`` or past the end).
    What a client resuming a transfer reads back from the server."""
    m = _CONTENT_RANGE.fullmatch(value.strip())
    if m is None:
        return None
    first, last, total = int(m[1]), int(m[2]), int(m[3])
    if first > last or last >= total:
        return None
    return first, total


def content_range(span: Span, size: int) -> str:
    """The ``Content-Range`` value of a 206 part, e.g. ``bytes 0-99/1000`` (§14.4)."""
    if span.end >= size:
        raise ValueError(f"span {span.start}-{span.end} is outside a size of {size}")
    return f"bytes {span.start}-{span.end}/{size}"


def unsatisfied_range(size: int) -> str:
    """The ``Content-Range`` value of a 416, e.g. ``bytes */1000`` (§14.4, §15.5.17)."""
    return f"bytes */{size}"


# --- multipart/byteranges (RFC 9110 §14.6, RFC 2046 §5.1.1) --------------------------

# RFC 2046 §5.1.1: 1 to 70 bchars, not ending with a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_FIELD_VALUE = re.compile(r"[\x20-\x7e]+")


def multipart_plan(
    spans: tuple[Span, ...], size: int, part_content_type: str, boundary: str
) -> MultipartPlan:
    """Lay out a ``multipart/byteranges`` body for ``spans`` of a ``size``-byte file.

    Each part is ``CRLF --boundary CRLF Content-Type CRLF Content-Range CRLF CRLF``
    followed by the part's bytes; the body ends with ``CRLF --boundary-- CRLF``.
    The boundary must be a valid RFC 2046 boundary that the caller chose so it cannot
    occur in the file (a random one); ``part_content_type`` must be printable ASCII.
    """
    if not spans:
        raise ValueError("a multipart body needs at least one span")
    if not _BOUNDARY.fullmatch(boundary):
        raise ValueError(f"invalid multipart boundary {boundary!r}")
    if not _FIELD_VALUE.fullmatch(part_content_type):
        raise ValueError(f"invalid part content type {part_content_type!r}")
    pieces: list[bytes | Span] = []
    content_length = 0
    for span in spans:
        header = (
            f"\r\n--{boundary}\r\n"
            f"Content-Type: {part_content_type}\r\n"
            f"Content-Range: {content_range(span, size)}\r\n\r\n"
        ).encode("ascii")
        pieces.append(header)
        pieces.append(span)
        content_length += len(header) + span.length
    closing = f"\r\n--{boundary}--\r\n".encode("ascii")
    pieces.append(closing)
    content_length += len(closing)
    parameter = boundary if _TOKEN.fullmatch(boundary) else f'"{boundary}"'
    return MultipartPlan(
        boundary=boundary,
        pieces=tuple(pieces),
        content_length=content_length,
        content_type=f"multipart/byteranges; boundary={parameter}",
    )
