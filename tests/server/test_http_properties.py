"""Property tests of conditional and range requests against the running appliance.

Hypothesis draws an object of the content set and a set of request header fields
(Range in valid and invalid forms, If-Range, If-Match, If-None-Match,
If-Modified-Since, If-Unmodified-Since) and sends them on one persistent HTTP or
HTTPS connection. The answer is checked against a reference model of RFC 9110
§13.2.2 (precondition order) and §14 (ranges) written here from the RFC, working on
the *meaning* of what was drawn (the strategies produce each field's wire text
together with what it denotes), never by calling :mod:`oca.http.semantics`.

Where the RFC leaves the server a choice, the model takes the appliance's documented
one and says so next to the rule:

- an invalid Range field, or one with an unknown unit, is ignored (200), §14.2;
- more than MAX_RANGES range-specs are ignored as a denial-of-service guard (200), §14.2;
- overlapping or adjacent ranges may be coalesced, §14.6, so a 206 is checked by the
  set of bytes it covers rather than by its part list;
- a zero-length representation satisfies no range (416): a 206 cannot express an
  empty span.
"""

from __future__ import annotations

import hashlib
import http.client
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.server.conftest import MAX_RANGES, Reply, Site, StoredObject, read_reply

# --------------------------------------------------------------------------- drawn fields


@dataclass(frozen=True)
class TagList:
    """An If-Match / If-None-Match value: ``*`` or a list of entity-tags."""

    text: str
    star: bool
    strong_match: bool  # lists the representation's tag, not weak (strong comparison)
    weak_match: bool  # lists the representation's tag, weak or not (weak comparison)


@dataclass(frozen=True)
class DateField:
    text: str
    ts: int | None  # None: not a valid HTTP-date


@dataclass(frozen=True)
class IfRange:
    text: str
    holds: bool


@dataclass(frozen=True)
class IntRange:
    first: int
    last: int | None


@dataclass(frozen=True)
class SuffixRange:
    length: int


Spec = IntRange | SuffixRange


@dataclass(frozen=True)
class RangeField:
    text: str
    specs: tuple[Spec, ...] | None  # None: invalid or unknown unit, to be ignored


@dataclass(frozen=True)
class Drawn:
    method: str
    range: RangeField | None
    if_range: IfRange | None
    if_match: TagList | None
    if_none_match: TagList | None
    if_modified_since: DateField | None
    if_unmodified_since: DateField | None

    def headers(self) -> dict[str, str]:
        fields = {
            "Range": self.range,
            "If-Range": self.if_range,
            "If-Match": self.if_match,
            "If-None-Match": self.if_none_match,
            "If-Modified-Since": self.if_modified_since,
            "If-Unmodified-Since": self.if_unmodified_since,
        }
        return {k: v.text for k, v in fields.items() if v is not None}


# --------------------------------------------------------------------------- strategies


def _wrong_tags(etag: str) -> list[str]:
    inner = etag.strip('"')
    return ['"' + hashlib.sha256(inner.encode()).hexdigest()[:32] + '"', '"x"', '""']


@st.composite
def tag_lists(draw: st.DrawFn, etag: str) -> TagList:
    if draw(st.integers(0, 7)) == 0:
        return TagList("*", True, True, True)
    choices = ["strong", "weak", "wrong", "weak-wrong"]
    kinds = draw(st.lists(st.sampled_from(choices), min_size=1, max_size=3))
    wrong = draw(st.sampled_from(_wrong_tags(etag)))
    rendered = {
        "strong": etag,
        "weak": "W/" + etag,
        "wrong": wrong,
        "weak-wrong": "W/" + wrong,
    }
    sep = draw(st.sampled_from([", ", ",", " , "]))
    return TagList(
        sep.join(rendered[k] for k in kinds),
        False,
        "strong" in kinds,
        "strong" in kinds or "weak" in kinds,
    )


_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def render_date(ts: int, form: str) -> str:
    """One of the three HTTP-date forms of RFC 9110 §5.6.7 (recipients accept all)."""
    t = time.gmtime(ts)
    if form == "imf":
        return time.strftime("%a, %d %b %Y %H:%M:%S GMT", t)
    if form == "rfc850":
        return f"{_DAYS[t.tm_wday]}, " + time.strftime("%d-%b-%y %H:%M:%S GMT", t)
    return time.strftime("%a %b ", t) + f"{t.tm_mday:2d}" + time.strftime(" %H:%M:%S %Y", t)


INVALID_DATES = (
    "yesterday",
    "2020-09-13T12:26:40Z",
    "Sun, 32 Nov 2020 08:49:37 GMT",
    "Sun, 06 Nov 2020 25:49:37 GMT",
    "1600000000",
)


