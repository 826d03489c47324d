"""What a well-formed answer is: a strict reader of the HTTP/1.1 response stream of one
connection, written from RFC 9110/9112 and the appliance's documented statuses.

:func:`read_answers` splits the bytes a connection received into responses and checks
each one on its own: a status line ``HTTP/1.1 <code> <the RFC's reason phrase>`` with a
code the appliance documents (500 and anything unlisted fail), header lines of a token,
a colon and a value without control characters, exactly one ``Date`` (an IMF-fixdate)
and ``Server``, no ``Transfer-Encoding``, exactly one ``Content-Length`` that frames the
body (none on 204/304, no body on a response to HEAD), nothing after a ``Connection:
close`` response. :func:`check_answer` then checks what the body means: an error is the
JSON ``{"status": <code>, "error": <reason>}``; a 416 carries ``Content-Range: bytes
*/<size>``; a 200 or 206 whose ETag names a stored object carries exactly that object's
bytes, at the Content-Range span (single part) or at every part's span (multipart, parts
ascending and disjoint); and no body ever contains a planted sentinel.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import orjson

from tests.reliability.badinput_site import SENTINEL_MARK, Obj

#: RFC 9110 §15 reason phrases of every status the appliance documents (docs/serving.md).
REASON_PHRASES: dict[int, str] = {
    200: "OK",
    204: "No Content",
    206: "Partial Content",
    304: "Not Modified",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    412: "Precondition Failed",
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([0-9]{3}) ([\x20-\x7e]*)")
_VCHAR = rb"[\x21-\x7e\x80-\xff]"  # a visible character or obs-text
_FIELD_LINE = re.compile(
    rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*"  # token ":" OWS
    rb"((?:" + _VCHAR + rb"(?:[ \t\x21-\x7e\x80-\xff]*" + _VCHAR + rb")?)?)[ \t]*"  # value OWS
)
_IMF_FIXDATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    r" [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
)
_CONTENT_RANGE = re.compile(r"bytes (0|[1-9][0-9]*)-(0|[1-9][0-9]*)/(0|[1-9][0-9]*)")
_MULTIPART = re.compile(r'multipart/byteranges; boundary=(?:"([^"]+)"|([^";, ]+))')
_PASSWD = b"root:x:0:0:"


class Malformed(AssertionError):
    """A response (or the stream of them) is not what the appliance promises."""


@dataclass
class Answer:
    status: int
    fields: list[tuple[str, str]]  # lower-case name, value as Latin-1 text
    body: bytes
    head: bool  # the answer to a HEAD request (no body on the wire)

    def get(self, name: str) -> str | None:
        values = [v for k, v in self.fields if k == name]
        if len(values) > 1:
            raise Malformed(f"{name} appears {len(values)} times: {values}")
        return values[0] if values else None

    @property
    def closes(self) -> bool:
        return self.get("connection") == "close"

    @property
    def error(self) -> str | None:
        """The JSON error reason of a 4xx/5xx (None on HEAD, where there is no body)."""
        if self.status < 400 or self.head:
            return None
        doc = orjson.loads(self.body)
        return str(doc["error"])

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.fields}, body[{len(self.body)}]={self.body[:120]!r})"


def read_answers(
    data: bytes, is_head: Callable[[int], bool], *, cut_short: bool = False
) -> tuple[list[Answer], bool]:
    """The responses in ``data`` (everything one connection received, up to its end).

    ``is_head(i)`` says whether response ``i`` answers a HEAD. ``cut_short`` means the
    connection ended with a reset rather than a close, so the last response may be
    incomplete; the second value says whether it was. Raises :class:`Malformed`.
    """
    answers: list[Answer] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            if cut_short:
                return answers, True
            raise Malformed(f"incomplete response head at byte {pos}: {data[pos : pos + 200]!r}")
        lines = data[pos:end].split(b"\r\n")
        m = _STATUS_LINE.fullmatch(lines[0])
        if m is None:
            raise Malformed(f"bad status line {lines[0][:200]!r}")
        status = int(m[1])
        if status not in REASON_PHRASES:
            raise Malformed(f"undocumented status {status}: {data[pos:end][:400]!r}")
        if m[2] != REASON_PHRASES[status].encode():
            raise Malformed(f"reason phrase {m[2]!r} for {status}")
        fields: list[tuple[str, str]] = []
        for line in lines[1:]:
            f = _FIELD_LINE.fullmatch(line)
            if f is None:
                raise Malformed(f"bad header line {line[:200]!r}")
            fields.append((f[1].decode().lower(), f[2].decode("latin-1")))
        head = is_head(len(answers))
        ans = Answer(status, fields, b"", head)
        cl = ans.get("content-length")
        if status in (204, 304):
            if cl is not None and status == 204:
                raise Malformed("204 with a Content-Length")
            n = 0
        else:
            if cl is None or not cl.isdigit():
                raise Malformed(f"{status} without a valid Content-Length: {fields}")
            n = 0 if head else int(cl)
        body_at = end + 4
        if len(data) - body_at < n:
            if cut_short:
                return answers, True
            raise Malformed(f"body of {len(data) - body_at} bytes, Content-Length {n}")
        ans.body = data[body_at : body_at + n]
        answers.append(ans)
        pos = body_at + n
        if ans.closes and pos < len(data):
            raise Malformed(f"bytes after a Connection: close response: {data[pos : pos + 200]!r}")
    return answers, False


def check_answer(ans: Answer, objects_by_etag: Mapping[str, Obj]) -> int:
    """Check what one response means; returns the object body bytes it verified."""
    for name in ("server", "date"):
        if ans.get(name) is None:
            raise Malformed(f"no {name} header: {ans}")
    if not _IMF_FIXDATE.fullmatch(ans.get("date") or ""):
        raise Malformed(f"Date is not an IMF-fixdate: {ans.get('date')!r}")
    if ans.get("transfer-encoding") is not None:
        raise Malformed("Transfer-Encoding on a response")
    conn = ans.get("connection")
    if conn not in (None, "close", "keep-alive"):
        raise Malformed(f"Connection: {conn!r}")
    if SENTINEL_MARK in ans.body or _PASSWD in ans.body:
        raise Malformed(f"a body leaks a file outside the store: {ans.body[:200]!r}")
    status = ans.status
    if status >= 400:
        if ans.get("content-type") != "application/json":
            raise Malformed(f"error without a JSON body: {ans}")
        if not ans.head:
            doc = orjson.loads(ans.body)
            if doc.get("status") != status or not isinstance(doc.get("error"), str):
                raise Malformed(f"error body {ans.body!r} for {status}")
    if status == 416:
        cr = ans.get("content-range") or ""
        if not re.fullmatch(r"bytes \*/(0|[1-9][0-9]*)", cr):
            raise Malformed(f"416 with Content-Range {cr!r}")
    etag = ans.get("etag")
    obj = objects_by_etag.get(etag) if etag is not None else None
    if status in (200, 206) and etag is not None and obj is None:
        raise Malformed(f"{status} with an ETag no stored object has: {etag}")
    if obj is None:
        if status == 206:
            raise Malformed(f"206 without the ETag of a stored object: {ans}")
        return 0
    if status == 416 and ans.get("content-range") != f"bytes */{obj.size}":
        raise Malformed(f"416 for {obj.path} with {ans.get('content-range')}")
    if status in (200, 206, 304) and ans.get("last-modified") != obj.last_modified_text:
        raise Malformed(f"Last-Modified {ans.get('last-modified')} for {obj.path}")
    if status == 200:
        if ans.get("content-length") != str(obj.size):
            raise Malformed(f"200 for {obj.path} with Content-Length {ans.get('content-length')}")
        if not ans.head and ans.body != obj.data:
            raise Malformed(f"200 for {obj.path} with the wrong bytes")
        return len(ans.body)
    if status == 206:
        return _check_partial(ans, obj)
    return 0


def partial_spans(ans: Answer, obj: Obj) -> list[tuple[int, int]]:
    """The spans a 206 claims (single part or multipart), checked against ``obj``."""
    ctype = ans.get("content-type") or ""
    cr = ans.get("content-range")
    if cr is not None:
        m = _CONTENT_RANGE.fullmatch(cr)
        if m is None:
            raise Malformed(f"206 with Content-Range {cr!r}")
        a, b, total = int(m[1]), int(m[2]), int(m[3])
        if not (a <= b < total == obj.size):
            raise Malformed(f"206 Content-Range {cr} for a size of {obj.size}")
        if ans.get("content-length") != str(b - a + 1):
            raise Malformed(f"206 {cr} with Content-Length {ans.get('content-length')}")
        if not ans.head and ans.body != obj.data[a : b + 1]:
            raise Malformed(f"206 {cr} of {obj.path}: wrong bytes")
        return [(a, b)]
    m = _MULTIPART.fullmatch(ctype)
    if m is None:
        raise Malformed(f"206 with neither Content-Range nor multipart: {ans}")
    if ans.head:
        return []
    boundary = (m[1] or m[2]).encode()
    body = ans.body
    pos = 0
    spans: list[tuple[int, int]] = []
    delim = b"\r\n--" + boundary
    while True:
        if not body.startswith(delim, pos):
            raise Malformed(f"multipart: no delimiter at {pos}")
        pos += len(delim)
        if body.startswith(b"--\r\n", pos):
            if pos + 4 != len(body):
                raise Malformed("multipart: bytes after the close delimiter")
            break
        if not body.startswith(b"\r\n", pos):
            raise Malformed("multipart: delimiter not followed by CRLF")
        end = body.index(b"\r\n\r\n", pos + 2)
        part_fields = dict(
            line.decode("latin-1").split(": ", 1) for line in body[pos + 2 : end].split(b"\r\n")
        )
        pm = _CONTENT_RANGE.fullmatch(part_fields.get("Content-Range", ""))
        if pm is None or int(pm[3]) != obj.size:
            raise Malformed(f"multipart part fields {part_fields}")
        a, b = int(pm[1]), int(pm[2])
        if not a <= b < obj.size or (spans and a <= spans[-1][1] + 1):
            raise Malformed(f"multipart spans not ascending and disjoint: {spans} then {a}-{b}")
        if body[end + 4 : end + 4 + b - a + 1] != obj.data[a : b + 1]:
            raise Malformed(f"multipart part {a}-{b} of {obj.path}: wrong bytes")
        spans.append((a, b))
        pos = end + 4 + b - a + 1
    if len(spans) < 2:
        raise Malformed(f"multipart 206 with {len(spans)} part(s)")
    return spans


def _check_partial(ans: Answer, obj: Obj) -> int:
    spans = partial_spans(ans, obj)
    return sum(b - a + 1 for a, b in spans)
