"""Network faults: peers and origins that are slow, reset connections or hang after the
headers; the steering service unreachable; an appliance that hangs (SIGSTOP).

Every part is a real process on loopback (appliances, peer, origin, fault proxy,
steering service, dash.js in headless Chromium); faults are injected the way networks
and sick hosts cause them: RSTs (SO_LINGER 0), FINs short of Content-Length, response
heads with no body after them, bodies trickling slower than the read timeout, answers
that never come, a whole process group stopped with SIGSTOP.

What must hold, whatever the fault:

- **A client of the miss path** gets the right bytes complete, or a clean 502/503/504,
  or a response cut short of its Content-Length that it can see is incomplete; never
  wrong bytes presented as complete (:func:`~tests.reliability.netfault_world.judge`).
  A failing peer is given up after ``miss.read_timeout_seconds`` and the origin serves
  the rest (with ``Range: bytes=N-`` when some bytes arrived); nothing partial is
  installed; no part file, transfer lock or upstream connection is left behind.
- **``oca fill``** gives up on a source after ``fill.read_timeout_seconds`` per attempt,
  goes on to the next (peer, then origin), names each failure in its summary and exit
  status, never commits a bad object, and a later run completes, resuming part files.
- **Steering unreachable** (stopped: connection refused; SIGSTOPped: connections
  accepted, nothing answers; blackholed in a network namespace: connecting times out):
  appliances keep serving, say so in their log and ``steering.json``, and are back in
  rotation soon after it returns; a fill whose manifest comes from it fails with exit
  status 3 before touching the store.
- **An appliance that hangs** leaves the rotation within ``missed_heartbeats x
  interval``, a player streaming from it moves to another within about one content
  steering TTL and keeps playing, and SIGCONT brings it back into rotation.

Two regressions of the miss path are pinned here: a fresh transfer that followed the
failed one it replaces (lock released after leaving ``shared``), and upstream
connections that aiohttp 3.14 breaks while idle in the pool (``pooled_seconds``).

The default run takes each fault once; ``pytest -m slow`` repeats them many times.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pytest

from tests.appliance import Appliance, fetch, wait_until
from tests.browser.harness import PlayerRun, Record, host_of
from tests.browser.test_player_failover import longest_stall
from tests.fill.test_fill_live import run_fill, verify_ok
from tests.reliability.netfault_steering import (
    DETECTION_SECONDS,
    NAMES,
    TTL,
    BlackholedSteering,
    SteeredPair,
    disk_snapshot,
    stopped,
)
from tests.reliability.netfault_world import (
    MISS_READ_TIMEOUT,
    N_ORIGIN,
    N_PEER,
    FaultSite,
    Outcome,
    connections,
    fault_site,
    fd_census,
    fd_targets,
    get,
    judge,
    metric,
    part_files,
    peer_state,
    port_of,
    sha,
    stored,
    transfers_idle,
    write_manifest,
)
from tests.steering.live import PATTERN, new_key, steering_section

CUT_AT = 300_000


class Fault(NamedTuple):
    """One fault of a round: the behaviour of the faulty source (origin_proc / fault
    proxy keys), what the client must get, how many read timeouts must pass before it
    does, and how many requests the source must see (``asks``, a range)."""

    behaviour: dict[str, Any]
    outcome: str
    timeouts: int = 0
    asks: tuple[int, int] = (1, 1)


# At the origin, with no other source. A client whose transfer failed before any head
# re-attaches once to a fresh transfer (hence two requests, two timeouts), and aiohttp
# sends an idempotent request once more when the connection drops before a response
# head (RFC 9112 §9.3.1).
ORIGIN_FAULTS: dict[str, Fault] = {
    "slow below the timeout": Fault({"rate_bytes_per_second": 4 << 20}, "complete"),
    "first byte later than the timeout": Fault(
        {"delay_first_byte_seconds": 30}, "error", 2, (2, 2)
    ),
    "trickle slower than the timeout": Fault({"rate_bytes_per_second": 1}, "cut", 1),
    "reset before the head": Fault({"reset_before_head": True}, "error", 0, (2, 4)),
    "reset mid-body": Fault({"reset_after_bytes": CUT_AT}, "cut"),
    "closed mid-body": Fault({"die_after_bytes": CUT_AT}, "cut"),
    "hang after the headers": Fault({"hang_after_bytes": 0}, "cut", 1),
    "hang mid-body": Fault({"hang_after_bytes": CUT_AT}, "cut", 1),
}
# At the peer (through the fault proxy), with the origin behind it. ``outcome`` says what
# the origin was asked: nothing ("peer"), the whole object, or only what the peer did not
# send ("resumed"). When the peer's connection ends early, the bytes aiohttp had received
# but not handed over yet are lost with the error (and an RST may drop unread ones in the
# kernel), so then the origin may be asked for all of it. Faults that fail at once wait
# 0.3 s first, so that every request of a round reaches the peer before the first
# failure backs it off.
DELAY = {"delay_first_byte_seconds": 0.3}
PEER_FAULTS: dict[str, Fault] = {
    "slow below the timeout": Fault({"rate_bytes_per_second": 4 << 20}, "peer"),
    "no answer": Fault({"delay_first_byte_seconds": 30}, "whole", 1),
    "trickle slower than the timeout": Fault({"rate_bytes_per_second": 1}, "resumed", 1),
    "reset before the head": Fault({"reset_before_head": True, **DELAY}, "whole", 0, (1, 2)),
    "reset mid-body": Fault({"reset_after_bytes": CUT_AT, **DELAY}, "resumed or whole"),
    "closed mid-body": Fault({"die_after_bytes": CUT_AT, **DELAY}, "resumed or whole"),
    "hang after the headers": Fault({"hang_after_bytes": 0}, "whole", 1),
    "hang mid-body": Fault({"hang_after_bytes": CUT_AT}, "resumed", 1),
    # and the origin fails too: its head went out, so the client sees the cut
    "reset before the head, origin hangs after the headers": Fault(
        {"reset_before_head": True, **DELAY}, "cut", 1, (1, 2)
    ),
}  # fmt: skip
BOTH = "reset before the head, origin hangs after the headers"
SETTLE_SECONDS = 20  # bound on waiting for transfers to wind down


@contextlib.contextmanager
def warm_site(root: Path, n_peer: int = N_PEER, n_origin: int = N_ORIGIN) -> Iterator[FaultSite]:
    with fault_site(root, n_peer, n_origin) as s:
        wait_until(s.peer_up, 20, "the peer's summary")
        # One miss from each source first: the descriptors a first install opens for
        # good (a disk's owner lock) are then part of every baseline.
        for path in (s.peer_paths[-1], s.origin_paths[-1]):
            assert judge(get(*s.a.host_port, path), s.data[path], "warm-up") == "complete"
        settle(s)
        yield s


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultSite]:
    with warm_site(tmp_path_factory.mktemp("netfault")) as s:
        yield s


class Paths:
    """Hands out each object once, so every round misses afresh."""

    def __init__(self, site: FaultSite) -> None:
        self.left = {"peer": site.peer_paths[:-1], "origin": site.origin_paths[:-1]}

    def take(self, kind: str) -> str:
        return self.left[kind].pop(0)


@pytest.fixture(scope="module")
def paths(site: FaultSite) -> Paths:
    return Paths(site)


def crowd(site: FaultSite, paths: list[str]) -> dict[str, Outcome]:
    """GET every path at once, one client each."""
    host, port = site.a.host_port
    out: dict[str, Outcome] = {}
    barrier = threading.Barrier(len(paths))

    def client(path: str) -> None:
        barrier.wait(10)
        out[path] = get(host, port, path)

    threads = [threading.Thread(target=client, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(out) == set(paths), "a client did not finish"
    return out


def settle(site: FaultSite) -> None:
    """Wait until no transfer runs and no part file is left on ``a``'s disks."""
    wait_until(lambda: transfers_idle(site.a) and not part_files(site.a), SETTLE_SECONDS,
               "transfers to end and part files to go")  # fmt: skip


