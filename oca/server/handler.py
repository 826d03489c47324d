"""Routing one parsed request to a response: content, CORS preflight, internal endpoints.

This module decides; it does not send. Content requests go through, in order:
request-target normalisation (traversal rejected before any filesystem access),
token verification when keys are configured, the inventory lookup, the open-file
cache, and the RFC 9110 decision of :mod:`oca.http.semantics`. When the descriptor
is not cached, :meth:`ContentHandler.handle` returns :class:`NeedsOpen` and the
protocol opens the file in the I/O pool, then asks again.
"""

from __future__ import annotations

import ipaddress
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from oca.auth.tokens import TokenVerifier, split_token_path
from oca.errors import TokenError
from oca.http.dates import format_http_date
from oca.http.mime import content_type_for, is_manifest
from oca.http.paths import PathRejected, normalize_target
from oca.http.semantics import (
    Conditions,
    Representation,
    decide,
    decide_range,
    multipart_plan,
    simple_span,
    unsatisfied_range,
)
from oca.peering.auth import PEER_HEADER_LOWER, PeerAuthError, verify_peer
from oca.peering.peers import SINCE_HEADER, SUMMARY_PATH
from oca.server.files import OpenFile
from oca.server.response import STATUS_LINES, Response, date_header, simple
from oca.storage.inventory import ObjectRecord

if TYPE_CHECKING:
    from oca.peering.transfer import Transfer
    from oca.server.worker import WorkerState

log = logging.getLogger("oca.server")

