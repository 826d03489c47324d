"""Response headers, HEAD, errors and request-target checks of the running appliance."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from tests.server.conftest import (
    EXPECTED_MEDIA_TYPES,
    MANIFEST_EXTENSIONS,
    Site,
    http_request,
    open_socket,
    parse_imf_fixdate,
    read_responses,
    wait_for,
)


def max_age(cache_control: str) -> int:
    for directive in cache_control.split(","):
        name, _, value = directive.strip().partition("=")
        if name.lower() == "max-age":
            return int(value)
    raise AssertionError(f"no max-age in {cache_control!r}")


@pytest.mark.parametrize("ext", sorted(EXPECTED_MEDIA_TYPES))
def test_content_type_by_extension(site: Site, ext: str) -> None:
    obj = site.content.by_extension(ext)
    reply = site.request(obj.path)
    assert reply.status == 200
    media, _, params = reply.header("content-type").partition(";")
    assert media.strip() == EXPECTED_MEDIA_TYPES[ext]
    if media.startswith("text/"):  # RFC 9110 §8.3.2: say the charset of text
        assert params.strip().lower() == "charset=utf-8"
    assert reply.body == obj.data


@pytest.mark.parametrize("path", ["/titles/tos/v720/init.mp4", "/titles/tos/subs/empty.vtt"])
def test_validators_and_representation_headers(site: Site, path: str) -> None:
    obj = site.content[path]
    reply = site.request(path)
    assert reply.status == 200
    etag = reply.header("etag")
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 2  # strong
    assert not etag.startswith("W/")
    assert reply.header("last-modified") == obj.last_modified
    assert reply.header("accept-ranges") == "bytes"
    assert int(reply.header("content-length")) == obj.size
    date = parse_imf_fixdate(reply.header("date"))
    assert abs(date - time.time()) < 300
    assert reply.header("server")
    # The same representation gets the same validator on every request.
    assert site.request(path).header("etag") == etag


def test_etag_names_the_content_not_the_path(site: Site) -> None:
    a, b = "/titles/tos/subs/en.vtt", "/titles/sintel/subs/en.vtt"
    assert site.content[a].data == site.content[b].data
    assert site.content[a].tier != site.content[b].tier
    etag_a = site.request(a).header("etag")
    assert site.request(b).header("etag") == etag_a
    other = site.request("/titles/tos/manifest.mpd").header("etag")
    assert other != etag_a


@pytest.mark.parametrize("ext", sorted(EXPECTED_MEDIA_TYPES))
def test_cache_control_manifests_short_segments_long(site: Site, ext: str) -> None:
    obj = site.content.by_extension(ext)
    reply = site.request(obj.path)
    cc = reply.header("cache-control")
    if ext in MANIFEST_EXTENSIONS:
        assert max_age(cc) <= 10, cc
        assert "immutable" not in cc
    else:
        assert max_age(cc) >= 86_400, cc
    # A range of it carries the same lifetime.
    if obj.size:
        ranged = site.request(obj.path, {"Range": "bytes=0-0"})
        assert ranged.status == 206
        assert ranged.header("cache-control") == cc


@pytest.mark.parametrize(
    "path", ["/titles/tos/v1080.mp4", "/titles/tos/subs/empty.vtt", "/titles/sintel/v480/init.mp4"]
)
def test_head_has_the_get_headers_and_no_body(site: Site, path: str) -> None:
    obj = site.content[path]
    get = site.request(path)
    head = site.request(path, method="HEAD")
    assert head.status == 200
    assert head.body == b""
    assert int(head.header("content-length")) == obj.size
    ignore = {"date"}
    assert {k: v for k, v in head.headers.items() if k not in ignore} == {
        k: v for k, v in get.headers.items() if k not in ignore
    }


def test_head_body_is_really_absent_on_the_wire(site: Site) -> None:
    """A HEAD followed by a GET on one connection: the GET's head follows immediately."""
    obj = site.content["/titles/tos/v720/seg-00002.m4s"]
    with open_socket(site) as s:
        s.sendall(http_request(obj.path, method="HEAD") + http_request(obj.path))
        (head_status, head_h, _), (get_status, _, body) = read_responses(s, 2, frozenset({0}))
    assert (head_status, get_status) == (200, 200)
    assert int(head_h["content-length"]) == obj.size
    assert body == obj.data


def test_head_with_range_is_the_whole_representation(site: Site) -> None:
    obj = site.content["/titles/tos/v720/init.mp4"]
    reply = site.request(obj.path, {"Range": "bytes=0-9"}, method="HEAD")
    assert reply.status == 200
    assert int(reply.header("content-length")) == obj.size
    assert "content-range" not in reply.headers


@pytest.mark.parametrize(
    "path", ["/titles/tos/nope.m4s", "/titles/tos/", "/titles", "/", "/titles/tos/v720/init.mp4x"]
)
def test_unknown_object_is_404(site: Site, path: str) -> None:
    reply = site.request(path)
    assert reply.status == 404
    assert orjson.loads(reply.body)["status"] == 404
    assert not reply.will_close
    head = site.request(path, method="HEAD")
    assert head.status == 404 and head.body == b""


def test_query_string_is_not_part_of_the_object_name(site: Site) -> None:
    obj = site.content["/titles/tos/v720/seg-00001.m4s"]
    reply = site.request(obj.path + "?cachebust=1&x=%2e%2e")
    assert reply.status == 200
    assert reply.body == obj.data