class Baseline:
    """``a``'s worker's descriptors and upstream connections before a round of faults."""

    def __init__(self, site: FaultSite) -> None:
        self.site = site
        self.pid = site.worker
        self.fds = fd_census(self.pid)
        self.targets = fd_targets(self.pid)
        self.upstream = self._upstream()

    def _upstream(self) -> collections.Counter[str]:
        s = self.site
        ports = {port_of(s.origin.url): "origin", port_of(s.fault_proxy().url): "peer"}
        return collections.Counter(ports[r] for _l, r, _st in connections(self.pid) if r in ports)

    def check(self, pooled: int) -> tuple[collections.Counter[str], collections.Counter[str]]:
        """No descriptor left behind: no part file or deleted file open, no more plain
        files than before, and no upstream connection beyond ``pooled`` kept-alive ones
        (a failed transfer's connection must be closed, not pooled or leaked). Polled for
        a few seconds: a disk probe's file or a summary poll may be open for a moment;
        a leak stays."""
        assert self.site.worker == self.pid, "the worker was restarted"
        last: list[Any] = []

        def clean() -> bool:
            fds, upstream = fd_census(self.pid), self._upstream()
            last[:] = [fds, upstream, set(self.targets) ^ set(fd_targets(self.pid))]
            return (
                fds["part"] == 0
                and fds["deleted"] <= self.fds["deleted"]
                and fds["file"] <= self.fds["file"]
                and upstream["origin"] <= self.upstream["origin"] + pooled
                # the proxy closes after each response (one summary poll may be open)
                and upstream["peer"] <= 1
            )

        try:
            wait_until(clean, 5, "the worker's descriptors to be back to the baseline")
        except AssertionError:
            raise AssertionError(f"before {self.fds} {self.upstream}, now {last}") from None
        return last[0], last[1]