@st.composite
def date_fields(draw: st.DrawFn, mtime: int) -> DateField:
    if draw(st.integers(0, 9)) == 0:
        return DateField(draw(st.sampled_from(INVALID_DATES)), None)
    # All drawn dates are in the past: a date after the server's clock is a case of
    # its own (§13.1.3) that this model does not state.
    delta = draw(st.sampled_from([-400 * 86_400, -3600, -1, 0, 0, 1, 3600, 86_400]))
    form = draw(st.sampled_from(["imf", "imf", "imf", "rfc850", "asctime"]))
    ts = mtime + delta
    return DateField(render_date(ts, form), ts)


@st.composite
def if_ranges(draw: st.DrawFn, etag: str, mtime: int) -> IfRange:
    kind = draw(
        st.sampled_from(
            ["strong"] * 3 + ["date"] * 2 + ["date-old-form", "weak", "wrong", "wrong-date", "junk"]
        )
    )
    if kind == "strong":
        return IfRange(etag, True)
    if kind == "weak":  # §13.1.5: a weak tag never matches
        return IfRange("W/" + etag, False)
    if kind == "wrong":
        return IfRange(draw(st.sampled_from(_wrong_tags(etag))), False)
    if kind == "date":
        return IfRange(render_date(mtime, "imf"), True)
    if kind == "date-old-form":
        return IfRange(render_date(mtime, draw(st.sampled_from(["rfc850", "asctime"]))), True)
    if kind == "wrong-date":
        delta = draw(st.sampled_from([-86_400, -1, 1, 3600]))
        return IfRange(render_date(mtime + delta, "imf"), False)
    return IfRange(draw(st.sampled_from(["bogus", "*", '"unterminated', *INVALID_DATES])), False)


def positions(size: int) -> st.SearchStrategy[int]:
    edges = sorted({0, 1, max(size - 1, 0), size, size + 1, 2 * size + 100, 4095, 4096, 4097})
    return st.one_of(
        st.integers(0, max(size - 1, 0)),
        st.sampled_from(edges),
        st.integers(0, 10**12),
    )


@st.composite
def specs(draw: st.DrawFn, size: int) -> Spec:
    kind = draw(st.sampled_from(["closed", "closed", "open", "suffix"]))
    if kind == "suffix":
        return SuffixRange(draw(st.one_of(positions(size), st.sampled_from([0, 1]))))
    first = draw(positions(size))
    if kind == "open":
        return IntRange(first, None)
    last = first + draw(st.one_of(st.integers(0, 5000), positions(size)))
    return IntRange(first, last)


def render_spec(spec: Spec, zeros: int) -> str:
    pad = "0" * zeros
    if isinstance(spec, SuffixRange):
        return f"-{pad}{spec.length}"
    last = "" if spec.last is None else f"{spec.last}"
    return f"{pad}{spec.first}-{last}"


INVALID_RANGES = (
    "bytes=",
    "bytes=,",
    "bytes=-",
    "bytes=--5",
    "bytes=1-2-3",
    "bytes=0x10-20",
    "bytes=+1-2",
    "bytes=a-b",
    "bytes=1.5-2",
    "bytes 0-5",
    "bytes=0-5;x",
    "=0-5",
    "0-5",
)


@st.composite
def range_fields(draw: st.DrawFn, size: int) -> RangeField:
    kinds = ["valid"] * 12 + ["invalid", "reversed", "junk-member", "unit"]
    kind = draw(st.sampled_from(kinds))
    if kind == "invalid":
        return RangeField(draw(st.sampled_from(INVALID_RANGES)), None)
    if kind == "unit":  # §14.2: a range unit the server does not understand is ignored
        unit = draw(st.sampled_from(["items", "seconds", "bytesx", "none"]))
        return RangeField(f"{unit}=0-5", None)
    many = draw(st.integers(0, 9)) == 0
    n = draw(st.integers(MAX_RANGES - 1, MAX_RANGES + 3)) if many else draw(st.integers(1, 4))
    members = draw(st.lists(specs(size), min_size=n, max_size=n))
    texts = [render_spec(s, draw(st.sampled_from([0, 0, 0, 2]))) for s in members]
    parsed: tuple[Spec, ...] | None = tuple(members)
    if kind == "reversed":  # §14.1.1: last-pos < first-pos makes the range-set invalid
        first = draw(st.integers(1, size + 10))
        texts.insert(draw(st.integers(0, len(texts))), f"{first}-{first - 1}")
        parsed = None
    elif kind == "junk-member":
        texts.insert(draw(st.integers(0, len(texts))), draw(st.sampled_from(["x", "1-x", "-"])))
        parsed = None
    elif draw(st.booleans()):  # §5.6.1: recipients accept empty list elements
        texts.insert(draw(st.integers(0, len(texts))), "")
    sep = draw(st.sampled_from([",", ", ", " ,", ",\t"]))
    unit = draw(st.sampled_from(["bytes", "bytes", "bytes", "Bytes", "BYTES"]))
    return RangeField(f"{unit}=" + sep.join(texts), parsed)


