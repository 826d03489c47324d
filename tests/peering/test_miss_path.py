"""Peering and the miss path end to end: three appliances and an origin, each its own
process on loopback, real disks, real sockets.

Site "ams1": appliances a, b and c list each other as peers. b holds one object; the
origin holds everything. Appliance a knows every object's size and sha256 (the table
the fill writes from its manifest).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from oca.peering.auth import PEER_HEADER, sign_peer
from oca.peering.known import KnownObject, save_known
from oca.peering.peers import SINCE_HEADER, SUMMARY_PATH
from tests.appliance import (
    Appliance,
    fetch,
    free_port,
    make_tls,
    new_key,
    parse_head,
    parse_responses,
    raw_request,
    write_tree,
)
from tests.peering.origin_proc import OriginProcess

MiB = 1 << 20
PEER_OBJ = "/titles/a/v1/seg-001.m4s"  # held by b
ORIGIN_OBJ = "/titles/b/v1/seg-001.m4s"  # only at the origin
HOT_OBJ = "/titles/c/v1/seg-001.m4s"  # 100 clients at once
RANGE_OBJ = "/titles/r/v1.mp4"  # a rendition fetched by byte ranges
SIZES = {PEER_OBJ: 3 * MiB + 17, ORIGIN_OBJ: 2 * MiB, HOT_OBJ: 4 * MiB, RANGE_OBJ: 8 * MiB}


def _bytes(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _wait(cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _peering(me: str, key: str, peers: list[int], refresh: float = 0.2) -> str:
    urls = ", ".join(f'"http://127.0.0.1:{p}"' for p in peers)
    return (
        f'[peering]\nappliance_id = "{me}"\nsite = "ams1"\npeers = [{urls}]\n'
        f'keys = ["{key}"]\nsummary_refresh_seconds = {refresh}\n'
    )


def _peers_up(app: Appliance, n: int) -> Callable[[], bool]:
    def check() -> bool:
        host, port = app.host_port
        status, _, body = fetch(host, port, "/peers")
        peers = orjson.loads(body)["peers"] if status == 200 else []
        return sum(1 for p in peers if p["state"] == "up") >= n

    return check


def _access(app: Appliance, path: str) -> list[dict[str, Any]]:
    p = app.root / "access.log"
    if not p.exists():
        return []
    out = []
    for line in p.read_bytes().splitlines():
        rec = orjson.loads(line)
        if rec.get("path") == path:
            out.append(rec)
    return out


def _metric(app: Appliance, name: str, labels: str = "") -> float:
    host, port = app.host_port
    _, _, body = fetch(host, port, "/metrics")
    want = f"{name}{{{labels}}}" if labels else name
    for line in body.decode().splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


class Site:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = {p: _bytes(i, n) for i, (p, n) in enumerate(sorted(SIZES.items()))}
        self.key = new_key()
        self.origin = OriginProcess(write_tree(root / "origin", self.data))
        ports = {n: free_port() for n in "abc"}
        self.apps: dict[str, Appliance] = {}
        for name in "abc":
            (root / name).mkdir()
            self.apps[name] = Appliance(root / name, listen=f"127.0.0.1:{ports[name]}")
        self.a, self.b, self.c = self.apps["a"], self.apps["b"], self.apps["c"]
        self.ports = ports
        self._others = {n: [ports[o] for o in "abc" if o != n] for n in "abc"}

    def start(self) -> None:
        self.origin.start()
        miss = f'[miss]\norigins = ["{self.origin.url}"]\nnegative_ttl_seconds = 3\n'
        for name, app in self.apps.items():
            app.sections = _peering(name, self.key, self._others[name]) + miss
        self.c.sections = _peering("c", self.key, self._others["c"]) + "[miss]\nenabled = false\n"
        self.b.import_tree(write_tree(self.root / "b-seed", {PEER_OBJ: self.data[PEER_OBJ]}))
        known = [
            KnownObject(p, len(d), hashlib.sha256(d).hexdigest(), ()) for p, d in self.data.items()
        ]
        save_known(str(self.a.root / "state"), known)
        for app in self.apps.values():
            app.start()
        for app in self.apps.values():
            _wait(_peers_up(app, 2), what=f"{app.root.name}'s peers to be up")

    def stop(self) -> None:
        for app in self.apps.values():
            app.stop()
        self.origin.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site(tmp_path_factory.mktemp("site"))
    try:
        s.start()
        yield s
    finally:
        s.stop()


def test_miss_is_served_from_the_peer_that_holds_it_then_kept(site: Site) -> None:
    host, port = site.a.host_port
    status, headers, body = fetch(host, port, PEER_OBJ)
    assert status == 200
    assert body == site.data[PEER_OBJ]
    assert headers["etag"] == f'"{hashlib.sha256(body).hexdigest()[:32]}"'
    assert site.origin.count(PEER_OBJ) == 0
    # b saw one request, signed by a, and served it from its own disk.
    _wait(lambda: _access(site.b, PEER_OBJ), what="b's access log")
    (rec,) = _access(site.b, PEER_OBJ)
    assert rec["peer"] == "a" and rec["status"] == 200
    # Installed: the next request is a local hit (tier hdd, a's capacity tier).
    _wait(lambda: fetch(host, port, PEER_OBJ, method="HEAD")[0] == 200, what="install")

    def local_hit() -> bool:
        s, _, b = fetch(host, port, PEER_OBJ)
        assert s == 200 and b == site.data[PEER_OBJ]
        return any(r.get("tier") == "hdd" for r in _access(site.a, PEER_OBJ))

    _wait(local_hit, what="a local hit")
    assert len(_access(site.b, PEER_OBJ)) == 1
    assert _wait(lambda: _metric(site.a, "oca_upstream_bytes_total", 'source="peer"'))
    assert _metric(site.a, "oca_peer_requests_total", 'result="ok"') >= 1
    assert _metric(site.a, "oca_peer_up", 'peer="b"') == 1
    assert 0 <= _metric(site.a, "oca_peer_inventory_age_seconds", 'peer="b"') < 5


def test_miss_goes_to_the_origin_when_no_peer_has_it(site: Site) -> None:
    host, port = site.a.host_port
    status, _, body = fetch(host, port, ORIGIN_OBJ)
    assert status == 200 and body == site.data[ORIGIN_OBJ]
    assert site.origin.count(ORIGIN_OBJ) == 1
    # The summaries said no peer holds it, so none was asked.
    assert _access(site.b, ORIGIN_OBJ) == [] and _access(site.c, ORIGIN_OBJ) == []


def test_hundred_concurrent_misses_cause_one_upstream_request(site: Site) -> None:
    host, port = site.a.host_port
    # Slow the origin so every client arrives while the transfer is running.
    site.origin.behave(HOT_OBJ, rate_bytes_per_second=8 * MiB)
    started = time.monotonic()
    results = _crowd(host, port, HOT_OBJ, 100)
    took = time.monotonic() - started
    want = (200, hashlib.sha256(site.data[HOT_OBJ]).digest())
    assert all(r == want for r in results), [r for r in results if r != want][:3]
    assert site.origin.count(HOT_OBJ) == 1
    rate = 100 * SIZES[HOT_OBJ] / took / 1e9
    print(f"coalesced miss: 100 clients x {SIZES[HOT_OBJ] >> 20} MiB in {took:.2f} s "
          f"({rate:.2f} GB/s to clients), 1 origin request")  # fmt: skip


def test_workers_of_one_appliance_share_one_transfer(site: Site, tmp_path: Path) -> None:
    """Two workers (SO_REUSEPORT spreads the clients over both): the one that takes the
    object's lock fetches, the other serves its clients from the same part file."""
    path = "/titles/w/v1/seg-001.m4s"
    data = _bytes(7, 3 * MiB)
    (site.root / "origin" / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (site.root / "origin" / path.lstrip("/")).write_bytes(data)
    site.origin.behave(path, rate_bytes_per_second=6 * MiB)
    (tmp_path / "w").mkdir()
    w = Appliance(tmp_path / "w", workers=2)
    w.sections = f'[miss]\norigins = ["{site.origin.url}"]\n'
    save_known(str(w.root / "state"), [KnownObject(path, len(data), _sha(data), ())])
    w.start()
    try:
        host, port = w.host_port
        results = _crowd(host, port, path, 100)
        want = (200, hashlib.sha256(data).digest())
        assert all(r == want for r in results), [r for r in results if r != want][:3]
        assert site.origin.count(path) == 1
        _wait(lambda: _metric(w, "oca_miss_transfers_total", 'result="followed"') >= 1,
              what="the second worker to have followed")  # fmt: skip
        # Counters reach /metrics through per-worker snapshots (once a second).
        _wait(lambda: _metric(w, "oca_miss_transfers_total", 'result="done"') == 1,
              what="the leader's count")  # fmt: skip
        time.sleep(1.2)  # one more snapshot: still exactly one transfer
        assert _metric(w, "oca_miss_transfers_total", 'result="done"') == 1
    finally:
        w.stop()


def test_miss_over_https_streams_through_the_tls_path(site: Site, tmp_path: Path) -> None:
    """Userspace TLS cannot sendfile: the copy path must also wait for bytes to arrive."""
    path = "/titles/s/v1/seg-001.m4s"
    data = _bytes(8, 2 * MiB + 5)
    (site.root / "origin" / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (site.root / "origin" / path.lstrip("/")).write_bytes(data)
    site.origin.behave(path, rate_bytes_per_second=4 * MiB)
    cert_file, key_file, ctx = make_tls(tmp_path)
    (tmp_path / "s").mkdir()
    app = Appliance(tmp_path / "s", tls_cert=(cert_file, key_file))
    app.sections = f'[miss]\norigins = ["{site.origin.url}"]\n'
    save_known(str(app.root / "state"), [KnownObject(path, len(data), _sha(data), ())])
    app.start()
    try:
        port = int(app.urls["https"].rsplit(":", 1)[1])
        request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as s,
        ):
            s.sendall(request)
            buf = b""
            while chunk := s.recv(1 << 16):
                buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        status, headers = parse_head(head)
        assert status == 200 and int(headers["content-length"]) == len(data)
        assert body == data
        assert site.origin.count(path) == 1
    finally:
        app.stop()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _crowd(host: str, port: int, path: str, n: int) -> list[Any]:
    """``n`` clients GET ``path`` at the same instant: (status, sha256) or the error."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def client(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            s, _, b = fetch(host, port, path, timeout=60)
            results[i] = (s, hashlib.sha256(b).digest())
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_range_on_a_miss_is_answered_before_the_object_is_complete(site: Site) -> None:
    host, port = site.a.host_port
    data = site.data[RANGE_OBJ]
    rate = MiB  # the whole object takes 8 s at this rate
    site.origin.behave(RANGE_OBJ, rate_bytes_per_second=rate)
    started = time.monotonic()
    status, headers, body = fetch(host, port, RANGE_OBJ, {"Range": "bytes=0-65535"})
    first = time.monotonic() - started
    assert status == 206
    assert headers["content-range"] == f"bytes 0-65535/{len(data)}"
    assert body == data[:65536]
    status, headers, body = fetch(
        host, port, RANGE_OBJ, {"Range": "bytes=1000000-1099999"}, timeout=30
    )
    second = time.monotonic() - started
    assert status == 206 and body == data[1000000:1100000]
    # Both came long before the origin could have sent the whole object.
    assert second < len(data) / rate / 2, (first, second)
    assert site.origin.count(RANGE_OBJ) == 1
    whole = len(data) / rate
    print(f"range on a miss: first 64 KiB after {first * 1000:.0f} ms, bytes at 1 MB after "
          f"{second * 1000:.0f} ms; whole object at the origin's rate: {whole:.0f} s")  # fmt: skip


def test_nothing_has_it_gives_404_and_is_remembered(site: Site) -> None:
    host, port = site.a.host_port
    path = "/titles/none/v1/seg-001.m4s"
    assert fetch(host, port, path)[0] == 404
    assert site.origin.count(path) == 1
    assert fetch(host, port, path)[0] == 404
    assert site.origin.count(path) == 1  # answered from the negative cache
    _wait(lambda: site.origin.count(path) == 2 or fetch(host, port, path)[0] != 404 or None,
          timeout=15, what="the negative entry to expire")  # fmt: skip


def test_misses_can_be_turned_off(site: Site) -> None:
    host, port = site.c.host_port
    # c's summary of b claims the object, but c serves local objects only.
    assert fetch(host, port, ORIGIN_OBJ)[0] == 404
    assert fetch(host, port, PEER_OBJ + "-unknown")[0] == 404
    assert not any(r.get("peer") == "c" for r in _access(site.b, ORIGIN_OBJ))


def test_peer_endpoints_need_the_site_key(site: Site) -> None:
    host, port = site.b.host_port
    assert fetch(host, port, SUMMARY_PATH)[0] == 403
    forged = sign_peer(bytes.fromhex(new_key()), "a", "GET", SUMMARY_PATH, int(time.time()) + 60)
    status, _, body = fetch(host, port, SUMMARY_PATH, {PEER_HEADER: forged})
    assert status == 403 and b"peer-auth-bad-signature" in body
    expired = sign_peer(bytes.fromhex(site.key), "a", "GET", SUMMARY_PATH, int(time.time()) - 5)
    assert b"peer-auth-expired" in fetch(host, port, SUMMARY_PATH, {PEER_HEADER: expired})[2]
    good = sign_peer(bytes.fromhex(site.key), "a", "GET", SUMMARY_PATH, int(time.time()) + 60)
    status, _, body = fetch(host, port, SUMMARY_PATH, {PEER_HEADER: good})
    assert status == 200
    doc = orjson.loads(body)
    assert doc["kind"] == "full" and doc["appliance"] == "b" and doc["count"] >= 1
    since = f"{doc['epoch']}:{doc['generation']}"
    assert fetch(host, port, SUMMARY_PATH, {PEER_HEADER: good, SINCE_HEADER: since})[0] == 304
    # A generation that only looks numeric to str.isdigit (byte 0xB2, '²' in latin-1)
    # gets the full summary, not an error.
    odd = (
        f"GET {SUMMARY_PATH} HTTP/1.1\r\nHost: oca.test\r\nConnection: close\r\n"
        f"{PEER_HEADER}: {good}\r\n{SINCE_HEADER}: {doc['epoch']}:"
    ).encode() + b"\xb2\r\n\r\n"
    assert next(iter(parse_responses(raw_request(host, port, odd))))[0] == 200
    # A signature covers one path: it does not open another object.
    other = sign_peer(bytes.fromhex(site.key), "a", "GET", "/x", int(time.time()) + 60)
    assert fetch(host, port, PEER_OBJ, {PEER_HEADER: other})[0] == 403


# ---------------------------------------------------------------------- no loops


def test_two_appliances_lacking_an_object_ask_each_other_at_most_once(
    tmp_path: Path,
) -> None:
    path = "/titles/l/v1/seg-001.m4s"
    key = new_key()
    px, py = free_port(), free_port()
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    x = Appliance(tmp_path / "x", listen=f"127.0.0.1:{px}")
    y = Appliance(tmp_path / "y", listen=f"127.0.0.1:{py}")
    # Summaries refreshed only at start: each keeps believing the other holds it.
    x.sections = _peering("x", key, [py], refresh=3600)
    y.sections = _peering("y", key, [px], refresh=3600)
    seed = write_tree(tmp_path / "seed", {path: b"loop" * 1000})
    for app in (x, y):
        app.import_tree(seed)
    try:
        for app in (x, y):
            app.start()
        for app in (x, y):
            _wait(_peers_up(app, 1), what="the peer summaries")
        for app in (x, y):
            app.oca("store", "rm", "-c", str(app.config_path), path)
        for app in (x, y):
            _wait(lambda app=app: _metric(app, "oca_store_objects", 'tier="ssd"') == 0,
                  what="the server to pick up the removal")  # fmt: skip
        for app in (x, y):
            h, p = app.host_port
            assert fetch(h, p, path)[0] == 404
        _wait(lambda: len(_access(x, path)) >= 2 and len(_access(y, path)) >= 2,
              what="the access logs")  # fmt: skip
        time.sleep(0.5)  # let any (wrong) extra request land in the logs before counting
        from_y = [r for r in _access(x, path) if r.get("peer") == "y"]
        from_x = [r for r in _access(y, path) if r.get("peer") == "x"]
        assert len(from_y) == 1 and len(from_x) == 1, (_access(x, path), _access(y, path))
        assert from_y[0]["status"] == 404 and from_x[0]["status"] == 404
    finally:
        for app in (x, y):
            app.stop()


# ---------------------------------------------------------------------- faults


class Faulty:
    """f fetches (upstream capped at 64 Mbit/s); p is its only peer; the origin backs up."""

    BIG = "/titles/e/v1.mp4"
    ROTTEN = "/titles/d/v1/seg-001.m4s"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = {self.BIG: _bytes(100, 32 * MiB), self.ROTTEN: _bytes(101, 2 * MiB)}
        self.key = new_key()
        self.origin = OriginProcess(write_tree(root / "origin", self.data))
        pf, pp = free_port(), free_port()
        (root / "f").mkdir()
        (root / "p").mkdir()
        self.f = Appliance(root / "f", listen=f"127.0.0.1:{pf}")
        self.p = Appliance(root / "p", listen=f"127.0.0.1:{pp}")
        self.pf, self.pp = pf, pp

    def start(self) -> None:
        self.origin.start()
        self.f.sections = _peering("f", self.key, [self.pp]) + (
            f'[miss]\norigins = ["{self.origin.url}"]\nmax_rate_bits = 64000000\n'
        )
        self.p.sections = _peering("p", self.key, [self.pf])
        self.p.import_tree(write_tree(self.root / "p-seed", self.data))
        # Bit rot on p after import: p's index and ETag still describe the good bytes.
        (rotten,) = self.p.root.glob("*/objects" + self.ROTTEN)
        raw = bytearray(rotten.read_bytes())
        raw[1000:1016] = bytes(b ^ 0xFF for b in raw[1000:1016])
        rotten.write_bytes(bytes(raw))
        known = [
            KnownObject(p, len(d), hashlib.sha256(d).hexdigest(), ()) for p, d in self.data.items()
        ]
        save_known(str(self.f.root / "state"), known)
        self.f.start()
        self.p.start()
        _wait(_peers_up(self.f, 1), what="f's peer")

    def stop(self) -> None:
        self.f.stop()
        self.p.stop()
        self.origin.stop()


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faulty]:
    s = Faulty(tmp_path_factory.mktemp("faulty"))
    try:
        s.start()
        yield s
    finally:
        s.stop()


def test_corrupt_peer_is_caught_by_checksum_and_nothing_is_installed(faulty: Faulty) -> None:
    host, port = faulty.f.host_port
    good = faulty.data[faulty.ROTTEN]
    status, headers, body = _get_lenient(host, port, faulty.ROTTEN)
    # The client got the peer's bytes as they came, but never the last one: the
    # response is cut short of its Content-Length, which players treat as an error.
    assert status == 200 and int(headers["content-length"]) == len(good)
    assert len(body) < len(good)
    assert _wait(lambda: "sent wrong bytes" in faulty.f.log_text(), what="the verdict")
    # Not installed; the peer is backed off, so the next miss goes to the origin.
    status, _, body = fetch(host, port, faulty.ROTTEN)
    assert status == 200 and body == good
    assert faulty.origin.count(faulty.ROTTEN) == 1


def test_peer_dying_mid_transfer_leaves_the_client_with_correct_bytes(faulty: Faulty) -> None:
    host, port = faulty.f.host_port
    data = faulty.data[faulty.BIG]
    # The previous test backed p off; wait until f trusts it again.
    _wait(_peers_up(faulty.f, 1), what="p to be out of backoff")
    got = bytearray()
    done = threading.Event()
    outcome: dict[str, Any] = {}

    def client() -> None:
        try:
            outcome["status"], outcome["headers"] = _stream(host, port, faulty.BIG, got)
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=client, daemon=True).start()
    _wait(lambda: len(got) >= 2 * MiB or done.is_set(), what="the first bytes")
    assert not done.is_set(), outcome
    assert faulty.p.proc is not None
    os.killpg(faulty.p.proc.pid, signal.SIGKILL)  # the peer dies mid-transfer, workers too
    assert done.wait(60)
    assert bytes(got) == data[: len(got)], "never wrong bytes"
    assert len(got) == len(data), f"only {len(got)} of {len(data)}: {outcome}"
    # p's access log may have died with it; what it did log was f's signed request.
    assert [r["peer"] for r in _access(faulty.p, faulty.BIG)] in (["f"], [])
    resumed = [r for r in faulty.origin.requests() if r["path"] == faulty.BIG]
    assert len(resumed) == 1 and resumed[0]["range"].startswith("bytes=")
    assert int(resumed[0]["range"][6:-1]) > 0


def _get_lenient(host: str, port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """GET that returns what arrived even when the connection is cut short."""
    sink = bytearray()
    status, headers = _stream(host, port, path, sink)
    return status, headers, bytes(sink)


def _stream(host: str, port: int, path: str, sink: bytearray) -> tuple[int, dict[str, str]]:
    """GET ``path``, appending body bytes to ``sink`` as they arrive, until the body is
    complete or the server closes the connection."""
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: oca.test\r\nConnection: close\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before the head: {buf!r}")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        status, headers = parse_head(head)
        want = int(headers.get("content-length", "0"))
        sink += rest
        while len(sink) < want:
            try:
                chunk = s.recv(1 << 20)
            except ConnectionResetError:
                break
            if not chunk:
                break
            sink += chunk
        return status, headers
