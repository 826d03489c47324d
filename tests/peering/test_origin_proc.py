"""The test origin's own contract, checked against the real child process."""

from __future__ import annotations

import http.client
import os
import re
import signal
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peering.origin_proc import (
    OriginProcess,
    RangeDecision,
    corrupt_chunk,
    decide_range,
)

KiB = 1 << 10
BIG = os.urandom(300 * KiB + 17)  # several 64 KiB chunks and a ragged tail
SMALL = os.urandom(1000)
SLOW = os.urandom(400 * KiB)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("origin")
    root = base / "root"
    (root / "titles" / "a").mkdir(parents=True)
    (root / "titles" / "a" / "big.m4s").write_bytes(BIG)
    (root / "titles" / "a" / "small.m4s").write_bytes(SMALL)
    (root / "titles" / "a" / "slow.m4s").write_bytes(SLOW)
    (root / "empty.bin").write_bytes(b"")
    (base / "secret.txt").write_bytes(b"outside the root")
    (root / "escape.txt").symlink_to(base / "secret.txt")
    return root


@pytest.fixture(scope="module")
def shared_origin(tree: Path) -> Iterator[OriginProcess]:
    with OriginProcess(tree) as origin:
        yield origin


@pytest.fixture
def origin(shared_origin: OriginProcess) -> OriginProcess:
    shared_origin.reset()
    return shared_origin


def connect(origin: OriginProcess, timeout: float = 10.0) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(origin.url)
    assert parts.hostname is not None and parts.port is not None
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def get(
    origin: OriginProcess,
    path: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
) -> tuple[int, dict[str, str], bytes]:
    conn = connect(origin)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


# --- serving -------------------------------------------------------------------------------


def test_ready_url_is_loopback_with_a_port(origin: OriginProcess) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", origin.url)


def test_whole_file(origin: OriginProcess) -> None:
    status, headers, body = get(origin, "/titles/a/big.m4s")
    assert status == 200
    assert headers["content-length"] == str(len(BIG))
    assert "content-range" not in headers
    assert body == BIG


def test_head_has_length_and_no_body(origin: OriginProcess) -> None:
    status, headers, body = get(origin, "/titles/a/big.m4s", method="HEAD")
    assert (status, headers["content-length"], body) == (200, str(len(BIG)), b"")


@pytest.mark.parametrize(
    ("spec", "first", "last"),
    [
        ("bytes=10-99", 10, 99),
        ("bytes=65530-131080", 65530, 131080),  # crosses chunk boundaries
        ("bytes=1000-", 1000, len(BIG) - 1),
        ("bytes=-500", len(BIG) - 500, len(BIG) - 1),
        ("bytes=-999999999", 0, len(BIG) - 1),
        ("bytes=5-999999999", 5, len(BIG) - 1),
        (f"bytes={len(BIG) - 1}-{len(BIG) - 1}", len(BIG) - 1, len(BIG) - 1),
    ],
)
def test_range_forms(origin: OriginProcess, spec: str, first: int, last: int) -> None:
    status, headers, body = get(origin, "/titles/a/big.m4s", {"Range": spec})
    assert status == 206
    assert headers["content-range"] == f"bytes {first}-{last}/{len(BIG)}"
    assert headers["content-length"] == str(last - first + 1)
    assert body == BIG[first : last + 1]


@pytest.mark.parametrize("spec", [f"bytes={len(BIG)}-", f"bytes={len(BIG) + 5}-{len(BIG) + 9}"])
def test_unsatisfiable_range(origin: OriginProcess, spec: str) -> None:
    status, headers, body = get(origin, "/titles/a/big.m4s", {"Range": spec})
    assert status == 416
    assert headers["content-range"] == f"bytes */{len(BIG)}"
    assert body == b""


def test_suffix_of_zero_and_empty_file_are_unsatisfiable(origin: OriginProcess) -> None:
    status, headers, _ = get(origin, "/titles/a/small.m4s", {"Range": "bytes=-0"})
    assert (status, headers["content-range"]) == (416, f"bytes */{len(SMALL)}")
    status, headers, _ = get(origin, "/empty.bin", {"Range": "bytes=0-"})
    assert (status, headers["content-range"]) == (416, "bytes */0")
    status, headers, body = get(origin, "/empty.bin")
    assert (status, headers["content-length"], body) == (200, "0", b"")


@pytest.mark.parametrize("spec", ["bytes=9-3", "bytes=0-1,5-9", "items=0-9", "bytes=x-"])
def test_unusable_range_header_is_ignored(origin: OriginProcess, spec: str) -> None:
    status, _, body = get(origin, "/titles/a/small.m4s", {"Range": spec})
    assert (status, body) == (200, SMALL)


