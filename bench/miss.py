"""``oca bench miss``: what a miss costs a player, and how a popular miss scales.

Three real appliances on loopback, each ``oca serve`` in its own process group:

- ``origin``: an appliance holding every object, standing in for the origin;
- ``peer``: holds the *peer set* of objects (a neighbour at the same site);
- ``edge``: holds nothing; peers with ``peer`` (site key) and falls back to ``origin``,
  and knows every object's size and sha256 (the table the fill writes).

It measures, with a client in this process reading whole responses over fresh
connections:

1. **Time to first byte**: for each object of the peer set, a GET from ``edge``
   (a peer miss), then, once installed, the same GET again (a local hit); the same for
   objects only the origin has (an origin miss). Medians and p90 in milliseconds.
2. **A popular miss**: ``--clients`` clients ask ``edge`` for one large object that only
   ``peer`` holds, all at once; then the same clients ask again (local hits). Wall time
   until the last client has every byte, bytes per second delivered to the clients,
   and the number of upstream requests (from ``edge``'s metrics).

Every body is checked against the object's sha256. Prints a table; ``--json PATH``
writes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import secrets
import shutil
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.servers import ServerError, ServerProcess, import_content, start_oca
from oca.peering.known import KnownObject, save_known

MiB = 1 << 20


def _config(root: Path, name: str, *, port: int = 0, sections: str = "", workers: int = 1) -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    text = "\n".join(
        [
            "# Written by `oca bench miss`.",
            "[server]",
            f'listen = ["127.0.0.1:{port}"]',
            f"workers = {workers}",
            f'state_dir = "{d}/state"',
            'access_log = ""',
            "[storage]",
            "inventory_poll_seconds = 0.2",
            "[[storage.tiers]]",
            'name = "ssd"',
            f'paths = ["{d}/ssd0"]',
            sections,
        ]
    )
    path = d / "oca.toml"
    path.write_text(text + "\n")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _get(host: str, port: int, path: str) -> tuple[int, float, float, bytes]:
    """(status, seconds to the first body byte, seconds to the last, sha256 of the body)."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port, limit=4 * MiB)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        h = hashlib.sha256()
        first = 0.0
        got = 0
        while got < length:
            chunk = await reader.read(1 << 20)
            if not chunk:
                break
            if not first:
                first = time.perf_counter() - started
            h.update(chunk)
            got += len(chunk)
        return status, first, time.perf_counter() - started, h.digest()
    finally:
        writer.close()


