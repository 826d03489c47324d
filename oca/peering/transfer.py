"""One upstream transfer of one missing object, shared by every client that asked for it.

A :class:`Transfer` is the meeting point of the miss path's two halves: the fetcher
(:mod:`oca.peering.misses`) appends the bytes it receives to a part file and advances
:attr:`Transfer.written`; the responses of the clients that missed the object send
from the same part file with ``sendfile``, never past :meth:`Transfer.available`, and
subscribe to be woken when more bytes arrive. A client range request is therefore
answered as soon as its span is on disk, whatever the order clients came in.

When the object's sha256 is known, the last byte is held back until the whole object
has been verified: a transfer whose bytes do not match ends with every unfinished
client's connection closed one byte short of its ``Content-Length``, which an HTTP
client reports as an error. No client ever receives a complete response of wrong bytes.
(A range that ends before the last byte cannot wait for the verdict without waiting for
the whole object, so it is sent as it arrives; the corrupt object is still never
installed, and the source that sent it is reported.)
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from typing import Literal

from oca.peering.known import KnownObject

TransferState = Literal["starting", "streaming", "done", "failed"]
SourceKind = Literal["peer", "origin"]


class Transfer:
    """See the module docstring. Owned by the event loop; not thread-safe."""

    __slots__ = (
        "_waiters", "etag", "fd", "installed", "kind", "known", "mtime", "part", "path",
        "reason", "sha256", "size", "state", "status", "written",
    )  # fmt: skip

    def __init__(self, path: str, known: KnownObject | None) -> None:
        self.path = path
        self.known = known
        self.size = known.size if known is not None else -1
        self.sha256 = known.sha256 if known is not None else None
        # Strong validator for the responses sent during the transfer: the same as the
        # installed object's when the digest is known (If-Range keeps working across the
        # install); otherwise one that no later representation will match, so a
        # conditional range request against it gets the whole object, never a mix.
        self.etag = (
            f'"{self.sha256[:32]}"' if self.sha256 is not None else f'"u-{secrets.token_hex(12)}"'
        )
        self.mtime = 0
        self.fd = -1
        self.part = ""
        self.written = 0
        self.state: TransferState = "starting"
        self.status = 0  # the HTTP status for clients when the transfer failed early
        self.reason = ""
        self.kind: SourceKind = "origin"
        self.installed = False
        self._waiters: list[Callable[[], None]] = []

    # --------------------------------------------------------------- readers
    @property
    def headers_known(self) -> bool:
        return self.state in ("streaming", "done")

    def available(self) -> int:
        """Bytes from offset 0 that may be sent now (see the module docstring)."""
        if self.state == "done":
            return self.size
        if self.sha256 is not None and self.written >= self.size > 0:
            return self.size - 1
        return self.written

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, at the next change (bytes, headers, end)."""
        self._waiters.append(callback)

    def unsubscribe(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(callback)

    def dup(self) -> int:
        """A descriptor of the part file for one response (it outlives the transfer:
        the response reads the same inode after an install's rename or an unlink)."""
        return os.dup(self.fd)

    # --------------------------------------------------------------- the fetcher's side
    def begin(self, size: int, mtime: int, kind: SourceKind) -> None:
        self.size = size
        self.mtime = mtime
        self.kind = kind
        self.state = "streaming"
        self._notify()

    def advance(self, n: int) -> None:
        self.written += n
        self._notify()

    def switch_source(self, kind: SourceKind) -> None:
        self.kind = kind

    def finish(self) -> None:
        self.state = "done"
        self._notify()

    def fail(self, status: int, reason: str) -> None:
        self.state = "failed"
        self.status = status
        self.reason = reason
        self._notify()

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for cb in waiters:
            cb()

    def close_file(self) -> None:
        """Blocking (the fetcher runs it in the I/O pool once every waiter was told):
        close the part file and remove it unless it was installed."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        if self.part and not self.installed:
            with contextlib.suppress(OSError):
                os.unlink(self.part)
        self.part = ""