# ---------------------------------------------------------------------- the miss path


def origin_round(site: FaultSite, paths: Paths) -> collections.Counter[str]:
    """One of each origin fault at once, on objects no peer holds; then the same objects
    again with the origin healthy. Returns the outcomes by kind."""
    base = Baseline(site)
    chosen = {name: paths.take("origin") for name in ORIGIN_FAULTS}
    for name, path in chosen.items():
        site.origin.behave(path, **ORIGIN_FAULTS[name].behaviour)
    got = crowd(site, list(chosen.values()))
    kinds: collections.Counter[str] = collections.Counter()
    for name, path in chosen.items():
        o, fault = got[path], ORIGIN_FAULTS[name]
        kind = judge(o, site.data[path], name)
        assert kind == fault.outcome, (name, kind, o.status, o.ended, len(o.body))
        kinds[kind] += 1
        asked = site.origin.count(path)
        assert fault.asks[0] <= asked <= fault.asks[1], (name, asked)
        if kind != "complete":
            # given up after the configured read timeout(s), not the default 10 s
            floor = MISS_READ_TIMEOUT * fault.timeouts * 0.9
            assert floor <= o.seconds < MISS_READ_TIMEOUT * asked + 4, (name, o.seconds)
    settle(site)
    base.check(pooled=1)
    held = stored(site.a)
    for name, path in chosen.items():
        if ORIGIN_FAULTS[name].outcome == "complete":
            assert held.get(path) == sha(site.data[path])
        else:
            assert path not in held, f"{name}: a failed transfer was installed"
    # The origin recovers: the same objects are fetched whole (no failure was cached).
    for path in chosen.values():
        site.origin.behave(path)
    for path, o in crowd(site, list(chosen.values())).items():
        assert judge(o, site.data[path], path) == "complete"
    return kinds


def test_origin_faults_on_a_miss_never_pass_wrong_bytes_and_leave_nothing(
    site: FaultSite, paths: Paths
) -> None:
    """Also: a client whose transfer failed before any head gets one fresh transfer, and
    that one fetches; it does not follow the failed transfer's lock while that is being
    released (which hands the client the old failure at once). With one worker nothing
    is ever followed."""

    def counters() -> tuple[float, float]:
        return (metric(site.a, "oca_miss_requests_total", 'outcome="cut"'),
                metric(site.a, "oca_miss_transfers_total", 'result="followed"'))  # fmt: skip

    cut, followed = counters()
    kinds = origin_round(site, paths)
    wait_until(lambda: counters()[0] >= cut + kinds["cut"], 10, "the cuts to be counted")
    assert counters()[1] == followed, "a transfer followed this worker's own failed one"
    settle(site)
    print(f"\norigin faults on a miss: {dict(kinds)}")


def test_an_upstream_connection_idle_past_the_read_timeout_is_not_reused_broken(
    site: FaultSite, paths: Paths
) -> None:
    """aiohttp 3.14 can leave a read timer running on a pooled connection, which then
    breaks it while idle: reused, it fails a healthy origin at once ("Timeout on reading
    data from socket" after 0 bytes). Misses after an idle gap longer than the read
    timeout must each take one origin request."""
    chosen: list[str] = []
    for i in range(2):
        if i:
            time.sleep(MISS_READ_TIMEOUT * 1.5)  # the fault: pooled connections left idle
        batch = [paths.take("origin") for _ in range(6)]
        for path, o in crowd(site, batch).items():
            assert judge(o, site.data[path], path) == "complete"
        chosen += batch
        settle(site)
    assert [site.origin.count(p) for p in chosen] == [1] * len(chosen)
    log = site.a.log_text()
    assert not [p for p in chosen if f"(object {p})" in log], "a healthy origin was blamed"


def peer_round(site: FaultSite, paths: Paths) -> int:
    """One of each peer fault at once, on objects the peer holds: every client gets the
    whole object, the origin finishing what the peer did not send (unless the origin
    fails too). Returns the bytes verified."""
    wait_until(site.peer_up, 20, "the peer to be up")
    proxy = site.fault_proxy()
    base = Baseline(site)
    mark = len(site.a.log_text())
    chosen = {name: paths.take("peer") for name in PEER_FAULTS}
    for name, path in chosen.items():
        proxy.behave(path, **PEER_FAULTS[name].behaviour)
    site.origin.behave(chosen[BOTH], hang_after_bytes=0)
    got = crowd(site, list(chosen.values()))
    verified = 0
    for name, path in chosen.items():
        o, fault = got[path], PEER_FAULTS[name]
        kind = judge(o, site.data[path], name)
        assert kind == ("cut" if name == BOTH else "complete"), (name, o.status, o.ended)
        verified += len(o.body)
        # asked once, then backed off (aiohttp asks again after an RST before the head)
        assert fault.asks[0] <= proxy.count(path) <= fault.asks[1], (name, proxy.count(path))
        assert o.seconds >= MISS_READ_TIMEOUT * fault.timeouts * 0.9, (name, o.seconds)
        from_origin = [r for r in site.origin.requests() if r["path"] == path]
        if fault.outcome == "peer":
            assert from_origin == [], name
            continue
        (req,) = from_origin
        if fault.outcome in ("whole", "cut"):
            assert req["range"] == "", (name, req)
        elif req["range"] or fault.outcome == "resumed":
            assert req["range"].startswith("bytes="), (name, req)
            first = int(req["range"].removeprefix("bytes=").removesuffix("-"))
            assert 0 < first <= CUT_AT, (name, req)
    # the peer was backed off (and is tried again once its summary answers)
    backing_off = f"peer {peer_state(site.a)['url'].split('//')[1]} was up, now backing off"
    assert backing_off in site.a.log_text()[mark:]
    settle(site)
    base.check(pooled=len(chosen))
    held = stored(site.a)
    for name, path in chosen.items():
        assert held.get(path) == (None if name == BOTH else sha(site.data[path])), name
    site.origin.behave(chosen[BOTH])
    return verified


