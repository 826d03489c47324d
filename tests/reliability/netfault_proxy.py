"""A fault-injecting HTTP proxy in front of a real server, run as its own process.

A peer appliance's faults cannot be staged inside the appliance: it serves its inventory
summary and its objects faithfully. This proxy sits between the appliance that misses
and its peer (``python -m tests.reliability.netfault_proxy --upstream URL --ready-file
FILE``), forwards every request to ``URL`` and breaks the responses of chosen paths the
way a network or a sick host does. It speaks the control API of
:mod:`tests.peering.origin_proc` (``/_origin/behaviour``, ``/_origin/reset``,
``/_origin/requests``, the same :class:`~tests.peering.origin_proc.BehaviourBody`), so
:class:`FaultProxyProcess` is an :class:`~tests.peering.origin_proc.OriginProcess` with
another command line.

Theory of operation
-------------------
One request per connection: the proxy reads the request head, forwards it with
``Connection: close`` (the upstream closes after its response, so the body's end is the
connection's end and no framing needs parsing beyond the response head's
Content-Length), then relays the response head and body, applying the path's behaviour:

- ``delay_first_byte_seconds``: wait before asking the upstream (a slow first byte);
- ``status``: answer that status with an empty body, without asking the upstream;
- ``reset_before_head``: reset the client's connection (SO_LINGER 0, then close: an
  RST) without answering;
- ``rate_bytes_per_second``: relay the body at that rate;
- ``hang_after_bytes`` N: relay the head and N body bytes, then nothing while the
  connection stays open, until the client gives up (0: hangs right after the headers);
- ``reset_after_bytes`` N / ``die_after_bytes`` N: relay N body bytes, then reset the
  connection (RST) / close it (FIN) short of Content-Length. An RST may make the
  client's kernel drop bytes it received but had not read yet, as real ones do;
- ``corrupt``: invert body bytes 0..15 (offsets in the body relayed, not the file).

A cut at or beyond the body's length changes nothing. Each request is logged like the
origin's (:class:`~tests.peering.origin_proc.RequestRecord`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from tests.peering.origin_proc import (
    CHUNK_BYTES,
    CONTROL_PREFIX,
    Behaviour,
    BehaviourError,
    OriginProcess,
    RequestRecord,
    corrupt_chunk,
    parse_behaviour,
    write_atomically,
)

log = logging.getLogger("tests.netfault.proxy")

MAX_HEAD_BYTES = 64 << 10
HOP_BY_HOP = (b"connection", b"keep-alive", b"proxy-connection")
FLUSH_TIMEOUT_SECONDS = 2.0


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.log: list[RequestRecord] = []
        self.behaviours: dict[str, Behaviour] = {}

    def behaviour_for(self, path: str) -> Behaviour:
        return self.behaviours.get(path) or self.behaviours.get("*") or Behaviour()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        try:
            await self._handle(head, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            log.info("connection ended: %s", exc)
        finally:
            if not writer.transport.is_closing():
                writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _handle(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        request_line, *lines = head[:-4].split(b"\r\n")
        method, target, _version = request_line.decode("latin-1").split(" ", 2)
        path = target.split("?", 1)[0]
        headers = [line.split(b":", 1) for line in lines if b":" in line]
        if path.startswith(CONTROL_PREFIX):
            length = next((int(v) for k, v in headers if k.strip().lower() == b"content-length"),
                          0)  # fmt: skip
            body = await reader.readexactly(length) if length else b""
            status, doc = self._control(method, path[len(CONTROL_PREFIX) :], body)
            _respond(writer, status, orjson.dumps(doc), b"application/json")
            await writer.drain()
            return
        rng = next((v.strip().decode("latin-1") for k, v in headers if k.lower() == b"range"), "")
        peer = writer.get_extra_info("peername")
        self.log.append(RequestRecord(t=time.monotonic(), method=method, path=path, range=rng,
                                      peer=f"{peer[0]}:{peer[1]}" if peer else ""))  # fmt: skip
        b = self.behaviour_for(path)
        if b.delay_first_byte_seconds:
            await asyncio.sleep(b.delay_first_byte_seconds)
        if b.reset_before_head:
            _reset(writer)
            return
        if b.status is not None:
            _respond(writer, b.status, b"", b"text/plain")
            await writer.drain()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        try:
            kept = [k + b":" + v for k, v in headers if k.strip().lower() not in HOP_BY_HOP]
            up_writer.write(b"\r\n".join([request_line, *kept, b"Connection: close"]) + b"\r\n\r\n")
            # A request body, if any; the copy ends when the client closes its side.
            pump = asyncio.create_task(_copy(reader, up_writer))
            try:
                await self._relay(b, up_reader, writer, pump)
            finally:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await pump
        finally:
            up_writer.close()

    async def _relay(
        self,
        b: Behaviour,
        up: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client_open: asyncio.Task[None],
    ) -> None:
        head = await up.readuntil(b"\r\n\r\n")
        length = None
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        writer.write(head)
        await writer.drain()
        cuts = [c for c in (b.hang_after_bytes, b.reset_after_bytes, b.die_after_bytes)
                if c is not None]  # fmt: skip
        cut = min(cuts) if cuts and (length is None or min(cuts) < length) else None
        rate = b.rate_bytes_per_second
        chunk_bytes = max(1, min(CHUNK_BYTES, rate // 20)) if rate else CHUNK_BYTES
        loop = asyncio.get_running_loop()
        started, sent = loop.time(), 0
        while cut is None or sent < cut:
            n = chunk_bytes if cut is None else min(chunk_bytes, cut - sent)
            data = await up.read(n)
            if not data:
                break
            if b.corrupt:
                data = corrupt_chunk(data, sent)
            writer.write(data)
            await writer.drain()
            sent += len(data)
            if rate:
                pause = started + sent / rate - loop.time()
                if pause > 0:
                    await asyncio.sleep(pause)
        if cut is None or sent < cut:
            return  # the upstream's body ended: close normally
        if b.hang_after_bytes == cut:
            await asyncio.wait({client_open})  # until the client gives up
            return
        # What was relayed leaves the proxy first; then an RST (which may still make the
        # client's kernel drop what it received but was not read yet, as a real one does)
        # or a FIN, either way short of Content-Length.
        deadline = loop.time() + FLUSH_TIMEOUT_SECONDS
        while writer.transport.get_write_buffer_size() and loop.time() < deadline:
            await asyncio.sleep(0.005)
        if b.reset_after_bytes == cut:
            _reset(writer)
        else:
            writer.close()

    def _control(self, method: str, endpoint: str, body: bytes) -> tuple[int, object]:
        if method == "GET" and endpoint == "requests":
            return 200, {"requests": self.log}
        if method == "POST" and endpoint == "reset":
            self.log.clear()
            self.behaviours.clear()
            return 200, {"ok": True}
        if method == "POST" and endpoint == "behaviour":
            try:
                path, behaviour = parse_behaviour(orjson.loads(body))
            except (orjson.JSONDecodeError, BehaviourError) as e:
                return 400, {"error": str(e)}
            self.behaviours[path] = behaviour
            return 200, {"path": path}
        return 404, {"error": f"no control endpoint {method} {endpoint}"}


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(CHUNK_BYTES):
            writer.write(data)
            await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close abortively: SO_LINGER 0 makes the kernel answer with an RST, not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _respond(writer: asyncio.StreamWriter, status: int, body: bytes, ctype: bytes) -> None:
    writer.write(
        b"HTTP/1.1 %d Fault\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (status, ctype, len(body), body)
    )


async def serve(upstream: str, ready_file: Path) -> None:
    u = urlsplit(upstream)
    proxy = FaultProxy(u.hostname or "127.0.0.1", u.port or 80)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0, limit=MAX_HEAD_BYTES)
    host, port = server.sockets[0].getsockname()[:2]
    write_atomically(ready_file, f"http://{host}:{port}\n")
    async with server:
        await stop.wait()
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.netfault_proxy")
    parser.add_argument("--upstream", required=True, help="base URL requests are forwarded to")
    parser.add_argument("--ready-file", type=Path, required=True, help="where to write the URL")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    asyncio.run(serve(args.upstream, args.ready_file))
    return 0


class FaultProxyProcess(OriginProcess):
    """Start, steer and stop a proxy child process in front of ``upstream``."""

    def __init__(self, upstream: str) -> None:
        super().__init__(Path("."))
        self.upstream = upstream

    def command(self, ready: Path) -> list[str]:
        return [sys.executable, "-m", "tests.reliability.netfault_proxy",
                "--upstream", self.upstream, "--ready-file", str(ready)]  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