@st.composite
def requests(draw: st.DrawFn, obj: StoredObject, etag: str) -> Drawn:
    def present(twentieths: int) -> bool:
        return draw(st.integers(0, 19)) < twentieths

    rng = draw(range_fields(obj.size)) if present(17) else None
    return Drawn(
        method=draw(st.sampled_from(["GET", "GET", "GET", "GET", "HEAD"])),
        range=rng,
        if_range=draw(if_ranges(etag, obj.mtime)) if present(8 if rng else 2) else None,
        if_match=draw(tag_lists(etag)) if present(3) else None,
        if_none_match=draw(tag_lists(etag)) if present(2) else None,
        if_modified_since=draw(date_fields(obj.mtime)) if present(2) else None,
        if_unmodified_since=draw(date_fields(obj.mtime)) if present(3) else None,
    )


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Expected:
    status: int
    covered: tuple[tuple[int, int], ...] = ()  # 206: the bytes to send, merged intervals


def satisfiable(spec: Spec, size: int) -> tuple[int, int] | None:
    """§14.1.1/§14.1.2: the span a range-spec selects, or None when unsatisfiable."""
    if size == 0:
        return None  # the appliance's choice, see the module docstring
    if isinstance(spec, SuffixRange):
        if spec.length == 0:
            return None
        return max(0, size - spec.length), size - 1
    if spec.first >= size:
        return None
    last = size - 1 if spec.last is None else min(spec.last, size - 1)
    return spec.first, last