def test_peer_faults_on_a_miss_fall_back_to_the_origin(site: FaultSite, paths: Paths) -> None:
    verified = peer_round(site, paths)
    print(f"\npeer faults on a miss: {len(PEER_FAULTS)} faults, {verified} bytes verified")


def test_a_stopped_peer_is_given_up_after_the_read_timeout(site: FaultSite, paths: Paths) -> None:
    """The peer appliance itself hangs (SIGSTOP): the kernel still accepts connections,
    nothing answers."""
    wait_until(site.peer_up, 20, "the peer to be up")
    path = paths.take("peer")
    base = Baseline(site)
    assert site.p.proc is not None
    os.killpg(site.p.proc.pid, signal.SIGSTOP)
    try:
        o = get(*site.a.host_port, path)
    finally:
        os.killpg(site.p.proc.pid, signal.SIGCONT)
    assert judge(o, site.data[path], "stopped peer") == "complete"
    assert o.seconds >= MISS_READ_TIMEOUT * 0.9, o.seconds
    assert site.origin.count(path) == 1, (time.monotonic(), site.origin.requests())
    settle(site)
    base.check(pooled=1)
    wait_until(site.peer_up, 20, "the peer to be up again after SIGCONT")


# ---------------------------------------------------------------------- oca fill

# (behaviour, what the run must end with): at the peer, the origin finishes every object;
# at the origin (the peer answers 404), the faulty ones fail this run and the next
# completes them. Two attempts per source, each given up after the read timeout.
FILL_PEER_FAULTS: dict[str, dict[str, Any]] = {
    "slow below the timeout": {"rate_bytes_per_second": 4 << 20},
    "no answer": {"delay_first_byte_seconds": 30},
    "trickle slower than the timeout": {"rate_bytes_per_second": 1},
    "reset before the head": {"reset_before_head": True},
    "reset mid-body": {"reset_after_bytes": CUT_AT},
    "closed mid-body": {"die_after_bytes": CUT_AT},
    "hang after the headers": {"hang_after_bytes": 0},
    "hang mid-body": {"hang_after_bytes": CUT_AT},
}
FILL_ORIGIN_FAULTS: dict[str, dict[str, Any]] = {
    "slow below the timeout": {"rate_bytes_per_second": 4 << 20},
    "first byte later than the timeout": {"delay_first_byte_seconds": 30},
    "trickle slower than the timeout": {"rate_bytes_per_second": 1},
    "reset before the head": {"reset_before_head": True},
    "reset mid-body": {"reset_after_bytes": CUT_AT},
    "hang after the headers": {"hang_after_bytes": 0},
    "hang mid-body": {"hang_after_bytes": CUT_AT},
}
FILL_FAILS = set(FILL_ORIGIN_FAULTS) - {"slow below the timeout"}


def fill_counters(app: Appliance) -> dict[str, dict[str, float]]:
    doc = orjson.loads((app.root / "state" / "fill" / "metrics.json").read_bytes())
    return dict(doc["counters"])


