"""Fixtures for functional tests of the data plane: a real appliance on 127.0.0.1.

The appliance runs ``python -m oca serve`` in a child process (see tests/appliance.py)
with two workers, an HTTP and an HTTPS listener (certificates from trustme) and a
small content set of deliberately awkward sizes, imported with ``oca store import``
onto two tiers. Tests talk to it over real sockets only.
"""

from __future__ import annotations

import calendar
import http.client
import os
import random
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.appliance import Appliance, make_tls, parse_head, raw_request, write_tree

T = TypeVar("T")

KIB = 1024
MIB = 1024 * KIB

#: What each extension must be served as (the media-type part of Content-Type).
EXPECTED_MEDIA_TYPES: dict[str, str] = {
    "mpd": "application/dash+xml",
    "m4s": "video/iso.segment",
    "mp4": "video/mp4",
    "m4a": "audio/mp4",
    "webm": "video/webm",
    "vtt": "text/vtt",
    "m3u8": "application/vnd.apple.mpegurl",
}
MANIFEST_EXTENSIONS = frozenset({"mpd", "m3u8"})

#: The appliance's multi-range policy, written into its config by the fixture.
MAX_RANGES = 16

_MPD = b"""<?xml version="1.0" encoding="UTF-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT12S"
     minBufferTime="PT2S" profiles="urn:mpeg:dash:profile:isoff-on-demand:2011">
  <Period>
    <AdaptationSet mimeType="video/mp4" segmentAlignment="true">
      <Representation id="v720" bandwidth="2400000" width="1280" height="720">
        <SegmentTemplate initialization="v720/init.mp4" media="v720/seg-$Number%05d$.m4s"
                         startNumber="1" duration="6" timescale="1"/>
      </Representation>
    </AdaptationSet>
  </Period>
</MPD>
"""
_M3U8 = b"""#EXTM3U
#EXT-X-VERSION:7
#EXT-X-STREAM-INF:BANDWIDTH=2400000,RESOLUTION=1280x720
v720/index.m3u8
"""
_VTT = "WEBVTT\n\n00:00:00.000 --> 00:00:02.000\nHallo, Welt \u2014 \u00e7a va?\n".encode()


@dataclass(frozen=True)
class StoredObject:
    """One object of the content set: what the appliance holds and must serve."""

    path: str
    data: bytes
    mtime: int
    tier: str

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def extension(self) -> str:
        return self.path.rpartition(".")[2]

    @property
    def media_type(self) -> str:
        return EXPECTED_MEDIA_TYPES[self.extension]

    @property
    def last_modified(self) -> str:
        return imf_fixdate(self.mtime)


def imf_fixdate(ts: int) -> str:
    """IMF-fixdate (RFC 9110 §5.6.7), written out here rather than borrowed from oca."""
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(ts))


def parse_imf_fixdate(value: str) -> int:
    return calendar.timegm(time.strptime(value, "%a, %d %b %Y %H:%M:%S GMT"))


def _content_layout() -> list[tuple[str, bytes, str]]:
    rnd = random.Random(20240611)
    shared_vtt = _VTT
    return [
        ("/titles/tos/manifest.mpd", _MPD, "ssd"),
        ("/titles/tos/master.m3u8", _M3U8, "ssd"),
        ("/titles/tos/subs/en.vtt", shared_vtt, "ssd"),
        ("/titles/tos/subs/empty.vtt", b"", "ssd"),
        ("/titles/tos/a128/seg-00001.m4a", rnd.randbytes(1), "ssd"),
        ("/titles/tos/v720/init.mp4", rnd.randbytes(4096), "ssd"),
        ("/titles/tos/v720/seg-00001.m4s", rnd.randbytes(4095), "ssd"),
        ("/titles/tos/v720/seg-00002.m4s", rnd.randbytes(4097), "ssd"),
        ("/titles/tos/v1080.mp4", rnd.randbytes(MIB + 17), "ssd"),
        ("/titles/tos/v2160.webm", rnd.randbytes(5 * MIB + 3), "ssd"),
        ("/titles/sintel/v480/seg-00001.m4s", rnd.randbytes(70_001), "hdd"),
        ("/titles/sintel/v480/init.mp4", rnd.randbytes(1234), "hdd"),
        # Same bytes as the tos subtitles: the ETag names the content, not the path.
        ("/titles/sintel/subs/en.vtt", shared_vtt, "hdd"),
    ]


