"""Response framing: status lines, header blocks and the cached Date header.

Everything that can be precomputed is: per-object static header blocks are built
once when a descriptor is opened (see :mod:`oca.server.files`), the Date value is
re-rendered at most once a second, and a response head is one bytes join.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from oca.http.dates import format_http_date
from oca.server.files import OpenFile

if TYPE_CHECKING:
    from oca.peering.transfer import Transfer

REASONS: dict[int, str] = {
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
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}

STATUS_LINES: dict[int, bytes] = {
    code: f"HTTP/1.1 {code} {reason}\r\n".encode("ascii") for code, reason in REASONS.items()
}

_date_cache: list[object] = [0, b""]


def date_header() -> bytes:
    """``Date: ...\\r\\n`` for the current second (re-rendered once per second)."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = f"Date: {format_http_date(now)}\r\n".encode("ascii")
    value = _date_cache[1]
    assert isinstance(value, bytes)
    return value


@dataclass(slots=True, eq=False)
class Response:
    """A response ready to send: its head and a list of body pieces.

    A piece is ``bytes`` or a ``(start, length)`` span of ``file``.
    """

    status: int
    head: bytes
    pieces: list[bytes | tuple[int, int]] = field(default_factory=list)
    file: OpenFile | None = None
    body_bytes: int = 0
    tier: str = ""
    close: bool = False
    note: str = ""  # the decision's reason, for the access log
    # A miss being fetched: ``file`` is its part file, sent only up to what arrived.
    growing: Transfer | None = None


def simple(
    status: int,
    body: bytes = b"",
    *,
    content_type: bytes = b"text/plain; charset=utf-8",
    extra: bytes = b"",
    close: bool = False,
    head_only: bool = False,
    server: bytes = b"Server: oca\r\n",
    note: str = "",
) -> Response:
    """A small in-memory response (errors, health, metrics)."""
    parts = [
        STATUS_LINES[status],
        server,
        date_header(),
        b"Content-Type: ",
        content_type,
        b"\r\nContent-Length: ",
        str(len(body)).encode("ascii"),
        b"\r\n",
        extra,
    ]
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    pieces: list[bytes | tuple[int, int]] = [] if head_only or not body else [body]
    return Response(
        status,
        b"".join(parts),
        pieces,
        body_bytes=0 if head_only else len(body),
        close=close,
        note=note,
    )
