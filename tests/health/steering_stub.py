"""A steering service stand-in on loopback: receives heartbeats, checks their HMAC
independently of oca's code, rebuilds each appliance's inventory from full lists and
deltas the way the wire format says steering must, and can be told to misbehave."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Beat:
    received_at: float  # monotonic
    doc: dict[str, Any]
    answer: str  # "ok", "send-full", or the failure status sent

    @property
    def inventory(self) -> dict[str, Any] | None:
        inv = self.doc["inventory"]
        return inv if inv is None else dict(inv)


@dataclass
class SteeringStub:
    keys: dict[str, bytes]  # key id -> secret
    beats: list[Beat] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # why bodies were refused
    # What to answer: "ok", or an HTTP status to fail with (e.g. 503).
    mode: str | int = "ok"
    # Answer "send-full" once to the next heartbeat (as after a steering restart).
    send_full_once: bool = False
    # Rebuilt inventories: appliance id -> (epoch, gen, paths)
    inventories: dict[str, tuple[str, int, set[str]]] = field(default_factory=dict)
    url: str = ""
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ---------------------------------------------------------------- handler
    async def _heartbeat(self, request: web.Request) -> web.Response:
        body = await request.read()
        header = request.headers.get("X-Oca-Heartbeat", "")
        kid, _, tag = header.partition(":")
        secret = self.keys.get(kid)
        expected = (
            base64.urlsafe_b64encode(hmac.new(secret, body, hashlib.sha256).digest())
            .rstrip(b"=")
            .decode()
            if secret is not None
            else None
        )
        if expected is None or not hmac.compare_digest(expected, tag):
            with self._lock:
                self.rejected.append(f"bad signature {header!r}")
            return web.json_response({"ok": False, "error": "signature"}, status=403)
        if request.content_type != "application/json":
            return web.json_response({"ok": False, "error": "content-type"}, status=400)
        doc = orjson.loads(body)
        if isinstance(self.mode, int):
            with self._lock:
                self.beats.append(Beat(time.monotonic(), doc, str(self.mode)))
            return web.json_response({"ok": False, "error": "unavailable"}, status=self.mode)
        answer = self._apply_inventory(doc)
        if self.send_full_once:
            self.send_full_once = False
            answer = "send-full"
        with self._lock:
            self.beats.append(Beat(time.monotonic(), doc, answer))
        return web.json_response({"ok": True, "inventory": answer})

    def _apply_inventory(self, doc: dict[str, Any]) -> str:
        app = doc["appliance"]["id"]
        inv = doc["inventory"]
        have = self.inventories.get(app)
        if inv is None:
            return "ok" if have is not None and have[0] == doc["boot_id"] else "send-full"
        if inv["kind"] == "full":
            self.inventories[app] = (inv["epoch"], inv["gen"], set(inv["objects"]))
            return "ok"
        if have is None or have[0] != inv["epoch"] or have[1] != inv["base_gen"]:
            return "send-full"
        paths = (have[2] - set(inv["removed"])) | set(inv["added"])
        self.inventories[app] = (inv["epoch"], inv["gen"], paths)
        return "ok"

    # ---------------------------------------------------------------- queries
    def snapshot(self) -> list[Beat]:
        with self._lock:
            return list(self.beats)

    def wait_for(
        self, predicate: Callable[[Beat], bool], timeout: float = 10.0, after: int = 0
    ) -> Beat:
        """The first heartbeat from index ``after`` on that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            beats = self.snapshot()
            for b in beats[after:]:
                if predicate(b):
                    return b
            if time.monotonic() > deadline:
                last = beats[-1].doc if beats else None
                raise AssertionError(
                    f"no matching heartbeat in {timeout}s ({len(beats)} received, "
                    f"rejected={self.rejected}); last: {str(last)[:3000]}"
                )
            time.sleep(0.05)

    def count(self) -> int:
        with self._lock:
            return len(self.beats)

    def requests_total(self, path: str, after: int = 0) -> int:
        return sum(int(b.doc["requests"].get(path, 0)) for b in self.snapshot()[after:])

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> SteeringStub:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def start() -> None:
            app = web.Application(client_max_size=64 << 20)
            app.router.add_post("/v1/heartbeat", self._heartbeat)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            await site.start()
            self.port = self._runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{self.port}"
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(start())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10), "steering stub did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