def merge(spans: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return tuple(out)


def expected(req: Drawn, size: int, mtime: int) -> Expected:
    # §13.2.2 step 1: If-Match, strong comparison; else step 2: If-Unmodified-Since.
    # An invalid date (ts None) makes a date condition absent (§13.1.3, §13.1.4).
    ius, ims = req.if_unmodified_since, req.if_modified_since
    if req.if_match is not None:
        if not (req.if_match.star or req.if_match.strong_match):
            return Expected(412)
    elif ius is not None and ius.ts is not None and mtime > ius.ts:
        return Expected(412)
    # Step 3: If-None-Match, weak comparison; else step 4: If-Modified-Since.
    if req.if_none_match is not None:
        if req.if_none_match.star or req.if_none_match.weak_match:
            return Expected(304)
    elif ims is not None and ims.ts is not None and mtime <= ims.ts:
        return Expected(304)
    # Step 5 / §14.2: Range only for GET; If-Range only with Range.
    if req.method != "GET" or req.range is None:
        return Expected(200)
    if req.if_range is not None and not req.if_range.holds:
        return Expected(200)
    if req.range.specs is None or len(req.range.specs) > MAX_RANGES:
        return Expected(200)
    spans = [s for s in (satisfiable(x, size) for x in req.range.specs) if s is not None]
    if not spans:
        return Expected(416)
    return Expected(206, merge(spans))


# --------------------------------------------------------------------------- checking


def parse_content_range(value: str) -> tuple[int, int, int]:
    unit, _, rest = value.partition(" ")
    assert unit == "bytes", value
    span, _, total = rest.partition("/")
    first, _, last = span.partition("-")
    return int(first), int(last), int(total)


def multipart_parts(body: bytes, content_type: str) -> Iterator[tuple[dict[str, str], bytes]]:
    """Split a multipart/byteranges body (RFC 9110 §14.6, RFC 2046 §5.1.1).

    Each part's length is taken from its own Content-Range, so the check does not
    depend on the boundary being absent from the data.
    """
    media, _, params = content_type.partition(";")
    assert media.strip().lower() == "multipart/byteranges", content_type
    boundary = ""
    for p in params.split(";"):
        k, _, v = p.strip().partition("=")
        if k.lower() == "boundary":
            boundary = v.strip('"')
    assert boundary, content_type
    delim = b"--" + boundary.encode()
    at = body.find(delim)
    assert at == 0 or (at >= 2 and body[at - 2 : at] == b"\r\n"), body[:100]
    pos = at + len(delim)
    while not body.startswith(b"--", pos):
        assert body.startswith(b"\r\n", pos), body[pos : pos + 100]
        head_end = body.index(b"\r\n\r\n", pos)
        headers: dict[str, str] = {}
        for line in body[pos + 2 : head_end].decode("latin-1").split("\r\n"):
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        first, last, _ = parse_content_range(headers["content-range"])
        pos = head_end + 4
        yield headers, body[pos : pos + last - first + 1]
        pos += last - first + 1
        assert body.startswith(b"\r\n" + delim, pos), body[pos : pos + 100]
        pos += 2 + len(delim)
    assert body[pos + 2 :] in (b"", b"\r\n"), body[pos:]


def check_reply(obj: StoredObject, etag: str, req: Drawn, reply: Reply) -> None:
    want = expected(req, obj.size, obj.mtime)
    h = reply.headers
    assert reply.status == want.status, (req, want, reply.status, h)
    assert not reply.will_close, "the server closed a keep-alive connection"
    assert "date" in h
    head = req.method == "HEAD"
    if want.status in (200, 206, 304):
        assert h["etag"] == etag
        assert h["last-modified"] == obj.last_modified
    if want.status == 200:
        assert int(h["content-length"]) == obj.size
        assert reply.body == (b"" if head else obj.data)
        assert "content-range" not in h
    elif want.status == 304:
        assert reply.body == b""
        assert "content-range" not in h
    elif want.status == 416:
        assert h["content-range"] == f"bytes */{obj.size}"
    elif want.status == 412:
        assert "content-range" not in h
    elif want.status == 206:
        assert req.range is not None and req.range.specs is not None
        assert int(h["content-length"]) == len(reply.body)
        got: list[tuple[int, int]] = []
        if h["content-type"].lower().startswith("multipart/byteranges"):
            # §14.6: never a multipart answer to a request for a single range.
            assert len(req.range.specs) > 1
            assert "content-range" not in h
            for part_headers, data in multipart_parts(reply.body, h["content-type"]):
                first, last, total = parse_content_range(part_headers["content-range"])
                assert total == obj.size
                assert part_headers["content-type"].split(";")[0] == obj.media_type
                assert data == obj.data[first : last + 1], (first, last)
                got.append((first, last))
        else:
            first, last, total = parse_content_range(h["content-range"])
            assert total == obj.size
            assert reply.body == obj.data[first : last + 1]
            got.append((first, last))
        # Parts are disjoint and together cover exactly the satisfiable ranges.
        assert sum(b - a + 1 for a, b in got) == sum(b - a + 1 for a, b in merge(got))
        assert merge(got) == want.covered, (req, got, want.covered)


# --------------------------------------------------------------------------- the tests


class Client:
    """One keep-alive connection per listener, reused across examples."""

    def __init__(self, site: Site, listener: str) -> None:
        self.conn = site.connection(listener)

    def send(self, method: str, path: str, headers: dict[str, str]) -> Reply:
        try:
            self.conn.request(method, path, headers=headers)
            return read_reply(self.conn.getresponse())
        except (OSError, http.client.HTTPException):
            self.conn.close()  # the next example starts on a fresh connection
            raise


@pytest.fixture(scope="module")
def clients(site: Site) -> dict[str, Client]:
    return {"http": Client(site, "http"), "https": Client(site, "https")}


def _representations(site: Site) -> dict[str, str]:
    etags = {}
    for path in site.content.objects:
        reply = site.request(path, method="HEAD")
        assert reply.status == 200
        etags[path] = reply.headers["etag"]
    return etags


@pytest.fixture(scope="module")
def etags(site: Site) -> dict[str, str]:
    return _representations(site)


def _weighted_objects(site: Site) -> list[StoredObject]:
    objs = sorted(site.content.objects.values(), key=lambda o: o.path)
    # Small objects are drawn more often; the 1 MiB and 5 MiB ones stay in the mix.
    return [o for o in objs for _ in range(1 if o.size > 100_000 else 3)]


@pytest.mark.parametrize("listener", ["http", "https"])
@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_conditional_and_range_requests_follow_rfc9110(
    site: Site,
    clients: dict[str, Client],
    etags: dict[str, str],
    listener: str,
    data: st.DataObject,
) -> None:
    obj = data.draw(st.sampled_from(_weighted_objects(site)), label="object")
    etag = etags[obj.path]
    req = data.draw(requests(obj, etag), label="request")
    client = clients[listener]
    reply = client.send(req.method, obj.path, req.headers())
    event(f"status {reply.status}")
    check_reply(obj, etag, req, reply)
