"""The machine-readable access log: one JSON object per line.

Recording a response appends a tuple to a list (no formatting, no I/O on the hot
path); a task formats and writes the batch every 250 ms. Fields: ``ts`` (unix
seconds), ``client``, ``method``, ``path`` (request target with any URL token
replaced by ``-``), ``status``, ``bytes`` (body bytes), ``duration_seconds``,
``range`` (the request's Range header), ``tier``, ``note`` (the decision's reason,
e.g. ``range``, ``not-found``, ``token-expired``), and ``aborted`` when the
connection died before the response was fully sent.
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from oca.server.handler import Request
    from oca.server.response import Response

# A token is hidden in origin-form targets and in absolute-form ones (refused, but logged).
_TOKEN = re.compile(rb"^((?:[A-Za-z][A-Za-z0-9+.-]*://[^/]*)?)/t/[^/]*")
_MAX_BUFFER = 50_000  # records kept if the log cannot be written (then dropped, counted)


class AccessLog:
    def __init__(self, target: str) -> None:
        self.target = target
        self.enabled = target != ""
        self.buffer: list[tuple[Any, ...]] = []
        self.dropped = 0
        self._fd: int | None = None
        if target == "-":
            self._fd = sys.stderr.fileno()
        elif target:
            self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def record(
        self, client: str, req: Request, resp: Response, duration: float, aborted: bool = False
    ) -> None:
        if self.enabled:
            if len(self.buffer) >= _MAX_BUFFER:
                self.dropped += 1
                return
            rng = req.headers.get(b"range")
            peer = req.headers.get(b"x-oca-peer")
            self.buffer.append((time.time(), client, req.method, req.target, resp.status,
                                resp.body_bytes, duration, rng, resp.tier, resp.note,
                                aborted, peer))  # fmt: skip

    def record_error(self, client: str, resp: Response) -> None:
        if self.enabled:
            self.buffer.append((time.time(), client, "-", b"-", resp.status, resp.body_bytes,
                                0.0, None, "", resp.note, False, None))  # fmt: skip

    def _format(self, batch: list[tuple[Any, ...]]) -> bytes:
        out = []
        for item in batch:
            ts, client, method, target, status, nbytes, dur, rng, tier, note, aborted, peer = item
            rec: dict[str, Any] = {
                "ts": round(ts, 3),
                "client": client,
                "method": method,
                "path": _TOKEN.sub(rb"\1/t/-", target).decode("utf-8", "replace"),
                "status": status,
                "bytes": nbytes,
                "duration_seconds": round(dur, 6),
            }
            if rng is not None:
                rec["range"] = rng.decode("latin-1")
            if tier:
                rec["tier"] = tier
            if note:
                rec["note"] = note
            if aborted:
                rec["aborted"] = True
            if peer is not None:
                # The requesting appliance as it named itself (verified or refused: see
                # the status); the signature is not logged.
                rec["peer"] = peer.partition(b",")[0].removeprefix(b"id=").decode("latin-1")
            out.append(orjson.dumps(rec))
        out.append(b"")
        return b"\n".join(out)

    def flush(self) -> None:
        """Format and write what was recorded (called from the loop every 250 ms).

        The write is a single append of one batch to a local file or stderr.
        """
        if not self.buffer or self._fd is None:
            return
        batch, self.buffer = self.buffer, []
        data = self._format(batch)
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except BlockingIOError:
            self.dropped += len(batch)
        except OSError:
            self.dropped += len(batch)

    def flush_now(self) -> None:
        self.flush()