@pytest.mark.parametrize(
    "path",
    [
        "/titles/a/missing.m4s",
        "/titles/a",  # a directory
        "/",
        "/../secret.txt",
        "/titles/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/titles/%2E%2E/titles/a/small.m4s",
        "/escape.txt",  # a symlink that leaves the root
        "/_origin/unknown",
    ],
)
def test_not_found_and_traversal(origin: OriginProcess, path: str) -> None:
    status, _, body = get(origin, path)
    assert status == 404
    assert b"outside the root" not in body


# --- request log ---------------------------------------------------------------------------


def test_request_log_and_count(origin: OriginProcess) -> None:
    before = time.monotonic()
    conn = connect(origin)
    try:
        for method, headers in [("GET", {}), ("HEAD", {}), ("GET", {"Range": "bytes=0-9"})]:
            conn.request(method, "/titles/a/small.m4s", headers=headers)
            conn.getresponse().read()
    finally:
        conn.close()
    get(origin, "/titles/a/missing.m4s")
    after = time.monotonic()

    log = origin.requests()
    assert [(r["method"], r["path"], r["range"]) for r in log] == [
        ("GET", "/titles/a/small.m4s", ""),
        ("HEAD", "/titles/a/small.m4s", ""),
        ("GET", "/titles/a/small.m4s", "bytes=0-9"),
        ("GET", "/titles/a/missing.m4s", ""),
    ]
    times = [r["t"] for r in log]
    assert times == sorted(times)
    assert before <= times[0] and times[-1] <= after  # CLOCK_MONOTONIC is system-wide
    peers = [r["peer"] for r in log]
    assert all(p.startswith("127.0.0.1:") for p in peers)
    assert peers[0] == peers[1] == peers[2] != peers[3]  # one keep-alive connection, then another
    assert origin.count("/titles/a/small.m4s") == 3
    assert origin.count("/titles/a/missing.m4s") == 1
    assert origin.count("/titles/a/big.m4s") == 0


def test_control_requests_are_not_logged(origin: OriginProcess) -> None:
    origin.requests()
    origin.behave("/x", status=503)
    assert origin.requests() == []


def test_reset_clears_log_and_behaviours(origin: OriginProcess) -> None:
    origin.behave("*", status=503)
    assert get(origin, "/titles/a/small.m4s")[0] == 503
    assert origin.count("/titles/a/small.m4s") == 1
    origin.reset()
    assert origin.requests() == []
    assert get(origin, "/titles/a/small.m4s")[0] == 200


# --- behaviours ----------------------------------------------------------------------------


def test_rate_throttles_the_body(origin: OriginProcess) -> None:
    origin.behave("/titles/a/slow.m4s", rate_bytes_per_second=1_000_000)
    started = time.monotonic()
    status, _, body = get(origin, "/titles/a/slow.m4s")
    elapsed = time.monotonic() - started
    assert (status, body) == (200, SLOW)
    assert elapsed >= 0.3  # 400 KiB at 1 MB/s is about 0.41 s; only the lower bound is firm


def test_die_after_bytes_truncates_the_body(origin: OriginProcess) -> None:
    cut = 100_000
    origin.behave("/titles/a/big.m4s", die_after_bytes=cut)
    conn = connect(origin)
    try:
        conn.request("GET", "/titles/a/big.m4s")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Length") == str(len(BIG))
        with pytest.raises((http.client.IncompleteRead, ConnectionError)) as info:
            resp.read()
    finally:
        conn.close()
    if isinstance(info.value, http.client.IncompleteRead):
        partial = info.value.partial
        assert len(partial) < len(BIG)
        assert partial == BIG[: len(partial)]


def test_die_after_bytes_counts_from_the_range_start(origin: OriginProcess) -> None:
    origin.behave("/titles/a/big.m4s", die_after_bytes=10)
    conn = connect(origin)
    try:
        conn.request("GET", "/titles/a/big.m4s", headers={"Range": "bytes=1000-1999"})
        resp = conn.getresponse()
        assert resp.status == 206
        with pytest.raises((http.client.IncompleteRead, ConnectionError)) as info:
            resp.read()
    finally:
        conn.close()
    if isinstance(info.value, http.client.IncompleteRead):
        assert BIG[1000:2000].startswith(info.value.partial)
        assert len(info.value.partial) <= 10


def test_die_after_bytes_beyond_the_body_is_harmless(origin: OriginProcess) -> None:
    origin.behave("/titles/a/small.m4s", die_after_bytes=len(SMALL))
    assert get(origin, "/titles/a/small.m4s")[2] == SMALL


