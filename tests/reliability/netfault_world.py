"""The site the network-fault tests break, and what they look at afterwards.

:class:`FaultSite` is one site on loopback, every part its own process: an origin
(:class:`~tests.peering.origin_proc.OriginProcess`), a peer appliance ``p`` holding the
``/titles/p/`` objects behind a fault proxy
(:class:`~tests.reliability.netfault_proxy.FaultProxyProcess`), and the appliance under
test ``a`` (one worker, so its descriptors can be counted) whose only peer is the proxy
and whose origin is the origin. ``a`` knows every object's size and sha256, as the fill
leaves it. Short timeouts throughout (``MISS_READ_TIMEOUT`` and friends), so that every
fault costs well under a second.

What a client saw is an :class:`Outcome`, judged by :func:`judge`: the right bytes
complete, or a clean error status, or a body cut short of its Content-Length (a cut the
client can see), never wrong bytes. What the appliance kept is looked at from outside:
descriptors in ``/proc/<worker>/fd`` (:func:`fd_census`), the transfer locks under
``state_dir/miss`` (:func:`transfers_idle`), part files on its disks
(:func:`part_files`) and its store (:func:`stored`, through ``oca store ls``).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from oca.peering.known import KnownObject, save_known
from tests.appliance import Appliance, fetch, new_key, parse_head, write_tree
from tests.peering.origin_proc import OriginProcess
from tests.reliability.netfault_proxy import FaultProxyProcess

MiB = 1 << 20
MISS_CONNECT_TIMEOUT = 0.5
MISS_READ_TIMEOUT = 0.5
FILL_READ_TIMEOUT = 0.5
PEER_BACKOFF_MAX = 1.0
N_PEER = 24  # objects held by the peer (and the origin)
N_ORIGIN = 40  # objects at the origin only
OBJECT_BYTES = 1 * MiB + 4099


def blob(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------- a client's view


@dataclass(frozen=True)
class Outcome:
    """One GET as the client saw it: ``status`` None if the connection ended before a
    response head; ``ended`` says how the body ended ("complete", "closed" for a FIN
    short of Content-Length, "reset", "timeout")."""

    status: int | None
    headers: dict[str, str]
    body: bytes
    ended: str
    seconds: float

    @property
    def complete(self) -> bool:
        return self.ended == "complete"


def get(host: str, port: int, path: str, *, timeout: float = 30.0) -> Outcome:
    """GET ``path`` on a fresh connection, reading until Content-Length or the end."""
    started = time.monotonic()
    buf = b""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: oca.test\r\nConnection: close\r\n\r\n".encode())
        ended = "closed"
        head: bytes | None = None
        want = -1
        while True:
            if head is None and b"\r\n\r\n" in buf:
                head, _, buf = buf.partition(b"\r\n\r\n")
                want = int(parse_head(head)[1].get("content-length", "0"))
            if head is not None and len(buf) >= want:
                ended = "complete"
                break
            try:
                chunk = s.recv(1 << 20)
            except ConnectionResetError:
                ended = "reset"
                break
            except TimeoutError:
                ended = "timeout"
                break
            if not chunk:
                break
            buf += chunk
    seconds = time.monotonic() - started
    if head is None:
        return Outcome(None, {}, buf, ended, seconds)
    status, headers = parse_head(head)
    return Outcome(status, headers, buf, ended, seconds)


def judge(o: Outcome, data: bytes, what: str) -> str:
    """ "complete" (the right bytes, all of them), "cut" (a correct prefix, then a visible
    end short of Content-Length) or "error" (a clean 502/503/504 or a connection closed
    before any head); anything else fails the test."""
    if o.status == 200:
        assert int(o.headers["content-length"]) == len(data), (what, o.headers)
        assert o.body == data[: len(o.body)], f"{what}: wrong bytes after {_first_diff(o, data)}"
        if o.complete:
            assert o.body == data
            return "complete"
        assert o.ended in ("closed", "reset"), (what, o.ended, len(o.body))
        assert len(o.body) < len(data)
        return "cut"
    if o.status is None:
        assert o.body == b"", (what, o.body[:200])
        return "error"
    assert o.status in (502, 503, 504), (what, o.status, o.body[:300])
    assert o.complete, (what, o.ended)  # an error answer is itself whole
    return "error"


def _first_diff(o: Outcome, data: bytes) -> int:
    return next(i for i, (x, y) in enumerate(zip(o.body, data, strict=False)) if x != y)


# ---------------------------------------------------------------------- the appliance's view


def fd_census(pid: int) -> collections.Counter[str]:
    """The process's descriptors by kind: socket, part (a miss or fill part file),
    deleted (a file unlinked but still open), object (a held object: the open-file
    cache keeps those of objects served, up to ``storage.open_file_cache_size``), file,
    pipe, other."""
    kinds: collections.Counter[str] = collections.Counter()
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except FileNotFoundError:
            continue  # closed meanwhile (the listing itself, or a racing close)
        if target.startswith("socket:"):
            kinds["socket"] += 1
        elif ".part" in target:
            kinds["part"] += 1
        elif target.endswith(" (deleted)"):
            kinds["deleted"] += 1
        elif "/objects/" in target:
            kinds["object"] += 1
        elif target.startswith("pipe:"):
            kinds["pipe"] += 1
        elif target.startswith("/"):
            kinds["file"] += 1
        else:
            kinds["other"] += 1
    return kinds


def fd_targets(pid: int) -> list[str]:
    """What each of the process's descriptors points at (for failure messages)."""
    out = []
    fd_dir = f"/proc/{pid}/fd"
    for name in sorted(os.listdir(fd_dir), key=int):
        with contextlib.suppress(FileNotFoundError):
            out.append(f"{name} -> {os.readlink(os.path.join(fd_dir, name))}")
    return out


