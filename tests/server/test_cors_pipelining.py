"""CORS, OPTIONS, pipelining and connection management over raw sockets."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from tests.server.conftest import (
    MIB,
    Site,
    evict_from_page_cache,
    http_request,
    open_socket,
    read_responses,
    read_until_closed,
)
from tests.server.test_http_properties import multipart_parts, parse_content_range

# --------------------------------------------------------------------------- OPTIONS, CORS


def test_options_asterisk(site: Site) -> None:
    with open_socket(site) as s:
        s.sendall(b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n" + http_request("/nope"))
        (status, headers, body), (after, _, _) = read_responses(s, 2)
    assert status in (200, 204)
    assert set(headers["allow"].replace(" ", "").split(",")) >= {"GET", "HEAD", "OPTIONS"}
    assert body == b""
    assert after == 404  # the connection stays usable


def test_cors_preflight(site: Site) -> None:
    req = (
        b"OPTIONS /titles/tos/v720/seg-00001.m4s HTTP/1.1\r\nHost: localhost\r\n"
        b"Origin: https://player.example\r\n"
        b"Access-Control-Request-Method: GET\r\n"
        b"Access-Control-Request-Headers: range, if-range, x-playback-session-id\r\n\r\n"
    )
    with open_socket(site) as s:
        s.sendall(req)
        ((status, h, body),) = read_responses(s, 1)
    assert status in (200, 204)
    assert body == b""
    assert h["access-control-allow-origin"] in ("*", "https://player.example")
    methods = set(h["access-control-allow-methods"].replace(" ", "").split(","))
    assert {"GET", "HEAD"} <= methods
    assert h["access-control-allow-headers"] == "range, if-range, x-playback-session-id"
    assert int(h["access-control-max-age"]) > 0


def test_cors_preflight_without_requested_headers_allows_range(site: Site) -> None:
    req = (
        b"OPTIONS /titles/tos/manifest.mpd HTTP/1.1\r\nHost: localhost\r\n"
        b"Origin: https://player.example\r\nAccess-Control-Request-Method: GET\r\n\r\n"
    )
    with open_socket(site) as s:
        s.sendall(req)
        ((status, h, _),) = read_responses(s, 1)
    assert status in (200, 204)
    assert "range" in h["access-control-allow-headers"].lower()


def exposed(headers: dict[str, str]) -> set[str]:
    return {v.strip().lower() for v in headers["access-control-expose-headers"].split(",")}


@pytest.mark.parametrize("rng", [None, "bytes=10-19", "bytes=0-0,100-101"])
def test_cors_headers_on_content_responses(site: Site, rng: str | None) -> None:
    headers = {"Origin": "https://player.example"}
    if rng:
        headers["Range"] = rng
    reply = site.request("/titles/tos/v720/seg-00002.m4s", headers)
    assert reply.status == (206 if rng else 200)
    assert reply.header("access-control-allow-origin") in ("*", "https://player.example")
    assert {"content-range", "content-length"} <= exposed(reply.headers)


def test_cors_headers_on_304_and_416(site: Site) -> None:
    path = "/titles/tos/v720/seg-00002.m4s"
    etag = site.request(path).header("etag")
    for headers, status in (
        ({"If-None-Match": etag}, 304),
        ({"Range": "bytes=999999-"}, 416),
    ):
        reply = site.request(path, {"Origin": "https://player.example", **headers})
        assert reply.status == status
        assert reply.header("access-control-allow-origin") in ("*", "https://player.example")


def test_cors_headers_on_404(site: Site) -> None:
    """A cross-origin player must be able to read a 404, not see a network error."""
    reply = site.request("/titles/tos/gone.m4s", {"Origin": "https://player.example"})
    assert reply.status == 404
    assert reply.header("access-control-allow-origin") in ("*", "https://player.example")


def test_cors_with_a_list_of_allowed_origins(site_factory: Callable[..., Site]) -> None:
    site = site_factory(
        workers=1, extra='cors_allow_origins = ["https://a.example", "https://b.example"]'
    )
    path = "/titles/tos/v720/init.mp4"
    allowed = site.request(path, {"Origin": "https://b.example", "Range": "bytes=0-0"})
    assert allowed.status == 206
    assert allowed.header("access-control-allow-origin") == "https://b.example"
    assert "origin" in allowed.header("vary").lower()
    assert {"content-range", "content-length"} <= exposed(allowed.headers)
    other = site.request(path, {"Origin": "https://evil.example"})
    assert other.status == 200
    assert "access-control-allow-origin" not in other.headers
    assert "origin" in other.header("vary").lower()  # caches must key on Origin
    preflight = (
        b"OPTIONS /titles/tos/v720/init.mp4 HTTP/1.1\r\nHost: localhost\r\n"
        b"Origin: https://evil.example\r\nAccess-Control-Request-Method: GET\r\n\r\n"
    )
    with open_socket(site) as s:
        s.sendall(preflight)
        ((status, h, _),) = read_responses(s, 1)
    assert status in (200, 204)
    assert "access-control-allow-origin" not in h


# --------------------------------------------------------------------------- pipelining


def test_ten_pipelined_requests_in_one_write(site: Site) -> None:
    c = site.content
    plan: list[tuple[bytes, int, bytes | None]] = [
        # (request, status, expected body or None for multipart)
        (http_request("/titles/tos/v720/init.mp4", "Range: bytes=0-99"), 206,
         c["/titles/tos/v720/init.mp4"].data[:100]),
        (http_request("/titles/tos/v1080.mp4", "Range: bytes=1048000-"), 206,
         c["/titles/tos/v1080.mp4"].data[1048000:]),
        (http_request("/titles/tos/missing.m4s"), 404, None),
        (http_request("/titles/tos/manifest.mpd"), 200, c["/titles/tos/manifest.mpd"].data),
        (http_request("/titles/sintel/v480/seg-00001.m4s", "Range: bytes=-5"), 206,
         c["/titles/sintel/v480/seg-00001.m4s"].data[-5:]),
        (http_request("/titles/tos/v2160.webm", "Range: bytes=5242000-5242879"), 206,
         c["/titles/tos/v2160.webm"].data[5242000:5242880]),
        (http_request("/titles/tos/subs/empty.vtt"), 200, b""),
        (http_request("/titles/tos/v720/seg-00001.m4s", "Range: bytes=0-1,4000-4001"), 206,
         None),
        (http_request("/titles/tos/a128/seg-00001.m4a"), 200,
         c["/titles/tos/a128/seg-00001.m4a"].data),
        (http_request("/titles/tos/v720/seg-00002.m4s", "Range: bytes=4096-"), 206,
         c["/titles/tos/v720/seg-00002.m4s"].data[4096:]),
    ]  # fmt: skip
    with open_socket(site) as s:
        s.sendall(b"".join(r for r, _, _ in plan))
        got = read_responses(s, len(plan))
    for i, ((_, status, body), (got_status, h, got_body)) in enumerate(zip(plan, got, strict=True)):
        assert got_status == status, (i, got_status, h)
        if body is not None and status != 404:
            assert got_body == body, i
    # The multipart one, in detail.
    seg = c["/titles/tos/v720/seg-00001.m4s"].data
    parts = list(multipart_parts(got[7][2], got[7][1]["content-type"]))
    assert [parse_content_range(p["content-range"]) for p, _ in parts] == [
        (0, 1, 4095),
        (4000, 4001, 4095),
    ]
    assert [d for _, d in parts] == [seg[0:2], seg[4000:4002]]


def test_pipelined_bodiless_answers_keep_the_framing(site: Site) -> None:
    """304, HEAD and errors between full answers: no stray byte shifts the stream."""
    obj = site.content["/titles/tos/v720/seg-00001.m4s"]
    etag = site.request(obj.path).header("etag")
    reqs = [
        http_request(obj.path, f"If-None-Match: {etag}"),  # 304
        http_request(obj.path, method="HEAD"),  # 200, no body
        http_request(obj.path, 'If-Match: "nope"'),  # 412
        http_request(obj.path, "Range: bytes=4095-"),  # 416
        http_request(obj.path, f"If-Modified-Since: {obj.last_modified}"),  # 304
        http_request(obj.path, f"If-Range: {etag}", "Range: bytes=10-19"),  # 206
        http_request("/titles/none.mpd", method="HEAD"),  # 404, no body
        http_request(obj.path),  # 200
    ]
    with open_socket(site) as s:
        s.sendall(b"".join(reqs))
        got = read_responses(s, len(reqs), heads=frozenset({1, 6}))
    assert [g[0] for g in got] == [304, 200, 412, 416, 304, 206, 404, 200]
    assert got[0][2] == b"" and got[4][2] == b""
    assert got[3][1]["content-range"] == f"bytes */{obj.size}"
    assert got[5][2] == obj.data[10:20]
    assert got[7][2] == obj.data


def test_pipelined_requests_then_half_close(site: Site) -> None:
    """The client sends its requests and shuts down its side: all are still answered."""
    obj = site.content["/titles/tos/v1080.mp4"]
    # Cold pages: the answers need reads off the loop, after the client's FIN arrived.
    assert evict_from_page_cache(site, obj) == 1
    reqs = [http_request(obj.path, f"Range: bytes={i * 1000}-{i * 1000 + 999}") for i in range(8)]
    with open_socket(site) as s:
        s.sendall(b"".join(reqs))
        s.shutdown(socket.SHUT_WR)
        data = read_until_closed(s)
    bodies = split_responses(data)
    assert [st for st, _ in bodies] == [206] * 8
    for i, (_, body) in enumerate(bodies):
        assert body == obj.data[i * 1000 : i * 1000 + 1000]


def test_pipeline_stops_at_connection_close(site: Site) -> None:
    a, b = site.content["/titles/tos/v720/init.mp4"], site.content["/titles/tos/manifest.mpd"]
    with open_socket(site) as s:
        s.sendall(
            http_request(a.path, "Range: bytes=0-9")
            + http_request(b.path, "Connection: close")
            + http_request(a.path)
        )
        data = read_until_closed(s)
    got = split_responses(data)
    assert [st for st, _ in got] == [206, 200]
    assert got[1][1] == b.data


def split_responses(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, data[:200]
        lines = head.decode("latin-1").split("\r\n")
        n = 0
        for line in lines[1:]:
            k, _, v = line.partition(":")
            if k.lower() == "content-length":
                n = int(v)
        out.append((int(lines[0].split()[1]), rest[:n]))
        data = rest[n:]
    return out


# --------------------------------------------------------------------------- connections


def test_http10_closes_by_default(site: Site) -> None:
    obj = site.content["/titles/tos/v720/seg-00001.m4s"]
    with open_socket(site) as s:
        s.sendall(http_request(obj.path, version="1.0"))
        data = read_until_closed(s)
    ((status, body),) = split_responses(data)
    assert status == 200 and body == obj.data
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    assert b"connection: keep-alive" not in head


def test_http10_keep_alive(site: Site) -> None:
    obj = site.content["/titles/tos/v720/seg-00001.m4s"]
    with open_socket(site) as s:
        s.sendall(http_request(obj.path, "Connection: keep-alive", version="1.0"))
        ((status, h, body),) = read_responses(s, 1)
        assert status == 200 and body == obj.data
        assert h["connection"].lower() == "keep-alive"
        # Still open: a second request on the same connection is answered.
        s.sendall(http_request(obj.path, "Range: bytes=1-2", version="1.0"))
        data = read_until_closed(s)
    ((status, body),) = split_responses(data)
    assert status == 206 and body == obj.data[1:3]


def test_http10_with_proxy_connection_is_still_http10(site: Site) -> None:
    # llhttp reads Proxy-Connection like Connection: the request must still be taken
    # as HTTP/1.0 (no Host needed), not as the HTTP/1.1 a bare keep-alive suggests.
    obj = site.content["/titles/tos/v720/seg-00001.m4s"]
    with open_socket(site) as s:
        s.sendall(f"GET {obj.path} HTTP/1.0\r\nProxy-Connection: keep-alive\r\n\r\n".encode())
        ((status, _h, body),) = read_responses(s, 1)
    assert status == 200 and body == obj.data


def test_connection_close_is_honoured(site: Site) -> None:
    obj = site.content["/titles/tos/manifest.mpd"]
    with open_socket(site) as s:
        s.sendall(http_request(obj.path, "Connection: close"))
        data = read_until_closed(s)
    ((status, body),) = split_responses(data)
    assert status == 200 and body == obj.data
    assert b"\r\nConnection: close\r\n" in data.split(b"\r\n\r\n", 1)[0] + b"\r\n"


def test_keep_alive_by_default_on_http11(site: Site) -> None:
    obj = site.content["/titles/tos/manifest.mpd"]
    with open_socket(site) as s:
        for _ in range(3):
            s.sendall(http_request(obj.path))
            ((status, h, body),) = read_responses(s, 1)
            assert status == 200 and body == obj.data
            assert h.get("connection", "").lower() != "close"


def test_five_mib_body_over_sendfile(site: Site) -> None:
    obj = site.content["/titles/tos/v2160.webm"]
    assert obj.size > 5 * MIB
    with open_socket(site, timeout=30) as s:
        # A small receive buffer makes the server wait for writability many times.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        s.sendall(http_request(obj.path) + http_request(obj.path, "Range: bytes=1-5242881"))
        (status, h, body), (status2, h2, body2) = read_responses(s, 2)
    assert status == 200 and int(h["content-length"]) == obj.size
    assert body == obj.data
    assert status2 == 206 and h2["content-range"] == f"bytes 1-5242881/{obj.size}"
    assert body2 == obj.data[1:5242882]


def test_more_pipelined_requests_than_the_queue_limit(site: Site) -> None:
    """Beyond max_pipelined_requests (32) reading pauses, then resumes: none is lost."""
    obj = site.content["/titles/tos/v1080.mp4"]
    n = 100
    reqs = [http_request(obj.path, f"Range: bytes={i * 7}-{i * 7 + 6}") for i in range(n)]
    with open_socket(site) as s:
        s.sendall(b"".join(reqs))
        got = read_responses(s, n)
    for i, (status, _, body) in enumerate(got):
        assert status == 206, (i, status)
        assert body == obj.data[i * 7 : i * 7 + 7], i


def test_malformed_request_after_good_ones(site: Site) -> None:
    """Requests before a malformed one are answered in order; then 400 and close."""
    a, b = site.content["/titles/tos/v720/init.mp4"], site.content["/titles/tos/master.m3u8"]
    with open_socket(site) as s:
        s.sendall(
            http_request(a.path, "Range: bytes=5-9")
            + http_request(b.path)
            + http_request("/x", "Content-Length: 1", "Content-Length: 2")
        )
        data = read_until_closed(s)
    got = split_responses(data)
    assert [st for st, _ in got] == [206, 200, 400]
    assert got[0][1] == a.data[5:10]
    assert got[1][1] == b.data


def test_cold_file_over_sendfile(site: Site) -> None:
    """Pages not in the page cache are read off the loop first, then sent whole."""
    big, small = site.content["/titles/tos/v2160.webm"], site.content["/titles/tos/v1080.mp4"]
    assert evict_from_page_cache(site, big) == 1
    assert evict_from_page_cache(site, small) == 1
    with open_socket(site, timeout=30) as s:
        s.sendall(
            http_request(big.path)
            + http_request(small.path, "Range: bytes=1000-")
            + http_request(big.path, "Range: bytes=-10,0-9")
        )
        (st1, _, b1), (st2, _, b2), (st3, h3, b3) = read_responses(s, 3)
    assert (st1, st2, st3) == (200, 206, 206)
    assert b1 == big.data
    assert b2 == small.data[1000:]
    parts = list(multipart_parts(b3, h3["content-type"]))
    assert [d for _, d in parts] == [big.data[:10], big.data[-10:]]