def test_single_ranges_at_the_edges(site: Site) -> None:
    obj = site.content["/titles/tos/v720/init.mp4"]  # 4096 bytes
    cases = {
        "bytes=0-0": (0, 0),
        "bytes=4095-4095": (4095, 4095),
        "bytes=4095-": (4095, 4095),
        "bytes=4000-99999": (4000, 4095),
        "bytes=-1": (4095, 4095),
        "bytes=-4096": (0, 4095),
        "bytes=-100000": (0, 4095),
        "bytes=0-": (0, 4095),
    }
    for rng, (first, last) in cases.items():
        reply = site.request(obj.path, {"Range": rng})
        assert reply.status == 206, rng
        assert reply.header("content-range") == f"bytes {first}-{last}/4096", rng
        assert reply.body == obj.data[first : last + 1], rng
    for rng in ("bytes=4096-", "bytes=4096-5000", "bytes=-0", "bytes=99999-"):
        reply = site.request(obj.path, {"Range": rng})
        assert reply.status == 416, rng
        assert reply.header("content-range") == "bytes */4096"
    empty = site.content["/titles/tos/subs/empty.vtt"]
    reply = site.request(empty.path, {"Range": "bytes=0-"})
    assert reply.status == 416
    assert reply.header("content-range") == "bytes */0"


def test_304_and_412(site: Site) -> None:
    obj = site.content["/titles/tos/manifest.mpd"]
    etag = site.request(obj.path).header("etag")
    not_modified = site.request(obj.path, {"If-None-Match": etag})
    assert not_modified.status == 304
    assert not_modified.body == b""
    assert not_modified.header("etag") == etag
    assert "cache-control" in not_modified.headers
    assert site.request(obj.path, {"If-Modified-Since": obj.last_modified}).status == 304
    assert site.request(obj.path, {"If-Match": '"other"'}).status == 412
    earlier = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(obj.mtime - 1))
    assert site.request(obj.path, {"If-Unmodified-Since": earlier}).status == 412
    assert site.request(obj.path, {"If-Match": etag}).status == 200


# --------------------------------------------------------------------------- traversal


def access_log_records(site: Site) -> list[dict[str, object]]:
    path = Path(site.appliance.root) / "access.log"
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]


TRAVERSALS = [
    # (raw request-target, the reason the target check gives)
    (b"/titles/tos/../tos/v720/init.mp4", "dot-segment"),
    (b"/titles/tos/v720/./init.mp4", "dot-segment"),
    (b"/../../../../etc/passwd", "dot-segment"),
    (b"/titles/tos/%2e%2e/tos/v720/init.mp4", "dot-segment"),
    (b"/titles/tos/.%2E/tos/v720/init.mp4", "dot-segment"),
    (b"/titles/tos/%252e%252e/tos/v720/init.mp4", "double-encoded"),
    (b"/titles%2ftos%2fv720%2finit.mp4", "encoded-slash"),
    (b"/titles/tos/v720%2F..%2F..%2Fetc/passwd", "encoded-slash"),
    (b"/titles\\tos\\v720\\init.mp4", "backslash"),
    (b"/titles/tos/..\\..\\etc\\passwd", "backslash"),
    (b"/titles/tos/%5c..%5cinit.mp4", "backslash"),
    (b"/titles/tos/v720/init.mp4%00.txt", "control-char"),
    (b"/titles//tos/v720/init.mp4", "empty-segment"),
]


@pytest.mark.parametrize(("target", "reason"), TRAVERSALS, ids=[t.decode() for t, _ in TRAVERSALS])
def test_traversal_attempts_are_refused_by_the_target_check(
    site: Site, target: bytes, reason: str
) -> None:
    # Several of these name a real object once normalised; they are refused, not resolved.
    req = b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    status, _, body = read_responses_from(site, req)
    assert status == 400, (target, status)
    assert orjson.loads(body)["error"] == reason
    # The access log shows the target check's reason: the request never reached the
    # inventory or a file (which would log "not-found" or a range/full decision).
    wait_for(
        lambda: [r for r in access_log_records(site) if r.get("note") == reason],
        bool,
        what=f"an access log record with note {reason!r}",
    )


def read_responses_from(site: Site, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with open_socket(site) as s:
        s.sendall(request)
        ((status, headers, body),) = read_responses(s, 1)
    return status, headers, body


def test_raw_nul_in_the_target_is_400_and_closes(site: Site) -> None:
    raw = site.raw(b"GET /titles/tos/v720/init.mp4\x00.txt HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400 "), raw[:200]
    assert b"Connection: close" in raw


def test_traversal_over_https_is_refused_too(site: Site) -> None:
    raw = site.raw(
        b"GET /titles/tos/%2e%2e/tos/v720/init.mp4 HTTP/1.1\r\nHost: localhost\r\n"
        b"Connection: close\r\n\r\n",
        listener="https",
    )
    assert raw.startswith(b"HTTP/1.1 400 "), raw[:200]


# --------------------------------------------------------------------------- methods


@pytest.mark.parametrize(("method", "status"), [("POST", 405), ("PUT", 405), ("DELETE", 405)])
def test_unsupported_methods(site: Site, method: str, status: int) -> None:
    reply = site.request("/titles/tos/v720/init.mp4", method=method)
    assert reply.status == status
    assert set(reply.header("allow").replace(" ", "").split(",")) == {"GET", "HEAD", "OPTIONS"}