def test_fill_gives_up_on_faulty_sources_and_a_later_run_completes(
    site: FaultSite, paths: Paths, tmp_path: Path
) -> None:
    proxy = site.fault_proxy()
    at_peer = {name: paths.take("peer") for name in FILL_PEER_FAULTS}
    at_origin = {name: paths.take("origin") for name in FILL_ORIGIN_FAULTS}
    objects = {p: site.data[p] for p in [*at_peer.values(), *at_origin.values()]}
    manifest = write_manifest(tmp_path / "manifest.json", objects, site.origin.url)
    f = site.filler(f"f1-{tmp_path.name}", manifest)
    for name, path in at_peer.items():
        proxy.behave(path, **FILL_PEER_FAULTS[name])
    for name, path in at_origin.items():
        site.origin.behave(path, **FILL_ORIGIN_FAULTS[name])

    started = time.monotonic()
    first = run_fill(f)
    took = time.monotonic() - started
    out = first.stdout + first.stderr
    assert first.returncode == 1, out
    # Every faulty origin object failed, named with its source and why; nothing else.
    failed = dict(re.findall(r"^oca fill: failed (\S+): (.*)$", first.stdout, re.M))
    assert set(failed) == {at_origin[n] for n in FILL_FAILS}, out
    origin_host = site.origin.url.split("//", 1)[1]
    for name in FILL_FAILS:
        why = failed[at_origin[name]]
        assert why.count(origin_host) == 2, (name, why)  # both attempts, each named
        assert "wrong bytes" not in why, (name, why)
    assert "not used again" not in first.stdout, "a slow or broken source is not a liar"
    held = stored(f)
    assert held == {p: sha(objects[p]) for p in objects if p not in failed}, out
    verify_ok(f)
    # Peer first: the origin was asked for a peer's object only after the peer failed
    # twice, and for what the peer had not sent when some bytes had arrived.
    for name, path in at_peer.items():
        asked_peer = [r["t"] for r in proxy.requests() if r["path"] == path]
        asked_origin = [r for r in site.origin.requests() if r["path"] == path]
        if name == "slow below the timeout":
            assert asked_origin == [] and len(asked_peer) == 1, name
            continue
        assert 2 <= len(asked_peer) <= 4 and len(asked_origin) == 1, (name, asked_peer)
        assert asked_origin[0]["t"] > max(asked_peer), name
    resumed = next(r for r in site.origin.requests() if r["path"] == at_peer["hang mid-body"])
    assert resumed["range"] == f"bytes={2 * CUT_AT}-", resumed  # two attempts' worth
    counters = fill_counters(f)
    assert counters["objects"] == {"done": len(objects) - len(FILL_FAILS),
                                   "failed": len(FILL_FAILS)}  # fmt: skip
    # two failed attempts for each faulty source, and not one more: a healthy source
    # never failed (not even on a pooled connection left idle while the peer was tried)
    assert counters["source_errors"] == {"peer": 2 * (len(FILL_PEER_FAULTS) - 1),
                                         "origin": 2 * len(FILL_FAILS)}, counters  # fmt: skip
    # A fault costs its attempts' read timeouts, far from the default 60 s each.
    assert took < 30, took

    # The origin recovers: the next run fetches only what failed, resuming part files.
    before = len(site.origin.requests())
    for path in at_origin.values():
        site.origin.behave(path)
    for path in at_peer.values():
        proxy.behave(path)
    second = run_fill(f)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"fetched {len(FILL_FAILS)} of {len(FILL_FAILS)} planned" in second.stdout
    assert stored(f) == {p: sha(d) for p, d in objects.items()}
    verify_ok(f)
    again = {r["path"]: r["range"] for r in site.origin.requests()[before:]}
    assert again[at_origin["hang mid-body"]] == f"bytes={2 * CUT_AT}-", again
    assert not part_files(f)
    print(f"\nfill: {len(FILL_PEER_FAULTS)} peer faults, {len(FILL_ORIGIN_FAULTS)} origin faults;"
          f" first run {took:.1f} s, {len(failed)} failed; second run completed "
          f"{len(FILL_FAILS)}; {sum(map(len, objects.values()))} bytes verified")  # fmt: skip


def test_fill_does_not_reuse_an_upstream_connection_left_idle_past_the_read_timeout(
    site: FaultSite, paths: Paths, tmp_path: Path
) -> None:
    """One transfer at a time: each object the peer does not answer keeps the origin's
    pooled connection idle for two read timeouts; reused, a connection that aiohttp 3.14
    broke meanwhile would fail the healthy origin at once (a source error, an attempt
    lost). The origin must never be blamed."""
    order: list[str] = []
    for _ in range(4):
        order.append(paths.take("origin"))
        order.append(paths.take("peer"))
        site.fault_proxy().behave(order[-1], delay_first_byte_seconds=30)
    objects = {p: site.data[p] for p in order}
    manifest = write_manifest(tmp_path / "manifest.json", objects, site.origin.url)
    f = site.filler(f"f2-{tmp_path.name}", manifest, concurrency=1, read_timeout=0.25)
    out = run_fill(f)
    assert out.returncode == 0, out.stdout + out.stderr
    assert stored(f) == {p: sha(d) for p, d in objects.items()}
    assert fill_counters(f)["source_errors"] == {"peer": 2 * 4}, out.stdout + out.stderr
    assert all(site.origin.count(p) == 1 for p in order), out.stderr


# ---------------------------------------------------------------------- steering unreachable

SEGMENT = "/titles/pattern/chunk-0-00003.m4s"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SteeredPair]:
    p = SteeredPair(tmp_path_factory.mktemp("steered"))
    try:
        p.start()
        yield p
    finally:
        p.stop()


def serves(pair: SteeredPair, name: str) -> None:
    """``name`` still answers content requests with the right bytes."""
    serves_app(pair.apps[name], pair.tree)


