"""DASH segment arithmetic: durations, URL templates and SegmentTimeline expansion (pure).

Theory of operation
-------------------
The parts of ISO/IEC 23009-1 that turn an MPD's numbers into segment URLs, kept apart
from the XML walk (:mod:`steering.mpd`) so they can be tested exhaustively:

- :func:`parse_duration`: ``xs:duration`` (ISO 8601, ``PT1H2M3.5S``, ``P1DT2H``) as an
  exact :class:`fractions.Fraction` of seconds. A rounding error would move a segment
  count across an integer: ``ceil(period / segment duration)`` must be exact.
- :func:`compile_template` / :func:`render_template` (§5.3.9.4.4): ``$RepresentationID$``,
  ``$Bandwidth$``, ``$Number$``, ``$Time$``, the width format ``%0<width>d`` and ``$$``
  for a literal dollar sign. A template is compiled once per Representation and
  rendered per segment.
- :func:`expand_timeline` (§5.3.9.6): each ``S`` element starts at ``@t`` (default: where
  the previous one ended, 0 for the first), lasts ``@d`` and repeats ``@r`` more times;
  ``r="-1"`` repeats up to the next ``S@t`` or, on the last ``S``, to the end of the
  Period; ``@n`` restarts the numbering. Counts are bounded by a limit so a hostile
  ``@r`` cannot exhaust memory.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from urllib.parse import urlsplit

from steering.mpdxml import MpdError

__all__ = [
    "DEFAULT_MAX_OBJECTS",
    "TimelineEntry",
    "compile_template",
    "expand_template",
    "expand_timeline",
    "origin_of",
    "parse_duration",
    "parse_uint",
    "render_template",
]

DEFAULT_MAX_OBJECTS = 2_000_000


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One ``SegmentTimeline/S`` element: start ``t`` (None = follows on), ``d``, ``r``, ``n``."""

    t: int | None
    d: int
    r: int = 0
    n: int | None = None


# --------------------------------------------------------------------------- values

_DURATION_RE = re.compile(
    r"P(?:(?P<Y>\d+)Y)?(?:(?P<M>\d+)M)?(?:(?P<D>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d*)?)S)?)?"
)
_UNIT_SECONDS = {"D": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str, where: str = "duration") -> Fraction:
    """An xs:duration (ISO 8601, ``PT1H2M3.5S``, ``P1DT2H``) as exact seconds.

    Years and months have no fixed length, so only zero values of them are accepted;
    negative durations are refused.
    """
    value = text.strip()
    match = _DURATION_RE.fullmatch(value)
    if (
        match is None
        or value in ("P", "PT")
        or value.endswith("T")
        or not any(match.group(g) for g in ("Y", "M", "D", "h", "m", "s"))
    ):
        raise MpdError(where, f"{text!r} is not an ISO 8601 duration like PT1H2M3.5S")
    for unit, name in (("Y", "years"), ("M", "months")):
        amount = match.group(unit)
        if amount is not None and int(amount) != 0:
            raise MpdError(where, f"{text!r}: {name} have no fixed length; use days or hours")
    total = Fraction(0)
    for unit, seconds in _UNIT_SECONDS.items():
        amount = match.group(unit)
        if amount is not None:
            total += Fraction(amount.rstrip(".") or "0") * seconds
    return total


def parse_uint(text: str | None, at: str, default: int | None, minimum: int) -> int:
    if text is None:
        if default is None:
            raise MpdError(at, "missing")
        return default
    value = text.strip()
    if not value.isascii() or not value.lstrip("-").isdigit() or value.count("-") > 1:
        raise MpdError(at, f"{text!r} is not an integer")
    number = int(value)
    if number < minimum:
        raise MpdError(at, f"{number} is below {minimum}")
    return number