ALLOW = b"Allow: GET, HEAD, OPTIONS\r\n"
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE", "PATCH", "TRACE", "CONNECT"}
)
_CONDITIONAL = frozenset(
    {b"range", b"if-range", b"if-match", b"if-none-match", b"if-modified-since",
     b"if-unmodified-since"}
)  # fmt: skip
_PRECONDITIONS = frozenset(
    {b"if-range", b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since"}
)
_PATH_CACHE_SIZE = 16384
SINCE_HEADER_LOWER = SINCE_HEADER.lower().encode("latin-1")
_HEAD_206 = b"%b%b%bContent-Range: bytes %d-%d/%d\r\nContent-Length: %d\r\n\r\n"
INTERNAL_PATHS = frozenset({"/metrics", "/healthz", "/readyz", "/peers", "/status"})
EXPOSE = (
    b"Access-Control-Expose-Headers: Content-Range, Content-Length, Accept-Ranges, "
    b"ETag, Last-Modified, Date, Server\r\n"
)
_CORS_ANY = b"Access-Control-Allow-Origin: *\r\n" + EXPOSE
PREFLIGHT_ALLOWED_HEADERS = b"Range, If-Range, If-Match, If-None-Match, If-Modified-Since"


@dataclass(slots=True)
class Request:
    method: str
    target: bytes
    headers: dict[bytes, bytes]
    keep_alive: bool
    http11: bool
    started: float
    client: str


@dataclass(frozen=True, slots=True)
class NeedsOpen:
    record: ObjectRecord
    fs_path: str


@dataclass(frozen=True, slots=True)
class NeedsUpstream:
    """The object is not held here: the miss path fetches it (the protocol attaches
    the request to the object's transfer and answers once its size is known)."""

    path: str


def etag_for(rec: ObjectRecord) -> str:
    """Strong ETag from the content hash: identical on every appliance holding the object,
    so a player's If-Range keeps working when steering moves it to another box."""
    return f'"{rec.sha256[:32]}"'


def _h(headers: dict[bytes, bytes], name: bytes) -> str | None:
    v = headers.get(name)
    return None if v is None else v.decode("latin-1")


class ContentHandler:
    def __init__(self, state: WorkerState) -> None:
        self.state = state
        cfg = state.cfg.server
        self.server_line = f"Server: {cfg.server_header}\r\n".encode("latin-1")
        self.cache_control = f"Cache-Control: {cfg.cache_control}\r\n".encode("latin-1")
        self.manifest_cache_control = f"Cache-Control: {cfg.manifest_cache_control}\r\n".encode(
            "latin-1"
        )
        self.any_origin = "*" in cfg.cors_allow_origins
        self.origins = frozenset(o.encode("latin-1") for o in cfg.cors_allow_origins)
        self.max_ranges = cfg.max_ranges
        # request-target -> (normalised path, token, object path): the same segment
        # URLs arrive from many players, and normalisation is pure, so results are
        # reused (bounded; cleared when full rather than tracking recency).
        self._paths: dict[bytes, tuple[str, str | None, str]] = {}

    # ----------------------------------------------------------------- helpers
    def _cors(self, headers: dict[bytes, bytes]) -> bytes:
        if self.any_origin:
            return _CORS_ANY
        origin = headers.get(b"origin")
        if origin is not None and origin in self.origins:
            return b"Access-Control-Allow-Origin: " + origin + b"\r\nVary: Origin\r\n" + EXPOSE
        return b"Vary: Origin\r\n"

    def error(
        self, status: int, note: str, *, close: bool = False, extra: bytes = b"", head: bool = False
    ) -> Response:
        body = orjson.dumps({"status": status, "error": note}) + b"\n"
        return simple(
            status,
            body,
            content_type=b"application/json",
            extra=extra,
            close=close,
            head_only=head,
            server=self.server_line,
            note=note,
        )

    def static_headers(self, rec: ObjectRecord) -> bytes:
        cc = self.manifest_cache_control if is_manifest(rec.path) else self.cache_control
        return (
            f"Content-Type: {content_type_for(rec.path)}\r\n"
            f"ETag: {etag_for(rec)}\r\n"
            f"Last-Modified: {format_http_date(int(rec.mtime))}\r\n"
            "Accept-Ranges: bytes\r\n"
        ).encode("latin-1") + cc

    def open_file_entry(self, fd: int, rec: ObjectRecord) -> OpenFile:
        """An :class:`OpenFile` with everything precomputed that does not vary per request."""
        static = self.static_headers(rec)
        return OpenFile(
            fd,
            rec,
            static,
            Representation(rec.size, etag_for(rec), int(rec.mtime)),
            self._prefix_206(static),
        )

    def _prefix_206(self, static: bytes) -> bytes:
        """Status line, Server, the object's static headers and, when it does not depend
        on the request, the CORS block: everything of a 206 head before Date."""
        return (
            STATUS_LINES[206] + self.server_line + static + (_CORS_ANY if self.any_origin else b"")
        )

    # ----------------------------------------------------------------- dispatch
    def handle(self, req: Request, internal_allowed: bool) -> Response | NeedsOpen | NeedsUpstream:
        method = req.method
        head = method == "HEAD"
        if method not in ("GET", "HEAD", "OPTIONS"):
            if method in KNOWN_METHODS:
                return self.error(405, "method-not-allowed", extra=ALLOW)
            return self.error(501, "method-not-implemented", extra=ALLOW)
        target = self._paths.get(req.target)
        if target is None:
            try:
                path = normalize_target(req.target)
            except PathRejected as exc:
                return self.error(exc.status, exc.reason, head=head)
            token, obj_path = split_token_path(path)
            target = (path, token, obj_path)
            if len(self._paths) >= _PATH_CACHE_SIZE:
                self._paths.clear()
            self._paths[req.target] = target
        path = target[0]
        if method == "OPTIONS":
            return self._options(req, path)
        if path in INTERNAL_PATHS:
            if internal_allowed:
                return self._internal(path, head)
            return self.error(404, "not-found", head=head)
        peer = req.headers.get(PEER_HEADER_LOWER)
        if peer is not None:
            # A neighbouring appliance: authenticated by the site key instead of a URL
            # token, and served from this appliance's disks only (hop limit 1).
            signed = path if path == SUMMARY_PATH else target[2]
            refusal = self._peer_refusal(peer, req.method, signed)
            if refusal is not None:
                return refusal
            if path == SUMMARY_PATH:
                return self._summary(req, head)
            return self._content(req, None, target[2], head, peer=True)
        if path == SUMMARY_PATH:
            self.state.metrics.inc("peer_auth_rejections", "missing")
            return self.error(403, "peer-auth-missing", head=head)
        return self._content(req, target[1], target[2], head)

    def _peer_refusal(self, value: bytes, method: str, path: str) -> Response | None:
        st = self.state
        try:
            verify_peer(value.decode("latin-1"), method, path, st.clock(), st.peer_keys)
        except PeerAuthError as exc:
            st.metrics.inc("peer_auth_rejections", exc.reason)
            return self.error(403, f"peer-auth-{exc.reason}", head=method == "HEAD")
        return None

    def _summary(self, req: Request, head: bool) -> Response:
        st = self.state
        since = req.headers.get(SINCE_HEADER_LOWER)
        epoch: str | None = None
        generation: int | None = None
        if since is not None:
            e, _, g = since.decode("latin-1").partition(":")
            if g.isascii() and g.isdigit():  # str.isdigit admits '²', which int() refuses
                epoch, generation = e, int(g)
        answer = st.summary.answer(epoch, generation)
        if answer is None:
            return simple(304, b"", server=self.server_line, note="summary-unchanged")
        body = orjson.dumps(answer)
        return simple(200, body, content_type=b"application/json", head_only=head,
                      server=self.server_line, note=f"summary-{answer['kind']}")  # fmt: skip

    def _options(self, req: Request, path: str) -> Response:
        h = req.headers
        extra = ALLOW
        if b"access-control-request-method" in h:
            extra += self._cors(h)
            extra += (
                b"Access-Control-Allow-Methods: GET, HEAD, OPTIONS\r\n"
                b"Access-Control-Allow-Headers: "
                + (h.get(b"access-control-request-headers") or PREFLIGHT_ALLOWED_HEADERS)
                + b"\r\nAccess-Control-Max-Age: 86400\r\n"
            )
        resp = simple(204, b"", extra=extra, server=self.server_line, note="options")
        # 204 carries no Content-Length per RFC 9110 §8.6.
        resp.head = resp.head.replace(b"Content-Length: 0\r\n", b"").replace(
            b"Content-Type: text/plain; charset=utf-8\r\n", b""
        )
        return resp

    def _internal(self, path: str, head: bool) -> Response:
        st = self.state
        if path == "/healthz":
            body = orjson.dumps({"status": "ok", "pid": st.pid, "worker": st.slot}) + b"\n"
            return simple(200, body, content_type=b"application/json", head_only=head,
                          server=self.server_line, note="healthz")  # fmt: skip
        if path == "/readyz":
            ready, reason = st.readiness()
            body = orjson.dumps({"ready": ready, "reason": reason}) + b"\n"
            return simple(200 if ready else 503, body, content_type=b"application/json",
                          head_only=head, server=self.server_line, note="readyz")  # fmt: skip
        if path == "/peers":
            body = orjson.dumps({"peers": st.describe_peers()}, option=orjson.OPT_INDENT_2)
            return simple(200, body, content_type=b"application/json", head_only=head,
                          server=self.server_line, note="peers")  # fmt: skip
        if path == "/status":
            body = orjson.dumps(st.describe(), option=orjson.OPT_INDENT_2)
            return simple(200, body, content_type=b"application/json", head_only=head,
                          server=self.server_line, note="status")  # fmt: skip
        body = st.render_metrics()
        return simple(
            200,
            body,
            content_type=b"text/plain; version=0.0.4; charset=utf-8",
            head_only=head,
            server=self.server_line,
            note="metrics",
        )

    # ----------------------------------------------------------------- content
    def _content(
        self, req: Request, token: str | None, obj_path: str, head: bool, *, peer: bool = False
    ) -> Response | NeedsOpen | NeedsUpstream:
        st = self.state
        if st.refusing is not None:  # steering unreachable past its grace, policy "stop"
            extra = self._cors(req.headers) + b"Retry-After: 10\r\n"
            return self.error(503, "steering-unreachable", head=head, extra=extra)
        verifier: TokenVerifier | None = st.verifier
        if verifier is not None and not peer:
            if token is None:
                st.metrics.inc("token_rejections", "missing")
                return self.error(403, "token-missing", head=head, extra=self._cors(req.headers))
            try:
                verifier.verify(token, obj_path, st.clock(), req.client)
            except TokenError as exc:
                st.metrics.inc("token_rejections", exc.reason)
                return self.error(
                    403, f"token-{exc.reason}", head=head, extra=self._cors(req.headers)
                )
        # Without keys a signed URL is served like the plain path it carries.
        rec = st.store.lookup(obj_path)
        if rec is None:
            misses = st.misses
            if misses is not None and not peer and misses.could_fetch(obj_path):
                if misses.negative_reason(obj_path) is None:
                    return NeedsUpstream(obj_path)
                st.metrics.inc("miss_requests", "negative")
            # CORS headers on errors too: without them a player's cross-origin fetch sees
            # a network error instead of the 404 (or 403) it could act on.
            return self.error(404, "not-found", head=head, extra=self._cors(req.headers))
        entry = st.files.get(rec)
        if entry is None:
            return NeedsOpen(rec, st.store.file_path(rec))
        return self.respond_file(req, entry, head)

    def respond_transfer(self, req: Request, t: Transfer) -> Response:
        """The answer to a request that missed, once its transfer knows the object's
        size (or failed): the same RFC 9110 decisions as for a held object, sending
        from the transfer's part file as it grows."""
        head = req.method == "HEAD"
        cors = self._cors(req.headers)
        if not t.headers_known:
            status = t.status if t.status in STATUS_LINES else 502
            note = "not-found" if status == 404 else "upstream-failed"
            extra = cors
            if status in (502, 503, 504):
                extra += b"Retry-After: 1\r\n"
            return self.error(status, note, head=head, extra=extra)
        if t.state == "failed":
            return self.error(502, "upstream-failed", head=head, extra=cors + b"Retry-After: 1\r\n")
        rec = ObjectRecord(t.path, t.size, t.sha256 or "", float(t.mtime), t.kind, "")
        cc = self.manifest_cache_control if is_manifest(t.path) else self.cache_control
        static = (
            f"Content-Type: {content_type_for(t.path)}\r\n"
            f"ETag: {t.etag}\r\n"
            f"Last-Modified: {format_http_date(t.mtime)}\r\n"
            "Accept-Ranges: bytes\r\n"
        ).encode("latin-1") + cc
        entry = OpenFile(
            t.dup(), rec, static, Representation(t.size, t.etag, t.mtime),
            self._prefix_206(static), evicted=True,
        )  # fmt: skip
        resp = self.respond_file(req, entry, head)
        if resp.file is None:
            entry.evict()  # 304, 412, 416: the descriptor is not needed
        else:
            resp.growing = t
        return resp

    def respond_file(self, req: Request, entry: OpenFile, head: bool) -> Response:
        rec = entry.record
        h = req.headers
        rep = entry.rep
        if rep is None:
            rep = entry.rep = Representation(rec.size, etag_for(rec), int(rec.mtime))
            entry.prefix_206 = self._prefix_206(entry.headers)
        rng = h.get(b"range")
        if rng is not None and _PRECONDITIONS.isdisjoint(h) and req.method == "GET":
            value = rng.decode("latin-1")
            simple = simple_span(rec.size, value)
            if simple is not None:
                # The hot path of a segment server: one range, no preconditions.
                start, end = simple
                n = end - start + 1
                self.state.store.touch(rec.path, self.state.clock())
                head_bytes = _HEAD_206 % (
                    entry.prefix_206,
                    date_header(),
                    b"" if self.any_origin else self._cors(h),
                    start,
                    end,
                    rec.size,
                    n,
                )
                return Response(206, head_bytes, [(start, n)], entry, n, rec.tier, note="range")
            d = decide_range(rep, value, self.max_ranges)
            status, spans, note = d.status, d.spans, d.reason
        elif not _CONDITIONAL.isdisjoint(h):
            cond = Conditions(
                method=req.method,
                range=_h(h, b"range"),
                if_range=_h(h, b"if-range"),
                if_match=_h(h, b"if-match"),
                if_none_match=_h(h, b"if-none-match"),
                if_modified_since=_h(h, b"if-modified-since"),
                if_unmodified_since=_h(h, b"if-unmodified-since"),
            )
            d = decide(rep, cond, self.max_ranges)
            status, spans, note = d.status, d.spans, d.reason
        else:
            status, note = 200, "full"
            spans = ()
        size = rec.size
        cors = self._cors(h)
        self.state.store.touch(rec.path, self.state.clock())
        if status == 200:
            parts = [STATUS_LINES[200], self.server_line, date_header(), entry.headers, cors,
                     b"Content-Length: ", str(size).encode(), b"\r\n\r\n"]  # fmt: skip
            pieces: list[bytes | tuple[int, int]] = [] if head or size == 0 else [(0, size)]
            return Response(200, b"".join(parts), pieces, entry, 0 if head else size,
                            rec.tier, note=note)  # fmt: skip
        if status == 206 and len(spans) == 1:
            sp = spans[0]
            n = sp.end - sp.start + 1
            head_bytes = _HEAD_206 % (
                entry.prefix_206,
                date_header(),
                b"" if self.any_origin else cors,
                sp.start,
                sp.end,
                size,
                n,
            )
            pieces = [] if head else [(sp.start, n)]
            return Response(206, head_bytes, pieces, entry, 0 if head else n, rec.tier,
                            note=note)  # fmt: skip
        if status == 206:
            plan = multipart_plan(spans, size, content_type_for(rec.path), uuid.uuid4().hex)
            static = b"".join(
                line + b"\r\n"
                for line in entry.headers.split(b"\r\n")
                if line and not line.startswith(b"Content-Type:")
            )
            tail = b"Content-Type: %s\r\nContent-Length: %d\r\n\r\n" % (
                plan.content_type.encode(), plan.content_length,
            )  # fmt: skip
            parts = [STATUS_LINES[206], self.server_line, date_header(), static, cors, tail]
            pieces = []
            if not head:
                for p in plan.pieces:
                    pieces.append(p if isinstance(p, bytes) else (p.start, p.end - p.start + 1))
            return Response(206, b"".join(parts), pieces, entry,
                            0 if head else plan.content_length, rec.tier, note=note)  # fmt: skip
        if status == 304:
            keep = b"".join(
                line + b"\r\n"
                for line in entry.headers.split(b"\r\n")
                if line.startswith((b"ETag:", b"Last-Modified:", b"Cache-Control:"))
            )
            head_bytes = b"".join([STATUS_LINES[304], self.server_line, date_header(), keep,
                                   cors, b"\r\n"])  # fmt: skip
            return Response(304, head_bytes, [], None, 0, rec.tier, note=note)
        if status == 416:
            extra = (
                b"Content-Range: "
                + unsatisfied_range(size).encode()
                + b"\r\nAccept-Ranges: bytes\r\n"
            )
            return self.error(416, note, extra=extra + cors, head=head)
        return self.error(412, note, extra=cors, head=head)


def parse_peer(peername: Any) -> str:
    if isinstance(peername, tuple) and peername:
        host = str(peername[0])
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return host
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return host
    return "unix"
