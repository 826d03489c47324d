"""The other appliances at the site: their inventory summaries, health and backoff (adapter).

Theory of operation
-------------------
Each configured peer publishes a summary of what it holds
(:mod:`oca.peering.summary`: a Bloom filter with a generation number, then deltas) at
``/oca/peer/summary``. A :class:`PeerSet` polls every peer every
``summary_refresh_seconds``, asking for the changes since the generation it has
(``X-Oca-Since: EPOCH:GENERATION``); an unchanged peer answers 304 with no body, so
polling costs little. It also refreshes a peer at once when the peer answers 404 for
an object its summary claimed (it changed since), and when a full summary is due
because applied deltas piled up.

A peer that cannot be reached, times out, answers 5xx or sends a summary that does not
parse is *backed off*: skipped for 1 s, doubling on each further failure up to
``backoff_max_seconds``, and reported with the reason (``/peers``, the log line "peer X
was up, now backing off, because Y", the ``oca_peer_up`` gauge). The miss path asks
:meth:`PeerSet.candidates` for the peers whose summary claims an object, in the
configured order (best first), skipping backed-off peers.

Every request to a peer carries ``X-Oca-Peer`` (:mod:`oca.peering.auth`), signed over
the method and path with the site's shared key; the peer serves such requests from its
own disks only, so no request travels more than one hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp

from oca.errors import OcaError
from oca.peering.auth import PEER_HEADER, sign_peer
from oca.peering.summary import PeerView, SummaryError, parse_summary

log = logging.getLogger("oca.peering")

SUMMARY_PATH = "/oca/peer/summary"
SINCE_HEADER = "X-Oca-Since"
MAX_SUMMARY_BYTES = 64 << 20
_FULL_AFTER_DELTA_ENTRIES = 4096
_BACKOFF_FIRST_SECONDS = 1.0
PeerStateName = Literal["unknown", "up", "backoff"]


@dataclass(slots=True, eq=False)
class Peer:
    url: str  # base URL, no trailing slash
    address: str  # host:port, for logs
    view: PeerView | None = None
    state: PeerStateName = "unknown"
    reason: str = "not contacted yet"
    failures: int = 0
    backoff_until: float = 0.0
    next_refresh: float = 0.0
    last_ok: float = 0.0  # wall-clock time of the last good summary answer
    hits: int = 0
    misses: int = 0

    @property
    def name(self) -> str:
        """The peer's appliance id once known, else its address (metric label)."""
        return self.view.appliance if self.view is not None else self.address

    def describe(self, now: float) -> dict[str, Any]:
        v = self.view
        return {
            "url": self.url,
            "appliance": v.appliance if v else None,
            "site": v.site if v else None,
            "state": self.state,
            "reason": self.reason,
            "objects": v.count if v else None,
            "generation": v.generation if v else None,
            "summary_age_seconds": round(now - self.last_ok, 3) if self.last_ok else None,
            "failures": self.failures,
            "hits": self.hits,
            "misses": self.misses,
        }


