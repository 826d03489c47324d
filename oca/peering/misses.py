"""The miss path: fetch what a client asked for and this appliance lacks (adapter).

Theory of operation
-------------------
When a content request finds nothing in the store, the server asks
:meth:`MissFetcher.attach` for the object's :class:`~oca.peering.transfer.Transfer`:

- **Coalescing.** One transfer per object per appliance: every client that misses the
  same object while it is being fetched attaches to its worker's transfer, and the
  workers share one upstream transfer through a lock and a state file
  (:class:`SharedTransfer`), so N concurrent misses cause one upstream request. The
  clients' responses send from the transfer's part file as it grows (see
  :mod:`oca.peering.transfer`).
- **Sources.** The site's peers whose summaries claim the object (best first), then
  the origin: the object's own origin URLs from the known-objects table, then
  ``miss.origins`` with the object's path appended. Peer requests are signed
  (``X-Oca-Peer``) and served by the peer from its own disks only (hop limit 1).
- **Retry without wrong bytes.** A source that fails mid-transfer (connection reset,
  timeout, 5xx, a body shorter than announced) is reported and the transfer goes on
  from the next source with ``Range: bytes=N-``, where N is what is already on disk;
  the next source must agree on the total size (a 200 is read past its first N bytes).
  A source whose size or validator contradicts the known object is not used. Clients
  never see a seam: they only ever read the part file.
- **Verify, then install.** The digest is computed as bytes are written. With a known
  sha256 a mismatch fails the transfer (clients are cut one byte short, see
  :mod:`oca.peering.transfer`), nothing is installed and the source is reported
  (a peer is backed off). A verified (or, for objects without a known digest,
  completed) object is fsynced and installed with the store's own
  temp-file/rename/journal sequence (:meth:`oca.storage.store.Store.adopt_file`), so
  the next request is a local hit.
- **Negative caching.** When every source answered 404, the object is remembered as
  missing for ``negative_ttl_seconds`` and clients get 404 at once; any other failure
  gives 502 (504 on a timeout) and is not cached.
- **Limits.** At most ``max_upstream_transfers`` transfers run at once (the rest
  queue), over one aiohttp session whose connector pools at most
  ``max_upstream_connections`` connections, with connect and read timeouts; an
  optional ``max_rate_bits`` caps the bytes per second pulled upstream.

Blocking file work (creating, writing, fsyncing, installing) runs in the worker's I/O
thread pool; the event loop only moves bytes between aiohttp and that pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import orjson
from cachetools import TTLCache

from oca.config import Config
from oca.errors import CapacityExceeded, OcaError, StorageError
from oca.http.dates import parse_http_date
from oca.http.semantics import parse_content_range
from oca.peering.auth import PEER_HEADER
from oca.peering.known import KnownTable
from oca.peering.peers import Peer, PeerSet, address_of
from oca.peering.transfer import SourceKind, Transfer
from oca.rate import RateLimiter
from oca.storage.inventory import describe_os_error
from oca.storage.store import Store

log = logging.getLogger("oca.peering")

CHUNK_BYTES = 256 << 10
MISS_DIR = ".oca/miss"
_NEGATIVE_MAX = 65536
_FOLLOW_POLL_SECONDS = 0.005
_CLAIM_TRIES = 1000
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Source:
    url: str
    kind: SourceKind
    address: str
    peer: Peer | None = None


class _NotThere(OcaError):
    """The source answered 404 or 410: it does not hold the object."""


class _Failed(OcaError):
    """The source failed; the next one may do better."""

    def __init__(self, reason: str, status: int = 502) -> None:
        super().__init__(reason)
        self.status = status


class _WrongBytes(_Failed):
    """The source sent bytes that contradict the known object."""


class MissFetcher:
    """See the module docstring. One per worker, on the worker's event loop."""

    def __init__(
        self,
        cfg: Config,
        store: Store,
        known: KnownTable,
        peers: PeerSet | None,
        io_pool: concurrent.futures.Executor,
        inc: Callable[[str, str, float], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg.miss
        self.store = store
        self.known = known
        self.peers = peers
        self.io_pool = io_pool
        self.inc = inc
        self.tier = cfg.miss.tier or (cfg.storage.tiers[-1].name if cfg.storage.tiers else None)
        self.inflight: dict[str, Transfer] = {}
        self.negative: TTLCache[str, str] = TTLCache(
            _NEGATIVE_MAX, max(cfg.miss.negative_ttl_seconds, 1e-9), timer=clock
        )
        self.slots = asyncio.Semaphore(cfg.miss.max_upstream_transfers)
        self.limiter = RateLimiter(cfg.miss.max_rate_bits) if cfg.miss.max_rate_bits else None
        self.session: aiohttp.ClientSession | None = None
        self.lock_dir = os.path.join(cfg.server.state_dir, "miss")
        self.shared: dict[str, SharedTransfer] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.upstream_requests = 0

    # ------------------------------------------------------------------ lifecycle
    def open_session(self) -> aiohttp.ClientSession:
        if self.session is None:
            c = self.cfg
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=c.max_upstream_connections,
                    keepalive_timeout=pooled_seconds(c.read_timeout_seconds),
                ),
                timeout=aiohttp.ClientTimeout(
                    sock_connect=c.connect_timeout_seconds, sock_read=c.read_timeout_seconds
                ),
                auto_decompress=False,
                skip_auto_headers=("Accept-Encoding",),
            )
        return self.session

    async def close(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    def could_fetch(self, path: str) -> bool:
        """Whether any source could be asked for ``path`` (else: a plain 404)."""
        if self.cfg.origins or (self.peers is not None and self.peers.peers):
            return True
        k = self.known.get(path)
        return k is not None and bool(k.sources)

    # ------------------------------------------------------------------ attach
    def negative_reason(self, path: str) -> str | None:
        return self.negative.get(path) if self.cfg.negative_ttl_seconds > 0 else None

    def attach(self, path: str) -> Transfer:
        """The transfer for ``path``, started if none is running."""
        t = self.inflight.get(path)
        if t is not None and t.state != "failed":
            self.inc("miss_requests", "coalesced", 1)
            return t
        # A failed transfer may still be winding down: the next one starts afresh (its
        # sources' verdicts, a backed-off peer among them, are already recorded).
        t = Transfer(path, self.known.get(path))
        self.inflight[path] = t
        self.inc("miss_requests", "started", 1)
        task = asyncio.get_running_loop().create_task(self._run(t))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return t

    # ------------------------------------------------------------------ the transfer
    async def _run(self, t: Transfer) -> None:
        try:
            async with self.slots:
                await self._fetch(t)
        except asyncio.CancelledError:
            if t.state not in ("done", "failed"):
                t.fail(503, "appliance shutting down")
            raise
        except Exception:
            log.exception("miss transfer of %s failed", t.path)
            if t.state not in ("done", "failed"):
                t.fail(502, "internal error")
        finally:
            if self.inflight.get(t.path) is t:
                del self.inflight[t.path]
            with contextlib.suppress(RuntimeError):
                await self._in_pool(t.close_file)

    async def _in_pool(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self.io_pool, fn)

    async def _fetch(self, t: Transfer) -> None:
        sources = self._sources(t)
        if not sources:
            t.fail(404, "no source for this object")
            self.inc("miss_transfers", "no-source", 1)
            return
        # This worker's previous transfer of the object may still hold the lock for a
        # moment (publishing its end): wait for it rather than follow a finished one.
        while t.path in self.shared:
            await asyncio.sleep(_FOLLOW_POLL_SECONDS)
        try:
            lock = await self._in_pool(lambda: SharedTransfer.claim(self.lock_dir, t.path))
        except OSError as exc:
            t.fail(503, f"cannot coordinate the transfer: {describe_os_error(exc)}")
            self.inc("miss_transfers", "local-error", 1)
            return
        if not lock.leader:
            try:
                await self._follow(t, lock)
            finally:
                lock.close()
            return
        self.shared[t.path] = lock
        try:
            await self._lead(t, sources)
        finally:
            # Unlock before leaving ``shared``: a fresh transfer of the object waits on
            # ``shared`` and must then find the lock free, not follow this one's end.
            try:
                with contextlib.suppress(OSError, RuntimeError):
                    await self._in_pool(lambda: lock.release(t))
            finally:
                del self.shared[t.path]

    async def _follow(self, t: Transfer, lock: SharedTransfer) -> None:
        """Another worker of this appliance is fetching the object: serve this worker's
        clients from that worker's part file as it grows (cross-worker coalescing)."""
        self.inc("miss_transfers", "followed", 1)
        polls = 0
        while True:
            info, grown, ended = await self._in_pool(lambda: lock.observe(t))
            polls += 1
            if info is not None and t.fd >= 0 and not t.headers_known:
                t.etag = str(info.get("etag") or t.etag)
                t.begin(int(info["size"]), int(info["mtime"]), info.get("kind") or "origin")
            if grown:
                t.advance(grown)
            state = info.get("state") if info is not None else None
            if state == "done" and t.fd >= 0 and t.written >= t.size:
                t.finish()
                return
            if state == "done" and t.fd < 0 and ended:
                t.fail(503, "installed by another worker a moment ago; ask again")
                return
            if info is not None and state == "failed":
                t.fail(int(info.get("status") or 502), str(info.get("reason") or "failed"))
                return
            if ended:  # done, yet the part file holds less than the object (never seen)
                t.fail(502, f"the transfer ended with {t.written} of {t.size} bytes here")
                return
            if polls % 20 == 0 and await self._in_pool(lock.abandoned):
                t.fail(502, "the worker fetching this object stopped")
                return
            await asyncio.sleep(_FOLLOW_POLL_SECONDS)

    async def _lead(self, t: Transfer, sources: list[Source]) -> None:
        try:
            await self._in_pool(lambda: self._create_part(t))
        except (OSError, StorageError) as exc:
            reason = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
            log.warning("miss of %s: cannot create a part file: %s", t.path, reason)
            t.fail(503, f"no disk to write to: {reason}")
            self.inc("miss_transfers", "local-error", 1)
            return
        h = hashlib.sha256()
        reasons: list[str] = []
        status = 404
        for src in sources:
            if src.peer is not None and src.peer.backoff_until > time.time():
                continue
            try:
                await self._pull(t, src, h)
            except _NotThere:
                reasons.append(f"{src.address}: not there")
                if src.peer is not None and self.peers is not None:
                    self.peers.note_absent(src.peer, t.path)
                self.inc("peer_requests" if src.peer else "origin_requests", "not-found", 1)
                continue
            except _Failed as exc:
                reasons.append(f"{src.address}: {exc}")
                status = exc.status if status == 404 else status
                self._blame(src, str(exc), t)
                continue
            except OSError as exc:  # writing the part file: the local disk
                t.fail(503, f"local disk: {describe_os_error(exc)}")
                self.inc("miss_transfers", "local-error", 1)
                return
            if src.peer is not None and self.peers is not None:
                self.peers.note_hit(src.peer)
            self.inc("peer_requests" if src.peer else "origin_requests", "ok", 1)
            break
        else:
            why = "; ".join(reasons) or "every source is backed off"
            if status == 404 and t.written == 0 and reasons:
                if self.cfg.negative_ttl_seconds > 0:
                    self.negative[t.path] = why
                t.fail(404, why)
                self.inc("miss_transfers", "not-found", 1)
            else:
                t.fail(status if status != 404 else 502, why)
                self.inc("miss_transfers", "failed", 1)
                log.warning("miss of %s failed: %s", t.path, why)
            return
        digest = h.hexdigest()
        if t.sha256 is not None and digest != t.sha256:
            why = f"sha256 {digest} over {t.written} bytes, expected {t.sha256}"
            self._blame(src, f"sent wrong bytes for {t.path}: {why}", t)
            t.fail(502, f"checksum mismatch: {why}")
            self.inc("miss_transfers", "corrupt", 1)
            return
        try:
            await self._in_pool(lambda: os.fsync(t.fd))
        except OSError as exc:
            t.fail(503, f"local disk: {describe_os_error(exc)}")
            self.inc("miss_transfers", "local-error", 1)
            return
        t.finish()
        self.inc("miss_transfers", "done", 1)
        lock = self.shared.get(t.path)
        if lock is not None:
            await self._in_pool(lambda: lock.publish(t))
        if self.cfg.install:
            await self._install(t, digest)

    def _sources(self, t: Transfer) -> list[Source]:
        out: list[Source] = []
        quoted = quote(t.path)
        if self.peers is not None:
            for p in self.peers.candidates(t.path):
                out.append(Source(p.url + quoted, "peer", p.address, p))
        seen: set[str] = set()
        urls = [
            *(t.known.sources if t.known else ()),
            *(o.rstrip("/") + quoted for o in self.cfg.origins),
        ]
        for u in urls:
            if u not in seen:
                seen.add(u)
                out.append(Source(u, "origin", address_of(u)))
        return out

    def _create_part(self, t: Transfer) -> None:
        root = self.store.staging_root(t.path, self.tier)
        if root is None:
            raise StorageError(f"no healthy disk in tier {self.tier}")
        d = os.path.join(root, MISS_DIR)
        os.makedirs(d, exist_ok=True)
        part = os.path.join(d, f"{os.getpid()}-{secrets.token_hex(8)}.part")
        t.fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        t.part = part

    def _blame(self, src: Source, reason: str, t: Transfer) -> None:
        self.inc("peer_requests" if src.peer else "origin_requests", "error", 1)
        if src.peer is not None and self.peers is not None:
            self.peers.failed(src.peer, reason)
        else:
            log.warning("origin %s: %s (object %s)", src.address, reason, t.path)

    async def _pull(self, t: Transfer, src: Source, h: Any) -> None:
        """Append what ``src`` has past ``t.written`` to the part file."""
        session = self.open_session()
        headers = {"Accept-Encoding": "identity"}
        if t.written:
            headers["Range"] = f"bytes={t.written}-"
        if src.peer is not None and self.peers is not None:
            headers[PEER_HEADER] = self.peers.sign("GET", t.path)
        self.upstream_requests += 1
        loop = asyncio.get_running_loop()
        try:
            async with session.get(src.url, headers=headers, allow_redirects=src.peer is None) as r:
                if r.status in (404, 410):
                    raise _NotThere(f"HTTP {r.status}")
                skip = 0
                if r.status == 200:
                    total = r.content_length
                    if total is None:
                        raise _Failed("no Content-Length")
                    skip = t.written
                elif r.status == 206 and t.written:
                    parsed = parse_content_range(r.headers.get("Content-Range", ""))
                    if parsed is None:
                        raise _Failed(f"bad Content-Range {r.headers.get('Content-Range')!r}")
                    first, total = parsed
                    if first != t.written:
                        raise _WrongBytes(f"Content-Range starts at {first}, asked {t.written}")
                elif r.status == 503 or r.status == 504 or r.status >= 500:
                    raise _Failed(f"HTTP {r.status}")
                else:
                    raise _Failed(f"unexpected HTTP {r.status}")
                self._check_identity(t, src, r, total)
                if not t.headers_known:
                    if total > self.cfg.max_object_bytes:
                        raise _Failed(f"{total} bytes is above miss.max_object_bytes")
                    t.begin(total, _last_modified(r.headers.get("Last-Modified")), src.kind)
                    lock = self.shared.get(t.path)
                    if lock is not None:
                        await loop.run_in_executor(self.io_pool, lock.publish, t)
                else:
                    t.switch_source(src.kind)
                async for chunk in r.content.iter_chunked(CHUNK_BYTES):
                    if skip:
                        if len(chunk) <= skip:
                            skip -= len(chunk)
                            continue
                        chunk = chunk[skip:]
                        skip = 0
                    if t.written + len(chunk) > t.size:
                        raise _WrongBytes(f"more than the {t.size} bytes announced")
                    if self.limiter is not None:
                        await self.limiter.take(len(chunk))
                    pos = t.written
                    await loop.run_in_executor(self.io_pool, _write_and_hash, t.fd, h, chunk, pos)
                    self.inc("upstream_bytes", src.kind, len(chunk))
                    t.advance(len(chunk))
        except (aiohttp.ClientError, TimeoutError) as exc:
            timeout = isinstance(exc, TimeoutError)
            raise _Failed(
                f"{type(exc).__name__}: {exc}".rstrip(": ") + f" after {t.written} bytes",
                504 if timeout else 502,
            ) from None
        if t.written < t.size:
            raise _Failed(f"connection ended after {t.written} of {t.size} bytes")

    def _check_identity(
        self, t: Transfer, src: Source, r: aiohttp.ClientResponse, total: int
    ) -> None:
        if t.headers_known and total != t.size:
            raise _WrongBytes(f"object is {total} bytes here, {t.size} at the first source")
        if t.known is not None and total != t.known.size:
            raise _WrongBytes(f"object is {total} bytes, the known object {t.known.size}")
        etag = r.headers.get("ETag")
        if src.peer is not None and t.sha256 is not None and etag and etag != t.etag:
            raise _WrongBytes(f"holds another version (ETag {etag}, expected {t.etag})")

    async def _install(self, t: Transfer, digest: str) -> None:
        path, part = t.path, t.part
        try:
            rec = await self._in_pool(
                lambda: self.store.adopt_file(
                    path, part, sha256=digest, tier=self.tier, mtime=float(t.mtime)
                )
            )
        except CapacityExceeded as exc:
            self.inc("miss_installs", "no-room", 1)
            log.info("miss of %s served but not kept: %s", path, exc)
            return
        except StorageError as exc:
            self.inc("miss_installs", "failed", 1)
            log.warning("miss of %s served but not kept: %s", path, exc)
            return
        t.installed = True
        # Where the part file is now: a follower that comes late opens it there (the
        # transfer's end names it, and the part file's inode, see SharedTransfer).
        t.part = self.store.file_path(rec)
        self.inc("miss_installs", "installed", 1)
        log.info("installed %s (%d bytes from %s) after a miss", path, t.size, t.kind)


class SharedTransfer:
    """The lock and the state file through which the workers of one appliance share
    one transfer per object (blocking methods: run them in the I/O pool).

    The worker that takes ``<state_dir>/miss/<hash>.lock`` (``flock``, released by the
    kernel if the worker dies) leads: it fetches, and writes ``<hash>.json`` (atomic
    rename) when it starts, when the object's size is known (with the part file's path)
    and when the transfer is done. The other workers find the lock taken, keep their
    descriptor of the lock file and follow: they read the state file (only while it
    names the lock file they hold, by inode) and send from the same part file, watching
    its size grow.

    Nothing is left behind. At its end the leader writes the final state into the lock
    file itself (naming where the part file went when it was installed, and its inode),
    then, still holding the lock, unlinks the state file and the lock file, and only
    then unlocks: a follower reads the end from its own descriptor of the unlinked file.
    A worker that opened the lock file by path just before the unlink may then win the
    ``flock`` on the unlinked inode, so :meth:`claim` checks, once locked, that the path
    still names the inode it locked (``fstat`` against ``stat``) and starts over if not:
    there is never more than one leader, and whoever holds the lock on the linked file
    may unlink it. A follower that sees the transfer done before it could open the part
    file waits for the end, which says where the installed file is. Files of a leader
    that died are removed at worker start by :func:`clean_stale_transfers`, under the
    same rule, or taken over by the next claim.
    """

    def __init__(self, fd: int, base: str, path: str, *, leader: bool) -> None:
        self.fd = fd
        self.base = base
        self.path = path
        self.leader = leader
        self.ino = os.fstat(fd).st_ino

    @staticmethod
    def _base(lock_dir: str, path: str) -> str:
        return os.path.join(lock_dir, hashlib.sha256(path.encode()).hexdigest()[:40])

    @classmethod
    def claim(cls, lock_dir: str, path: str) -> SharedTransfer:
        """Lead the transfer of ``path`` (``leader`` True) or follow the one running."""
        os.makedirs(lock_dir, exist_ok=True)
        base = cls._base(lock_dir, path)
        for _ in range(_CLAIM_TRIES):
            fd = os.open(base + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return cls(fd, base, path, leader=False)
                if _names(base + ".lock", fd):
                    os.ftruncate(fd, 0)  # the end of a leader that died before unlinking
                    lock = cls(fd, base, path, leader=True)
                    lock._write({"path": path, "state": "starting", "pid": os.getpid()})
                    return lock
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # unlinked by the previous leader since it was opened: again
        raise OSError(errno.EAGAIN, f"the lock file {base}.lock kept being replaced")

    def _write(self, info: dict[str, Any]) -> None:
        tmp = f"{self.base}.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(orjson.dumps({**info, "lock": self.ino}))
        os.replace(tmp, self.base + ".json")

    @staticmethod
    def _state(t: Transfer) -> dict[str, Any]:
        return {
            "path": t.path, "state": t.state if t.state in ("done", "failed") else "streaming",
            "part": t.part, "size": t.size, "mtime": t.mtime, "kind": t.kind, "etag": t.etag,
            "status": t.status, "reason": t.reason, "pid": os.getpid(),
            "ino": os.fstat(t.fd).st_ino if t.fd >= 0 else None,
        }  # fmt: skip

    def publish(self, t: Transfer) -> None:
        self._write(self._state(t))

    def release(self, t: Transfer) -> None:
        """The leader's end: record it in the lock file, remove both files, unlock."""
        try:
            if t.state != "done" and t.state != "failed":
                t.state, t.status, t.reason = "failed", 503, "transfer abandoned"
            try:
                os.pwrite(self.fd, orjson.dumps(self._state(t)), 0)  # written once: whole
            finally:
                for name in (self.base + ".json", self.base + ".lock"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name)
        finally:
            os.close(self.fd)  # unlocks

    def close(self) -> None:
        """A follower's end (it never held the lock)."""
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def _end(self) -> dict[str, Any] | None:
        """The final state the leader wrote into the lock file, or None (not yet)."""
        try:
            raw = os.pread(self.fd, 1 << 16, 0)
            info = orjson.loads(raw) if raw else None
        except (OSError, orjson.JSONDecodeError):
            return None  # (a write in progress: a prefix of the document never parses)
        return info if isinstance(info, dict) and info.get("path") == self.path else None

    def observe(self, t: Transfer) -> tuple[dict[str, Any] | None, int, bool]:
        """(the leader's latest state, bytes the part file grew by since ``t.written``,
        whether the transfer has ended); opens the part file into ``t.fd`` once its path
        is published. The end is read before the part file's size: every byte was
        written before it."""
        info = self._end()
        ended = info is not None
        if info is None:
            try:
                with open(self.base + ".json", "rb") as fh:
                    doc = orjson.loads(fh.read())
            except (OSError, orjson.JSONDecodeError):
                doc = None
            mine = isinstance(doc, dict) and doc.get("lock") == self.ino
            info = doc if mine and doc.get("path") == t.path else None
        if t.fd < 0 and info and info.get("part") and info.get("state") in ("streaming", "done"):
            with contextlib.suppress(OSError):
                fd = os.open(str(info["part"]), os.O_RDONLY | os.O_CLOEXEC)
                if info.get("ino") in (None, os.fstat(fd).st_ino):
                    t.fd = fd
                else:  # (installed, then replaced: not the bytes of this transfer)
                    os.close(fd)
        grown = 0
        if t.fd >= 0:
            grown = max(0, os.fstat(t.fd).st_size - t.written)
            if t.size >= 0:
                grown = min(grown, t.size - t.written)
        return info, grown, ended

    def abandoned(self) -> bool:
        """True if nobody holds the lock any more and no end was written: the leading
        worker is gone."""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        return self._end() is None


def clean_stale_transfers(lock_dir: str) -> int:
    """Remove the files of miss transfers that nobody holds (blocking; run at worker
    start): those of a worker that died while it led a transfer. Each is locked first
    and removed only while the path still names the locked file, as in
    :meth:`SharedTransfer.claim`, so a transfer starting meanwhile is never touched."""
    try:
        names = os.listdir(lock_dir)
    except FileNotFoundError:
        return 0
    removed = 0
    stems: set[str] = set()
    for name in names:
        stem, _, rest = name.partition(".")
        pid = rest.removesuffix(".tmp")
        if rest in ("lock", "json"):
            stems.add(stem)
        elif rest.endswith(".tmp") and pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(lock_dir, name))
                removed += 1
    for stem in sorted(stems):
        lock = os.path.join(lock_dir, stem + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # in flight
            if not _names(lock, fd):
                continue  # removed and claimed afresh since it was opened
            for path in (os.path.join(lock_dir, stem + ".json"), lock):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed += 1
        finally:
            os.close(fd)
    return removed


def _names(path: str, fd: int) -> bool:
    """Whether ``path`` names the file open as ``fd`` now."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def pooled_seconds(read_timeout_seconds: float) -> float:
    """How long an idle upstream connection may be reused: under half the read timeout.

    aiohttp 3.14 re-arms a connection's ``sock_read`` timer while the last buffered bytes
    of a response are read, after the connection went back to the pool; the timer fires
    there and the next request on that connection fails at once with "Timeout on reading
    data from socket" (aio-libs/aiohttp#12953). A connection idle for less than half the
    read timeout is reused before its timer can fire; an older one is closed instead.
    """
    return min(15.0, read_timeout_seconds / 2)


def clean_stale_parts(store: Store) -> int:
    """Remove part files left by workers that died (blocking; run at worker start)."""
    removed = 0
    for d in store.disks():
        directory = os.path.join(d.root, MISS_DIR)
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            pid_text = name.partition("-")[0]
            if not (name.endswith(".part") and pid_text.isdigit()):
                continue
            if _alive(int(pid_text)):
                continue
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))
                removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_and_hash(fd: int, h: Any, data: bytes, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        pos += n
        view = view[n:]
    h.update(data)


def _last_modified(value: str | None) -> int:
    stamp = parse_http_date(value) if value else None
    return stamp if stamp is not None else int(time.time())