def _metric(url: str, name: str, labels: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    want = f"{name}{{{labels}}} "
    for line in text.splitlines():
        if line.startswith(want):
            return float(line.split()[-1])
    return 0.0


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise ServerError(f"timed out waiting for {what}")


def _ms(values: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(values, n=10) if len(values) >= 2 else values * 9
    return {"p50_ms": statistics.median(values) * 1e3, "p90_ms": qs[8] * 1e3}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="oca bench miss", description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=50, help="objects per set (default 50)")
    ap.add_argument("--size-mib", type=float, default=2.0, help="object size (default 2 MiB)")
    ap.add_argument("--big-mib", type=int, default=32, help="popular object (default 32 MiB)")
    ap.add_argument("--clients", type=int, default=100, help="clients of the popular miss")
    ap.add_argument("--workers", type=int, default=1, help="workers of each appliance")
    ap.add_argument("--client", choices=["curl", "python"], default="curl",
                    help="the popular-object clients: curl --parallel when installed (default), "
                    "or asyncio in this process (checks every digest, slower)")  # fmt: skip
    ap.add_argument("--work-dir", type=Path, help="keep configs and logs here")
    ap.add_argument("--json", type=Path, help="write the figures to this file")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="oca-bench-miss-"))
    for name in ("origin", "peer", "edge", "content"):  # a reused directory starts empty
        shutil.rmtree(work / name, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    servers: list[ServerProcess] = []
    try:
        return asyncio.run(_run(args, work, servers))
    except ServerError as exc:
        print(f"oca bench miss: {exc}", file=sys.stderr)
        return 3
    finally:
        for s in servers:
            s.stop()
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


async def _run(args: argparse.Namespace, work: Path, servers: list[ServerProcess]) -> int:
    size = int(args.size_mib * MiB)
    peer_set = {f"/titles/p/v1/seg-{i:04d}.m4s": os.urandom(size) for i in range(args.objects)}
    origin_set = {f"/titles/o/v1/seg-{i:04d}.m4s": os.urandom(size) for i in range(args.objects)}
    big_path = "/titles/big/v1.mp4"
    big = os.urandom(args.big_mib * MiB)
    everything = {**peer_set, **origin_set, big_path: big}
    digest = {p: hashlib.sha256(d).digest() for p, d in everything.items()}

    def tree(name: str, objects: dict[str, bytes]) -> Path:
        root = work / "content" / name
        for p, d in objects.items():
            f = root / p.lstrip("/")
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(d)
        return root

    key = secrets.token_hex(32)
    peer_port, edge_port = _free_port(), _free_port()
    origin_cfg = _config(work, "origin", workers=args.workers)
    import_content(origin_cfg, tree("origin", everything))
    peer_cfg = _config(
        work, "peer", port=peer_port, workers=args.workers,
        sections=f'[peering]\nappliance_id = "peer"\nkeys = ["{key}"]\n',
    )  # fmt: skip
    import_content(peer_cfg, tree("peer", {**peer_set, big_path: big}))
    servers.append(start_oca(origin_cfg, work / "origin", cpus=None))
    origin_url = servers[-1].urls["http"]
    edge_cfg = _config(
        work, "edge", port=edge_port, workers=args.workers,
        sections=(
            f'[peering]\nappliance_id = "edge"\npeers = ["http://127.0.0.1:{peer_port}"]\n'
            f'keys = ["{key}"]\nsummary_refresh_seconds = 1\n'
            f'[miss]\norigins = ["{origin_url}"]\n'
        ),
    )  # fmt: skip
    save_known(
        str(work / "edge" / "state"),
        [KnownObject(p, len(d), hashlib.sha256(d).hexdigest()) for p, d in everything.items()],
    )
    servers.append(start_oca(peer_cfg, work / "peer", cpus=None))
    servers.append(start_oca(edge_cfg, work / "edge", cpus=None))
    edge_url = servers[-1].urls["http"]
    _wait(lambda: _metric(edge_url, "oca_peer_up", 'peer="peer"') == 1, 30, "the peer summary")

    async def timed(path: str) -> tuple[float, float]:
        status, first, last, h = await _get("127.0.0.1", edge_port, path)
        if status != 200 or h != digest[path]:
            raise ServerError(f"{path}: status {status}, body digest matches: {h == digest[path]}")
        return first, last

    results: dict[str, Any] = {"object_bytes": size, "objects": args.objects}
    peer_miss = [await timed(p) for p in peer_set]
    origin_miss = [await timed(p) for p in origin_set]
    n_install = 2 * args.objects
    _wait(lambda: _metric(edge_url, "oca_miss_installs_total", 'result="installed"') >= n_install,
          60, "the installs")  # fmt: skip
    hits = [await timed(p) for p in peer_set]
    for name, runs in (("local_hit", hits), ("peer_miss", peer_miss), ("origin_miss", origin_miss)):
        results[name] = {
            "ttfb": _ms([r[0] for r in runs]),
            "total": _ms([r[1] for r in runs]),
        }

    curl = shutil.which("curl") if args.client == "curl" else None

    async def crowd() -> tuple[float, list[tuple[int, float, float, bytes]]]:
        """All clients at once; with curl (C, one process, --parallel) the client side
        is not the bottleneck, and sizes are checked instead of digests."""
        started = time.perf_counter()
        if curl is None:
            got = await asyncio.gather(
                *(_get("127.0.0.1", edge_port, big_path) for _ in range(args.clients))
            )
            return time.perf_counter() - started, got
        cmd = [
            curl,
            "-s",
            "-Z",
            "--parallel-immediate",
            "--parallel-max",
            str(args.clients),
            "-w",
            "%{http_code} %{size_download} %{time_starttransfer} %{time_total}\n",
        ]
        for _ in range(args.clients):
            cmd += [f"http://127.0.0.1:{edge_port}{big_path}", "-o", "/dev/null"]  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        out, _ = await proc.communicate()
        wall = time.perf_counter() - started
        rows = []
        for line in out.decode().splitlines():
            code, n, first, last = line.split()
            ok = int(n) == len(big)
            rows.append((int(code), float(first), float(last), digest[big_path] if ok else b""))
        return wall, rows

    before = _metric(edge_url, "oca_peer_requests_total", 'result="ok"')
    before_origin = _metric(edge_url, "oca_origin_requests_total", 'result="ok"')
    miss_wall, miss_got = await crowd()
    ok = len(miss_got) == args.clients
    ok = ok and all(s == 200 and h == digest[big_path] for s, _f, _l, h in miss_got)
    _wait(lambda: _metric(edge_url, "oca_miss_installs_total", 'result="installed"') > n_install,
          60, "the popular object's install")  # fmt: skip
    upstream = (
        _metric(edge_url, "oca_peer_requests_total", 'result="ok"') - before
        + _metric(edge_url, "oca_origin_requests_total", 'result="ok"') - before_origin
    )  # fmt: skip
    hit_wall, hit_got = await crowd()
    ok = ok and all(s == 200 and h == digest[big_path] for s, _f, _l, h in hit_got)
    total = args.clients * len(big)
    results["popular"] = {
        "client": "curl" if curl else "python",
        "clients": args.clients,
        "object_bytes": len(big),
        "upstream_requests": upstream,
        "all_bytes_correct": ok,
        "miss": {"wall_s": miss_wall, "gb_per_s": total / miss_wall / 1e9,
                 "ttfb": _ms([g[1] for g in miss_got])},
        "hit": {"wall_s": hit_wall, "gb_per_s": total / hit_wall / 1e9,
                "ttfb": _ms([g[1] for g in hit_got])},
    }  # fmt: skip
    _print(results, args)
    if args.json:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 0 if ok else 1


def _print(r: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nmiss path, {args.objects} objects of {r['object_bytes'] / MiB:.1f} MiB per set, "
          f"{args.workers} worker(s) per appliance, loopback")  # fmt: skip
    print(f"    {'request':12} {'TTFB p50':>10} {'TTFB p90':>10} {'whole p50':>10}")
    for name in ("local_hit", "peer_miss", "origin_miss"):
        t, w = r[name]["ttfb"], r[name]["total"]
        print(f"    {name:12} {t['p50_ms']:8.2f}ms {t['p90_ms']:8.2f}ms {w['p50_ms']:8.2f}ms")
    base = r["local_hit"]["ttfb"]["p50_ms"]
    ratio = r["peer_miss"]["ttfb"]["p50_ms"] / base
    print(f"    peer miss TTFB / local hit TTFB (p50): {ratio:.1f}x")
    p = r["popular"]
    print(f"\npopular object: {p['clients']} clients x {p['object_bytes'] / MiB:.0f} MiB at once "
          f"({p['upstream_requests']:.0f} upstream request(s), client {p['client']}, "
          f"all complete: {p['all_bytes_correct']})")  # fmt: skip
    for name in ("miss", "hit"):
        m = p[name]
        print(f"    {name:5} all done in {m['wall_s']:.2f} s, {m['gb_per_s']:.2f} GB/s to clients, "
              f"TTFB p50 {m['ttfb']['p50_ms']:.1f} ms")  # fmt: skip
    print(f"    coalesced miss / local hit throughput: "
          f"{p['miss']['gb_per_s'] / p['hit']['gb_per_s']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