def transfers_idle(app: Appliance) -> bool:
    """True when no worker holds a transfer lock (``state_dir/miss/*.lock``): no miss
    transfer is running, none was left behind."""
    lock_dir = app.root / "state" / "miss"
    for lock in lock_dir.glob("*.lock") if lock_dir.exists() else ():
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)
    return True


def part_files(app: Appliance) -> list[Path]:
    """Part files of misses and fills on every disk of ``app``."""
    out: list[Path] = []
    for tier, _n in app.tiers:
        for disk in app.disk_paths(tier):
            for sub in (".oca/miss", ".oca/fill"):
                d = disk / sub
                out += sorted(d.glob("*.part")) if d.exists() else []
    return out


def stored(app: Appliance) -> dict[str, str]:
    """path -> sha256 of every object in ``app``'s store (``oca store ls --json``)."""
    out = app.oca("store", "ls", "-c", str(app.config_path), "--json").stdout
    return {r["path"]: r["sha256"] for r in orjson.loads(out)}


def metric(app: Appliance, name: str, labels: str = "") -> float:
    _, _, body = fetch(*app.host_port, "/metrics")
    want = f"{name}{{{labels}}}" if labels else name
    for line in body.decode().splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


def peer_state(app: Appliance) -> dict[str, object]:
    """``app``'s view of its only peer (``/peers``)."""
    _, _, body = fetch(*app.host_port, "/peers")
    (peer,) = orjson.loads(body)["peers"]
    return dict(peer)


# ---------------------------------------------------------------------- the site


