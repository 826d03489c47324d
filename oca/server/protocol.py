"""The HTTP/1.1 connection: an asyncio ``Protocol`` driven by llhttp (httptools).

Theory of operation. Bytes arrive in :meth:`HttpProtocol.data_received` and are fed to
the parser; each complete request is queued, and requests are answered strictly in
order (pipelining). A request becomes a :class:`~oca.server.response.Response` (a head
plus body pieces: bytes or spans of an open file) in :mod:`oca.server.handler`, and the
send path here moves it to the kernel.

The send path is owned, not delegated (uvloop's ``loop.sendfile`` copies through
userspace). On plain HTTP the connection keeps a duplicate of the socket descriptor and
writes to it directly: the head with ``send()``, file spans with ``os.sendfile()``
(zero-copy), waiting for writability with ``loop.add_writer`` on the duplicate when the
socket buffer is full. The transport is never written to, so ordering is ours. Before
each sendfile window the file's pages are probed with ``RWF_NOWAIT`` and cold windows
are read in the I/O pool first (see :mod:`oca.server.files`), so a slow disk never
blocks the loop. On TLS (no kernel TLS here) spans are read (from the page cache
without blocking when possible, else in the pool) and written to the SSL transport,
following its flow control.

The common case (descriptor cached, pages resident, socket buffer free) completes
inside ``data_received`` with no task, no future and no timer: timeouts are enforced
by the worker's once-a-second sweep over connection deadlines.

Limits map to precise statuses: request line too long 414, headers too large 431,
unknown method 501, known but unsupported method 405, request body 413, ambiguous
framing (Content-Length with Transfer-Encoding, differing Content-Lengths, a
Transfer-Encoding whose final coding is not chunked) 400, header timeout 408. Errors
that leave the byte stream unreliable close the connection after the response; every
close after a response is a lingering close, so the client reads the response rather
than a reset. An error answering a HEAD has no body.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, Any, TypeVar

import httptools

from oca.server.files import (
    PROBE_BOTH_ENDS,
    WINDOW_BYTES,
    OpenFile,
    read_span,
    read_span_nowait,
    warm,
)
from oca.server.handler import NeedsOpen, NeedsUpstream, Request, parse_peer
from oca.server.metrics import LATENCY_BUCKETS
from oca.server.response import Response

if TYPE_CHECKING:
    from oca.peering.transfer import Transfer
    from oca.server.worker import Listener, WorkerState

log = logging.getLogger("oca.server")

_MSG_MORE = getattr(socket, "MSG_MORE", 0)
_MORE_THRESHOLD = 1 << 20  # cork the head onto the body only for large bodies
_COPY_CHUNK = 256 << 10
_T = TypeVar("_T")
_LINGER_SECONDS = 2.0
_PROBE = [bytearray(1)]
_PROBE_BOTH = PROBE_BOTH_ENDS
# Without RWF_NOWAIT (not Linux 4.14+) preadv with flag 0 would block: the probe is
# then skipped by treating every page as resident, as files.is_resident does.
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
_DISCONNECT = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN, errno.EBADF)


class _Abort(Exception):
    """Raised inside a parser callback to stop parsing after a limit was hit."""


class HttpProtocol(asyncio.Protocol):
    def __init__(self, state: WorkerState, listener: Listener) -> None:
        self.state = state
        self.listener = listener
        self.cfg = state.cfg.server
        self._max_header_bytes = self.cfg.max_header_bytes
        self._max_line = self.cfg.max_request_line_bytes
        self._max_pipelined = self.cfg.max_pipelined_requests
        self._send_timeout = self.cfg.send_timeout_seconds
        self.internal_allowed = listener.internal or not state.has_internal_listener
        self.tls = listener.tls
        self.loop = state.loop
        self.transport: Any = None
        self.sock: socket.socket | None = None
        self.sockfd = -1
        self.client = ""
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Request | Response] = deque()
        self.current: Response | None = None
        self.cur_req: Request | None = None
        self.pieces: deque[bytes | memoryview | tuple[int, int]] = deque()
        self.probed_until = -1
        self.waiting_writable = False
        self.busy_io = False
        self.write_paused = False
        self.reading_paused = False
        self.closed = False
        self.eof = False
        self.stopped = False  # parsing stopped after an error; close after queue
        self.lingering = False
        self.draining = False
        self.deadline = 0.0
        self.now = 0.0  # loop time of the event being handled (one clock read per event)
        self.deadline_kind = "header"
        # per-request parse state
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._hdr_bytes = 0
        self._head_bytes = 0
        self._in_head = True
        self._in_request = False  # between the first byte of a request and its end
        self._body_bytes = 0
        self._fail: tuple[int, str] | None = None
        self._started = 0.0
        self._version = "1.1"

    # ------------------------------------------------------------ connection
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        st = self.state
        self.transport = transport
        self.client = parse_peer(transport.get_extra_info("peername"))
        self.deadline = self.loop.time() + self.cfg.header_timeout_seconds
        if len(st.connections) >= st.max_connections or st.draining:
            self._refuse("draining" if st.draining else "too-many-connections")
            return
        if not self.tls:
            raw = transport.get_extra_info("socket")
            if raw is not None:
                try:
                    dup = os.dup(raw.fileno())
                except OSError:  # EMFILE: out of descriptors despite the budget
                    self._refuse("too-many-connections")
                    return
                self.sock = socket.socket(fileno=dup)
                self.sock.setblocking(False)
                self.sockfd = self.sock.fileno()
        st.connections.add(self)
        st.metrics.inc("connections_accepted", self.listener.name)
        st.metrics.gauges["open_connections"] = len(st.connections)

    def _refuse(self, note: str) -> None:
        """503 with Retry-After, then close: over the connection limit, or draining."""
        st = self.state
        st.metrics.inc("connections_refused", self.listener.name)
        resp = st.handler.error(503, note, close=True, extra=b"Retry-After: 1\r\n")
        self.transport.write(resp.head + b"".join(p for p in resp.pieces if isinstance(p, bytes)))
        self.transport.close()
        self.closed = True

    def connection_lost(self, exc: Exception | None) -> None:
        self._teardown()

    def eof_received(self) -> bool:
        self.eof = True
        if self.current is None and not self.queue:
            self._close()
            return False
        return True  # finish answering pipelined requests first

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.tls and self.current is not None and not self.busy_io:
            self._resume()

    # ------------------------------------------------------------ parsing
    def data_received(self, data: bytes) -> None:
        if self.stopped or self.closed:
            return
        self.now = self.loop.time()
        try:
            self._feed(data)
        except httptools.HttpParserInvalidMethodError:
            self._stop(*(self._fail or (501, "method-not-implemented")))
            return
        except (httptools.HttpParserCallbackError, httptools.HttpParserError) as exc:
            # Past an invalid method every parser error has the request's method parsed.
            self._stop(*(self._fail or (400, f"malformed-request: {exc}")), head=self._is_head())
            return
        if self._in_head and self._in_request:
            # llhttp hands over partial URL and header spans, but httptools buffers a
            # header until it is complete: bound the head by the bytes received since it
            # began. The read it began in may also hold requests pipelined before it, so
            # that read is not counted (-1 marks it, see _begin): a burst of small
            # pipelined requests is never taken for one large head, and a head that never
            # completes is still cut off within one read (a few hundred KiB) of the limit.
            if self._head_bytes < 0:
                self._head_bytes = 0
            else:
                self._head_bytes += len(data)
            limit = self.cfg.max_request_line_bytes + self.cfg.max_header_bytes
            if self._head_bytes > limit:
                self._stop(431, "header-fields-too-large", head=self._is_head())
                return
        self._process()

    def _feed(self, data: bytes) -> None:
        while True:
            try:
                self.parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as exc:
                # Upgrade (e.g. h2c) and CONNECT are not offered: the request was answered
                # normally, and the bytes after it (from offset args[0] of this read) are
                # parsed as HTTP/1.1 again by a fresh parser, not dropped: a request
                # pipelined behind it is answered whichever read it arrived in.
                self.parser = httptools.HttpRequestParser(self)
                data = data[exc.args[0] :]
                if not data:
                    return

    def _is_head(self) -> bool:
        """Whether the request being parsed is a HEAD, whose error answer has no body.

        llhttp keeps the last parsed method (DELETE before any): only meaningful once
        the current request's method was parsed (in callbacks, or for any parser error
        other than an invalid method).
        """
        return bool(self.parser.get_method() == b"HEAD")

    def _begin(self) -> None:
        """A new request's first bytes (called from on_url: one callback fewer)."""
        self._in_request = True
        self._head_bytes = -1  # began in the current read (see data_received)
        self._url = b""
        self._headers = {}
        self._hdr_bytes = 0
        self._body_bytes = 0
        # Latency uses the monotonic clock: uvloop's loop.time() has millisecond
        # resolution and is cached per loop iteration.
        self._started = monotonic()
        if self.deadline_kind != "header":
            self.deadline_kind = "header"
            self.deadline = self.now + self.cfg.header_timeout_seconds

    def on_url(self, url: bytes) -> None:
        if not self._in_request:
            self._begin()
        self._url += url
        if len(self._url) > self._max_line:
            self._fail = (414, "uri-too-long")
            raise _Abort

    def on_header(self, name: bytes, value: bytes) -> None:
        self._hdr_bytes += len(name) + len(value) + 4
        if self._hdr_bytes > self._max_header_bytes:
            self._fail = (431, "header-fields-too-large")
            raise _Abort
        key = name.lower()
        prev = self._headers.get(key)
        if prev is None:
            self._headers[key] = value
        elif key == b"content-length":
            if prev.strip() != value.strip():
                self._fail = (400, "conflicting-content-length")
                raise _Abort
        elif key == b"host":
            self._fail = (400, "duplicate-host")
            raise _Abort
        else:
            self._headers[key] = prev + b", " + value

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        h = self._headers
        p = self.parser
        # llhttp keeps a connection alive without a Connection (or Proxy-Connection)
        # field only for HTTP/1.1: every other version it accepts needs "keep-alive"
        # there. So the common request is recognised without get_http_version()
        # building a string.
        if b"connection" not in h and b"proxy-connection" not in h and p.should_keep_alive():
            version = self._version = "1.1"
        else:
            version = self._version = p.get_http_version()
        if version != "1.1" and version != "1.0":
            self._fail = (505, "http-version-not-supported")
            raise _Abort
        if b"transfer-encoding" in h and b"content-length" in h:
            self._fail = (400, "conflicting-framing")
            raise _Abort
        te = h.get(b"transfer-encoding")
        if te is not None and te.rpartition(b",")[2].strip(b" \t").lower() != b"chunked":
            # RFC 9112 §6.3: unless chunked is the final coding the body's length cannot
            # be known (llhttp itself refuses some such values, after this callback).
            self._fail = (400, "bad-transfer-encoding")
            raise _Abort
        if version == "1.1" and b"host" not in h:
            self._fail = (400, "missing-host")
            raise _Abort
        limit = self.cfg.max_request_body_bytes
        cl = h.get(b"content-length")
        if cl is not None:
            cl = cl.strip()
            if not cl.isdigit():
                self._fail = (400, "bad-content-length")
                raise _Abort
            if int(cl) > limit:
                self._fail = (413, "request-body-too-large")
                raise _Abort
        elif b"transfer-encoding" in h and limit == 0:
            self._fail = (413, "request-body-too-large")
            raise _Abort
        self.deadline_kind = "body"

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self.cfg.max_request_body_bytes:
            self._fail = (413, "request-body-too-large")
            raise _Abort

    def on_message_complete(self) -> None:
        p = self.parser
        method = p.get_method()
        req = Request(
            _METHODS.get(method) or method.decode("ascii", "replace"),
            self._url,
            self._headers,
            p.should_keep_alive(),
            self._version == "1.1",
            self._started,
            self.client,
        )
        self._in_head = True
        self._in_request = False
        self.queue.append(req)
        if len(self.queue) >= self._max_pipelined and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def _stop(self, status: int, note: str, head: bool = False) -> None:
        """Answer the queued requests, then this error (no body if it answers a HEAD),
        then close."""
        self.stopped = True
        if not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        self.queue.append(self.state.handler.error(status, note, close=True, head=head))
        self._process()

    # ------------------------------------------------------------ dispatch
    def _process(self) -> None:
        while self.current is None and self.queue and not self.closed:
            item = self.queue.popleft()
            if isinstance(item, Response):
                self._start(item, None)
            else:
                try:
                    result = self.state.handler.handle(item, self.internal_allowed)
                except Exception:
                    log.exception("unhandled error answering %s", item.target[:200])
                    result = self.state.handler.error(500, "internal-error", close=True)
                if isinstance(result, NeedsOpen):
                    self.cur_req = item
                    self.current = _PENDING
                    self._open(item, result)
                    return
                if isinstance(result, NeedsUpstream):
                    self.cur_req = item
                    self.current = _PENDING
                    self._await_upstream(item, result)
                    return
                if (
                    self.sock is not None
                    and result.file is not None
                    and len(result.pieces) == 1
                    and not result.close
                    and item.keep_alive
                    and item.http11
                    and not self.draining
                    and self._send_whole(result)
                ):
                    self._account(result, item)
                    continue
                self._start(result, item)
            if self._pump():
                self._finish()
        if self.current is None and not self.closed:
            if self.reading_paused and not self.stopped and not self.queue:
                self.reading_paused = False
                self.transport.resume_reading()
            if self.eof or self.draining:
                self._close()
            elif not self.queue and not self._in_request:
                self.deadline_kind = "keepalive"
                self.deadline = self.now + self.cfg.keepalive_timeout_seconds

    def _open(self, req: Request, need: NeedsOpen) -> None:
        st = self.state
        fut = self.loop.run_in_executor(st.io_pool, st.open_file, need.record, need.fs_path)
        self.busy_io = True

        def done(f: asyncio.Future[OpenFile]) -> None:
            self.busy_io = False
            self.current = None
            self.now = self.loop.time()
            try:
                # Cached even when the client has gone: the descriptor is owned (and
                # eventually closed) by the cache, never leaked.
                entry = st.files.put(f.result())
            except OSError as exc:
                if self.closed:
                    return
                resp = st.on_open_error(need.record, exc)
            except Exception:
                log.exception("opening %s failed", need.fs_path)
                if self.closed:
                    return
                resp = st.handler.error(500, "internal-error", close=True)
            else:
                if self.closed:
                    return
                resp = st.handler.respond_file(req, entry, req.method == "HEAD")
            self._start(resp, req)
            if self._pump():
                self._finish()
            self._process()

        fut.add_done_callback(done)

    def _await_upstream(self, req: Request, need: NeedsUpstream) -> None:
        """Attach to the object's transfer; answer once its size is known (or it failed)."""
        misses = self.state.misses
        assert misses is not None
        t = misses.attach(need.path)
        self.deadline_kind = "send"
        self.deadline = self.now + self._send_timeout

        retried = False

        def ready() -> None:
            nonlocal t, retried
            if self.closed:
                return
            if t.state == "failed" and t.status != 404 and not retried:
                # The transfer this request joined failed before it sent anything here:
                # one fresh attempt (the failing source is already known and avoided).
                retried = True
                t = misses.attach(need.path)
            if not (t.headers_known or t.state == "failed"):
                t.subscribe(ready)
                return
            self.current = None
            self.now = self.loop.time()
            try:
                resp = self.state.handler.respond_transfer(req, t)
            except Exception:
                log.exception("answering a miss for %s failed", need.path)
                resp = self.state.handler.error(500, "internal-error", close=True)
            self._start(resp, req)
            if self._pump():
                self._finish()
            self._process()

        ready()

    def _arrived(self, t: Transfer, start: int) -> int:
        """Bytes of a miss's part file that may be sent from ``start`` now. When none,
        either wait for the transfer to move (resuming then) or, if it failed, cut the
        connection; the caller returns and sends nothing."""
        avail = t.available() - start
        if avail > 0:
            return avail
        if t.state == "failed":
            self._upstream_failed(t)
        else:
            self._stop_waiting_writable()
            t.subscribe(self._resume_if_open)
        return 0

    def _start(self, resp: Response, req: Request | None) -> None:
        self.current = resp
        self.cur_req = req
        close = resp.close or self.draining or (self.stopped and not self.queue)
        if req is not None and not req.keep_alive:
            close = True
        if close:
            resp.close = True
            if b"Connection: close" not in resp.head:
                resp.head = resp.head[:-2] + b"Connection: close\r\n\r\n"
        elif req is not None and not req.http11:
            resp.head = resp.head[:-2] + b"Connection: keep-alive\r\n\r\n"
        if resp.file is not None:
            resp.file.acquire()
        self.pieces.clear()
        self.pieces.append(resp.head)
        self.pieces.extend(resp.pieces)
        self.probed_until = -1
        self.deadline_kind = "send"
        self.deadline = self.now + self._send_timeout

    # ------------------------------------------------------------ sending
    def _pump(self) -> bool:
        """Push pieces to the kernel; True when the response is fully handed over."""
        if self.tls or self.sock is None:
            return self._pump_transport()
        sock = self.sock
        pieces = self.pieces
        resp = self.current
        assert resp is not None
        while pieces:
            p = pieces[0]
            if not isinstance(p, tuple):
                try:
                    if resp.body_bytes >= _MORE_THRESHOLD and len(pieces) > 1:
                        n = sock.send(p, _MSG_MORE)
                    else:
                        n = os.write(self.sockfd, p)
                except BlockingIOError:
                    n = 0
                except OSError as exc:
                    self._send_failed(exc)
                    return False
                if n < len(p):
                    pieces[0] = memoryview(p)[n:]
                    self._wait_writable()
                    return False
                pieces.popleft()
                continue
            start, length = p
            f = resp.file
            assert f is not None
            count = min(length, WINDOW_BYTES)
            g = resp.growing
            if g is not None:
                avail = self._arrived(g, start)
                if avail == 0:
                    return False
                if avail < count:
                    count = avail
                    self.probed_until = -1
            if start >= self.probed_until and _RWF_NOWAIT:
                # Inline form of files.is_resident (this is the per-request hot path).
                try:
                    if os.preadv(f.fd, _PROBE, start, _RWF_NOWAIT) and count >= _PROBE_BOTH:
                        os.preadv(f.fd, _PROBE, start + count - 1, _RWF_NOWAIT)
                except BlockingIOError:
                    self._warm(f, start, count)
                    return False
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        self._send_failed(exc)
                        return False
                self.probed_until = start + count
            try:
                n = os.sendfile(self.sockfd, f.fd, start, min(count, self.probed_until - start))
            except BlockingIOError:
                self._wait_writable()
                return False
            except OSError as exc:
                self._send_failed(exc)
                return False
            if n == 0:
                self._send_failed(OSError(errno.EIO, "file shorter than its inventory record"))
                return False
            if n < length:
                pieces[0] = (start + n, length - n)
                if n < count:
                    self._wait_writable()
                    return False
            else:
                pieces.popleft()
        return True

    def _pump_transport(self) -> bool:
        pieces = self.pieces
        resp = self.current
        assert resp is not None
        t = self.transport
        while pieces:
            if self.write_paused:
                return False
            if t.is_closing():
                self._abort()
                return False
            p = pieces[0]
            if not isinstance(p, tuple):
                t.write(p)
                pieces.popleft()
                continue
            start, length = p
            f = resp.file
            assert f is not None
            count = min(length, _COPY_CHUNK)
            g = resp.growing
            if g is not None:
                count = min(count, self._arrived(g, start))
                if count == 0:
                    return False
            try:
                data = read_span_nowait(f.fd, start, count)
            except OSError as exc:
                self._send_failed(exc)
                return False
            if data is None:
                self._read_cold(f, start, count)
                return False
            t.write(data)
            self.state.metrics.inc("send_method_bytes", "copy", count)
            if count < length:
                pieces[0] = (start + count, length - count)
            else:
                pieces.popleft()
        return True

    def _wait_writable(self) -> None:
        # The registration stays for the rest of the response (a large response
        # alternates sendfile and EAGAIN many times; re-registering each time costs two
        # epoll_ctl calls) and is dropped when the response ends or waits on the pool.
        # Pages probed before the wait may be evicted while the socket drains: probe
        # again before the next sendfile.
        self.probed_until = -1
        if not self.waiting_writable:
            self.waiting_writable = True
            self.loop.add_writer(self.sockfd, self._on_writable)

    def _stop_waiting_writable(self) -> None:
        if self.waiting_writable:
            self.waiting_writable = False
            self.loop.remove_writer(self.sockfd)

    def _on_writable(self) -> None:
        if self.current is None or self.busy_io:
            self._stop_waiting_writable()
            return
        self._resume()

    def _resume(self) -> None:
        if self.closed or self.current is None:
            return
        self.now = now = self.loop.time()
        self.deadline = now + self._send_timeout
        if self._pump():
            self._finish()
            self._process()

    def _in_pool(
        self, fn: Callable[[int, int, int], _T], f: OpenFile, start: int, count: int,
        then: Callable[[_T], None],
    ) -> None:  # fmt: skip
        """Run a blocking read of a cold span in the I/O pool, then continue with ``then``.

        An I/O error fails the response (and lets the store judge the disk).
        """
        st = self.state
        self._stop_waiting_writable()
        self.busy_io = True
        fut = self.loop.run_in_executor(st.io_pool, fn, f.fd, start, count)

        def done(fu: asyncio.Future[_T]) -> None:
            self.busy_io = False
            if self.closed:
                return
            exc = fu.exception()
            if exc is not None:
                self._send_failed(exc if isinstance(exc, OSError) else OSError(errno.EIO, str(exc)))
                return
            st.metrics.inc("cold_reads", f.record.tier)
            then(fu.result())

        fut.add_done_callback(done)

    def _warm(self, f: OpenFile, start: int, count: int) -> None:
        def warmed(_: None) -> None:
            self.probed_until = start + count
            self._resume()

        self._in_pool(warm, f, start, count, warmed)

    def _read_cold(self, f: OpenFile, start: int, count: int) -> None:
        def read(data: bytes) -> None:
            self.state.metrics.inc("send_method_bytes", "copy", len(data))
            self.transport.write(data)
            p = self.pieces[0]
            assert isinstance(p, tuple)
            if len(data) < p[1]:
                self.pieces[0] = (p[0] + len(data), p[1] - len(data))
            else:
                self.pieces.popleft()
            if not self.write_paused:
                self._resume()

        self._in_pool(read_span, f, start, count, read)

    def _resume_if_open(self) -> None:
        if not self.closed and self.current is not None:
            self._resume()

    def _upstream_failed(self, t: Transfer) -> None:
        """Headers are out and the rest of the bytes will not come: close the connection
        short of Content-Length, so the client sees an error, never wrong bytes."""
        log.info("cutting a response to %s: the upstream transfer failed: %s", t.path, t.reason)
        self.state.metrics.inc("miss_requests", "cut")
        self._abort()

    def _send_failed(self, exc: BaseException) -> None:
        resp = self.current
        if (
            isinstance(exc, OSError)
            and exc.errno not in _DISCONNECT
            and resp is not None
            and resp.file is not None
            and resp.file.fd >= 0
        ):
            self.state.on_read_error(resp.file.record, exc)
        self._abort()

    def _send_whole(self, resp: Response) -> bool:
        """The common response in as few steps as possible: True when fully sent.

        A single file span on an idle plain connection: probe residency, write the
        head, sendfile the span. Anything else (a cold page, a full socket buffer, an
        error) returns False with ``resp`` trimmed to what is left, and the general
        path (:meth:`_start` / :meth:`_pump`) takes over from there, warming, waiting
        or failing exactly as it does for every other response.
        """
        f = resp.file
        assert f is not None
        span = resp.pieces[0]
        assert isinstance(span, tuple)
        start, length = span
        if length > WINDOW_BYTES:
            return False
        fd = f.fd
        if _RWF_NOWAIT:
            try:
                if os.preadv(fd, _PROBE, start, _RWF_NOWAIT) and length >= _PROBE_BOTH:
                    os.preadv(fd, _PROBE, start + length - 1, _RWF_NOWAIT)
            except OSError:
                return False  # cold (or no NOWAIT here): the general path decides
        head = resp.head
        try:
            n = os.write(self.sockfd, head)
        except OSError:
            return False  # nothing was written; the general path retries or fails
        if n < len(head):
            resp.head = head[n:]
            return False
        try:
            sent = os.sendfile(self.sockfd, fd, start, length)
        except BlockingIOError:
            sent = 0
        except OSError:
            resp.head = b""
            return False  # the general path's sendfile meets the error and handles it
        if sent < length:
            resp.head = b""
            resp.pieces[0] = (start + sent, length - sent)
            return False
        return True

    def _account(self, resp: Response, req: Request | None) -> None:
        """Metrics and the access log for a response handed to the kernel."""
        st = self.state
        now = monotonic()
        m = st.metrics
        c = m.counters["requests"]
        code = _CODES.get(resp.status) or str(resp.status)
        c[code] = c.get(code, 0) + 1
        n = resp.body_bytes
        if n:
            c = m.counters["sent_bytes"]
            tier = resp.tier or "none"
            c[tier] = c.get(tier, 0) + n
            if resp.file is not None and self.sock is not None:  # sent by sendfile
                c = m.counters["send_method_bytes"]
                c["sendfile"] = c.get("sendfile", 0) + n
        log = st.access_log
        if req is not None:
            took = now - req.started
            m.latency_buckets[bisect_left(LATENCY_BUCKETS, took)] += 1
            m.latency_sum += took
            m.latency_count += 1
            if log.enabled:
                log.record(self.client, req, resp, took)
        elif resp.note and log.enabled:
            log.record_error(self.client, resp)

    def _finish(self) -> None:
        resp = self.current
        assert resp is not None and resp is not _PENDING
        self._account(resp, self.cur_req)
        if resp.file is not None:
            resp.file.release()
        if self.waiting_writable:
            self._stop_waiting_writable()
        self.current = None
        self.cur_req = None
        if resp.close:
            # Requests pipelined behind a closing answer are never answered. Close in
            # stages (RFC 9112 §9.6): closing with unread input would send a reset that
            # can destroy the end of this answer before the client has read it.
            self.queue.clear()
            self._close(linger=True)

    # ------------------------------------------------------------ closing
    def drain(self) -> None:
        """Finish the response in flight (if any), then close."""
        self.draining = True
        if self.current is None and not self.queue:
            self._close()

    def on_deadline(self, now: float) -> None:
        kind = self.deadline_kind
        if kind == "linger":
            self._abort()
            return
        self.state.metrics.inc("timeouts", kind)
        if kind in ("header", "body") and self.current is None and not self.queue:
            if self._url or self._headers or not self._in_head:
                head = self._in_request and self._is_head()
                self.queue.append(
                    self.state.handler.error(408, "request-timeout", close=True, head=head)
                )
                self.stopped = True
                self._process()
                if not self.closed:
                    self.deadline_kind = "linger"
                    self.deadline = now + _LINGER_SECONDS
                return
            self._close()
            return
        if kind == "keepalive" and self.current is None:
            self._close()
            return
        self._abort()

    def _close(self, linger: bool = False) -> None:
        if self.closed:
            return
        if linger and self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)
            self.lingering = True
            self.stopped = True
            self.deadline_kind = "linger"
            self.deadline = self.loop.time() + _LINGER_SECONDS
            if self.reading_paused:
                self.reading_paused = False
                self.transport.resume_reading()
            return
        self.closed = True
        self._release_sock()
        self.transport.close()

    def _abort(self) -> None:
        if not self.closed:
            self.closed = True
            self._release_sock()
            self.transport.abort()
        self._teardown()

    def _release_sock(self) -> None:
        if self.sock is not None:
            self._stop_waiting_writable()
            self.sock.close()
            self.sock = None

    def _teardown(self) -> None:
        self.closed = True
        self._release_sock()
        resp = self.current
        if resp is not None and resp is not _PENDING:
            if resp.file is not None:
                resp.file.release()
            if self.cur_req is not None:
                self.state.access_log.record(
                    self.client, self.cur_req, resp, monotonic() - self.cur_req.started,
                    aborted=True,
                )  # fmt: skip
        self.current = None
        # Break the protocol <-> parser and protocol <-> transport cycles now, so the
        # buffers they hold are freed by reference counting rather than by a later
        # cyclic GC pass (on TLS that is hundreds of KiB per connection).
        self.pieces.clear()
        self.queue.clear()
        self.parser = _DEAD_PARSER
        st = self.state
        if self in st.connections:
            st.connections.discard(self)
            st.metrics.gauges["open_connections"] = len(st.connections)


_PENDING = Response(0, b"")


class _DeadParser:
    """Stands in for the parser of a closed connection (it holds no protocol)."""

    def feed_data(self, data: bytes) -> None:
        return None


_DEAD_PARSER: Any = _DeadParser()
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "OPTIONS")}
_CODES = {code: str(code) for code in (200, 204, 206, 304, 400, 403, 404, 412, 416, 503)}
