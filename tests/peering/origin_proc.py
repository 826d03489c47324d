"""A test origin that runs as its own process, for functional tests of the miss path.

Appliances fetch objects they do not hold from an HTTP origin. This module is that origin,
started as ``python -m tests.peering.origin_proc --root DIR --ready-file FILE``: an aiohttp
server bound to port 0 that serves the files under ``DIR`` by path and, once listening,
writes its base URL (``http://127.0.0.1:PORT``) to the ready file atomically (temporary
file, then rename), so a test never reads half a URL.

Content requests (``GET``/``HEAD`` of any path outside ``/_origin/``) follow RFC 9110 §14
for a single byte range: ``bytes=a-b``, ``bytes=a-`` and ``bytes=-n`` give 206 with
Content-Range, a range that selects nothing gives 416 with ``Content-Range: bytes */LEN``,
and a header that is not one well-formed byte range is ignored (200, the whole file), as
§14.2 allows. Bodies are streamed in chunks of at most 64 KiB straight from the file.

Every content request is logged in memory (monotonic time, method, path, Range value,
peer). The time comes from ``time.monotonic()``, which on Linux is the system-wide
CLOCK_MONOTONIC, so it can be compared with the test process's own clock.

Control endpoints, for the test:

- ``GET /_origin/requests`` returns ``{"requests": [RequestRecord, ...]}``.
- ``POST /_origin/reset`` forgets the log and every behaviour.
- ``POST /_origin/behaviour`` with a ``BehaviourBody`` makes later requests for that path
  (or for every path, with ``"*"``; an exact path wins over ``"*"``) misbehave: a delay
  before the response head, a status override with an empty body, a throttled body, a
  body cut off by an abrupt close after N bytes, or the bytes at file offsets 0..15
  inverted. Network faults: ``hang_after_bytes`` sends the head and N body bytes, then
  nothing more while the connection stays open (0: hangs right after the headers);
  ``reset_after_bytes`` sends the head and N body bytes, then resets the connection
  (SO_LINGER 0, then close: the client gets an RST, not a FIN); ``reset_before_head``
  resets it without answering at all.

``OriginProcess`` is the test side: it starts the child, waits for the ready file with a
deadline, talks to the control endpoints with ``urllib`` (so synchronous tests can use it)
and stops the child with SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypedDict

import orjson
from aiohttp import web

log = logging.getLogger("tests.origin")

CHUNK_BYTES = 64 << 10
CONTROL_PREFIX = "/_origin/"
CORRUPT_SPAN_BYTES = 16  # file offsets 0..15 are inverted by the ``corrupt`` behaviour
ABORT_FLUSH_TIMEOUT_SECONDS = 2.0
SHUTDOWN_TIMEOUT_SECONDS = 2.0
REPO_ROOT = Path(__file__).resolve().parents[2]


# --- wire formats -------------------------------------------------------------------------


class RequestRecord(TypedDict):
    t: float  # time.monotonic() in the origin process when the request arrived
    method: str
    path: str
    range: str  # the Range header value, or ""
    peer: str  # "host:port" of the client connection


class BehaviourBody(TypedDict, total=False):
    path: str  # a URL path, or "*" for every path
    rate_bytes_per_second: int | None
    die_after_bytes: int | None
    corrupt: bool
    delay_first_byte_seconds: float | None
    status: int | None
    hang_after_bytes: int | None
    reset_after_bytes: int | None
    reset_before_head: bool


@dataclass(frozen=True)
class Behaviour:
    rate_bytes_per_second: int | None = None
    die_after_bytes: int | None = None
    corrupt: bool = False
    delay_first_byte_seconds: float | None = None
    status: int | None = None
    hang_after_bytes: int | None = None
    reset_after_bytes: int | None = None
    reset_before_head: bool = False


class BehaviourError(ValueError):
    """A behaviour request that names an unknown key or a value out of range."""


def parse_behaviour(doc: object) -> tuple[str, Behaviour]:
    """Validate a ``POST /_origin/behaviour`` body; return (path, behaviour)."""
    if not isinstance(doc, dict):
        raise BehaviourError("the body must be a JSON object")
    unknown = set(doc) - set(BehaviourBody.__annotations__)
    if unknown:
        raise BehaviourError(f"unknown keys: {sorted(unknown)}")
    path = doc.get("path")
    if not isinstance(path, str) or not (path == "*" or path.startswith("/")):
        raise BehaviourError('"path" must be "*" or a string starting with "/"')

    def optional_int(key: str, minimum: int, maximum: int | None = None) -> int | None:
        value = doc.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise BehaviourError(f'"{key}" must be an integer or null')
        if value < minimum or (maximum is not None and value > maximum):
            top = "" if maximum is None else f"..{maximum}"
            raise BehaviourError(f'"{key}" must be in {minimum}{top}, got {value}')
        return value

    delay = doc.get("delay_first_byte_seconds")
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
            raise BehaviourError('"delay_first_byte_seconds" must be a number >= 0 or null')
        delay = float(delay)
    corrupt = doc.get("corrupt", False)
    if not isinstance(corrupt, bool):
        raise BehaviourError('"corrupt" must be a boolean')
    reset_before_head = doc.get("reset_before_head", False)
    if not isinstance(reset_before_head, bool):
        raise BehaviourError('"reset_before_head" must be a boolean')
    return path, Behaviour(
        rate_bytes_per_second=optional_int("rate_bytes_per_second", 1),
        die_after_bytes=optional_int("die_after_bytes", 0),
        corrupt=corrupt,
        delay_first_byte_seconds=delay,
        status=optional_int("status", 200, 599),
        hang_after_bytes=optional_int("hang_after_bytes", 0),
        reset_after_bytes=optional_int("reset_after_bytes", 0),
        reset_before_head=reset_before_head,
    )


# --- ranges (RFC 9110 §14.1.2, one range only) ---------------------------------------------

_BYTE_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.ASCII | re.IGNORECASE)


@dataclass(frozen=True)
class RangeDecision:
    kind: Literal["full", "partial", "unsatisfiable"]
    first: int = 0  # first byte offset served
    last: int = -1  # last byte offset served (inclusive); -1 for an empty body

    @property
    def length(self) -> int:
        return self.last - self.first + 1


def decide_range(header: str, size: int) -> RangeDecision:
    """Which bytes of a ``size``-byte file answer ``Range: header`` ("" when absent)."""
    full = RangeDecision("full", 0, size - 1)
    m = _BYTE_RANGE.fullmatch(header) if header else None
    if m is None:  # absent, several ranges, another unit or malformed: ignore it
        return full
    first_text, last_text = m.groups()
    if not first_text:
        if not last_text:
            return full
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            return RangeDecision("unsatisfiable")
        return RangeDecision("partial", max(0, size - suffix), size - 1)
    first = int(first_text)
    if last_text and int(last_text) < first:
        return full  # an invalid range-spec: the header is ignored
    if first >= size:
        return RangeDecision("unsatisfiable")
    last = min(int(last_text), size - 1) if last_text else size - 1
    return RangeDecision("partial", first, last)


def corrupt_chunk(data: bytes, offset: int) -> bytes:
    """Invert the bits of whichever of file offsets 0..15 lie in ``data`` (at ``offset``)."""
    if offset >= CORRUPT_SPAN_BYTES:
        return data
    n = min(len(data), CORRUPT_SPAN_BYTES - offset)
    return bytes(b ^ 0xFF for b in data[:n]) + data[n:]


def resolve_under(root: Path, url_path: str) -> Path | None:
    """The regular file ``root`` + ``url_path`` names, or None if it escapes root or is absent."""
    parts = url_path.split("/")
    if any(p == ".." for p in parts) or "\x00" in url_path or "\\" in url_path:
        return None
    rel = "/".join(p for p in parts if p)
    if not rel:
        return None
    candidate = (root / rel).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return candidate


# --- the server ----------------------------------------------------------------------------


class OriginServer:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.log: list[RequestRecord] = []
        self.behaviours: dict[str, Behaviour] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(CONTROL_PREFIX + "requests", self.handle_requests)
        app.router.add_post(CONTROL_PREFIX + "reset", self.handle_reset)
        app.router.add_post(CONTROL_PREFIX + "behaviour", self.handle_behaviour)
        app.router.add_get("/{tail:.*}", self.handle_content)  # also answers HEAD
        return app

    async def handle_requests(self, request: web.Request) -> web.Response:
        return _json({"requests": self.log})

    async def handle_reset(self, request: web.Request) -> web.Response:
        self.log.clear()
        self.behaviours.clear()
        return _json({"ok": True})

    async def handle_behaviour(self, request: web.Request) -> web.Response:
        try:
            path, behaviour = parse_behaviour(orjson.loads(await request.read()))
        except (orjson.JSONDecodeError, BehaviourError) as e:
            return _json({"error": str(e)}, status=400)
        self.behaviours[path] = behaviour
        return _json({"path": path, **asdict(behaviour)})

    def behaviour_for(self, path: str) -> Behaviour:
        return self.behaviours.get(path) or self.behaviours.get("*") or Behaviour()

    async def handle_content(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.startswith(CONTROL_PREFIX):
            return web.Response(status=404)
        range_header = request.headers.get("Range", "")
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.log.append(
            RequestRecord(
                t=time.monotonic(),
                method=request.method,
                path=path,
                range=range_header,
                peer=f"{peer[0]}:{peer[1]}" if peer else "",
            )
        )
        behaviour = self.behaviour_for(path)
        if behaviour.delay_first_byte_seconds:
            await asyncio.sleep(behaviour.delay_first_byte_seconds)
        if behaviour.reset_before_head:
            await _abort(request, reset=True)
            return web.Response(status=500)  # never sent: the connection is gone
        if behaviour.status is not None:
            return web.Response(status=behaviour.status)
        file = resolve_under(self.root, path)
        if file is None:
            return web.Response(status=404)
        try:
            fd = os.open(file, os.O_RDONLY)
        except OSError:
            return web.Response(status=404)
        try:
            return await self._send_file(request, fd, range_header, behaviour)
        finally:
            os.close(fd)

    async def _send_file(
        self, request: web.Request, fd: int, range_header: str, behaviour: Behaviour
    ) -> web.StreamResponse:
        size = os.fstat(fd).st_size
        decision = decide_range(range_header, size)
        if decision.kind == "unsatisfiable":
            return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
        resp = web.StreamResponse(status=206 if decision.kind == "partial" else 200)
        resp.content_type = "application/octet-stream"
        resp.headers["Accept-Ranges"] = "bytes"
        resp.content_length = decision.length
        if decision.kind == "partial":
            resp.headers["Content-Range"] = f"bytes {decision.first}-{decision.last}/{size}"
        await resp.prepare(request)
        if request.method == "HEAD":
            await resp.write_eof()
            return resp
        rate = behaviour.rate_bytes_per_second
        chunk_bytes = max(1, min(CHUNK_BYTES, rate // 20)) if rate else CHUNK_BYTES
        limit = behaviour.die_after_bytes
        for cut in (behaviour.hang_after_bytes, behaviour.reset_after_bytes):
            if cut is not None:
                limit = cut if limit is None else min(limit, cut)
        loop = asyncio.get_running_loop()
        started = loop.time()
        offset, end, sent = decision.first, decision.last + 1, 0
        while offset < end:
            n = min(chunk_bytes, end - offset)
            if limit is not None:
                n = min(n, limit - sent)
                if n <= 0:
                    break
            data = await loop.run_in_executor(None, os.pread, fd, n, offset)
            if len(data) < n:  # the file shrank under us: the promised length cannot be kept
                log.error("%s: short read at offset %d", request.path, offset)
                await _abort(request)
                return resp
            if behaviour.corrupt:
                data = corrupt_chunk(data, offset)
            await resp.write(data)
            offset += n
            sent += n
            if rate:
                pause = started + sent / rate - loop.time()
                if pause > 0:
                    await asyncio.sleep(pause)
        if offset < end:
            if behaviour.hang_after_bytes is not None and sent >= behaviour.hang_after_bytes:
                await _hang(request)
            await _abort(request, reset=sent == behaviour.reset_after_bytes)
            return resp
        await resp.write_eof()
        return resp


async def _hang(request: web.Request) -> None:
    """Send nothing more, until the client gives up and closes the connection."""
    transport = request.transport
    while transport is not None and not transport.is_closing():
        await asyncio.sleep(0.05)


async def _abort(request: web.Request, *, reset: bool = False) -> None:
    """Close the connection without finishing the body, once what was written has left;
    with ``reset``, abortively (SO_LINGER 0: the kernel sends an RST, not a FIN)."""
    transport = request.transport
    if transport is None:
        return
    deadline = time.monotonic() + ABORT_FLUSH_TIMEOUT_SECONDS
    while transport.get_write_buffer_size() > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    sock = transport.get_extra_info("socket")
    if reset and sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _json(doc: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json")


def _base_url(address: Any) -> str:
    host, port = address[0], address[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def serve(root: Path, ready_file: Path, host: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(
        OriginServer(root).app(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, 0).start()
        write_atomically(ready_file, _base_url(runner.addresses[0]) + "\n")
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.peering.origin_proc")
    parser.add_argument("--root", type=Path, required=True, help="directory to serve")
    parser.add_argument("--ready-file", type=Path, required=True, help="where to write the URL")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (port is 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    if not args.root.is_dir():
        log.error("--root %s is not a directory", args.root)
        return 2
    try:
        asyncio.run(serve(args.root, args.ready_file, args.host))
    except OSError as e:
        log.error("origin failed to start: %s", e)
        return 3
    return 0


# --- the test side -------------------------------------------------------------------------


class OriginProcess:
    """Start, steer and stop an origin child process (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = ""  # the child's stdout and stderr, kept after stop()
        self._workdir: Path | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the origin is not started"
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        assert self._workdir is not None, "the origin is not started"
        return self._workdir / "origin.log"

    def command(self, ready: Path) -> list[str]:
        """The child's command line (a subclass runs another server with the same control
        endpoints and ready file this way)."""
        return [sys.executable, "-m", "tests.peering.origin_proc", "--root", str(self.root),
                "--ready-file", str(ready)]  # fmt: skip

    def start(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("the origin is already running")
        self._workdir = Path(tempfile.mkdtemp(prefix="origin-proc-"))
        ready = self._workdir / "ready"
        with open(self.log_path, "wb") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                self.command(ready),
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not ready.exists():
            code = self.proc.poll()
            if code is not None or time.monotonic() >= deadline:
                why = f"exited with {code}" if code is not None else f"not ready in {timeout}s"
                output = self.log_path.read_text(errors="replace")[-4000:]
                self.stop()
                raise RuntimeError(f"origin {why}; output:\n{output}")
            time.sleep(0.01)
        self.url = ready.read_text().strip()

    def _call(self, method: str, endpoint: str, doc: object = None) -> Any:
        data = None if doc is None else orjson.dumps(doc)
        req = urllib.request.Request(
            self.url + CONTROL_PREFIX + endpoint,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return orjson.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{method} {endpoint}: {e.code} {e.read().decode()}") from e

    def requests(self) -> list[RequestRecord]:
        records: list[RequestRecord] = self._call("GET", "requests")["requests"]
        return records

    def count(self, path: str) -> int:
        return sum(1 for r in self.requests() if r["path"] == path)

    def reset(self) -> None:
        self._call("POST", "reset", {})

    def behave(self, path: str, **kw: Any) -> None:
        self._call("POST", "behaviour", {"path": path, **kw})

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._workdir is not None:
            with contextlib.suppress(OSError):
                self.output = self.log_path.read_text(errors="replace")
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def __enter__(self) -> OriginProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
