"""Request limits and malformed framing against the real server, status by status.

Each case sends raw bytes to a running appliance and asserts the exact status and
error reason documented in :mod:`oca.server.protocol`; after every case a normal GET on
a new connection must still be answered (the autouse ``still_serving`` fixture).
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.appliance import (
    Appliance,
    fetch,
    parse_responses,
    raw_request,
    read_response,
    wait_until,
    write_tree,
)

OBJECT = "/titles/lim/seg-1.m4s"
BODY = bytes(range(256)) * 40
LINE_LIMIT = 1024
HEADER_LIMIT = 4096


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    root = tmp_path_factory.mktemp("limits")
    a = Appliance(
        root,
        tiers=(("ssd", 1),),
        extra=(
            f"max_request_line_bytes = {LINE_LIMIT}\n"
            f"max_header_bytes = {HEADER_LIMIT}\n"
            "header_timeout_seconds = 1\n"
            "keepalive_timeout_seconds = 1"
        ),
    )
    a.import_tree(write_tree(root / "src", {OBJECT: BODY}))
    a.start()
    yield a
    a.stop()


@pytest.fixture(autouse=True)
def still_serving(app: Appliance) -> Iterator[None]:
    yield
    status, _, body = fetch(*app.host_port, OBJECT)
    assert (status, body) == (200, BODY), "the server stopped serving after the previous case"


def one_response(app: Appliance, data: bytes) -> tuple[int, dict[str, str], bytes]:
    out = raw_request(*app.host_port, data)
    responses = list(parse_responses(out))
    assert len(responses) == 1, out[:500]
    return responses[0]


def error_of(body: bytes) -> str:
    return str(orjson.loads(body)["error"])


def request(target: str = OBJECT, *extra: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: oca.test", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# ---------------------------------------------------------------- sizes


@pytest.mark.parametrize("target_bytes", [LINE_LIMIT + 1, 3 * LINE_LIMIT])
def test_request_line_over_the_limit_is_414(app: Appliance, target_bytes: int) -> None:
    target = "/titles/" + "a" * (target_bytes - len("/titles/"))
    status, headers, body = one_response(app, request(target))
    assert status == 414
    assert error_of(body) == "uri-too-long"
    assert headers["connection"] == "close"


def test_request_line_longer_than_both_limits_together_is_414(app: Appliance) -> None:
    # Arrives in one read, before the parser has seen any of it; still a request line.
    target = "/titles/" + "a" * (LINE_LIMIT + HEADER_LIMIT + 1000)
    status, _, body = one_response(app, request(target))
    assert (status, error_of(body)) == (414, "uri-too-long")


def test_request_line_at_the_limit_is_parsed(app: Appliance) -> None:
    target = "/titles/lim/" + "a" * (LINE_LIMIT - len("/titles/lim/"))
    status, _, body = one_response(app, request(target, "Connection: close"))
    assert (status, error_of(body)) == (404, "not-found")


def test_one_huge_header_is_431(app: Appliance) -> None:
    status, headers, body = one_response(app, request(OBJECT, "X-Big: " + "b" * HEADER_LIMIT))
    assert (status, error_of(body)) == (431, "header-fields-too-large")
    assert headers["connection"] == "close"


@pytest.mark.parametrize("count", [110, 1000])
def test_many_headers_are_431(app: Appliance, count: int) -> None:
    # 110 x ~40 bytes passes the header limit inside the parser; 1000 passes it before.
    extra = [f"X-Filler-{i:04d}: {'v' * 24}" for i in range(count)]
    status, _, body = one_response(app, request(OBJECT, *extra))
    assert (status, error_of(body)) == (431, "header-fields-too-large")


# ---------------------------------------------------------------- methods


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "TRACE"])
def test_known_unsupported_methods_are_405_with_allow(app: Appliance, method: str) -> None:
    status, headers, body = one_response(app, request(OBJECT, "Connection: close", method=method))
    assert (status, error_of(body)) == (405, "method-not-allowed")
    assert headers["allow"] == "GET, HEAD, OPTIONS"


def test_405_keeps_the_connection_for_the_next_request(app: Appliance) -> None:
    data = request(OBJECT, method="POST") + request(OBJECT, "Connection: close")
    responses = list(parse_responses(raw_request(*app.host_port, data)))
    assert [r[0] for r in responses] == [405, 200]
    assert responses[1][2] == BODY


@pytest.mark.parametrize("method", ["FOO", "PROPFIND"])
def test_unknown_method_is_501(app: Appliance, method: str) -> None:
    status, headers, body = one_response(app, request(OBJECT, "Connection: close", method=method))
    assert (status, error_of(body)) == (501, "method-not-implemented")
    assert headers["connection"] == "close"


# ---------------------------------------------------------------- bodies and framing


def test_get_with_a_body_is_413(app: Appliance) -> None:
    data = request(OBJECT, "Content-Length: 5") + b"hello"
    status, headers, body = one_response(app, data)
    assert (status, error_of(body)) == (413, "request-body-too-large")
    assert headers["connection"] == "close"


def test_get_with_content_length_zero_is_served(app: Appliance) -> None:
    status, _, body = one_response(app, request(OBJECT, "Content-Length: 0", "Connection: close"))
    assert (status, body) == (200, BODY)


def test_chunked_body_is_413(app: Appliance) -> None:
    # protocol.py: "request body 413"; with max_request_body_bytes = 0 chunked is refused.
    data = request(OBJECT, "Transfer-Encoding: chunked") + b"5\r\nhello\r\n0\r\n\r\n"
    status, _, body = one_response(app, data)
    assert (status, error_of(body)) == (413, "request-body-too-large")


def test_content_length_with_transfer_encoding_is_400(app: Appliance) -> None:
    data = request(OBJECT, "Content-Length: 5", "Transfer-Encoding: chunked") + b"0\r\n\r\n"
    status, headers, body = one_response(app, data)
    assert status == 400
    assert headers["connection"] == "close"
    # llhttp refuses this framing itself; the handler's own check is the fallback.
    assert error_of(body).startswith(("conflicting-framing", "malformed-request"))


def test_two_differing_content_lengths_are_400(app: Appliance) -> None:
    data = request(OBJECT, "Content-Length: 5", "Content-Length: 6") + b"hello!"
    status, headers, body = one_response(app, data)
    assert status == 400
    assert headers["connection"] == "close"
    assert error_of(body).startswith(("conflicting-content-length", "malformed-request"))


def test_missing_host_on_http11_is_400(app: Appliance) -> None:
    status, _, body = one_response(app, f"GET {OBJECT} HTTP/1.1\r\n\r\n".encode())
    assert (status, error_of(body)) == (400, "missing-host")


def test_missing_host_on_http10_is_served(app: Appliance) -> None:
    status, _, body = one_response(app, f"GET {OBJECT} HTTP/1.0\r\n\r\n".encode())
    assert (status, body) == (200, BODY)


def test_duplicate_host_is_400(app: Appliance) -> None:
    status, _, body = one_response(app, request(OBJECT, "Host: other.test"))
    assert (status, error_of(body)) == (400, "duplicate-host")


def test_http2_version_in_the_request_line_is_505(app: Appliance) -> None:
    status, headers, body = one_response(app, request(OBJECT, version="2.0"))
    assert (status, error_of(body)) == (505, "http-version-not-supported")
    assert headers["connection"] == "close"


# ---------------------------------------------------------------- timeouts


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes; (bytes, seconds until the close)."""
    start = time.monotonic()
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            c = sock.recv(65536)
        except ConnectionResetError:
            break
        if not c:
            break
        chunks.append(c)
    return b"".join(chunks), time.monotonic() - start


