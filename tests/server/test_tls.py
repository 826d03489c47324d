"""HTTPS: handshake with a trustme certificate, full and ranged downloads over TLS."""

from __future__ import annotations

import socket
import ssl
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.server.conftest import (
    Site,
    evict_from_page_cache,
    http_request,
    open_socket,
    read_responses,
)
from tests.server.test_http_properties import multipart_parts, parse_content_range


def test_handshake_verifies_and_negotiates_http11(site: Site) -> None:
    with open_socket(site, "https") as s:
        assert isinstance(s, ssl.SSLSocket)
        assert s.version() in ("TLSv1.2", "TLSv1.3")
        assert s.selected_alpn_protocol() == "http/1.1"
        cert = s.getpeercert()
        assert cert is not None
        san = cert.get("subjectAltName", ())
        assert isinstance(san, tuple)
        names = {str(entry[1]) for entry in san if entry[0] in ("DNS", "IP Address")}
        assert {"localhost", "127.0.0.1"} <= names
        s.sendall(http_request("/titles/tos/manifest.mpd"))
        ((status, _, body),) = read_responses(s, 1)
    assert status == 200
    assert body == site.content["/titles/tos/manifest.mpd"].data


def test_client_without_the_ca_refuses_the_certificate(site: Site) -> None:
    host, port = site.address("https")
    ctx = ssl.create_default_context()  # system roots only: the test CA is unknown
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ctx.wrap_socket(raw, server_hostname="localhost")


def test_plain_http_on_the_tls_port_gets_no_http_answer(site: Site) -> None:
    host, port = site.address("https")
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(http_request("/titles/tos/manifest.mpd"))
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            data = b""
    assert not data.startswith(b"HTTP/")


@pytest.mark.parametrize("path", ["/titles/tos/v2160.webm", "/titles/tos/v1080.mp4"])
def test_full_download_over_https(site: Site, path: str) -> None:
    obj = site.content[path]
    reply = site.request(path, listener="https")
    assert reply.status == 200
    assert int(reply.header("content-length")) == obj.size
    assert reply.body == obj.data


def test_ranged_downloads_over_https(site: Site) -> None:
    obj = site.content["/titles/tos/v2160.webm"]
    conn = site.connection("https")
    try:
        for first, last in [(0, 0), (1, 262_144), (262_143, 262_145), (4 * 1024 * 1024, None)]:
            rng = f"bytes={first}-{'' if last is None else last}"
            reply = site.request(obj.path, {"Range": rng}, conn=conn)
            end = obj.size - 1 if last is None else last
            assert reply.status == 206, rng
            assert reply.header("content-range") == f"bytes {first}-{end}/{obj.size}"
            assert reply.body == obj.data[first : end + 1], rng
            assert not reply.will_close
        reply = site.request(obj.path, {"Range": "bytes=10-19,3000000-3000009"}, conn=conn)
        assert reply.status == 206
        parts = list(multipart_parts(reply.body, reply.header("content-type")))
        assert [parse_content_range(h["content-range"])[:2] for h, _ in parts] == [
            (10, 19),
            (3000000, 3000009),
        ]
        assert [d for _, d in parts] == [obj.data[10:20], obj.data[3000000:3000010]]
        etag = reply.header("etag")
        assert site.request(obj.path, {"If-None-Match": etag}, conn=conn).status == 304
        assert site.request(obj.path, {"Range": f"bytes={obj.size}-"}, conn=conn).status == 416
        head = site.request(obj.path, method="HEAD", conn=conn)
        assert head.status == 200 and head.body == b""
        assert int(head.header("content-length")) == obj.size
    finally:
        conn.close()


def test_pipelined_requests_over_https(site: Site) -> None:
    c = site.content
    paths = [
        ("/titles/tos/v720/init.mp4", "bytes=0-99"),
        ("/titles/tos/missing.mpd", None),
        ("/titles/tos/v1080.mp4", None),
        ("/titles/sintel/v480/seg-00001.m4s", "bytes=-10"),
        ("/titles/tos/subs/empty.vtt", None),
    ]
    reqs = b"".join(http_request(p, *([f"Range: {r}"] if r else [])) for p, r in paths)
    with open_socket(site, "https", timeout=30) as s:
        s.sendall(reqs)
        got = read_responses(s, len(paths))
    assert [g[0] for g in got] == [206, 404, 200, 206, 200]
    assert got[0][2] == c["/titles/tos/v720/init.mp4"].data[:100]
    assert got[2][2] == c["/titles/tos/v1080.mp4"].data
    assert got[3][2] == c["/titles/sintel/v480/seg-00001.m4s"].data[-10:]
    assert got[4][2] == b""


def test_slow_reader_over_https_gets_every_byte(site: Site) -> None:
    """A small receive window makes the TLS transport pause and resume writing."""
    obj = site.content["/titles/tos/v2160.webm"]
    host, port = site.address("https")
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024)
    raw.settimeout(30)
    raw.connect((host, port))
    with site.tls.client_context.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(http_request(obj.path) + http_request(obj.path, "Range: bytes=-70000"))
        (status, _, body), (status2, _, body2) = read_responses(s, 2)
    assert status == 200 and body == obj.data
    assert status2 == 206 and body2 == obj.data[-70000:]


def test_concurrent_https_and_http_downloads(site: Site) -> None:
    obj = site.content["/titles/tos/v1080.mp4"]

    def fetch(i: int) -> bool:
        listener = "https" if i % 2 else "http"
        first = i * 50_000
        reply = site.request(
            obj.path, {"Range": f"bytes={first}-{first + 99_999}"}, listener=listener
        )
        return reply.status == 206 and reply.body == obj.data[first : first + 100_000]

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(fetch, range(16)))


def test_cold_file_over_https(site: Site) -> None:
    obj = site.content["/titles/tos/v2160.webm"]
    assert evict_from_page_cache(site, obj) == 1
    reply = site.request(obj.path, listener="https")
    assert reply.status == 200 and reply.body == obj.data
    assert evict_from_page_cache(site, obj) == 1
    reply = site.request(obj.path, {"Range": "bytes=3000000-3999999"}, listener="https")
    assert reply.status == 206 and reply.body == obj.data[3000000:4000000]


@pytest.mark.parametrize(
    "request_bytes",
    [
        http_request("/titles/tos/manifest.mpd", "Connection: close"),
        http_request("/titles/tos/manifest.mpd", version="1.0"),
    ],
    ids=["connection-close", "http10"],
)
def test_https_close_sends_close_notify(site: Site, request_bytes: bytes) -> None:
    """The server ends a TLS connection with close_notify, not a bare TCP close
    (which a client cannot tell apart from a truncation)."""
    host, port = site.address("https")
    raw = socket.create_connection((host, port), timeout=10)
    with site.tls.client_context.wrap_socket(
        raw, server_hostname="localhost", suppress_ragged_eofs=False
    ) as s:
        s.sendall(request_bytes)
        chunks = []
        while True:
            c = s.recv(65536)  # SSLEOFError here would mean no close_notify
            if not c:
                break
            chunks.append(c)
    data = b"".join(chunks)
    assert data.startswith(b"HTTP/1.1 200 ")
    assert data.endswith(site.content["/titles/tos/manifest.mpd"].data)