@dataclass(frozen=True)
class ContentSet:
    objects: dict[str, StoredObject]
    ssd_dir: Path
    hdd_dir: Path

    def __getitem__(self, path: str) -> StoredObject:
        return self.objects[path]

    def by_extension(self, ext: str) -> StoredObject:
        return next(o for o in self.objects.values() if o.extension == ext)

    def largest(self) -> StoredObject:
        return max(self.objects.values(), key=lambda o: o.size)


@pytest.fixture(scope="session")
def content(tmp_path_factory: pytest.TempPathFactory) -> ContentSet:
    base = tmp_path_factory.mktemp("content")
    objects: dict[str, StoredObject] = {}
    dirs = {"ssd": base / "ssd", "hdd": base / "hdd"}
    for i, (path, data, tier) in enumerate(_content_layout()):
        # Distinct whole-second modification times, long in the past.
        mtime = 1_600_000_000 + 86_400 * i + 37
        write_tree(dirs[tier], {path: data})
        file = dirs[tier] / path.lstrip("/")
        os.utime(file, (mtime, mtime))
        objects[path] = StoredObject(path, data, mtime, tier)
    return ContentSet(objects, dirs["ssd"], dirs["hdd"])


# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TLSMaterial:
    cert_file: str
    key_file: str
    client_context: ssl.SSLContext
    """Trusts the test CA only; verifies the host name; offers ALPN http/1.1."""


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> TLSMaterial:
    return TLSMaterial(*make_tls(tmp_path_factory.mktemp("tls")))


# --------------------------------------------------------------------------- the site


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names; repeated fields joined with ", "
    body: bytes
    will_close: bool = False

    def header(self, name: str) -> str:
        return self.headers[name.lower()]


