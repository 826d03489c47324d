"""The miss path's per-transfer state files go away with their transfer.

Theory of operation
-------------------
Workers share one upstream transfer per object through ``<state_dir>/miss/<hash>.lock``
(``flock``) and ``<hash>.json`` (:class:`oca.peering.misses.SharedTransfer`). An
appliance that misses all day must not keep two files per object it ever fetched, and
removing them must not let two workers lead the same transfer:

- **The lock race** (no server): four processes claim and release the transfer of one
  object thousands of times (:mod:`tests.reliability.missfiles_claimer`); each leader
  holds an ``O_EXCL`` marker while it leads. No two leaders may overlap, although every
  release unlinks the lock file other processes are opening by path, and the directory
  must be empty at the end.
- **Misses on a real appliance**: two workers (``SO_REUSEPORT`` spreads the clients over
  both), a real origin child process throttled so that transfers overlap, and crowds of
  clients arriving at once on each object, in batches, so the workers race for the
  same objects (one leads, the other follows its part file). Every response must be 200
  with the object's exact bytes; while the misses run the directory never holds more
  than the files of the transfers that can be in flight, and once they are over it
  holds nothing.
- **A leader that dies**: one client's miss is being fetched slowly; the worker leading
  it is killed with SIGKILL, so its files stay behind. The supervisor restarts the
  worker, and the new worker's start removes them; the object is then fetched again,
  with the right bytes, leaving nothing behind.

The default run makes 96 misses by 384 clients; ``pytest -m slow`` runs the full count
(2,200 objects, the number of misses after which the directory was found holding
4,316 files).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.appliance import Appliance, fetch, wait_until, write_tree
from tests.peering.origin_proc import OriginProcess

REPO = Path(__file__).resolve().parents[2]
KiB = 1 << 10


def miss_dir(app: Appliance) -> Path:
    return app.root / "state" / "miss"


def state_files(app: Appliance) -> list[str]:
    d = miss_dir(app)
    return sorted(os.listdir(d)) if d.exists() else []


def flocked_inodes() -> set[int]:
    """Inodes of the files anybody holds an flock on now (from /proc/locks)."""
    out: set[int] = set()
    with open("/proc/locks") as f:
        for line in f:  # "1: FLOCK  ADVISORY  WRITE 4242 08:01:123456 0 EOF" ("-> " if waiting)
            where = [x for x in line.split() if x.count(":") == 2]
            if " FLOCK " in line and where:
                out.add(int(where[0].rsplit(":", 1)[1]))
    return out


def _inode(path: Path) -> int:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return -1


def metric(app: Appliance, name: str, labels: str = "") -> float:
    _, _, body = fetch(*app.host_port, "/metrics")
    want = f"{name}{{{labels}}}" if labels else name
    for line in body.decode().splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


# ---------------------------------------------------------------------------- no server


def test_removing_the_lock_file_never_lets_two_workers_lead(tmp_path: Path) -> None:
    lock_dir = tmp_path / "miss"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.missfiles_claimer", str(lock_dir), "2500"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        for _ in range(4)
    ]
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert all(p.returncode == 0 for p in procs)
    counts = [orjson.loads(o) for o in outs]
    leads = sum(c["leader"] for c in counts)
    print(f"lock race: 4 processes x 2500 claims, {leads} led, "
          f"{sum(c['followed'] for c in counts)} followed")  # fmt: skip
    assert sum(c["overlaps"] for c in counts) == 0, counts
    assert leads >= 4
    assert sorted(os.listdir(lock_dir)) == []


# ---------------------------------------------------------------------------- appliance


class MissWorld:
    """An origin holding ``n`` objects and a two-worker appliance that misses them."""

    def __init__(self, root: Path, n: int) -> None:
        rng = random.Random(5)
        self.files = {
            f"/titles/m{i // 8:03d}/v1/seg-{i % 8:03d}.m4s": rng.randbytes(
                rng.randrange(48 * KiB, 160 * KiB)
            )
            for i in range(n)
        }
        self.big = "/titles/slow/v1.mp4"
        self.files[self.big] = rng.randbytes(1 << 20)
        self.sha = {p: hashlib.sha256(d).digest() for p, d in self.files.items()}
        self.origin = OriginProcess(write_tree(root / "origin", self.files))
        (root / "app").mkdir()
        self.app = Appliance(root / "app", workers=2)

    def start(self) -> None:
        self.origin.start()
        # Each object takes tens of milliseconds to arrive: the crowd's clients land
        # on both workers while it is being fetched.
        self.origin.behave("*", rate_bytes_per_second=2 << 20)
        self.app.sections = f'[miss]\norigins = ["{self.origin.url}"]\n'
        self.app.start()

    def stop(self) -> None:
        self.app.stop()
        self.origin.stop()


@pytest.fixture
def world(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MissWorld]:
    w = MissWorld(tmp_path, getattr(request, "param", 96))
    try:
        w.start()
        yield w
    finally:
        w.stop()


def crowd_misses(w: MissWorld, paths: list[str], crowd: int, batch: int) -> dict[str, Any]:
    """Every path of ``paths`` fetched by ``crowd`` clients at once, ``batch`` paths at a
    time; the miss directory sampled meanwhile. Returns figures; asserts every body."""
    host, port = w.app.host_port
    wrong: list[tuple[str, Any]] = []
    stale: list[str] = []
    most = samples = 0
    stop = threading.Event()

    def sample() -> None:
        """A lock file nobody holds (by /proc/locks, without locking anything) for 0.2 s
        is stale, as is a state file without its lock file: a claim creates the lock
        file just before taking it, a release unlinks both just before unlocking."""
        nonlocal most, samples
        first_seen: dict[tuple[str, int], float] = {}
        while not stop.is_set():
            held = flocked_inodes()
            names = state_files(w.app)
            now = time.monotonic()
            most, samples = max(most, len(names)), samples + 1
            suspects: set[tuple[str, int]] = set()
            for n in names:
                stem, _, kind = n.partition(".")
                ino = _inode(miss_dir(w.app) / f"{stem}.lock")
                if kind not in ("lock", "json") and not kind.endswith(".tmp"):
                    stale.append(f"unexpected file {n}")
                elif kind.endswith(".tmp") or ino not in held:
                    suspects.add((n, ino))
            for key in suspects:
                if now - first_seen.setdefault(key, now) > 0.2:
                    stale.append(f"{key[0]} (lock inode {key[1]}) outlived its transfer")
            first_seen = {k: v for k, v in first_seen.items() if k in suspects}
            time.sleep(0.01)

    def client(path: str) -> None:
        try:
            status, _, body = fetch(host, port, path, timeout=60)
            if (status, hashlib.sha256(body).digest()) != (200, w.sha[path]):
                wrong.append((path, (status, body[:200] if status != 200 else len(body))))
        except Exception as exc:
            wrong.append((path, repr(exc)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(batch * crowd) as pool:
            for i in range(0, len(paths), batch):
                jobs = [pool.submit(client, p) for p in paths[i : i + batch] for _ in range(crowd)]
                for j in jobs:
                    j.result()
    finally:
        stop.set()
        sampler.join(10)
    assert not wrong, wrong[:5]
    assert not stale, stale[:5]
    assert samples > 0
    return {"misses": len(paths), "clients": len(paths) * crowd, "most_files": most,
            "seconds": round(time.monotonic() - started, 1),
            "bytes": sum(len(w.files[p]) for p in paths) * crowd}  # fmt: skip


def idle_and_empty(w: MissWorld) -> None:
    """No transfer in flight in either worker, and no state file left."""
    wait_until(lambda: state_files(w.app) == [], 15, "the miss directory to empty")
    assert all(metric(w.app, "oca_miss_transfers_in_flight") == 0 for _ in range(6))
    assert state_files(w.app) == []


def run_misses(w: MissWorld, crowd: int, batch: int) -> dict[str, Any]:
    paths = sorted(p for p in w.files if p != w.big)
    figures = crowd_misses(w, paths, crowd, batch)
    idle_and_empty(w)
    fetched = {r["path"] for r in w.origin.requests()}
    assert fetched >= set(paths)
    # Both workers took part: some clients followed the other worker's transfer.
    wait_until(lambda: metric(w.app, "oca_miss_transfers_total", 'result="followed"') >= 1,
               5, "a worker to have followed the other's transfer")  # fmt: skip
    figures["upstream_requests"] = len(w.origin.requests())
    figures["followed"] = metric(w.app, "oca_miss_transfers_total", 'result="followed"')
    # Now held: the next requests are hits, and leave nothing either.
    for p in paths[:5]:
        status, _, body = fetch(*w.app.host_port, p)
        assert (status, hashlib.sha256(body).digest()) == (200, w.sha[p])
    assert state_files(w.app) == []
    return figures


def test_misses_leave_no_state_files_and_a_dead_leaders_files_are_swept(world: MissWorld) -> None:
    w = world
    figures = run_misses(w, crowd=4, batch=6)

    # ---- the worker leading a slow transfer dies; its files stay until a worker starts
    w.origin.behave(w.big, rate_bytes_per_second=128 * KiB)  # 8 s for the whole object
    host, port = w.app.host_port
    cut: dict[str, Any] = {}

    def lone_client() -> None:
        try:
            status, _, body = fetch(host, port, w.big, timeout=60)
            cut["result"] = (status, body == w.files[w.big][: len(body)], len(body))
        except Exception as exc:
            cut["result"] = repr(exc)

    t = threading.Thread(target=lone_client, daemon=True)
    t.start()
    state = wait_until(lambda: [n for n in state_files(w.app) if n.endswith(".json")], 20,
                       "the transfer's state file")  # fmt: skip
    info = wait_until(lambda: _streaming(miss_dir(w.app) / state[0]), 20, "the transfer to stream")
    leader = int(info["pid"])
    assert leader in w.app.worker_pids()
    os.kill(leader, signal.SIGKILL)
    t.join(60)
    # Its client was cut short (the connection broke), never given wrong bytes.
    result = cut["result"]
    assert isinstance(result, str) or (result[1] and result[2] < len(w.files[w.big])), result
    wait_until(lambda: leader not in w.app.worker_pids() and len(w.app.worker_pids()) == 2, 30,
               "the supervisor to restart the worker")  # fmt: skip
    wait_until(lambda: "state file(s) of misses led by a worker that died" in w.app.log_text(),
               30, "the new worker to sweep")  # fmt: skip
    assert state_files(w.app) == []
    w.origin.behave(w.big, rate_bytes_per_second=8 << 20)
    status, _, body = fetch(host, port, w.big, timeout=60)
    assert (status, body) == (200, w.files[w.big])
    idle_and_empty(w)
    print(f"miss state files: {figures}")


def _streaming(path: Path) -> dict[str, Any] | None:
    try:
        info = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return info if isinstance(info, dict) and info.get("state") == "streaming" else None


@pytest.mark.slow
@pytest.mark.parametrize("world", [2200], indirect=True)
def test_thousands_of_misses_leave_no_state_files(world: MissWorld) -> None:
    figures = run_misses(world, crowd=2, batch=16)
    print(f"miss state files soak: {figures}")