class PeerSet:
    """See the module docstring. Lives on one worker's event loop."""

    def __init__(
        self,
        urls: tuple[str, ...],
        *,
        me: str,
        key: bytes,
        refresh_seconds: float,
        timeout_seconds: float,
        backoff_max_seconds: float,
        request_ttl_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.peers = [Peer(u.rstrip("/"), address_of(u)) for u in urls]
        self.me = me
        self.key = key
        self.refresh_seconds = refresh_seconds
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self.backoff_max = backoff_max_seconds
        self.request_ttl = request_ttl_seconds
        self.clock = clock
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ queries
    def candidates(self, path: str) -> list[Peer]:
        """Peers that claim ``path`` and are not backed off, best (configured) first."""
        now = self.clock()
        return [
            p
            for p in self.peers
            if p.view is not None and p.backoff_until <= now and p.view.may_hold(path)
        ]

    def sign(self, method: str, path: str) -> str:
        return sign_peer(self.key, self.me, method, path, int(self.clock() + self.request_ttl))

    def describe(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [p.describe(now) for p in self.peers]

    # ------------------------------------------------------------------ events
    def note_hit(self, peer: Peer) -> None:
        peer.hits += 1

    def note_absent(self, peer: Peer, path: str) -> None:
        """The peer answered 404 for ``path`` though its summary claimed it: either a
        Bloom false positive or the peer changed since; refresh it now."""
        peer.misses += 1
        peer.next_refresh = 0.0
        self._wake.set()

    def failed(self, peer: Peer, reason: str) -> None:
        now = self.clock()
        peer.failures += 1
        delay = min(self.backoff_max, _BACKOFF_FIRST_SECONDS * 2 ** (peer.failures - 1))
        peer.backoff_until = now + delay
        peer.next_refresh = peer.backoff_until
        if peer.state != "backoff" or peer.reason != reason:
            log.warning(
                "peer %s was %s, now backing off for %.0f s, because %s",
                peer.address, peer.state, delay, reason,
            )  # fmt: skip
        peer.state = "backoff"
        peer.reason = reason

    def _ok(self, peer: Peer) -> None:
        if peer.state != "up":
            log.info(
                "peer %s (%s) was %s, now up, because its summary arrived (%d objects)",
                peer.address, peer.name, peer.state, peer.view.count if peer.view else 0,
            )  # fmt: skip
        peer.state = "up"
        peer.reason = "summary fresh"
        peer.failures = 0
        peer.backoff_until = 0.0
        peer.last_ok = self.clock()
        peer.next_refresh = peer.last_ok + self.refresh_seconds

    # ------------------------------------------------------------------ polling
    async def run(self, session: aiohttp.ClientSession) -> None:
        """Poll forever (cancel to stop)."""
        self._session = session
        while True:
            now = self.clock()
            due = [p for p in self.peers if p.next_refresh <= now]
            if due:
                await asyncio.gather(*(self.refresh(p) for p in due))
            now = self.clock()
            wait = min((p.next_refresh for p in self.peers), default=now + 3600) - now
            self._wake.clear()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)

    async def refresh(self, peer: Peer) -> None:
        session = self._session
        assert session is not None
        headers = {PEER_HEADER: self.sign("GET", SUMMARY_PATH)}
        v = peer.view
        if v is not None and v.delta_entries < _FULL_AFTER_DELTA_ENTRIES:
            headers[SINCE_HEADER] = f"{v.epoch}:{v.generation}"
        try:
            async with session.get(
                peer.url + SUMMARY_PATH, headers=headers, timeout=self.timeout
            ) as r:
                if r.status == 304 and v is not None:
                    self._ok(peer)
                    return
                if r.status != 200:
                    raise _Bad(f"summary answered HTTP {r.status}")
                body = await r.content.read(MAX_SUMMARY_BYTES + 1)
                if len(body) > MAX_SUMMARY_BYTES:
                    raise _Bad(f"summary larger than {MAX_SUMMARY_BYTES} bytes")
            data = parse_summary(body)
            if data["kind"] == "full":
                peer.view = PeerView.from_full(data)
            elif v is None:
                raise _Bad("sent a delta to a request without a base generation")
            else:
                try:
                    peer.view = v.apply(data)
                except SummaryError:
                    # The delta does not start where our view is (the peer restarted
                    # or another of its workers answered): ask for the full summary.
                    peer.view = None
                    peer.next_refresh = 0.0
                    self._wake.set()
                    return
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.failed(peer, f"{type(exc).__name__}: {exc}".rstrip(": "))
            return
        except SummaryError as exc:
            self.failed(peer, f"bad summary: {exc}")
            return
        except _Bad as exc:
            self.failed(peer, str(exc))
            return
        self._ok(peer)


class _Bad(OcaError):
    """The peer answered, but not with a usable summary."""


def address_of(url: str) -> str:
    """``host:port`` of a base URL, for logs and error messages."""
    return urlsplit(url).netloc or url
