"""Helpers for the load tests: an appliance started with a given open-file limit, what
its processes hold (read from /proc), and clients that fetch objects and check every byte.
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped, unused-ignore]

from bench.procfs import fd_count, held_connections
from tests.appliance import Appliance, read_response, wait_until, write_tree


@dataclass
class NofileAppliance(Appliance):
    """An :class:`Appliance` whose supervisor starts with ``RLIMIT_NOFILE = nofile``
    (soft, hard), as a shell or a service manager would give it; the workers inherit
    whatever the supervisor has when it starts them."""

    nofile: tuple[int, int] = (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1])

    def start(self, timeout: float = 30.0) -> Appliance:
        self.write_config()
        soft, hard = self.nofile

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

        with open(self.root / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "oca", "serve", "-c", str(self.config_path)],
                stdout=subprocess.PIPE,
                stderr=log,
                env={**os.environ, **self.env},
                start_new_session=True,
                preexec_fn=limit,
            )
        self._wait_for("oca: ready", timeout)
        return self


def nofile_of(pid: int) -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE of a running process."""
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    return int(soft), int(hard)


@dataclass(frozen=True)
class Usage:
    """What the supervisor and workers hold at one instant."""

    fds: int  # descriptors, supervisor + workers
    rss: int  # bytes, supervisor + workers
    held: int  # client connections the workers hold (ESTABLISHED sockets on the port)


def usage(app: Appliance) -> Usage:
    assert app.proc is not None
    workers = app.worker_pids()
    pids = [app.proc.pid, *workers]
    rss = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            rss += int(psutil.Process(pid).memory_info().rss)
    held = sum(held_connections(workers, app.host_port[1]).values())
    return Usage(sum(fd_count(p) for p in pids), rss, held)


def usage_when(app: Appliance, ok: Callable[[Usage], bool], timeout: float, what: str) -> Usage:
    """The first :func:`usage` sample for which ``ok`` holds (polling up to ``timeout``)."""
    last: list[Usage] = []

    def check() -> bool:
        last[:] = [usage(app)]
        return ok(last[0])

    wait_until(check, timeout, what)
    return last[0]


def describe_fds(app: Appliance) -> dict[int, dict[str, int]]:
    """Per worker: its descriptors by kind, sockets on the port by TCP state (for
    failure messages: what is left when descriptors do not come back)."""
    states = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
              "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
              "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}  # fmt: skip
    out: dict[int, dict[str, int]] = {}
    for pid in app.worker_pids():
        by_inode: dict[int, str] = {}
        for name in ("tcp", "tcp6"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{name}") as fh:
                next(fh, None)
                for line in fh:
                    f = line.split()
                    by_inode[int(f[9])] = states.get(f[3], f[3])
        kinds: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        kind = "socket " + by_inode.get(int(target[8:-1]), "other")
                    elif target.startswith("/"):
                        kind = "file"
                    else:
                        kind = target.split(":")[0]
                    kinds[kind] = kinds.get(kind, 0) + 1
        out[pid] = kinds
    return out


def make_objects(root: Path, count: int, seed: int) -> dict[str, bytes]:
    """``count`` objects of random bytes, 16 KiB to 1.5 MiB, written under ``root``."""
    rng = random.Random(seed)
    objects = {
        f"/titles/load/seg-{i:03d}.m4s": rng.randbytes(rng.randrange(16 << 10, 3 << 19))
        for i in range(count)
    }
    write_tree(root, objects)
    return objects


class Fetcher(threading.Thread):
    """Fetches random objects and ranges on keep-alive connections until stopped, and
    checks every byte; a wrong status or byte is recorded, never raised in the thread."""

    def __init__(self, host: str, port: int, objects: dict[str, bytes], seed: int) -> None:
        super().__init__(daemon=True, name=f"fetcher-{seed}")
        self.host, self.port, self.objects, self.seed = host, port, objects, seed
        self.stop_event = threading.Event()
        self.requests = 0
        self.bytes_checked = 0
        self.failures: list[str] = []

    def run(self) -> None:
        rng = random.Random(self.seed)
        paths = sorted(self.objects)
        sock: socket.socket | None = None
        while not self.stop_event.is_set():
            path = rng.choice(paths)
            data = self.objects[path]
            ranged = rng.random() < 0.5
            start = rng.randrange(len(data))
            end = min(len(data) - 1, start + rng.randrange(1, 256 << 10))
            head = f"GET {path} HTTP/1.1\r\nHost: oca.test\r\n"
            if ranged:
                head += f"Range: bytes={start}-{end}\r\n"
            try:
                if sock is None:
                    sock = socket.create_connection((self.host, self.port), timeout=30)
                sock.sendall((head + "\r\n").encode())
                status, headers, body = read_response(sock)
            except OSError as exc:
                self.failures.append(f"{path}: {exc!r}")
                if sock is not None:
                    sock.close()
                sock = None
                continue
            want = (206, data[start : end + 1]) if ranged else (200, data)
            if (status, body) != want:
                self.failures.append(
                    f"{path} ranged={ranged}: status {status}, {len(body)} bytes, "
                    f"wanted {want[0]}, {len(want[1])}"
                )
            self.requests += 1
            self.bytes_checked += len(body)
            if headers.get("connection", "").lower() == "close" or self.requests % 50 == 0:
                sock.close()
                sock = None
        if sock is not None:
            sock.close()


def run_fetchers(host: str, port: int, objects: dict[str, bytes], n: int) -> list[Fetcher]:
    fetchers = [Fetcher(host, port, objects, seed) for seed in range(n)]
    for f in fetchers:
        f.start()
    return fetchers


def stop_fetchers(fetchers: list[Fetcher]) -> tuple[int, int, list[str]]:
    """(requests, bytes checked, failures) once every fetcher has stopped."""
    for f in fetchers:
        f.stop_event.set()
    for f in fetchers:
        f.join(60)
    return (
        sum(f.requests for f in fetchers),
        sum(f.bytes_checked for f in fetchers),
        [x for f in fetchers for x in f.failures],
    )
