"""The HTTP half of ``oca bench steering``: the same synthetic workload against a real
``oca steering`` process.

The service runs as its own process pinned to one CPU, with the synthetic catalog on
disk and URL signing on. Every appliance's full inventory is POSTed to it as a signed
heartbeat, then, while a feeder thread keeps posting every appliance's heartbeat at the
fleet's real rate (e.g. 500/s for 1,000 appliances every 2 s, a tenth with inventory
deltas), ``wrk`` on the other CPU asks for ranked, signed URLs
(``GET /v1/titles/{title}/urls``) with the client address in ``X-Forwarded-For`` (the
service trusts loopback as a proxy), at a fixed number of connections. wrk reports the
decisions per second and the latency percentiles it saw, including connection queueing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.measure import rss_bytes
from bench.wrk import WrkResult, lua_script, parse_result
from oca.health.heartbeat import sign_heartbeat

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _sign(key: bytes, body: bytes) -> str:
    return sign_heartbeat("hb", key, body)


@contextlib.contextmanager
def _service(workdir: Path, hb_key: str, cpu: int | None) -> Iterator[tuple[str, int]]:
    port = _free_port()
    cfg = workdir / "steering.toml"
    cfg.write_text(
        f"""
[service]
listen = ["127.0.0.1:{port}"]
state_dir = "{workdir}/state"
catalog = "{workdir}/catalog.json"
trusted_proxies = ["127.0.0.1/32"]
snapshot_interval_seconds = 0
log_level = "warning"

[heartbeat]
keys = [{{ id = "hb", secret = "{hb_key}" }}]
missed_heartbeats = 5

[urls]
keys = [{{ id = "k1", secret = "{secrets.token_hex(32)}" }}]
"""
    )
    cmd = [sys.executable, "-m", "oca", "steering", "-c", str(cfg)]
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    log = open(workdir / "steering.log", "wb")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=log, cwd=REPO, start_new_session=True
    )
    log.close()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        if not line.startswith("oca-steering: listening "):
            raise RuntimeError(
                "steering did not start: " + (workdir / "steering.log").read_text()[-2000:]
            )
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@contextlib.contextmanager
def _pinned(cpu: int | None) -> Iterator[None]:
    """Run this process on ``cpu`` only (no-op for None or without affinity support)."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


async def _post_all(url: str, key: bytes, docs: list[dict[str, Any]], concurrency: int) -> int:
    """POST heartbeats, ``concurrency`` at a time; the number refused."""
    bad = 0
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:

        async def one(doc: dict[str, Any]) -> None:
            nonlocal bad
            body = orjson.dumps(doc)
            async with (
                sem,
                session.post(
                    url + "/v1/heartbeat",
                    data=body,
                    headers={
                        "X-Oca-Heartbeat": _sign(key, body),
                        "Content-Type": "application/json",
                    },
                ) as resp,
            ):
                await resp.read()
                if resp.status != 200:
                    bad += 1

        await asyncio.gather(*(one(d) for d in docs))
    return bad


class _Feeder(threading.Thread):
    """Posts the fleet's heartbeats at their real rate until stopped."""

    def __init__(self, url: str, key: bytes, syn: Any, delta_fraction: float) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.syn = url, key, syn
        self.delta_fraction = delta_fraction
        self.stop_event = threading.Event()
        self.sent = 0
        self.refused = 0
        self.late_seconds = 0.0

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        rng = random.Random(7)
        start = time.time()
        stream = self.syn.heartbeats(start, rng, delta_fraction=self.delta_fraction)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as session:
            pending: set[asyncio.Task[None]] = set()
            for due, doc in stream:
                if self.stop_event.is_set():
                    break
                delay = due - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    self.late_seconds = max(self.late_seconds, -delay)
                doc["sent_at"] = time.time()
                body = orjson.dumps(doc)
                task = asyncio.create_task(self._post(session, body))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending, return_exceptions=True)

    async def _post(self, session: aiohttp.ClientSession, body: bytes) -> None:
        headers = {"X-Oca-Heartbeat": _sign(self.key, body), "Content-Type": "application/json"}
        try:
            async with session.post(self.url + "/v1/heartbeat", data=body, headers=headers) as r:
                await r.read()
                self.sent += 1
                if r.status != 200:
                    self.refused += 1
        except aiohttp.ClientError:
            self.refused += 1