class FaultSite:
    """See the module docstring. ``data`` holds every object's bytes by path."""

    def __init__(self, root: Path, n_peer: int = N_PEER, n_origin: int = N_ORIGIN) -> None:
        self.root = root
        self.peer_paths = [f"/titles/p/seg-{i:03d}.m4s" for i in range(n_peer)]
        self.origin_paths = [f"/titles/o/seg-{i:03d}.m4s" for i in range(n_origin)]
        self.data = {
            p: blob(i, OBJECT_BYTES) for i, p in enumerate(self.peer_paths + self.origin_paths)
        }
        self.key = new_key()
        self.origin = OriginProcess(write_tree(root / "origin", self.data))
        (root / "p").mkdir()
        (root / "a").mkdir()
        self.p = Appliance(root / "p", tiers=(("ssd", 1),))
        self.a = Appliance(root / "a")
        self.proxy: FaultProxyProcess | None = None

    def start(self) -> None:
        self.p.sections = f'[peering]\nappliance_id = "p"\nsite = "s1"\nkeys = ["{self.key}"]\n'
        seed = write_tree(self.root / "p-seed", {k: self.data[k] for k in self.peer_paths})

        def start_peer() -> None:
            self.p.import_tree(seed)
            self.p.start()

        at_once(self.origin.start, start_peer)
        self.proxy = FaultProxyProcess(self.p.url)
        self.proxy.start()
        self.a.sections = (
            f'[peering]\nappliance_id = "a"\nsite = "s1"\npeers = ["{self.proxy.url}"]\n'
            f'keys = ["{self.key}"]\nsummary_refresh_seconds = 0.2\n'
            f"request_timeout_seconds = 2\nbackoff_max_seconds = {PEER_BACKOFF_MAX}\n"
            f'[miss]\norigins = ["{self.origin.url}"]\n'
            f"connect_timeout_seconds = {MISS_CONNECT_TIMEOUT}\n"
            f"read_timeout_seconds = {MISS_READ_TIMEOUT}\nnegative_ttl_seconds = 1\n"
        )
        known = [KnownObject(p, len(d), sha(d), ()) for p, d in self.data.items()]
        self.a.write_config()
        save_known(str(self.a.root / "state"), known)
        self.a.start()

    def stop(self) -> None:
        proxy = self.proxy
        at_once(self.a.stop, self.p.stop, self.origin.stop, proxy.stop if proxy else lambda: None)

    @property
    def worker(self) -> int:
        (pid,) = self.a.worker_pids()
        return pid

    def peer_up(self) -> bool:
        return peer_state(self.a)["state"] == "up"

    def fault_proxy(self) -> FaultProxyProcess:
        assert self.proxy is not None
        return self.proxy

    def filler(
        self,
        name: str,
        manifest: Path,
        *,
        concurrency: int = 16,
        read_timeout: float = FILL_READ_TIMEOUT,
    ) -> Appliance:
        """An appliance config (no server) whose ``oca fill`` asks the proxied peer, then
        the manifest's origin URLs, with the fault tests' short timeouts."""
        (self.root / name).mkdir()
        app = Appliance(self.root / name, tiers=(("ssd", 1),))
        app.extra = (
            f'[fill]\nmanifest = "{manifest}"\n'
            f"connect_timeout_seconds = {MISS_CONNECT_TIMEOUT}\n"
            f"read_timeout_seconds = {read_timeout}\n"
            "attempts_per_source = 2\nretry_backoff_seconds = 0.05\n"
            f"concurrency = {concurrency}\nprogress_interval_seconds = 0.5\n"
        )
        app.sections = (
            f'[peering]\nappliance_id = "{name}"\nsite = "s1"\n'
            f'peers = ["{self.fault_proxy().url}"]\nkeys = ["{self.key}"]\n'
        )
        app.write_config()
        return app


def at_once(*steps: Callable[[], object]) -> None:
    """Run ``steps`` in threads at the same time; re-raise the first failure."""
    errors: list[BaseException] = []

    def run(step: Callable[[], object]) -> None:
        try:
            step()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in steps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def write_manifest(path: Path, objects: dict[str, bytes], origin: str) -> Path:
    """A fill manifest listing ``objects``, each with one origin URL at ``origin``."""
    doc = {
        "schema": "oca.fill-manifest",
        "version": 1,
        "generated_at": time.time(),
        "objects": [
            {"path": p, "size": len(d), "sha256": sha(d), "popularity": 1000.0 - i,
             "sources": [origin + p]}
            for i, (p, d) in enumerate(objects.items())
        ],
    }  # fmt: skip
    path.write_bytes(orjson.dumps(doc))
    return path


@contextlib.contextmanager
def fault_site(root: Path, n_peer: int = N_PEER, n_origin: int = N_ORIGIN) -> Iterator[FaultSite]:
    site = FaultSite(root, n_peer, n_origin)
    try:
        site.start()
        yield site
    finally:
        site.stop()


_TCP_STATES = {
    "01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
    "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
    "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING",
}  # fmt: skip


def connections(pid: int) -> list[tuple[int, int, str]]:
    """(local port, remote port, TCP state) of every TCP socket ``pid`` holds open."""
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        with contextlib.suppress(FileNotFoundError):
            target = os.readlink(os.path.join(fd_dir, name))
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    out = []
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as fh:
            next(fh)
            for line in fh:
                f = line.split()
                if f[9] in inodes:
                    out.append((int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16),
                                _TCP_STATES.get(f[3], f[3])))  # fmt: skip
    return out


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])