def test_corrupt_flips_exactly_the_first_16_bytes(origin: OriginProcess) -> None:
    origin.behave("/titles/a/big.m4s", corrupt=True)
    status, _, body = get(origin, "/titles/a/big.m4s")
    assert status == 200
    assert len(body) == len(BIG)
    assert body[16:] == BIG[16:]
    assert all(body[i] == BIG[i] ^ 0xFF for i in range(16))


def test_corrupt_only_touches_offsets_0_to_15_of_the_file(origin: OriginProcess) -> None:
    origin.behave("/titles/a/big.m4s", corrupt=True)
    _, _, body = get(origin, "/titles/a/big.m4s", {"Range": "bytes=8-63"})
    assert body == bytes(b ^ 0xFF for b in BIG[8:16]) + BIG[16:64]
    _, _, body = get(origin, "/titles/a/big.m4s", {"Range": "bytes=16-"})
    assert body == BIG[16:]


def test_status_override_and_wildcard(origin: OriginProcess) -> None:
    origin.behave("/titles/a/small.m4s", status=503)
    assert get(origin, "/titles/a/small.m4s")[::2] == (503, b"")
    assert get(origin, "/titles/a/big.m4s")[0] == 200
    origin.behave("*", status=500)
    assert get(origin, "/titles/a/big.m4s")[::2] == (500, b"")
    assert get(origin, "/titles/a/missing.m4s")[0] == 500
    assert get(origin, "/titles/a/small.m4s")[0] == 503  # the exact path wins over "*"


def test_delay_first_byte(origin: OriginProcess) -> None:
    origin.behave("/titles/a/small.m4s", delay_first_byte_seconds=0.3)
    started = time.monotonic()
    status, _, body = get(origin, "/titles/a/small.m4s")
    assert (status, body) == (200, SMALL)
    assert time.monotonic() - started >= 0.25


@pytest.mark.parametrize(
    "kw",
    [
        {"rate": 5},
        {"rate_bytes_per_second": 0},
        {"die_after_bytes": -1},
        {"status": 99},
        {"corrupt": "yes"},
        {"delay_first_byte_seconds": -1},
    ],
)
def test_bad_behaviour_is_rejected(origin: OriginProcess, kw: dict[str, object]) -> None:
    with pytest.raises(RuntimeError, match="400"):
        origin.behave("/titles/a/small.m4s", **kw)
    assert get(origin, "/titles/a/small.m4s")[0] == 200


# --- lifecycle -----------------------------------------------------------------------------


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_stop_leaves_no_process(tree: Path) -> None:
    origin = OriginProcess(tree)
    origin.start()
    pid = origin.pid
    assert get(origin, "/titles/a/small.m4s")[0] == 200
    origin.stop()
    assert origin.returncode == 0
    assert _gone(pid)
    assert origin.output == ""  # nothing but errors is ever printed
    origin.stop()  # idempotent
    with pytest.raises(OSError):
        origin.requests()


def test_sigint_stops_cleanly(tree: Path) -> None:
    with OriginProcess(tree) as origin:
        assert origin.proc is not None
        origin.proc.send_signal(signal.SIGINT)
        assert origin.proc.wait(10) == 0


def test_kill(tree: Path) -> None:
    with OriginProcess(tree) as origin:
        pid = origin.pid
        origin.kill()
        assert origin.returncode == -signal.SIGKILL
        assert _gone(pid)


def test_start_failure_reports_the_child_output(tmp_path: Path) -> None:
    origin = OriginProcess(tmp_path / "no-such-dir")
    with pytest.raises(RuntimeError, match="not a directory"):
        origin.start()
    assert origin.returncode == 2


# --- pure parts ----------------------------------------------------------------------------


def test_decide_range() -> None:
    assert decide_range("", 10) == RangeDecision("full", 0, 9)
    assert decide_range("bytes=2-4", 10) == RangeDecision("partial", 2, 4)
    assert decide_range("bytes=-3", 10) == RangeDecision("partial", 7, 9)
    assert decide_range("bytes=10-", 10).kind == "unsatisfiable"
    assert decide_range("", 0).length == 0


def test_corrupt_chunk() -> None:
    data = bytes(range(32))
    assert corrupt_chunk(data, 0) == bytes(b ^ 0xFF for b in data[:16]) + data[16:]
    assert corrupt_chunk(data[:4], 14) == bytes([0 ^ 0xFF, 1 ^ 0xFF]) + data[2:4]
    assert corrupt_chunk(data, 16) == data