def serves_app(app: Appliance, tree: Path) -> None:
    want = (tree / SEGMENT.lstrip("/")).read_bytes()
    status, _, body = fetch(*app.host_port, SEGMENT)
    assert status == 200 and body == want, (app.root.name, status)


def fill_from_steering(pair: SteeredPair, name: str) -> tuple[int, str, float]:
    return fill_from(pair.apps[name], f"{pair.steering_url}/v1/fill/{name}")


def fill_from(app: Appliance, manifest_url: str) -> tuple[int, str, float]:
    """``oca fill`` on ``app`` with its manifest at the steering service: (exit status,
    stderr, seconds). The store must be exactly as before."""
    before = disk_snapshot(app)
    known = app.root / "state" / "known-objects.json"
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "oca", "fill", "-c", str(app.config_path), "--now",
         "--manifest", manifest_url],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "OCA_FILL__CONNECT_TIMEOUT_SECONDS": "0.5",
             "OCA_FILL__READ_TIMEOUT_SECONDS": "0.5"},
    )  # fmt: skip
    took = time.monotonic() - started
    assert disk_snapshot(app) == before, "the failed fill touched the store"
    assert not known.exists(), "the failed fill wrote a known-objects table"
    return out.returncode, out.stderr, took


def heartbeat_lines(pair: SteeredPair, name: str, since: int) -> str:
    return pair.apps[name].log_text()[since:]


def test_steering_refusing_connections_appliances_serve_on_and_return_to_rotation(
    pair: SteeredPair,
) -> None:
    """Steering stopped: its port refuses connections. Then it starts again on it."""
    marks = {n: len(pair.apps[n].log_text()) for n in NAMES}
    assert pair.steering.proc is not None
    pair.steering.stop()
    try:
        refused = f"cannot connect to 127.0.0.1:{pair.port}"
        for name in NAMES:
            wait_until(lambda name=name: refused in pair.heartbeats(name)[1], 10,
                       f"{name} to see steering refuse")  # fmt: skip
            assert pair.heartbeats(name)[0] == "failing"
            serves(pair, name)
        code, err, _took = fill_from_steering(pair, "a1")
        assert code == 3 and "cannot start: manifest" in err and "Connect" in err, err
        for name in NAMES:
            log = heartbeat_lines(pair, name, marks[name])
            # (a heartbeat in flight while steering shut down may have timed out first)
            assert f"heartbeat to {pair.steering_url}: was ok, now failing, because " in log
            assert "steering unreachable: no steering URL answered since" in log
            serves(pair, name)
    finally:
        pair.steering.start()
    back = pair.wait_in_rotation(NAMES, 20)
    for name in NAMES:
        wait_until(lambda name=name: "steering reachable again" in heartbeat_lines(
            pair, name, marks[name]), 10, f"{name}'s recovery line")  # fmt: skip
        assert "was failing, now ok" in heartbeat_lines(pair, name, marks[name])
        wait_until(lambda name=name: pair.contact(name).get("contact") == "up", 10,
                   f"{name}'s steering.json to say so")  # fmt: skip
    print(f"\nsteering refused: back in rotation {back:.2f} s after steering restarted")