def run_http(
    syn: Any,
    *,
    duration_s: float = 10.0,
    connections: int = 8,
    requests: int = 200_000,
    delta_fraction: float = 0.1,
    service_cpu: int | None = 0,
    client_cpu: int | None = 1,
    wrk_binary: str | None = None,
) -> dict[str, Any]:
    """Drive a real service with ``syn`` (a :class:`bench.steering.SyntheticFleet`)."""
    wrk = wrk_binary or shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (make system-deps installs it)")
    hb_key = secrets.token_hex(32)
    key = bytes.fromhex(hb_key)
    with tempfile.TemporaryDirectory(prefix="oca-bench-steering-") as tmp:
        work = Path(tmp)
        syn.catalog.save(str(work / "catalog.json"))
        rng = random.Random(3)
        lines = [
            f"/v1/titles/{title}/urls\t{client}" for client, title in syn.requests(requests, rng)
        ]
        (work / "requests.txt").write_text("\n".join(lines) + "\n")
        with _service(work, hb_key, service_cpu) as (url, pid), _pinned(client_cpu):
            # this process (the heartbeat feeder) is a client too: keep it off the
            # service's CPU, beside wrk
            t0 = time.perf_counter()
            now = time.time()
            fulls = [syn.heartbeat(a, now, rng, full=True) for a in syn.appliances]
            refused = asyncio.run(_post_all(url, key, fulls, 8))
            load_s = time.perf_counter() - t0
            # The first answer builds the fleet snapshot and its indexes from scratch;
            # timed separately, then the steady state is measured.
            t0 = time.perf_counter()
            with urllib.request.urlopen(url + "/healthz", timeout=120) as resp:
                resp.read()
            first_s = time.perf_counter() - t0
            feeder = _Feeder(url, key, syn, delta_fraction)
            feeder.start()

            def wrk_run(seconds: float) -> subprocess.CompletedProcess[str]:
                cmd = [wrk, "-t", "1", "-c", str(connections), "-d", f"{round(seconds)}s",
                       "--timeout", "5s", "-s", lua_script("steering.lua"), url, "--",
                       str(work / "requests.txt")]  # fmt: skip
                if client_cpu is not None and shutil.which("taskset"):
                    cmd = ["taskset", "-c", str(client_cpu), *cmd]
                return subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)

            wrk_run(3)  # warm-up: ranking caches, connection pools, the feeder's pace
            sent_before = feeder.sent
            out = wrk_run(duration_s)
            feeder.stop_event.set()
            feeder.join(30)
            result: WrkResult = parse_result(out.stdout)
            rss = rss_bytes([pid])
    return {
        "connections": connections,
        "duration_s": result.duration_s,
        "decisions": result.requests,
        "decisions_per_s": result.requests / result.duration_s if result.duration_s else 0.0,
        "errors": result.errors,
        "errors_status": result.errors_status,
        "p50_ms": result.latency_p50_us / 1000,
        "p90_ms": result.latency_p90_us / 1000,
        "p99_ms": result.latency_p99_us / 1000,
        "max_ms": result.latency_max_us / 1000,
        "full_inventories_s": load_s,
        "full_inventories_refused": refused,
        "first_answer_s": first_s,
        "heartbeats_during": feeder.sent - sent_before,
        "heartbeats_refused": feeder.refused,
        "heartbeats_per_s": (feeder.sent - sent_before) / max(result.duration_s, 1e-9),
        "feeder_late_s": feeder.late_seconds,
        "service_rss_mib": rss / (1 << 20),
    }


def print_http(r: dict[str, Any]) -> None:
    print(
        f"\nover HTTP (oca steering on one CPU, wrk -c {r['connections']} on the other, "
        f"{r['heartbeats_per_s']:.0f} heartbeats/s arriving):"
    )
    print(f"  decisions/s        {r['decisions_per_s']:>10,.0f}   ({r['decisions']} in "
          f"{r['duration_s']:.1f} s, {r['errors']} errors)")  # fmt: skip
    print(f"  latency p50        {r['p50_ms']:>10.2f} ms")
    print(f"  latency p90        {r['p90_ms']:>10.2f} ms")
    print(f"  latency p99        {r['p99_ms']:>10.2f} ms   (target < 5 ms)")
    print(f"  latency max        {r['max_ms']:>10.2f} ms")
    print(f"  full inventories   {r['full_inventories_s']:>10.1f} s to POST all "
          f"({r['full_inventories_refused']} refused)")  # fmt: skip
    late = r["feeder_late_s"]
    print(f"  heartbeats         {r['heartbeats_during']:>10} during the run "
          f"({r['heartbeats_refused']} refused, feeder at most {late:.2f} s late)")  # fmt: skip
    print(f"  first answer       {r['first_answer_s']:>10.2f} s after the full inventories "
          "(builds the snapshot)")  # fmt: skip
    print(f"  service RSS        {r['service_rss_mib']:>10.0f} MiB")