@dataclass
class Site:
    """A running appliance with the content set, and ways to talk to it."""

    appliance: Appliance
    content: ContentSet
    tls: TLSMaterial
    connections: list[http.client.HTTPConnection] = field(default_factory=list)

    def address(self, listener: str = "http") -> tuple[str, int]:
        url = self.appliance.urls[listener]
        host, port = url.split("://", 1)[1].rsplit(":", 1)
        return host, int(port)

    def connection(
        self, listener: str = "http", timeout: float = 30.0
    ) -> http.client.HTTPConnection:
        host, port = self.address(listener)
        conn: http.client.HTTPConnection
        if listener == "https":
            conn = http.client.HTTPSConnection(
                host, port, timeout=timeout, context=self.tls.client_context
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        self.connections.append(conn)
        return conn

    def request(
        self,
        path: str,
        headers: dict[str, str] | None = None,
        *,
        method: str = "GET",
        listener: str = "http",
        conn: http.client.HTTPConnection | None = None,
    ) -> Reply:
        """One request; on a fresh connection unless ``conn`` is given."""
        own = conn is None
        c = conn if conn is not None else self.connection(listener)
        try:
            c.request(method, path, headers=headers or {})
            resp = c.getresponse()
            return read_reply(resp)
        finally:
            if own:
                c.close()

    def raw(self, data: bytes, listener: str = "http", timeout: float = 10.0) -> bytes:
        host, port = self.address(listener)
        tls = self.tls.client_context if listener == "https" else None
        return raw_request(host, port, data, read_timeout=timeout, tls=tls)

    def metrics(self, listener: str = "http") -> MetricSamples:
        """Every sample of /metrics, keyed by (sample name, labels)."""
        reply = self.request("/metrics", listener=listener)
        assert reply.status == 200, reply
        return parse_metrics(reply.body.decode())

    def close_connections(self) -> None:
        for c in self.connections:
            c.close()
        self.connections.clear()


def read_reply(resp: http.client.HTTPResponse) -> Reply:
    body = resp.read()
    headers: dict[str, str] = {}
    for k, v in resp.getheaders():
        key = k.lower()
        headers[key] = f"{headers[key]}, {v}" if key in headers else v
    return Reply(resp.status, headers, body, resp.will_close)


MetricSamples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> MetricSamples:
    out: MetricSamples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(samples: MetricSamples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the labelled series does not exist (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for(
    probe: Callable[[], T],
    done: Callable[[T], bool],
    *,
    timeout: float = 15.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until ``done(value)``; fail with the last value at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() >= deadline:
            last = repr(value)[:2000]
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last}")
        time.sleep(interval)


def start_site(root: Path, content: ContentSet, tls: TLSMaterial, **options: Any) -> Site:
    """Import the content set onto both tiers and start an appliance (two workers)."""
    options.setdefault("workers", 2)
    extra = options.pop("extra", "")
    app = Appliance(
        root,
        tls_cert=(tls.cert_file, tls.key_file),
        extra=f"max_ranges = {MAX_RANGES}\n{extra}",
        **options,
    )
    app.import_tree(content.ssd_dir, tier="ssd")
    app.import_tree(content.hdd_dir, tier="hdd")
    app.start()
    return Site(app, content, tls)


def stop_site(site: Site) -> None:
    site.close_connections()
    code = site.appliance.stop()
    log = site.appliance.log_text()
    assert code == 0, f"appliance exited with {code}\n{log[-4000:]}"
    assert "Traceback" not in log, log[-8000:]


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, content: ContentSet, tls_material: TLSMaterial
) -> Iterator[Site]:
    s = start_site(tmp_path_factory.mktemp("appliance"), content, tls_material)
    try:
        yield s
    finally:
        stop_site(s)


@pytest.fixture
def site_factory(
    tmp_path_factory: pytest.TempPathFactory, content: ContentSet, tls_material: TLSMaterial
) -> Iterator[Callable[..., Site]]:
    """Start a fresh appliance (fresh counters) with extra Appliance options."""
    started: list[Site] = []

    def make(**options: Any) -> Site:
        s = start_site(tmp_path_factory.mktemp("appliance"), content, tls_material, **options)
        started.append(s)
        return s

    try:
        yield make
    finally:
        for s in started:
            stop_site(s)


# --------------------------------------------------------------------------- raw sockets


def open_socket(site: Site, listener: str = "http", timeout: float = 10.0) -> socket.socket:
    host, port = site.address(listener)
    s = socket.create_connection((host, port), timeout=timeout)
    if listener == "https":
        return site.tls.client_context.wrap_socket(s, server_hostname="localhost")
    return s


def read_until_closed(sock: socket.socket) -> bytes:
    """Read until the server closes; a timeout (server kept it open) propagates."""
    chunks: list[bytes] = []
    while True:
        c = sock.recv(1 << 16)
        if not c:
            return b"".join(chunks)
        chunks.append(c)


def read_responses(
    sock: socket.socket, count: int, heads: frozenset[int] = frozenset()
) -> list[tuple[int, dict[str, str], bytes]]:
    """Read exactly ``count`` Content-Length framed responses from ``sock``.

    ``heads`` holds the indexes of responses to HEAD requests (no body). Fails if
    anything but the expected responses arrives before the reading stops.
    """
    buf = b""
    out: list[tuple[int, dict[str, str], bytes]] = []
    while len(out) < count:
        while b"\r\n\r\n" not in buf:
            c = sock.recv(1 << 16)
            if not c:
                raise AssertionError(f"connection closed after {len(out)} responses")
            buf += c
        head, _, buf = buf.partition(b"\r\n\r\n")
        status, headers = parse_head(head)
        bodiless = status in (204, 304) or len(out) in heads
        n = 0 if bodiless else int(headers.get("content-length", "0"))
        while len(buf) < n:
            c = sock.recv(1 << 20)
            if not c:
                raise AssertionError("connection closed inside a body")
            buf += c
        out.append((status, headers, buf[:n]))
        buf = buf[n:]
    assert buf == b"", f"unexpected bytes after {count} responses: {buf[:200]!r}"
    return out


def http_request(path: str, *headers: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", *(["Host: localhost"] if version == "1.1" else [])]
    lines += headers
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def evict_from_page_cache(site: Site, obj: StoredObject) -> int:
    """Drop the object's pages from the page cache on every disk holding it.

    The next read of it then misses the cache, as on a cold HDD. Returns how many
    copies were found.
    """
    found = 0
    for tier, _ in site.appliance.tiers:
        for disk in site.appliance.disk_paths(tier):
            file = disk / "objects" / obj.path.lstrip("/")
            if not file.exists():
                continue
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)  # dirty pages cannot be dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            found += 1
    return found
