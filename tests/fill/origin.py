"""A real HTTP origin on loopback for fill tests: serves bytes by path, honours
``Range: bytes=N-``, logs every request, and can be told to misbehave."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Origin:
    objects: dict[str, bytes]
    corrupt: set[str] = field(default_factory=set)  # serve wrong bytes (same size)
    broken: set[str] = field(default_factory=set)  # answer 503
    log: list[tuple[float, str, str]] = field(default_factory=list)  # (time, path, range)
    url: str = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        rng = request.headers.get("Range", "")
        self.log.append((time.monotonic(), path, rng))
        if path in self.broken:
            return web.Response(status=503)
        data = self.objects.get(path)
        if data is None:
            return web.Response(status=404)
        if path in self.corrupt:
            data = bytes(b ^ 0xFF for b in data[:16]) + data[16:]
        first = 0
        if rng.startswith("bytes=") and rng.endswith("-"):
            first = int(rng[6:-1])
            if first >= len(data):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
        body = data[first:]
        resp = web.StreamResponse(status=206 if first else 200)
        resp.content_length = len(body)
        if first:
            resp.headers["Content-Range"] = f"bytes {first}-{len(data) - 1}/{len(data)}"
        await resp.prepare(request)
        for i in range(0, len(body), 64 << 10):
            await resp.write(body[i : i + (64 << 10)])
        await resp.write_eof()
        return resp

    def requested(self) -> set[str]:
        return {p for _t, p, _r in self.log}

    def __enter__(self) -> Origin:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def start() -> None:
            app = web.Application()
            app.router.add_get("/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            port = self._runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}"
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(start())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10), "origin did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
