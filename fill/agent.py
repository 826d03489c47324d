"""Executing a fill plan: fetch from peers then origin, verify, commit, evict (I/O).

Theory of operation
-------------------
The plan (:mod:`fill.planner`) says what to fetch, hottest first, and which held
objects may go to make room. This module carries it out with ``concurrency`` transfers
sharing one rate cap (:class:`oca.rate.RateLimiter`):

- **Sources.** For each object: the site's peers (``fill.peers``, else
  ``peering.peers``, in order; signed with the site key when there is one), then the
  manifest's origin URLs. A peer that does not hold the object answers 404 and is
  skipped at once; a connection error, timeout or 5xx is retried with backoff
  (``attempts_per_source``) and then the next source is tried. A source that returns
  wrong bytes (a size or sha256 that does not match the manifest) is logged with its
  address and not used again for the rest of the run.
- **Never partial, never corrupt.** Bytes go to ``<disk>/.oca/fill/<sha256>.part`` on
  the planned disk, hashed as they arrive. An interrupted transfer (a crash, the end of
  the window, a dropped connection) leaves the part file; the next attempt hashes what
  is there and asks for the rest with ``Range: bytes=N-`` (a 200 instead of a 206 starts
  over). Only a part file whose size and sha256 match the manifest is committed, through
  the store's own temp file / fsync / rename / journal sequence, so the inventory never
  lists an object whose bytes are wrong, whatever instant the process dies at.
- **Room.** Before an object is committed to a disk, planned evictions on that disk are
  carried out, coldest first, until it fits. An object requested in the last
  ``pin_recent_seconds`` counts as being served and is skipped, as are objects being
  filled. (A response already in flight is safe anyway: it holds an open descriptor,
  and removing the file does not cut it.)
- **The window.** At the window's end, no new transfer starts and running ones are
  cancelled; their part files are resumed by the next run.
- **A disk that breaks or fills mid-run.** An I/O error writing a part file or
  committing it lets the store judge the disk (EIO, EROFS, a vanished root: it is
  marked failed, with the reason); ENOSPC, or the store finding no room on it, marks it
  full for the rest of the run. Either way the object, and every later one planned for
  that disk, is placed on the next usable disk in rendezvous order (same tier first,
  then the other tiers) and fetched again; the summary names each such disk and why.
  Only when no disk is usable does the object fail.

Progress goes to a terminal as a one-line bar, otherwise as periodic structured log
lines; counters go to :mod:`fill.metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import quote, urlsplit

import aiohttp

from fill.metrics import FillMetrics
from fill.planner import Eviction, Fetch, FillPlan
from oca.auth.tokens import signed_path
from oca.config import Config, appliance_id, load_auth_keys
from oca.errors import CapacityExceeded, DiskFailed, OcaError, StorageError
from oca.http.semantics import parse_content_range
from oca.peering.auth import PEER_HEADER, sign_peer
from oca.peering.misses import pooled_seconds
from oca.rate import RateLimiter
from oca.storage.commands import format_bytes
from oca.storage.inventory import describe_os_error
from oca.storage.placement import rank_disks
from oca.storage.store import Store

log = logging.getLogger("fill.agent")

CHUNK_BYTES = 256 << 10
PART_DIR = ".oca/fill"
SourceKind = Literal["peer", "origin"]


class _NotThere(Exception):
    """The source does not hold the object (404/410): try the next one at once."""


class _Transfer(Exception):
    """A transfer failed in a way worth retrying (connection, timeout, 5xx, short body)."""


class _WrongBytes(Exception):
    """The source sent bytes that do not match the manifest: never use it again."""


class _LocalFailure(Exception):
    """Our side failed (disk full, disk error): no other source can help this run.
    ``disk`` names the disk that failed or filled up (another disk may take the object)."""

    def __init__(self, message: str, disk: DiskTrouble | None = None) -> None:
        super().__init__(message)
        self.disk = disk


@dataclass(frozen=True, slots=True)
class DiskTrouble:
    """A disk this run stopped using: ``failed`` (the store marked it) or ``full``."""

    disk: str
    kind: Literal["failed", "full"]
    reason: str


@dataclass(frozen=True, slots=True)
class Source:
    url: str
    kind: SourceKind
    address: str  # scheme://host:port, the unit a bad source is banned by


@dataclass
class FillSummary:
    planned: int = 0
    planned_bytes: int = 0
    fetched: int = 0
    fetched_bytes: int = 0
    bytes_by_source: dict[str, int] = field(default_factory=lambda: {"peer": 0, "origin": 0})
    evicted: int = 0
    evicted_bytes: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason
    not_fitting: int = 0
    already_held: int = 0
    left_for_next_run: int = 0
    stopped_at_window_end: bool = False
    bad_sources: dict[str, str] = field(default_factory=dict)  # address -> why
    disks: dict[str, DiskTrouble] = field(default_factory=dict)  # disks given up mid-run
    replaced: int = 0  # objects placed on another disk than planned
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [
            f"fetched {self.fetched} of {self.planned} planned objects "
            f"({format_bytes(self.fetched_bytes)} of {format_bytes(self.planned_bytes)}), "
            f"{format_bytes(self.bytes_by_source['peer'])} from peers, "
            f"{format_bytes(self.bytes_by_source['origin'])} from the origin, "
            f"in {self.seconds:.1f}s",
            f"evicted {self.evicted} objects ({format_bytes(self.evicted_bytes)}); "
            f"{self.already_held} already held; {self.not_fitting} do not fit",
        ]
        if self.stopped_at_window_end:
            out.append(
                f"stopped at the end of the fill window: {self.left_for_next_run} "
                "objects left for the next run"
            )
        for addr, why in sorted(self.bad_sources.items()):
            out.append(f"source {addr} not used again: {why}")
        for disk, t in sorted(self.disks.items()):
            out.append(f"disk {disk} {t.kind} during the run, not used again: {t.reason}")
        if self.replaced:
            out.append(f"{self.replaced} objects placed on another disk than planned")
        for path, why in sorted(self.failed.items()):
            out.append(f"failed {path}: {why}")
        return out


def part_path(disk_root: str, sha256: str) -> str:
    return os.path.join(disk_root, PART_DIR, f"{sha256}.part")


class FillRun:
    """One execution of one plan; create, then ``await run()``."""

    def __init__(
        self,
        cfg: Config,
        store: Store,
        plan: FillPlan,
        metrics: FillMetrics,
        *,
        deadline: float | None = None,
        clock: Callable[[], float] = time.time,
        progress: Callable[[FillSummary, int, int], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.fcfg = cfg.fill
        self.store = store
        self.plan = plan
        self.metrics = metrics
        self.deadline = deadline  # time.monotonic() at which to stop
        self.clock = clock
        self.progress = progress
        self.summary = FillSummary(
            planned=len(plan.fetches),
            planned_bytes=plan.fetch_bytes,
            not_fitting=len(plan.not_fitting),
            already_held=len(plan.held),
        )
        self.limiter = RateLimiter(self.fcfg.max_fill_rate_bits)
        self.in_flight: set[str] = set()
        self.bytes_in_flight = 0
        self.bad: dict[str, str] = self.summary.bad_sources
        self._evictions: dict[str, list[Eviction]] = {}
        for e in plan.evictions:  # coldest first
            self._evictions.setdefault(e.disk, []).append(e)
        self._commit_lock = asyncio.Lock()
        self._keys = load_auth_keys(cfg.auth) if (cfg.auth.keys or cfg.auth.keys_file) else ()
        # With a site key, peers are asked as peers (X-Oca-Peer): served from their own
        # disks, no URL token needed. Without one, with a URL token signed by our keys.
        self._peer_key = bytes.fromhex(cfg.peering.keys[0]) if cfg.peering.keys else None
        self._me = appliance_id(cfg)

    # ------------------------------------------------------------------ driver
    async def run(self) -> FillSummary:
        started = time.monotonic()
        queue: asyncio.Queue[Fetch] = asyncio.Queue()
        for f in self.plan.fetches:
            queue.put_nowait(f)
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.fcfg.connect_timeout_seconds,
            sock_read=self.fcfg.read_timeout_seconds,
        )
        connector = aiohttp.TCPConnector(
            keepalive_timeout=pooled_seconds(self.fcfg.read_timeout_seconds)
        )
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False
        ) as session:
            self.session = session
            workers = [
                asyncio.create_task(self._worker(queue), name=f"fill-{i}")
                for i in range(min(self.fcfg.concurrency, max(len(self.plan.fetches), 1)))
            ]
            reporter = asyncio.create_task(self._report(), name="fill-progress")
            try:
                if self.deadline is None:
                    await asyncio.gather(*workers)
                else:
                    remaining = self.deadline - time.monotonic()
                    done, pending = await asyncio.wait(workers, timeout=max(remaining, 0))
                    for t in done:
                        t.result()  # an unexpected error surfaces here, once
                    if pending:
                        self.summary.stopped_at_window_end = True
                        for t in pending:
                            t.cancel()
                        await asyncio.gather(*pending, return_exceptions=True)
            finally:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
        s = self.summary
        s.left_for_next_run = s.planned - s.fetched - len(s.failed)
        s.seconds = time.monotonic() - started
        return s

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(self.fcfg.progress_interval_seconds)
            if self.progress is not None:
                self.progress(self.summary, self.bytes_in_flight, len(self.in_flight))
            # what is left of the plan, for oca_fill_remaining_bytes while the run goes on
            left = self.plan.fetch_bytes - self.summary.fetched_bytes
            self.metrics.remaining_bytes = max(left, 0)
            self.metrics.save()

    async def _worker(self, queue: asyncio.Queue[Fetch]) -> None:
        while not queue.empty():
            f = queue.get_nowait()
            self.in_flight.add(f.path)
            try:
                await self._fill_one(f)
            finally:
                self.in_flight.discard(f.path)

    # ------------------------------------------------------------------ one object
    async def _fill_one(self, f: Fetch) -> None:
        planned = f.disk
        for _ in range(len(self.store.disks()) + 1):  # each turn gives up one disk
            placed = self._usable(f)
            if placed is None:
                gone = "; ".join(
                    f"{t.disk} {t.kind}: {t.reason}" for t in self.summary.disks.values()
                )
                self._failed(f, f"no usable disk for it ({gone or 'none healthy'})")
                return
            f = placed
            try:
                await self._from_sources(f)
            except _LocalFailure as exc:
                if exc.disk is None:
                    self._failed(f, str(exc))
                    return
                self._give_up_disk(exc.disk)
                continue
            if f.disk != planned and f.path not in self.summary.failed:
                self.summary.replaced += 1
            return
        self._failed(f, "every disk was tried")

    def _usable(self, f: Fetch) -> Fetch | None:
        """``f`` if its disk is usable, else ``f`` moved to the next usable disk."""
        usable = [
            d for d in self.store.disks() if d.state == "ok" and d.id not in self.summary.disks
        ]
        if any(d.id == f.disk for d in usable):
            return f
        order = [f.tier] + [t for t in self.store.tiers if t != f.tier]
        for tier in order:
            ids = [d.id for d in usable if d.tier == tier]
            for disk in rank_disks(f.path, ids):
                log.warning("fill of %s: placing it on disk %s (tier %s) instead of %s",
                            f.path, disk, tier, f.disk)  # fmt: skip
                return replace(f, disk=disk, tier=tier)
        return None

    def _give_up_disk(self, t: DiskTrouble) -> None:
        if t.disk not in self.summary.disks:
            self.summary.disks[t.disk] = t
            log.error("fill: disk %s was ok, now %s, because %s; objects planned for it go "
                      "to other disks", t.disk, t.kind, t.reason)  # fmt: skip

    def _local(self, f: Fetch, what: str, exc: OSError) -> _LocalFailure:
        """The failure for ``exc`` met on ``f``'s disk; the store judges the disk."""
        text = f"{what}: {describe_os_error(exc)}"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return _LocalFailure(text, DiskTrouble(f.disk, "full", text))
        self.store.note_io_error(f.disk, exc, self.clock())
        status = next((d for d in self.store.disks() if d.id == f.disk), None)
        if status is not None and status.state != "ok":
            return _LocalFailure(text, DiskTrouble(f.disk, "failed", status.reason))
        return _LocalFailure(text)

    async def _from_sources(self, f: Fetch) -> None:
        """Fetch and commit ``f`` from the first source that has it; _LocalFailure when
        our side failed (counted by the caller), any other failure recorded here."""
        reasons: list[str] = []
        for src in self._sources(f):
            if src.address in self.bad:
                continue
            for attempt in range(self.fcfg.attempts_per_source):
                try:
                    await self._download(f, src)
                    await self._commit(f)
                except _NotThere as exc:
                    reasons.append(f"{src.address}: {exc}")
                    break
                except _WrongBytes as exc:
                    why = f"sent wrong bytes for {f.path}: {exc}"
                    self.bad[src.address] = why
                    log.warning(
                        "fill source %s %s; not using it again in this run", src.address, why
                    )
                    self.metrics.inc("source_errors", src.kind)
                    reasons.append(f"{src.address}: wrong bytes ({exc})")
                    break
                except _Transfer as exc:
                    reasons.append(f"{src.address}: {exc}")
                    self.metrics.inc("source_errors", src.kind)
                    if attempt + 1 < self.fcfg.attempts_per_source:
                        await asyncio.sleep(self.fcfg.retry_backoff_seconds * 2**attempt)
                    continue
                else:
                    self.summary.fetched += 1
                    self.summary.fetched_bytes += f.size
                    self.metrics.inc("objects", "done")
                    self.metrics.set_last_success(self.clock())
                    return
        self._failed(f, "; ".join(reasons) or "no source to fetch it from")

    def _failed(self, f: Fetch, reason: str) -> None:
        self.summary.failed[f.path] = reason
        self.metrics.inc("objects", "failed")
        log.warning("fill of %s failed: %s", f.path, reason)

    def _sources(self, f: Fetch) -> list[Source]:
        out: list[Source] = []
        for peer in self.fcfg.peers or self.cfg.peering.peers:
            out.append(
                Source(peer.rstrip("/") + quote(self._peer_path(f.path)), "peer", _address(peer))
            )
        for url in f.sources:
            out.append(Source(url, "origin", _address(url)))
        return out

    def _peer_path(self, path: str) -> str:
        if not self._keys or self._peer_key is not None:
            return path
        key = next((k for k in self._keys if k.id == self.cfg.auth.signing_key_id), self._keys[0])
        return signed_path(key.id, bytes.fromhex(key.secret), path, int(self.clock()) + 3600)

    async def _download(self, f: Fetch, src: Source) -> None:
        part = part_path(f.disk, f.sha256)
        loop = asyncio.get_running_loop()
        try:
            # Not makedirs: a disk whose filesystem went away must not get a new .oca
            # in the directory left underneath.
            with contextlib.suppress(FileExistsError):
                os.mkdir(os.path.dirname(part))
            fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise self._local(f, f"cannot open {part}", exc) from None
        try:
            have = os.fstat(fd).st_size
            if have > f.size:
                os.ftruncate(fd, 0)
                have = 0
            h, have = await loop.run_in_executor(None, _hash_prefix, fd, have)
            if have == f.size:
                if h.hexdigest() == f.sha256:
                    os.fsync(fd)
                    return
                os.ftruncate(fd, 0)  # complete but wrong (an earlier source): start over
                have = 0
                h = hashlib.sha256()
            resumed = have > 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            if src.kind == "peer" and self._peer_key is not None:
                expires = int(self.clock()) + 300
                headers[PEER_HEADER] = sign_peer(self._peer_key, self._me, "GET", f.path, expires)
            try:
                async with self.session.get(src.url, headers=headers, allow_redirects=True) as r:
                    if r.status in (404, 410):
                        raise _NotThere(f"HTTP {r.status}")
                    if r.status == 206 and have:
                        first, total = parse_content_range(r.headers.get("Content-Range", "")) or (
                            -1,
                            -1,
                        )
                        if first != have or total != f.size:
                            raise _WrongBytes(
                                f"Content-Range {r.headers.get('Content-Range')!r} for a "
                                f"resume at {have} of {f.size} bytes"
                            )
                    elif r.status == 200:
                        if have:
                            os.ftruncate(fd, 0)
                            have = 0
                            h = hashlib.sha256()
                    else:
                        raise _Transfer(f"HTTP {r.status}")
                    pos = have
                    async for chunk in r.content.iter_chunked(CHUNK_BYTES):
                        if pos + len(chunk) > f.size:
                            raise _WrongBytes(f"more than the {f.size} bytes the manifest lists")
                        await self.limiter.take(len(chunk))
                        await loop.run_in_executor(None, _pwrite_all, fd, chunk, pos)
                        h.update(chunk)
                        pos += len(chunk)
                        self.bytes_in_flight += len(chunk)
                        self.summary.bytes_by_source[src.kind] += len(chunk)
                        self.metrics.inc("bytes", src.kind, len(chunk))
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _Transfer(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
            if pos < f.size:
                raise _Transfer(f"connection ended after {pos} of {f.size} bytes")
            digest = h.hexdigest()
            if digest != f.sha256:
                os.ftruncate(fd, 0)
                if resumed:
                    # The prefix came from an earlier attempt, perhaps another source:
                    # start over before blaming this one.
                    raise _Transfer("resumed bytes did not verify; starting over")
                raise _WrongBytes(f"sha256 {digest} over {pos} bytes, expected {f.sha256}")
            os.fsync(fd)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                _unlink(part)
            raise self._local(f, f"writing {part}", exc) from None
        finally:
            os.close(fd)

    async def _commit(self, f: Fetch) -> None:
        part = part_path(f.disk, f.sha256)
        loop = asyncio.get_running_loop()
        async with self._commit_lock:
            await self._make_room(f)
            try:
                await loop.run_in_executor(
                    None,
                    lambda: self.store.adopt_file(f.path, part, sha256=f.sha256, tier=f.tier),
                )
            except CapacityExceeded as exc:
                _unlink(part)  # it cannot be placed this run; do not keep its space
                raise _LocalFailure(
                    f"no room: {exc}", DiskTrouble(f.disk, "full", f"no room: {exc}")
                ) from None
            except DiskFailed as exc:
                raise _LocalFailure(str(exc), DiskTrouble(exc.disk, "failed", exc.reason)) from None
            except StorageError as exc:
                raise _LocalFailure(str(exc)) from None
            _unlink(part)

    async def _make_room(self, f: Fetch) -> None:
        """Carry out planned evictions on the fetch's disk until it fits the budget."""
        victims = self._evictions.get(f.disk)
        if not victims:
            return
        loop = asyncio.get_running_loop()
        status = next((d for d in self.store.disks() if d.id == f.disk), None)
        if status is None:
            return
        budget = int(status.capacity_bytes * (1 - self.fcfg.headroom_fraction))
        used = status.used_bytes
        recent = self.clock() - self.fcfg.pin_recent_seconds
        # The server merges request counts into the indexes as it runs: read them fresh.
        await loop.run_in_executor(None, self.store.refresh)
        while victims and used + f.size > budget:
            e = victims.pop(0)
            rec = self.store.lookup(e.path)
            if rec is None or rec.disk != e.disk:
                continue
            if e.path in self.in_flight or rec.last_access >= recent:
                log.info("not evicting %s: it is being served or filled", e.path)
                continue
            removed = await loop.run_in_executor(None, self.store.remove, e.path)
            if removed:
                used -= e.size
                self.summary.evicted += 1
                self.summary.evicted_bytes += e.size
                self.metrics.inc("evicted_bytes", "", e.size)
                log.info(
                    "evicted %s (%d bytes, priority %.3g): %s", e.path, e.size, e.priority, e.reason
                )


def _address(url: str) -> str:
    u = urlsplit(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    return f"{u.scheme}://{u.hostname}:{port}"


def _hash_prefix(fd: int, n: int) -> tuple[hashlib._Hash, int]:
    """The sha256 of the first ``n`` bytes of ``fd`` and how many there really were."""
    h = hashlib.sha256()
    pos = 0
    while pos < n:
        chunk = os.pread(fd, min(CHUNK_BYTES * 4, n - pos), pos)
        if not chunk:
            break
        h.update(chunk)
        pos += len(chunk)
    return h, pos


def _pwrite_all(fd: int, data: bytes, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view = view[n:]
        pos += n


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):  # gone already, or on a disk that failed
        os.unlink(path)


__all__ = ["FillRun", "FillSummary", "OcaError", "part_path"]
