"""Seeded fuzzing of the range/precondition engine (:mod:`oca.http.semantics`) in process.

Theory of operation. :class:`FieldValues` draws the header field values a client could
send, in two layers: a structured draw (a Range set of int, open and suffix specs whose
numbers sit at the interesting places relative to the representation's size, entity-tag
lists built from the representation's own tag, HTTP-dates in the three formats near its
modification time) and then, often, a byte-level mutation of that text (insert, delete,
duplicate, swap, truncate, splice a dictionary token, repeat the whole value up to
hundreds of times). The same draws feed the over-the-wire fuzzer, restricted there to
what a header field can carry.

:func:`check_decision` states what the engine promises for *any* input, read from its
docstring: it never raises, the status is one of 200/206/304/412/416 with a reason from
the documented set, a 200 covers the whole representation, a 206 has 1..max_ranges spans
inside the representation, ascending, neither overlapping nor touching, and its
Content-Range values are well formed and read back; 304 and 412 only arise from the
fields that produce them; the Range-only fast path (:func:`decide_range`,
:func:`simple_span`) agrees with :func:`decide`. For Range values drawn without mutation
the drawer also knows what they mean, and :func:`expected_range_bytes` computes the
covered bytes from RFC 9110 §14.1.2 independently of the engine.

Every input is a pure function of ``(seed, index)``: a failure names both, and
:func:`engine_input` rebuilds that exact input.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass, field

from oca.http.semantics import (
    Conditions,
    Decision,
    Representation,
    Span,
    content_range,
    decide,
    decide_range,
    multipart_plan,
    parse_content_range,
    simple_span,
    unsatisfied_range,
)

STATUS_REASONS: dict[int, frozenset[str]] = {
    200: frozenset({"full", "range-ignored-method", "if-range-mismatch", "range-ignored-syntax",
                    "range-ignored-unit", "range-ignored-too-many"}),
    206: frozenset({"range", "multirange"}),
    304: frozenset({"if-none-match", "not-modified-since"}),
    412: frozenset({"if-match-failed", "if-unmodified-since-failed", "if-none-match"}),
    416: frozenset({"range-unsatisfiable"}),
}  # fmt: skip
METHODS = ("GET",) * 24 + ("HEAD", "HEAD", "POST", "OPTIONS", "get")
MAX_HTTP_DATE = 253402300799  # 9999-12-31T23:59:59Z
WIRE_VALUE_CHARS = 1200
_CONTENT_RANGE = re.compile(r"bytes (0|[1-9][0-9]*)-(0|[1-9][0-9]*)/(0|[1-9][0-9]*)")

# A raw range-spec as drawn: (first, last) or (None, suffix); last None = open-ended.
RawSpec = tuple[int | None, int | None]

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_PRINTABLE = [chr(c) for c in range(0x20, 0x7F)]
_CONTROL = [chr(c) for c in (*range(0x00, 0x20), 0x7F)]
_HIGH = [chr(c) for c in range(0x80, 0x100)]
_UNICODE = ["\u0660", "\uff10", "\u2212", "\u00b2", "\u2024", "\ufeff", "\U0001f4a9", "\u0130"]
_TOKENS = ["bytes=", "bytes", "=", "-", ",", ", ", " ", "\t", "0", "1", "-0", "0-", "*", '"',
           "W/", 'W/"', '""', "GMT", "UTC", " GMT", "9" * 19, "9" * 20, "18446744073709551616",
           "-1", "+1", "0x10", "1e3", "items=", "bytes=-", "bytes=0-0,", ",,,,", "Sun, ",
           "Nov", "1994", "00:00:00", "99:99:99", "\\", "%", "%00"]  # fmt: skip


def imf_fixdate(ts: int) -> str:
    t = time.gmtime(ts)
    return f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} " \
           f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"  # fmt: skip


def _rfc850(ts: int) -> str:
    t = time.gmtime(ts)
    day = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
    return f"{day[t.tm_wday]}, {t.tm_mday:02d}-{_MONTHS[t.tm_mon - 1]}-{t.tm_year % 100:02d} " \
           f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"  # fmt: skip


def _asctime(ts: int) -> str:
    t = time.gmtime(ts)
    return f"{_DAYS[t.tm_wday]} {_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} " \
           f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {t.tm_year:04d}"  # fmt: skip


class FieldValues:
    """Draws header field values for one representation; ``wire`` keeps them sendable
    (no control characters other than HTAB, nothing outside Latin-1)."""

    def __init__(self, rng: random.Random, rep: Representation, *, wire: bool = False) -> None:
        self.rng = rng
        self.rep = rep
        self.wire = wire
        self.alphabet = _PRINTABLE * 4 + _HIGH + ["\t"] if wire else (
            _PRINTABLE * 4 + _CONTROL + _HIGH + _UNICODE
        )  # fmt: skip

    # ------------------------------------------------------------ mutation
    def mutate(self, text: str, rounds: int | None = None) -> str:
        rng = self.rng
        for _ in range(rounds if rounds is not None else rng.randint(1, 3)):
            op = rng.randrange(8)
            at = rng.randint(0, len(text))
            if op == 0:
                text = text[:at] + rng.choice(self.alphabet) + text[at:]
            elif op == 1 and text:
                at = min(at, len(text) - 1)
                text = text[:at] + text[at + 1 :]
            elif op == 2:
                end = rng.randint(at, len(text))
                text = text[:end] + text[at:end] + text[end:]
            elif op == 3 and len(text) > 1:
                at = min(at, len(text) - 2)
                text = text[:at] + text[at + 1] + text[at] + text[at + 2 :]
            elif op == 4:
                text = text[:at]
            elif op == 5:
                text = text[:at] + rng.choice(_TOKENS) + text[at:]
            elif op == 6 and len(text) < 2000:
                # long values (at most ~1 MB): linear parsing is part of the promise
                text = text * rng.choice((2, 3, 10, 100, 400, 2000 if rng.random() < 0.05 else 4))
            else:
                text = text[:at] + rng.choice(self.alphabet) + text[at + 1 :]
        if self.wire:
            # sendable, and short enough that a request's fields stay under the header
            # limit (the oversized cases are drawn on purpose elsewhere)
            text = "".join(c for c in text[:WIRE_VALUE_CHARS] if c in self._wire_ok)
            text = text.strip(" \t")
        return text

    _wire_ok = frozenset(_PRINTABLE + _HIGH + ["\t"])

    def maybe_mutated(self, text: str, p: float = 0.3) -> tuple[str, bool]:
        if self.rng.random() < p:
            return self.mutate(text), True
        return text, False

    # ------------------------------------------------------------ numbers
    def position(self) -> int:
        rng, size = self.rng, self.rep.size
        roll = rng.randrange(12)
        if roll == 0:
            return 0
        if roll == 1:
            return max(size - 1, 0)
        if roll == 2:
            return size
        if roll == 3:
            return size + 1
        if roll in (4, 5, 6):
            return rng.randint(0, max(size - 1, 0))
        if roll == 7:
            return rng.randint(size, size + 10**6)
        if roll == 8:
            return rng.randint(10**18, 10**19 - 1)  # 19 digits: the largest the engine reads
        if roll == 9 and rng.random() < 0.5:
            return rng.randint(10**19, 10**25)  # 20+ digits: the field is invalid
        if roll == 10:
            return rng.randint(0, 100)
        return rng.randint(0, 2**63)

    # ------------------------------------------------------------ fields
    def range_value(self) -> tuple[str, list[RawSpec] | None]:
        """A Range value, and its specs when it is a well-formed ``bytes=`` set."""
        rng = self.rng
        unit = rng.choice(("bytes",) * 12 + ("BYTES", "Bytes", "items", "bytes ", " bytes", ""))
        n = rng.choice((1, 1, 1, 1, 1, 1, 2, 2, 3, 5, 8, 16, 17, 30))
        specs: list[RawSpec] = []
        texts: list[str] = []
        valid = unit.strip().lower() == "bytes"
        size = self.rep.size
        if n > 1 and size > 2 * n and rng.random() < 0.5:
            # disjoint spans spread over the representation, in any order: a multipart 206
            cuts = sorted(rng.sample(range(size), 2 * n))
            pairs = [(cuts[i], cuts[i + 1]) for i in range(0, 2 * n, 2)]
            if rng.random() < 0.5:
                rng.shuffle(pairs)
            specs = list[RawSpec](pairs)
            texts = [f"{a}-{b}" for a, b in pairs]
            n = 0
        for _ in range(n):
            shape = rng.randrange(10)
            if shape < 5:
                first, last = self.position(), self.position()
                if rng.random() < 0.8 and last < first:
                    first, last = last, first
                texts.append(f"{first}-{last}")
                specs.append((first, last))
                valid &= first <= last and last < 10**19
            elif shape < 7:
                first = self.position()
                texts.append(f"{first}-")
                specs.append((first, None))
                valid &= first < 10**19
            else:
                suffix = self.position()
                texts.append(f"-{suffix}")
                specs.append((None, suffix))
                valid &= suffix < 10**19
        sep = rng.choice((",", ",", ", ", " , ", ",\t", ", ,"))
        eq = rng.choice(("=",) * 6 + (" =", "= ", " = "))
        if not unit.strip():
            valid = False
        text = unit + eq + sep.join(texts)
        text, mutated = self.maybe_mutated(text, 0.25)
        if self.wire:
            mutated |= len(text) > WIRE_VALUE_CHARS
            text = text[:WIRE_VALUE_CHARS].strip(" \t")
        return text, (specs if valid and not mutated else None)

    def etag_list(self) -> str:
        rng, etag = self.rng, self.rep.etag
        opaque = etag[2:] if etag.startswith("W/") else etag
        choices = [
            "*", etag, opaque, "W/" + opaque, '"nope"', 'W/"nope"', f'"x", {opaque}',
            f'"a" ,\t"b", {rng.choice(("W/", ""))}{opaque}', '"a", "b"', "", " ",
            '"unterminated', 'W/ "x"', opaque[:-1], f"{opaque}{opaque}", '"a,b"', "*, *",
        ]  # fmt: skip
        text = rng.choice(choices)
        return self.maybe_mutated(text, 0.3)[0]

    def date(self) -> str:
        rng, lm = self.rng, self.rep.last_modified
        ts = max(0, min(MAX_HTTP_DATE, lm + rng.choice((0, 0, 0, 1, -1, 3600, -86400, 10**7))))
        if rng.random() < 0.1:
            ts = rng.randint(0, MAX_HTTP_DATE)
        text = rng.choice((imf_fixdate, imf_fixdate, imf_fixdate, _rfc850, _asctime))(ts)
        if rng.random() < 0.05:
            text = rng.choice(("", "0", "yesterday", "Thu, 01 Jan 1970 00:00:00 GMT", str(ts)))
        return self.maybe_mutated(text, 0.2)[0]

    def if_range(self) -> str:
        rng, etag = self.rng, self.rep.etag
        opaque = etag[2:] if etag.startswith("W/") else etag
        roll = rng.randrange(6)
        if roll < 2:
            text = etag
        elif roll == 2:
            text = "W/" + opaque
        elif roll == 3:
            text = imf_fixdate(min(MAX_HTTP_DATE, max(0, self.rep.last_modified)))
        elif roll == 4:
            text = self.date()
        else:
            text = '"other"'
        return self.maybe_mutated(text, 0.2)[0]


@dataclass(frozen=True)
class EngineInput:
    rep: Representation
    cond: Conditions
    max_ranges: int
    specs: list[RawSpec] | None  # the meaning of cond.range when drawn well formed


def representation(rng: random.Random) -> Representation:
    size = rng.choice((0, 1, 2, rng.randint(3, 100), rng.randint(100, 10**6),
                       rng.randint(10**6, 2**40), rng.randint(2**40, 2**62)))  # fmt: skip
    tag = '"' + "".join(rng.choice("0123456789abcdef") for _ in range(rng.randint(0, 32))) + '"'
    if rng.random() < 0.1:
        tag = "W/" + tag
    lm = rng.choice((rng.randint(0, MAX_HTTP_DATE), rng.randint(1_500_000_000, 1_800_000_000)))
    return Representation(size, tag, lm)


def engine_input(seed: int, index: int) -> EngineInput:
    rng = random.Random(seed * 1_000_003 + index)
    rep = representation(rng)
    values = FieldValues(rng, rep)
    method = rng.choice(METHODS)
    range_text: str | None = None
    specs: list[RawSpec] | None = None
    if rng.random() < 0.8:
        range_text, specs = values.range_value()
    cond = Conditions(
        method=method,
        range=range_text,
        if_range=values.if_range() if rng.random() < 0.2 else None,
        if_match=values.etag_list() if rng.random() < 0.15 else None,
        if_none_match=values.etag_list() if rng.random() < 0.15 else None,
        if_modified_since=values.date() if rng.random() < 0.15 else None,
        if_unmodified_since=values.date() if rng.random() < 0.15 else None,
    )
    max_ranges = rng.choice((16, 16, 16, 1, 2, 5, 1000))
    return EngineInput(rep, cond, max_ranges, specs)


def expected_range_bytes(
    specs: list[RawSpec], size: int, max_ranges: int
) -> set[tuple[int, int]] | int:
    """RFC 9110 §14.1.2 on well-formed specs: the covered runs, or the status 200/416."""
    if len(specs) > max_ranges:
        return 200
    runs: list[tuple[int, int]] = []
    for first, last in specs:
        if first is None:
            assert last is not None
            if last > 0 and size > 0:
                runs.append((max(0, size - last), size - 1))
        elif first < size:
            runs.append((first, size - 1 if last is None else min(last, size - 1)))
    if not runs:
        return 416
    runs.sort()
    merged = [runs[0]]
    for a, b in runs[1:]:
        if a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return set(merged)


def check_decision(inp: EngineInput, d: Decision) -> None:
    """Every promise of the engine about one decision; AssertionError naming the broken one."""
    rep, cond = inp.rep, inp.cond
    size = rep.size
    assert d.status in STATUS_REASONS, f"status {d.status} is not one the engine documents"
    assert d.reason in STATUS_REASONS[d.status], f"reason {d.reason!r} for {d.status}"
    if d.status == 200:
        assert d.spans == ((Span(0, size - 1),) if size else ()), d.spans
    elif d.status == 206:
        assert cond.method == "GET" and cond.range is not None
        assert 1 <= len(d.spans) <= inp.max_ranges, len(d.spans)
        assert (d.reason == "range") == (len(d.spans) == 1)
        prev_end = -2
        for sp in d.spans:
            assert 0 <= sp.start <= sp.end < size, f"span {sp} outside a size of {size}"
            assert sp.start > prev_end + 1, f"spans overlap or touch: {d.spans}"
            prev_end = sp.end
            cr = content_range(sp, size)
            m = _CONTENT_RANGE.fullmatch(cr)
            assert m is not None and (int(m[1]), int(m[2]), int(m[3])) == (sp.start, sp.end, size)
            assert parse_content_range(cr) == (sp.start, size)
        if len(d.spans) > 1:
            plan = multipart_plan(d.spans, size, "video/mp4", "b0undary")
            total = sum(len(p) if isinstance(p, bytes) else p.length for p in plan.pieces)
            assert total == plan.content_length
            assert plan.content_length > sum(sp.length for sp in d.spans)
    else:
        assert d.spans == (), d.spans
    if d.status == 304:
        assert cond.method in ("GET", "HEAD")
        assert cond.if_none_match is not None or cond.if_modified_since is not None
    if d.status == 412:
        assert (
            cond.if_match is not None
            or cond.if_unmodified_since is not None
            or (cond.if_none_match is not None and cond.method not in ("GET", "HEAD"))
        )
    if d.status == 416:
        assert cond.method == "GET" and cond.range is not None
        assert unsatisfied_range(size) == f"bytes */{size}"
    if cond.if_match is not None and cond.if_match.strip(" \t") == "*":
        assert d.reason != "if-match-failed"
    only_range = (
        cond.method == "GET"
        and cond.range is not None
        and cond.if_range is None
        and cond.if_match is None
        and cond.if_none_match is None
        and cond.if_modified_since is None
        and cond.if_unmodified_since is None
    )
    if only_range:
        assert cond.range is not None
        assert decide_range(rep, cond.range, inp.max_ranges) == d
        simple = simple_span(size, cond.range)
        if simple is not None:
            assert d.status == 206 and (d.spans[0].start, d.spans[0].end) == simple
        if inp.specs is not None:
            want = expected_range_bytes(inp.specs, size, inp.max_ranges)
            if isinstance(want, int):
                assert d.status == want, (d, want)
            else:
                assert d.status == 206 and {(s.start, s.end) for s in d.spans} == want, (d, want)


@dataclass
class EngineStats:
    inputs: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    longest_field: int = 0  # the longest Range value decided
    slowest_seconds: float = 0.0
    with_meaning: int = 0  # inputs whose Range meaning was also checked independently


def fuzz_engine(seed: int, count: int, *, hang_seconds: float = 5.0) -> EngineStats:
    """Decide ``count`` drawn inputs; raise AssertionError naming (seed, index) on a break."""
    stats = EngineStats()
    for index in range(count):
        inp = engine_input(seed, index)
        started = time.perf_counter()
        try:
            d = decide(inp.rep, inp.cond, inp.max_ranges)
            took = time.perf_counter() - started
            check_decision(inp, d)
            assert took < hang_seconds, f"one decision took {took:.1f}s"
        except Exception as exc:
            raise AssertionError(
                f"engine fuzz seed={seed} index={index}: {type(exc).__name__}: {exc}\n"
                f"input: {inp!r}"[:4000]
            ) from exc
        stats.inputs += 1
        stats.statuses[d.status] = stats.statuses.get(d.status, 0) + 1
        stats.slowest_seconds = max(stats.slowest_seconds, took)
        stats.longest_field = max(stats.longest_field, len(inp.cond.range or ""))
        stats.with_meaning += inp.specs is not None
    return stats