def test_steering_blackholed_appliance_serves_on_and_returns_to_rotation(
    tmp_path: Path,
) -> None:
    """Steering's address blackholed (its replies dropped, in a network namespace):
    connecting times out, as behind a firewall that drops the port."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("this test needs root and iproute2 (CI runs as root)")
    tree = tmp_path / "tree"
    shutil.copytree(PATTERN / "pattern", tree / "titles" / "pattern")
    key = new_key()
    bh = BlackholedSteering(tmp_path / "steering", {"hb": key})
    (tmp_path / "b1").mkdir()
    section = '[peering]\nappliance_id = "b1"\nsite = "s2"\n' + steering_section(
        [bh.url], "hb", key, interval=0.5
    )
    app = Appliance(tmp_path / "b1", sections=section, tiers=(("ssd", 1),))
    state = app.root / "state" / "run" / "steering.json"

    def heartbeats() -> dict[str, Any]:
        with contextlib.suppress(OSError, orjson.JSONDecodeError):
            return dict(orjson.loads(state.read_bytes())["urls"][0])
        return {}

    def in_rotation() -> bool:
        return bh.steering.fleet().get("b1", {}).get("status") == "in-rotation"

    try:
        bh.start(tree)
        app.import_tree(tree)
        app.start()
        wait_until(in_rotation, 20, "b1 in rotation")
        mark = len(app.log_text())
        bh.blackhole()
        try:
            wait_until(lambda: heartbeats().get("state") == "failing", 10, "b1 to see it fail")
            assert heartbeats()["reason"] == "timed out", heartbeats()
            serves_app(app, tree)
            code, err, took = fill_from(app, f"{bh.url}/v1/fill/b1")
            assert code == 3 and "cannot start: manifest" in err and "Timeout" in err, err
            assert took < 10, took  # the connect timeout (0.5 s) and the process
            assert "now failing, because timed out" in app.log_text()[mark:]
            serves_app(app, tree)
        finally:
            bh.restore()
        started = time.monotonic()
        wait_until(in_rotation, 20, "b1 back in rotation", interval=0.02)
        back = time.monotonic() - started
        wait_until(lambda: "steering reachable again" in app.log_text()[mark:], 10,
                   "b1's recovery line")  # fmt: skip
    finally:
        app.stop()
        bh.close()
    print(f"\nsteering blackholed: fill gave up after {took:.2f} s; back in rotation "
          f"{back:.2f} s after the route was removed")  # fmt: skip


def test_steering_hung_appliances_serve_on_and_return_to_rotation(pair: SteeredPair) -> None:
    """Steering SIGSTOPped: connections are accepted, nothing answers; heartbeats time
    out. Then SIGCONT: steering reads the heartbeats queued meanwhile and everyone is in
    rotation again at once."""
    marks = {n: len(pair.apps[n].log_text()) for n in NAMES}
    assert pair.steering.proc is not None
    with stopped(pair.steering.proc.pid):
        for name in NAMES:
            wait_until(lambda name=name: pair.heartbeats(name)[0] == "failing", 10,
                       f"{name} to see steering fail")  # fmt: skip
            assert pair.heartbeats(name)[1] == "timed out"
            serves(pair, name)
        code, err, took = fill_from_steering(pair, "a1")
        assert code == 3 and "cannot start: manifest" in err and "Timeout" in err, err
        assert took < 10, took  # connect + read timeouts (1 s) and the process, not 70 s
        for name in NAMES:
            log = heartbeat_lines(pair, name, marks[name])
            assert "was ok, now failing, because timed out" in log, log
            serves(pair, name)
        resumed = time.monotonic()
    back = pair.wait_in_rotation(NAMES, 20)
    for name in NAMES:
        wait_until(lambda name=name: "steering reachable again" in heartbeat_lines(
            pair, name, marks[name]), 10, f"{name}'s recovery line")  # fmt: skip
    print(f"\nsteering hung: back in rotation {back:.2f} s after SIGCONT "
          f"({time.monotonic() - resumed:.2f} s)")  # fmt: skip


# ---------------------------------------------------------------------- a hung appliance


def test_a_hung_appliance_leaves_rotation_and_its_player_moves_on(pair: SteeredPair) -> None:
    """dash.js in Chromium plays the steered MPD (content steering on, TTL ``TTL`` s);
    the appliance serving it is SIGSTOPped mid-playback. Steering must drop it within
    ``missed_heartbeats x interval``; the player must move to the other appliance at its
    next steering manifest and keep playing; SIGCONT brings the appliance back."""
    assert pair.wait_in_rotation(NAMES, 20) >= 0
    hosts = {n: host_of(pair.apps[n].url) for n in NAMES}
    with PlayerRun(pair.steering_url + "/v1/titles/pattern/manifest.mpd", 60) as player:
        player.wait_for_time(5.0, timeout=40)
        victim = next(n for n, h in hosts.items() if h == player.segments()[-1]["host"])
        survivor = next(n for n in NAMES if n != victim)
        playback = player.last_playback()
        assert playback is not None
        proc = pair.apps[victim].proc
        assert proc is not None
        stop_wall = time.time()
        with stopped(proc.pid) as stop_mono:
            wait_until(lambda: victim not in pair.priority(victim), 15,
                       f"steering to drop {victim}", interval=0.02)  # fmt: skip
            detected = time.monotonic() - stop_mono
            assert pair.statuses()[victim] == "stale"

            def moved() -> list[Record]:
                return [s for s in player.segments(since=stop_wall)
                        if s["host"] == hosts[survivor]]  # fmt: skip

            first = player.wait_for(moved, 30, f"a segment from {survivor}")[0]
            after = player.wait_for_time(playback["currentTime"] + 8.0, timeout=40)
            stall = longest_stall(player, since=stop_wall)
            summary = player.summary()
            assert not after["paused"] and not after["ended"], summary
            # the content steering manifest the player got after the stop names only the
            # survivor; it took effect on the next segment request
            told = [r for r in player.of_kind("steering", since=stop_wall)
                    if r["pathwayPriority"] and r["pathwayPriority"][0] == survivor]  # fmt: skip
            assert told, summary
            late = [s for s in player.segments(since=first["t"]) if s["host"] != hosts[survivor]]
            assert late == [], (late, summary)
        back = pair.wait_in_rotation(NAMES, 20)
        serves(pair, victim)
    moved_after = first["t"] - stop_wall
    told_after = told[0]["t"] - stop_wall
    limit = DETECTION_SECONDS
    print(f"\nhung appliance {victim}: out of rotation after {detected:.2f} s (stated "
          f"{limit:.1f} s); player told after {told_after:.2f} s, first segment from "
          f"{survivor} after {moved_after:.2f} s (TTL {TTL} s); longest stall {stall:.2f} s; "
          f"(buffer {playback['buffer']:.1f} s at the stop); "
          f"back in rotation {back:.2f} s after SIGCONT")  # fmt: skip
    # the last beat came at most one interval before the stop; allow for polling
    assert detected <= limit + 1.0, f"took {detected:.2f} s, stated {limit:.1f} s"
    # the player hears of it at its next steering request (one TTL later at most) and
    # moves at its next segment request; a request already hanging on the stopped
    # appliance costs at most its fragment timeout (player.html: 4 s)
    assert told_after <= detected + TTL + 1.0, (told_after, summary)
    assert moved_after <= told_after + 4.0 + 1.0, (moved_after, summary)
    # playback stops only once the buffer it had at the stop is spent, and only until
    # the first segment from the survivor is in
    allowed = max(moved_after - playback["buffer"], 0.0) + 1.5
    assert stall <= allowed, (
        f"playback stalled for {stall:.1f} s (allowed {allowed:.1f})\n{summary}"
    )


# ---------------------------------------------------------------------- soak (pytest -m slow)

SOAK_ROUNDS = 20
SOAK_STOPS = 20


@pytest.mark.slow
def test_soak_miss_path_faults_leave_no_descriptor_behind(tmp_path: Path) -> None:
    """``SOAK_ROUNDS`` rounds of every origin fault and every peer fault, on one worker:
    its descriptors and upstream connections do not grow with the number of faults."""
    n = SOAK_ROUNDS + 1
    with warm_site(tmp_path, n * len(PEER_FAULTS) + 1, n * len(ORIGIN_FAULTS) + 1) as s:
        paths = Paths(s)
        first = Baseline(s)
        kinds: collections.Counter[str] = collections.Counter()
        verified = 0
        for _ in range(SOAK_ROUNDS):
            kinds += origin_round(s, paths)
            settle(s)
            verified += peer_round(s, paths)
        fds, upstream = first.check(pooled=len(PEER_FAULTS))
        faults = SOAK_ROUNDS * (len(ORIGIN_FAULTS) + len(PEER_FAULTS))
        print(f"\nsoak, miss path: {faults} faults in {SOAK_ROUNDS} rounds; origin outcomes "
              f"{dict(kinds)}; {verified} bytes verified through peer faults; worker fds "
              f"before {dict(first.fds)} after {dict(fds)} (object = open-file cache); upstream "
              f"connections before {dict(first.upstream)} after {dict(upstream)}")  # fmt: skip


@pytest.mark.slow
def test_soak_fill_faults_many_runs(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The fill fault test, run again and again, each time on a fresh appliance."""
    with warm_site(tmp_path_factory.mktemp("fillsoak")) as s:
        paths = Paths(s)
        for i in range(5):
            test_fill_gives_up_on_faulty_sources_and_a_later_run_completes(
                s, paths, tmp_path_factory.mktemp(f"fill{i}")
            )
            s.origin.reset()
            s.fault_proxy().reset()
            paths = Paths(s)  # a fresh appliance: the same objects miss again