@pytest.mark.parametrize("drip", [True, False], ids=["dripping", "stalled"])
def test_slow_headers_get_408_and_the_connection_is_closed(app: Appliance, drip: bool) -> None:
    # A slowloris client: a partial request head, then (dripping) one more header byte
    # every 50 ms, or (stalled) nothing. header_timeout_seconds = 1 bounds the whole head,
    # enforced by a once-a-second sweep, so the 408 is due within about 2 s either way.
    sock = socket.create_connection(app.host_port, timeout=5)
    try:
        sock.sendall(request(OBJECT)[:-4] + b"\r\nX-Slow: ")
        started = time.monotonic()
        while time.monotonic() < started + 4:
            readable, _, _ = select.select([sock], [], [], 0.05)
            if readable:
                break
            if drip:
                try:
                    sock.send(b"a")
                except (BrokenPipeError, ConnectionResetError):
                    break
        out, _ = read_until_closed(sock, 2)
        elapsed = time.monotonic() - started
    finally:
        sock.close()
    responses = list(parse_responses(out))
    assert len(responses) == 1, f"expected one 408 within 4 s, got {out[:300]!r}"
    status, headers, body = responses[0]
    assert (status, error_of(body)) == (408, "request-timeout")
    assert headers["connection"] == "close"
    assert elapsed < 4


def test_silent_connection_is_closed_without_a_response(app: Appliance) -> None:
    sock = socket.create_connection(app.host_port)
    try:
        out, waited = read_until_closed(sock, 8)
    finally:
        sock.close()
    assert out == b""
    assert waited < 4


def test_idle_keepalive_connection_is_closed_without_bytes(app: Appliance) -> None:
    sock = socket.create_connection(app.host_port, timeout=5)
    try:
        sock.sendall(request(OBJECT))
        status, headers, body = read_response(sock)
        assert (status, body) == (200, BODY)
        assert "connection" not in headers
        rest, waited = read_until_closed(sock, 8)
    finally:
        sock.close()
    assert rest == b""
    assert waited < 4  # keepalive_timeout_seconds = 1 plus the sweep


# ---------------------------------------------------------------- connection limit


@pytest.fixture
def small_app(tmp_path: Path) -> Iterator[Appliance]:
    a = Appliance(tmp_path, tiers=(("ssd", 1),), extra="max_connections = 5")
    a.import_tree(write_tree(tmp_path / "src", {OBJECT: BODY}))
    a.start()
    yield a
    a.stop()


def test_connection_over_max_connections_gets_503(app: Appliance, small_app: Appliance) -> None:
    addr = small_app.host_port
    held = [socket.create_connection(addr, timeout=5) for _ in range(5)]
    try:
        for s in held:  # each one answered once, so the server has surely accepted it
            s.sendall(request(OBJECT))
            assert read_response(s)[0] == 200
        # The sixth is answered at once, without sending anything.
        extra = socket.create_connection(addr, timeout=5)
        try:
            out, _ = read_until_closed(extra, 5)
        finally:
            extra.close()
        ((status, headers, body),) = list(parse_responses(out))
        assert (status, error_of(body)) == (503, "too-many-connections")
        assert headers["retry-after"] == "1"
        assert headers["connection"] == "close"
        # The held connections still work.
        held[0].sendall(request(OBJECT, "Connection: close"))
        out, _ = read_until_closed(held[0], 5)
        assert [r[0] for r in parse_responses(out)] == [200]
    finally:
        for s in held:
            s.close()

    def served() -> bool:
        try:
            return fetch(*addr, OBJECT)[0] == 200
        except OSError:
            return False

    wait_until(served, 10, "a new connection to be served once the held ones closed")