def origin_of(url: str) -> str:
    """``scheme://host:port`` of an absolute http(s) URL, port explicit; ValueError if not."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an absolute http(s) URL")
    port = parts.port or (443 if scheme == "https" else 80)
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


# --------------------------------------------------------------------------- templates

_IDENTIFIER_RE = re.compile(r"(RepresentationID|Number|Bandwidth|Time)(?:%0([0-9]{1,2})d)?")
_Part = str | tuple[str, int]


def compile_template(template: str, where: str, allowed: Sequence[str]) -> tuple[_Part, ...]:
    pieces = template.split("$")
    if len(pieces) % 2 == 0:
        raise MpdError(where, f"{template!r} has an unpaired '$'")
    parts: list[_Part] = []
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            if piece:
                parts.append(piece)
            continue
        if piece == "":
            parts.append("$")
            continue
        match = _IDENTIFIER_RE.fullmatch(piece)
        if match is None:
            raise MpdError(where, f"${piece}$ is not a template identifier")
        name, width = match.group(1), match.group(2)
        if name not in allowed:
            raise MpdError(where, f"${name}$ is not allowed here (only {', '.join(allowed)})")
        if name == "RepresentationID" and width is not None:
            raise MpdError(where, "$RepresentationID$ takes no format tag")
        parts.append((name, int(width or 0)))
    return tuple(parts)


def render_template(parts: Sequence[_Part], values: dict[str, str | int]) -> str:
    out: list[str] = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
            continue
        name, width = part
        value = values[name]
        out.append(f"{value:0{width}d}" if isinstance(value, int) else value)
    return "".join(out)


def expand_template(
    template: str,
    *,
    representation_id: str = "",
    bandwidth: int = 0,
    number: int | None = None,
    time: int | None = None,
    where: str = "SegmentTemplate@media",
) -> str:
    """One URL from a template (``$Number%05d$`` etc.); identifiers given as None are
    not allowed in it."""
    allowed = ["RepresentationID", "Bandwidth"]
    values: dict[str, str | int] = {"RepresentationID": representation_id, "Bandwidth": bandwidth}
    if number is not None:
        allowed.append("Number")
        values["Number"] = number
    if time is not None:
        allowed.append("Time")
        values["Time"] = time
    return render_template(compile_template(template, where, allowed), values)


# --------------------------------------------------------------------------- timeline


def expand_timeline(
    entries: Sequence[TimelineEntry],
    *,
    start_number: int = 1,
    end: Fraction | int | None = None,
    where: str = "SegmentTimeline",
    limit: int = DEFAULT_MAX_OBJECTS,
) -> list[tuple[int, int]]:
    """``(number, time)`` of every segment a timeline describes, in order.

    ``end`` is the end of the Period on the media timeline (timescale units, including
    ``presentationTimeOffset``); it is needed only when the last ``S`` has ``r="-1"``.
    """
    out: list[tuple[int, int]] = []
    number = start_number
    next_time = 0
    previous_start: int | None = None
    for i, entry in enumerate(entries):
        at = f"{where}/S[{i + 1}]"
        if entry.d <= 0:
            raise MpdError(f"{at}@d", f"{entry.d} must be positive")
        if entry.r < -1:
            raise MpdError(f"{at}@r", f"{entry.r} must be -1 or more")
        start = next_time if entry.t is None else entry.t
        if start < 0:
            raise MpdError(f"{at}@t", f"{start} must not be negative")
        if previous_start is not None and start <= previous_start:
            raise MpdError(f"{at}@t", f"{start} does not follow the segment at {previous_start}")
        if entry.n is not None:
            number = entry.n
        if entry.r == -1:
            if i + 1 < len(entries):
                following = entries[i + 1].t
                if following is None:
                    raise MpdError(f"{at}@r", "r=-1 needs @t on the next S")
                stop: Fraction | int = following
            elif end is None:
                raise MpdError(
                    f"{at}@r", "r=-1 repeats to the end of the Period, whose duration is unknown"
                )
            else:
                stop = end
            count = math.ceil(Fraction(stop - start) / entry.d)
            if count < 1:
                raise MpdError(f"{at}@t", f"{start} is at or after the end {stop}")
        else:
            count = entry.r + 1
        if len(out) + count > limit:
            raise MpdError(at, f"more than {limit} segments")
        out.extend((number + k, start + k * entry.d) for k in range(count))
        number += count
        previous_start = start + (count - 1) * entry.d
        next_time = start + count * entry.d
    return out