@pytest.mark.slow
def test_soak_hung_appliance_many_times(pair: SteeredPair) -> None:
    """SIGSTOP and SIGCONT each appliance ``SOAK_STOPS`` times in turn: every time it
    leaves the rotation within the detection interval and comes back."""
    detected: list[float] = []
    back: list[float] = []
    for i in range(SOAK_STOPS):
        victim = NAMES[i % 2]
        proc = pair.apps[victim].proc
        assert proc is not None
        pair.wait_in_rotation(NAMES, 20)
        with stopped(proc.pid) as stop_mono:
            wait_until(lambda victim=victim: victim not in pair.priority(victim), 15,
                       f"steering to drop {victim}", interval=0.02)  # fmt: skip
            detected.append(time.monotonic() - stop_mono)
        back.append(pair.wait_in_rotation(NAMES, 20))
        serves(pair, victim)
    print(f"\nsoak, hung appliance: {SOAK_STOPS} SIGSTOPs; out of rotation after "
          f"{min(detected):.2f}-{max(detected):.2f} s (mean {sum(detected) / len(detected):.2f},"
          f" stated {DETECTION_SECONDS:.1f} s); back {min(back):.2f}-{max(back):.2f} s after "
          f"SIGCONT")  # fmt: skip
    assert max(detected) <= DETECTION_SECONDS + 1.0, detected


@pytest.mark.slow
def test_soak_steering_outages_many_times(pair: SteeredPair) -> None:
    for _ in range(5):
        test_steering_refusing_connections_appliances_serve_on_and_return_to_rotation(pair)
        test_steering_hung_appliances_serve_on_and_return_to_rotation(pair)


@pytest.mark.slow
def test_soak_hung_appliance_with_a_player_three_times(pair: SteeredPair) -> None:
    for _ in range(3):
        test_a_hung_appliance_leaves_rotation_and_its_player_moves_on(pair)
