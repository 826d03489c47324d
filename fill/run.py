"""``oca fill``: one fill cycle, from the manifest to a summary (the shell).

load config -> check the window -> take the fill lock -> load the manifest -> open the
store -> plan (pure) -> clear stale part files -> execute -> save metrics -> summary.
Exit codes: 0 done (or outside the window), 1 some objects failed, 2 bad config or
manifest, 3 cannot start (store, lock, manifest source unreachable).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from typing import IO

import aiohttp

from fill.agent import PART_DIR, FillRun, FillSummary
from fill.manifest import Manifest, ManifestError, parse_manifest
from fill.metrics import FillMetrics
from fill.mover import plan_moves
from fill.planner import DiskSpace, FillPlan, HeldObject, plan_fill
from fill.policy import PolicyParams
from fill.window import jitter_offset, window_state
from oca.config import Config, parse_window
from oca.errors import StorageError
from oca.peering.known import KnownObject, save_known
from oca.storage.store import Store

log = logging.getLogger("fill.agent")

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANNOT_START = 0, 1, 2, 3


class CannotStart(Exception):
    """The fill cannot begin (store, lock or manifest source); exit code 3."""


async def fetch_manifest(source: str, timeout_seconds: float) -> Manifest:
    """The manifest from a URL or a file; ManifestError or CannotStart on failure."""
    if source.startswith(("http://", "https://")):
        timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as s, s.get(source) as r:
                if r.status != 200:
                    raise CannotStart(f"manifest {source}: HTTP {r.status}")
                data = await r.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CannotStart(f"manifest {source}: {type(exc).__name__}: {exc}") from None
    else:
        try:
            with open(source, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise CannotStart(f"manifest {source}: {exc.strerror}") from None
    return parse_manifest(data)


@contextlib.contextmanager
def fill_lock(state_dir: str) -> Iterator[None]:
    path = os.path.join(state_dir, "fill", "lock")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CannotStart(f"another fill is running (lock {path} is held)") from None
        yield
    finally:
        os.close(fd)


def store_view(store: Store) -> tuple[dict[str, HeldObject], list[DiskSpace]]:
    """What the pure planners need from the store: held objects and disks."""
    held = {
        r.path: HeldObject(r.path, r.size, r.sha256, r.tier, r.disk, r.hits, r.last_access)
        for r in store.records()
    }
    disks = [DiskSpace(d.id, d.tier, d.capacity_bytes, d.state == "ok") for d in store.disks()]
    return held, disks


def policy_params(cfg: Config) -> PolicyParams:
    f = cfg.fill
    return PolicyParams(f.half_life_seconds, f.forecast_weight, f.probation_fraction)


def plan_for(cfg: Config, store: Store, manifest: Manifest, now: float) -> FillPlan:
    held, disks = store_view(store)
    recent = now - cfg.fill.pin_recent_seconds
    pinned = {p for p, h in held.items() if h.last_access >= recent}
    params = policy_params(cfg)
    return plan_fill(
        manifest,
        held,
        disks,
        store.tiers,
        now,
        headroom_fraction=cfg.fill.headroom_fraction,
        pinned=frozenset(pinned),
        params=params,
    )


def clear_stale_parts(store: Store, plan: FillPlan) -> int:
    """Remove part files no fetch of this plan will resume; the number removed."""
    keep = {(f.disk, f"{f.sha256}.part") for f in plan.fetches}
    removed = 0
    for d in store.disks():
        folder = os.path.join(d.id, PART_DIR)
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if (d.id, name) not in keep:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))
                    removed += 1
    return removed


class Progress:
    """A one-line bar on a terminal, periodic log lines otherwise."""

    def __init__(self, out: IO[str], planned_bytes: int) -> None:
        self.out = out
        self.tty = out.isatty()
        self.planned = max(planned_bytes, 1)
        self.started = time.monotonic()

    def __call__(self, s: FillSummary, received: int, active: int) -> None:
        took = max(time.monotonic() - self.started, 1e-6)
        rate = received * 8 / took
        frac = min(received / self.planned, 1.0)
        if self.tty:
            bar = "#" * int(frac * 30)
            self.out.write(
                f"\r[{bar:<30}] {frac:5.1%} {received >> 20} MiB {s.fetched} done "
                f"{len(s.failed)} failed {active} active {rate / 1e6:.1f} Mbit/s "
            )
            self.out.flush()
        else:
            log.info(
                "fill progress: received_bytes=%d planned_bytes=%d done=%d failed=%d "
                "active=%d rate_bits=%.0f",
                received,
                self.planned,
                s.fetched,
                len(s.failed),
                active,
                rate,
            )

    def finish(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def run_moves(
    cfg: Config,
    store: Store,
    forecast: dict[str, float] | None,
    out: IO[str],
    deadline: float | None = None,
) -> tuple[int, list[str]]:
    """Plan and carry out tier moves one at a time; (moved, failures)."""
    now = time.time()
    held, disks = store_view(store)
    params = policy_params(cfg)
    moves = plan_moves(
        held.values(),
        disks,
        store.tiers,
        now,
        headroom_fraction=cfg.fill.headroom_fraction,
        forecast=forecast,
        params=params,
    )
    moved = 0
    failures: list[str] = []
    for m in moves:
        if deadline is not None and time.monotonic() >= deadline:
            break
        try:
            store.move(m.path, m.to_tier)
        except StorageError as exc:
            failures.append(f"{m.path}: {exc}")
            log.warning("moving %s from %s to %s failed: %s", m.path, m.from_tier, m.to_tier, exc)
            continue
        moved += 1
        log.info(
            "moved %s from %s to %s (priority %.3g): %s",
            m.path,
            m.from_tier,
            m.to_tier,
            m.priority,
            m.reason,
        )
    if moved:
        store.flush_stats()  # the moved objects' request counts, in one save per disk
    print(
        f"oca fill: tier moves: {moved} of {len(moves)} planned done"
        + (f", {len(failures)} failed" if failures else ""),
        file=out,
    )
    return moved, failures


def run_tiers_only(cfg: Config, out: IO[str] = sys.stdout) -> int:
    """``oca fill --tiers-only``: only the tier mover, at any time of day."""
    try:
        with fill_lock(cfg.server.state_dir):
            try:
                store = Store.open(cfg.storage)
            except StorageError as exc:
                raise CannotStart(f"store: {exc}") from None
            with store:
                _moved, failures = run_moves(cfg, store, None, out)
    except CannotStart as exc:
        print(f"oca fill: cannot start: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    return EXIT_FAILED if failures else EXIT_OK


def run_fill(
    cfg: Config, *, now: bool = False, manifest_source: str | None = None, out: IO[str] = sys.stdout
) -> int:
    start_min, end_min = parse_window(cfg.fill.window)
    deadline: float | None = None
    if not now:
        offset = jitter_offset(socket.gethostname(), cfg.fill.window_jitter_seconds)
        state = window_state(datetime.now(), start_min, end_min, offset)
        if not state.inside:
            print(
                f"oca fill: outside the fill window {cfg.fill.window} (this appliance starts "
                f"at {state.next_start:%Y-%m-%d %H:%M:%S}); use --now to fill anyway",
                file=out,
            )
            return EXIT_OK
        assert state.end is not None
        deadline = time.monotonic() + (state.end - datetime.now()).total_seconds()
    source = manifest_source or cfg.fill.manifest
    if not source:
        print("oca fill: no manifest: set fill.manifest or pass --manifest", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        with fill_lock(cfg.server.state_dir):
            return asyncio.run(_run(cfg, source, deadline, out))
    except CannotStart as exc:
        print(f"oca fill: cannot start: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    except ManifestError as exc:
        print(f"oca fill: bad manifest: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


async def _run(cfg: Config, source: str, deadline: float | None, out: IO[str]) -> int:
    manifest = await fetch_manifest(
        source, cfg.fill.connect_timeout_seconds + cfg.fill.read_timeout_seconds
    )
    loop = asyncio.get_running_loop()
    # The server's miss path verifies what it fetches against the manifest's digests.
    known = [KnownObject(o.path, o.size, o.sha256, o.sources) for o in manifest.objects]
    try:
        await loop.run_in_executor(None, save_known, cfg.server.state_dir, known)
    except OSError as exc:
        log.warning("cannot save the known-objects table for the miss path: %s", exc)
    try:
        store = await loop.run_in_executor(None, Store.open, cfg.storage)
    except StorageError as exc:
        raise CannotStart(f"store: {exc}") from None
    metrics = FillMetrics(cfg.server.state_dir)
    try:
        plan = plan_for(cfg, store, manifest, time.time())
        removed = clear_stale_parts(store, plan)
        log.info(
            "fill plan: %d objects to fetch (%d bytes), %d already held, %d evictions "
            "allowed (%d bytes), %d do not fit; %d stale part files removed",
            len(plan.fetches),
            plan.fetch_bytes,
            len(plan.held),
            len(plan.evictions),
            plan.evict_bytes,
            len(plan.not_fitting),
            removed,
        )
        for n in plan.not_fitting[:20]:
            log.info("does not fit: %s (%d bytes): %s", n.path, n.size, n.reason)
        progress = Progress(out, plan.fetch_bytes)
        metrics.running = 1
        metrics.remaining_bytes = plan.fetch_bytes
        metrics.save()
        run = FillRun(cfg, store, plan, metrics, deadline=deadline, progress=progress)
        summary = await run.run()
        progress(summary, run.bytes_in_flight, 0)
        progress.finish()
        if not summary.stopped_at_window_end:
            forecast = {o.path: o.popularity for o in manifest.objects}
            await loop.run_in_executor(None, run_moves, cfg, store, forecast, out, deadline)
    finally:
        metrics.running = 0
        with contextlib.suppress(NameError):
            metrics.remaining_bytes = max(plan.fetch_bytes - summary.fetched_bytes, 0)
        metrics.save()
        store.close()
    for line in summary.lines():
        print(f"oca fill: {line}", file=out)
    return EXIT_FAILED if summary.failed else EXIT_OK
