"""Conditional and range decisions (RFC 9110 §13.2.2, §14)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oca.http.semantics import (
    Conditions,
    Decision,
    MultipartPlan,
    Representation,
    Span,
    _parsed_range_decision,
    content_range,
    decide,
    decide_range,
    multipart_plan,
    parse_content_range,
    simple_span,
    unsatisfied_range,
)

ETAG = '"9f86d081884c7d65"'
LAST_MODIFIED = 784_111_777
LM = "Sun, 06 Nov 1994 08:49:37 GMT"
BEFORE = "Sun, 06 Nov 1994 08:49:36 GMT"
AFTER = "Sun, 06 Nov 1994 08:49:38 GMT"
REP = Representation(size=1000, etag=ETAG, last_modified=LAST_MODIFIED)
EMPTY = Representation(size=0, etag=ETAG, last_modified=LAST_MODIFIED)


def get(rep: Representation = REP, max_ranges: int = 16, **fields: str) -> Decision:
    return decide(rep, Conditions("GET", **fields), max_ranges)


def head(rep: Representation = REP, **fields: str) -> Decision:
    return decide(rep, Conditions("HEAD", **fields))


FULL = Decision(200, (Span(0, 999),), "full")


# --- no conditions -------------------------------------------------------------------


def test_plain_get_is_full() -> None:
    assert get() == FULL


def test_plain_head_is_full() -> None:
    assert head() == FULL


def test_empty_representation_has_no_span() -> None:
    assert get(EMPTY) == Decision(200, (), "full")


# --- If-Match and If-Unmodified-Since ------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        ETAG,
        "*",
        f" {ETAG} ",
        f'"other", {ETAG}',
        f'"a,b" , {ETAG}',  # a comma inside an opaque-tag is not a separator
        f", ,{ETAG},",  # empty list elements are skipped
    ],
)
def test_if_match_holds(value: str) -> None:
    assert get(if_match=value) == FULL


@pytest.mark.parametrize(
    "value",
    [
        f"W/{ETAG}",  # strong comparison: a weak tag never matches
        '"other"',
        '"9F86D081884C7D65"',
        "9f86d081884c7d65",  # unquoted: malformed
        f"{ETAG} garbage",
        f'"unterminated, {ETAG}',
        f"*, {ETAG}",
        "",
        '"a"b"',
    ],
)
def test_if_match_fails(value: str) -> None:
    assert get(if_match=value) == Decision(412, (), "if-match-failed")


def test_if_match_against_a_weak_representation_tag_fails_unless_star() -> None:
    weak = Representation(size=10, etag='W/"x"', last_modified=0)
    assert get(weak, if_match='W/"x"').status == 412
    assert get(weak, if_match='"x"').status == 412
    assert get(weak, if_match="*").status == 200


def test_if_match_failure_beats_everything_else() -> None:
    decision = get(if_match='"other"', if_none_match=ETAG, range="bytes=0-1")
    assert decision == Decision(412, (), "if-match-failed")


@pytest.mark.parametrize(("value", "status"), [(BEFORE, 412), (LM, 200), (AFTER, 200)])
def test_if_unmodified_since(value: str, status: int) -> None:
    decision = get(if_unmodified_since=value)
    assert decision.status == status
    if status == 412:
        assert decision == Decision(412, (), "if-unmodified-since-failed")


def test_if_unmodified_since_invalid_date_is_ignored() -> None:
    assert get(if_unmodified_since="yesterday") == FULL


def test_if_match_present_shadows_if_unmodified_since() -> None:
    assert get(if_match=ETAG, if_unmodified_since=BEFORE) == FULL


# --- If-None-Match and If-Modified-Since ---------------------------------------------


@pytest.mark.parametrize(
    "value",
    [ETAG, f"W/{ETAG}", "*", f'"a", W/"b", {ETAG}', f"  {ETAG}\t", f'"x,y",{ETAG}'],
)
def test_if_none_match_matches(value: str) -> None:
    assert get(if_none_match=value) == Decision(304, (), "if-none-match")
    assert head(if_none_match=value) == Decision(304, (), "if-none-match")


@pytest.mark.parametrize("value", ['"other"', 'W/"other"', "garbage", "", ETAG[1:]])
def test_if_none_match_does_not_match(value: str) -> None:
    assert get(if_none_match=value) == FULL


def test_if_none_match_with_other_methods_is_412() -> None:
    decision = decide(REP, Conditions("POST", if_none_match=ETAG))
    assert decision == Decision(412, (), "if-none-match")


@pytest.mark.parametrize(("value", "status"), [(BEFORE, 200), (LM, 304), (AFTER, 304)])
def test_if_modified_since(value: str, status: int) -> None:
    decision = get(if_modified_since=value)
    assert decision.status == status
    if status == 304:
        assert decision == Decision(304, (), "not-modified-since")


def test_if_modified_since_accepts_obsolete_forms() -> None:
    assert get(if_modified_since="Sunday, 06-Nov-94 08:49:37 GMT").status == 304
    assert get(if_modified_since="Sun Nov  6 08:49:37 1994").status == 304


def test_if_modified_since_invalid_date_is_ignored() -> None:
    assert get(if_modified_since=LM + "; length=1000") == FULL


def test_if_modified_since_is_ignored_for_other_methods() -> None:
    assert decide(REP, Conditions("POST", if_modified_since=AFTER)).status == 200


def test_if_none_match_present_shadows_if_modified_since() -> None:
    assert get(if_none_match='"other"', if_modified_since=AFTER) == FULL


def test_precondition_order() -> None:
    # If-Match is evaluated first, If-None-Match next, Range last (§13.2.2).
    assert get(if_match=ETAG, if_none_match=ETAG).status == 304
    assert get(if_unmodified_since=BEFORE, if_none_match=ETAG).status == 412
    assert get(if_none_match=ETAG, range="bytes=0-1").status == 304
    assert get(if_modified_since=LM, range="bytes=5000-").status == 304


# --- Range ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "span"),
    [
        ("bytes=0-99", Span(0, 99)),
        ("bytes=100-", Span(100, 999)),
        ("bytes=-100", Span(900, 999)),
        ("bytes=0-0", Span(0, 0)),
        ("bytes=999-999", Span(999, 999)),
        ("bytes=0-", Span(0, 999)),
        ("bytes=0-5000", Span(0, 999)),  # end clamped to size - 1
        ("bytes=-5000", Span(0, 999)),  # suffix longer than the representation
        ("bytes=500-9999999999999999999", Span(500, 999)),  # 19 digits
        ("BYTES=0-99", Span(0, 99)),  # the unit is case-insensitive
        ("Bytes = 0-99", Span(0, 99)),  # OWS around "="
        ("bytes=\t0-99 ", Span(0, 99)),
        ("bytes=0-99,", Span(0, 99)),  # empty list elements are skipped
        ("bytes=,,0-99", Span(0, 99)),
        ("bytes=0000-0099", Span(0, 99)),
    ],
)
def test_single_range(value: str, span: Span) -> None:
    assert get(range=value) == Decision(206, (span,), "range")


@pytest.mark.parametrize(
    "value",
    [
        "bytes=5-1",  # last < first
        "bytes=a-b",
        "bytes=",
        "bytes=,",
        "bytes= , ",
        "bytes",
        "bytes 0-1",
        "bytes=1-2-3",
        "bytes=0x10-",
        "bytes=--1",
        "bytes=-",
        "bytes=+1-2",
        "bytes=1 - 2",
        "bytes=-1-2",
        "bytes=0-1;2-3",
        "bytes=\u0661-2",  # only ASCII digits
        "bytes=0-1,5-1",  # one invalid spec spoils the whole set
        "bytes=0-1,x",
        "bytes=12345678901234567890-",  # 20 digits
        "bytes=0-12345678901234567890",
        "bytes=-12345678901234567890",
        "=0-1",  # empty unit
        "by tes=0-1",  # a unit must be a token
        "",
    ],
)
def test_invalid_range_is_ignored(value: str) -> None:
    assert get(range=value) == Decision(200, (Span(0, 999),), "range-ignored-syntax")


@pytest.mark.parametrize("value", ["items=0-1", "none=0-1", "byte=0-1", "bytesx=0-1"])
def test_unknown_unit_is_ignored(value: str) -> None:
    assert get(range=value) == Decision(200, (Span(0, 999),), "range-ignored-unit")


@pytest.mark.parametrize(
    "value",
    ["bytes=1000-", "bytes=1000-1000", "bytes=5000-6000", "bytes=-0", "bytes=1000-,-0,2000-"],
)
def test_unsatisfiable(value: str) -> None:
    assert get(range=value) == Decision(416, (), "range-unsatisfiable")


@pytest.mark.parametrize("value", ["bytes=0-", "bytes=0-0", "bytes=-1", "bytes=-0"])
def test_any_range_on_an_empty_representation_is_unsatisfiable(value: str) -> None:
    assert get(EMPTY, range=value) == Decision(416, (), "range-unsatisfiable")


def test_unsatisfiable_specs_are_dropped_next_to_satisfiable_ones() -> None:
    assert get(range="bytes=1000-,0-0,-0") == Decision(206, (Span(0, 0),), "range")


def test_head_ignores_range() -> None:
    assert head(range="bytes=0-99") == Decision(200, (Span(0, 999),), "range-ignored-method")
    assert head(range="bytes=5000-") == Decision(200, (Span(0, 999),), "range-ignored-method")


# --- multiple ranges -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "spans"),
    [
        ("bytes=0-9,20-29", (Span(0, 9), Span(20, 29))),
        ("bytes=20-29,0-9", (Span(0, 9), Span(20, 29))),  # sorted
        ("bytes=0-0,-1", (Span(0, 0), Span(999, 999))),
        ("bytes=0-9, 20-29 ,900-", (Span(0, 9), Span(20, 29), Span(900, 999))),
        ("bytes=0-9,11-19", (Span(0, 9), Span(11, 19))),  # a one-byte gap stays a gap
        ("bytes=900-,0-1,-50", (Span(0, 1), Span(900, 999))),  # coalesced with the suffix
    ],
)
def test_multirange(value: str, spans: tuple[Span, ...]) -> None:
    assert get(range=value) == Decision(206, spans, "multirange")


@pytest.mark.parametrize(
    ("value", "span"),
    [
        ("bytes=0-10,5-20", Span(0, 20)),  # overlapping
        ("bytes=0-9,10-19", Span(0, 19)),  # adjacent
        ("bytes=10-19,0-9", Span(0, 19)),
        ("bytes=0-9,0-9,0-9", Span(0, 9)),
        ("bytes=0-99,10-20,50-60", Span(0, 99)),  # contained
        ("bytes=0-499,500-", Span(0, 999)),
        ("bytes=-500,0-499", Span(0, 999)),
    ],
)
def test_coalesced_to_a_single_range(value: str, span: Span) -> None:
    assert get(range=value) == Decision(206, (span,), "range")


def test_too_many_ranges_are_ignored() -> None:
    sixteen = "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(16))
    seventeen = sixteen + ",500-501"
    assert get(range=sixteen).status == 206
    assert len(get(range=sixteen).spans) == 16
    assert get(range=seventeen) == Decision(200, (Span(0, 999),), "range-ignored-too-many")


def test_max_ranges_counts_raw_specs() -> None:
    # Counted before unsatisfiable specs are dropped and before coalescing.
    assert get(range="bytes=0-1,5000-", max_ranges=1).reason == "range-ignored-too-many"
    assert get(range="bytes=0-1,0-1", max_ranges=1).reason == "range-ignored-too-many"
    assert get(range="bytes=0-1,,", max_ranges=1).reason == "range"


def test_huge_range_headers_stay_linear() -> None:
    many = "bytes=" + "0-1," * 50_000
    assert get(range=many).reason == "range-ignored-too-many"
    assert get(range=many, max_ranges=10**6) == Decision(206, (Span(0, 1),), "range")
    assert get(range="bytes=" + "9" * 1_000_000 + "-").reason == "range-ignored-syntax"
    assert get(range="bytes=" + " " * 1_000_000 + "0-1").reason == "range"
    assert get(if_none_match='"x", ' * 50_000).status == 200
    assert get(if_match='"x", ' * 50_000 + ETAG).status == 200


# --- If-Range ------------------------------------------------------------------------


def test_if_range_with_matching_etag_honours_range() -> None:
    assert get(range="bytes=0-9", if_range=ETAG) == Decision(206, (Span(0, 9),), "range")


def test_if_range_with_exact_date_honours_range() -> None:
    assert get(range="bytes=0-9", if_range=LM) == Decision(206, (Span(0, 9),), "range")


@pytest.mark.parametrize(
    "value",
    [
        '"other"',
        f"W/{ETAG}",  # a weak tag never matches
        BEFORE,
        AFTER,  # a date must be exact, not merely later
        "garbage",
        "",
        f"{ETAG}, {ETAG}",
        "*",
    ],
)
def test_if_range_mismatch_sends_everything(value: str) -> None:
    decision = get(range="bytes=0-9", if_range=value)
    assert decision == Decision(200, (Span(0, 999),), "if-range-mismatch")


def test_if_range_mismatch_beats_unsatisfiable_range() -> None:
    assert get(range="bytes=5000-", if_range='"other"').status == 200


def test_if_range_against_weak_representation_tag_mismatches() -> None:
    weak = Representation(size=10, etag='W/"x"', last_modified=0)
    assert get(weak, range="bytes=0-1", if_range='W/"x"').reason == "if-range-mismatch"


def test_if_range_without_range_is_ignored() -> None:
    assert get(if_range='"other"') == FULL


def test_if_range_match_then_range_syntax_still_applies() -> None:
    assert get(range="bytes=x", if_range=ETAG).reason == "range-ignored-syntax"
    assert get(range="bytes=5000-", if_range=ETAG).status == 416


# --- Content-Range values and spans --------------------------------------------------


def test_content_range_values() -> None:
    assert content_range(Span(0, 99), 1000) == "bytes 0-99/1000"
    assert content_range(Span(999, 999), 1000) == "bytes 999-999/1000"
    assert unsatisfied_range(1000) == "bytes */1000"
    assert unsatisfied_range(0) == "bytes */0"


def test_content_range_rejects_span_past_end() -> None:
    with pytest.raises(ValueError):
        content_range(Span(0, 1000), 1000)


def test_span_length_and_validation() -> None:
    assert Span(0, 0).length == 1
    assert Span(10, 19).length == 10
    with pytest.raises(ValueError):
        Span(5, 4)
    with pytest.raises(ValueError):
        Span(-1, 4)


# --- multipart/byteranges ------------------------------------------------------------


def test_multipart_plan_layout() -> None:
    plan = multipart_plan((Span(0, 9), Span(20, 29)), 1000, "video/mp4", "B0UNDARY")
    assert plan.boundary == "B0UNDARY"
    assert plan.content_type == "multipart/byteranges; boundary=B0UNDARY"
    assert plan.pieces == (
        b"\r\n--B0UNDARY\r\nContent-Type: video/mp4\r\nContent-Range: bytes 0-9/1000\r\n\r\n",
        Span(0, 9),
        b"\r\n--B0UNDARY\r\nContent-Type: video/mp4\r\nContent-Range: bytes 20-29/1000\r\n\r\n",
        Span(20, 29),
        b"\r\n--B0UNDARY--\r\n",
    )
    assert plan.content_length == 72 + 74 + 2 * 10 + 16 == 182


def test_multipart_boundary_with_separators_is_quoted() -> None:
    plan = multipart_plan((Span(0, 1),), 10, "video/mp4", "a:b=c")
    assert plan.content_type == 'multipart/byteranges; boundary="a:b=c"'


@pytest.mark.parametrize("boundary", ["", "x" * 71, "ends with space ", "a\r\nb", 'q"uote', "é"])
def test_multipart_rejects_invalid_boundary(boundary: str) -> None:
    with pytest.raises(ValueError):
        multipart_plan((Span(0, 1),), 10, "video/mp4", boundary)


def test_multipart_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        multipart_plan((), 10, "video/mp4", "b")
    with pytest.raises(ValueError):
        multipart_plan((Span(0, 10),), 10, "video/mp4", "b")
    with pytest.raises(ValueError):
        multipart_plan((Span(0, 1),), 10, "video/mp4\r\nX-Injected: 1", "b")


# --- properties ----------------------------------------------------------------------

sizes = st.one_of(st.integers(0, 64), st.integers(0, 10**15))
positions = st.one_of(st.integers(0, 80), st.integers(0, 10**15))


@st.composite
def single_specs(draw: st.DrawFn) -> tuple[str, int | None, int | None]:
    """A well-formed range-spec: ("int", first, last-or-None) or ("suffix", None, n)."""
    if draw(st.booleans()):
        first = draw(positions)
        last = draw(st.none() | positions.map(lambda offset: first + offset))
        return ("int", first, last)
    return ("suffix", None, draw(positions))


def render_spec(spec: tuple[str, int | None, int | None]) -> str:
    kind, first, last = spec
    if kind == "suffix":
        return f"-{last}"
    return f"{first}-" if last is None else f"{first}-{last}"


def reference_span(size: int, spec: tuple[str, int | None, int | None]) -> tuple[int, int] | None:
    """RFC 9110 §14.1.2 stated as slicing of the sequence of byte positions."""
    kind, first, last = spec
    positions_of_file = range(size)
    if kind == "suffix":
        assert last is not None
        chosen = positions_of_file[-last:] if last > 0 else range(0)
    else:
        assert first is not None
        chosen = positions_of_file[first : size if last is None else last + 1]
    if len(chosen) == 0:
        return None
    return chosen[0], chosen[-1]


@given(
    size=sizes,
    spec=single_specs(),
    unit=st.sampled_from(["bytes", "BYTES", "Bytes"]),
    ows=st.sampled_from(["", " ", "\t", " \t "]),
)
def test_single_range_matches_reference(
    size: int, spec: tuple[str, int | None, int | None], unit: str, ows: str
) -> None:
    value = f"{unit}{ows}={ows}{render_spec(spec)}{ows}"
    decision = get(Representation(size, ETAG, LAST_MODIFIED), range=value)
    expected = reference_span(size, spec)
    if expected is None:
        assert decision == Decision(416, (), "range-unsatisfiable")
    else:
        assert decision == Decision(206, (Span(*expected),), "range")


@given(size=st.integers(0, 200), specs=st.lists(single_specs(), min_size=1, max_size=8))
def test_multirange_covers_exactly_the_requested_bytes(
    size: int, specs: list[tuple[str, int | None, int | None]]
) -> None:
    value = "bytes=" + ",".join(render_spec(spec) for spec in specs)
    decision = get(Representation(size, ETAG, LAST_MODIFIED), range=value)
    wanted: set[int] = set()
    for spec in specs:
        bounds = reference_span(size, spec)
        if bounds is not None:
            wanted.update(range(bounds[0], bounds[1] + 1))
    if not wanted:
        assert decision.status == 416
        return
    assert decision.status == 206
    covered = [p for span in decision.spans for p in range(span.start, span.end + 1)]
    assert covered == sorted(wanted)  # ascending, no byte twice, nothing missing
    for left, right in zip(decision.spans, decision.spans[1:], strict=False):
        assert left.end + 1 < right.start  # coalesced: neither overlapping nor adjacent
    assert decision.reason == ("range" if len(decision.spans) == 1 else "multirange")


header_text = st.one_of(
    st.none(),
    st.text(),
    st.binary().map(lambda raw: raw.decode("latin-1")),
    st.text(alphabet='bytesBYTES=0123456789-, \t"W/*', max_size=40),
    st.sampled_from([ETAG, f"W/{ETAG}", "*", LM, BEFORE, AFTER, "bytes=0-1,5-", "bytes=-0"]),
)


@given(
    size=sizes,
    etag=st.one_of(st.just(ETAG), st.text()),
    last_modified=st.integers(-(10**12), 10**12),
    method=st.sampled_from(["GET", "HEAD"]),
    range_=header_text,
    if_range=header_text,
    if_match=header_text,
    if_none_match=header_text,
    if_modified_since=header_text,
    if_unmodified_since=header_text,
    max_ranges=st.integers(0, 20),
)
def test_decide_never_raises_and_stays_in_bounds(
    size: int,
    etag: str,
    last_modified: int,
    method: str,
    range_: str | None,
    if_range: str | None,
    if_match: str | None,
    if_none_match: str | None,
    if_modified_since: str | None,
    if_unmodified_since: str | None,
    max_ranges: int,
) -> None:
    rep = Representation(size, etag, last_modified)
    cond = Conditions(
        method,
        range=range_,
        if_range=if_range,
        if_match=if_match,
        if_none_match=if_none_match,
        if_modified_since=if_modified_since,
        if_unmodified_since=if_unmodified_since,
    )
    decision = decide(rep, cond, max_ranges)
    assert decision.status in {200, 206, 304, 412, 416}
    assert decision.reason
    for span in decision.spans:
        assert 0 <= span.start <= span.end < size
    if decision.status == 200:
        assert decision.spans == ((Span(0, size - 1),) if size else ())
    elif decision.status == 206:
        assert decision.spans
        assert method == "GET"
    else:
        assert decision.spans == ()


def assemble(plan: MultipartPlan, data: bytes) -> bytes:
    return b"".join(
        piece if isinstance(piece, bytes) else data[piece.start : piece.end + 1]
        for piece in plan.pieces
    )


PART = re.compile(
    rb"\r\n--(?P<b>[^\r]+)\r\nContent-Type: (?P<t>[^\r]+)\r\n"
    rb"Content-Range: bytes (?P<s>\d+)-(?P<e>\d+)/(?P<n>\d+)\r\n\r\n"
)


@given(
    data=st.binary(min_size=1, max_size=300),
    raw_spans=st.lists(st.tuples(st.integers(0, 299), st.integers(0, 299)), min_size=1),
    boundary=st.from_regex(r"[0-9A-Za-z'()+_,\-./:=?]{1,70}", fullmatch=True),
)
def test_multipart_length_is_exact_and_body_parses_back(
    data: bytes, raw_spans: list[tuple[int, int]], boundary: str
) -> None:
    size = len(data)
    spans = tuple(
        Span(min(a, b) % size, max(a, b) % size)
        for a, b in raw_spans
        if min(a, b) % size <= max(a, b) % size
    )
    if not spans:
        spans = (Span(0, size - 1),)
    plan = multipart_plan(spans, size, "video/iso.segment", boundary)
    body = assemble(plan, data)
    summed = sum(len(p) if isinstance(p, bytes) else p.length for p in plan.pieces)
    assert plan.content_length == summed == len(body)
    assert body.endswith(f"\r\n--{boundary}--\r\n".encode())
    # Walk the body part by part and check each part's bytes against the file.
    offset = 0
    for span in spans:
        match = PART.match(body, offset)
        assert match is not None
        assert match["b"].decode() == boundary
        assert match["t"] == b"video/iso.segment"
        start, end, total = int(match["s"]), int(match["e"]), int(match["n"])
        assert (start, end, total) == (span.start, span.end, size)
        offset = match.end()
        assert body[offset : offset + span.length] == data[start : end + 1]
        offset += span.length
    assert body[offset:] == f"\r\n--{boundary}--\r\n".encode()


short_ranges = st.tuples(st.integers(0, 2000), st.integers(0, 50)).map(
    lambda pair: ("int", pair[0], pair[0] + pair[1])
)


@given(
    size=st.integers(1, 2000),
    specs=st.lists(st.one_of(short_ranges, single_specs()), min_size=2, max_size=16),
)
def test_decided_multirange_plans_exactly(
    size: int, specs: list[tuple[str, int | None, int | None]]
) -> None:
    decision = get(
        Representation(size, ETAG, LAST_MODIFIED),
        range="bytes=" + ",".join(render_spec(spec) for spec in specs),
    )
    if decision.status != 206:
        return
    plan = multipart_plan(decision.spans, size, "video/mp4", "0123456789abcdef")
    headers = sum(len(p) for p in plan.pieces if isinstance(p, bytes))
    assert plan.content_length == headers + sum(span.length for span in decision.spans)
    assert plan.content_length - headers <= size  # coalescing never sends a byte twice


@given(
    size=st.integers(min_value=0, max_value=10_000),
    first=st.integers(min_value=0, max_value=12_000),
    length=st.integers(min_value=-5, max_value=12_000),
    junk=st.sampled_from(["", " ", ",", "x", ",0-1", "-"]),
)
def test_decide_range_fast_path_equals_decide(
    size: int, first: int, length: int, junk: str
) -> None:
    rep = Representation(size, '"e"', 1_000_000)
    for value in (f"bytes={first}-{first + length}{junk}", f"bytes={first}-", f"bytes=-{first}"):
        assert decide_range(rep, value, 16) == decide(rep, Conditions("GET", range=value), 16)


@given(
    size=st.integers(min_value=0, max_value=10_000),
    first=st.integers(min_value=0, max_value=12_000),
    length=st.integers(min_value=-5, max_value=12_000),
    junk=st.sampled_from(["", " ", ",", "x", ",0-1", "-", "0"]),
    unit=st.sampled_from(["bytes=", "Bytes=", "bytes =", "items="]),
)
def test_simple_span_agrees_with_the_full_parser(
    size: int, first: int, length: int, junk: str, unit: str
) -> None:
    rep = Representation(size, '"e"', 1_000_000)
    value = f"{unit}{first}-{first + length}{junk}"
    full = _parsed_range_decision(rep, value, 16)
    span = simple_span(size, value)
    if span is None:
        # Only shapes the fast path does not take, and unsatisfiable single ranges.
        assert not (full.status == 206 and full.reason == "range" and unit == "bytes="
                    and junk == "" and length >= 0 and first < size)  # fmt: skip
    else:
        assert full == Decision(206, (Span(*span),), "range")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 0-99/1000", (0, 1000)),
        ("bytes 500-999/1000", (500, 1000)),
        (" bytes 7-7/8 ", (7, 8)),
        ("bytes 10-5/100", None),  # last before first
        ("bytes 0-1000/1000", None),  # past the end
        ("bytes */1000", None),  # a 416's form, not a span
        ("items 0-9/10", None),
        ("bytes 0-9/*", None),
        ("", None),
    ],
)
def test_parse_content_range(value: str, expected: tuple[int, int] | None) -> None:
    assert parse_content_range(value) == expected


@given(st.integers(0, 10**12), st.integers(0, 10**6), st.integers(1, 10**6))
def test_parse_content_range_reads_back_content_range(first: int, n: int, extra: int) -> None:
    size = first + n + extra
    span = Span(first, first + n)
    assert parse_content_range(content_range(span, size)) == (first, size)
