"""The request fuzzer's grammar: pipelines of raw HTTP/1.1 requests and what each must get.

Theory of operation. A :class:`Script` is what one connection sends: a pipeline of 1-20
requests, the byte offsets where the sender splits it into separate ``send()`` calls,
and the source address. Each request is drawn from a grammar of the appliance's world
(methods, request-targets for stored, absent, unsigned, badly signed, traversing, long,
internal and non-origin-form paths, HTTP versions, Range and precondition fields drawn
by :class:`~tests.reliability.badinput_engine.FieldValues`, filler fields with odd
spacing, case and obs-text, duplicated field lines), and at most one *defect* is applied
to it from a catalog whose entries each carry their documented outcome (docs/serving.md
"Limits and their statuses" and the protocol's docstring): control bytes, bare CR or LF,
obs-fold, whitespace before the colon, bad field-name bytes, every Content-Length and
Transfer-Encoding shape, unsupported versions, invalid methods, oversized lines and
header sections, the HTTP/2 preface. So every structured request carries an
:class:`Expect`: the status (for a stored object, the decision of
:func:`oca.http.semantics.decide` on exactly the field values the server receives, and
the byte spans), the JSON error reason, and whether the server closes the connection
after it. Requests after a closing one are the "smuggled" tail: they must never be
answered.

A third of the scripts are then *mutated* as raw bytes (bit flips, inserted bytes and
dictionary tokens, deleted, duplicated and swapped runs, CRLF turned into LF,
truncation). Their expectations no longer hold, so only the generic promises are checked
(well-formed answers, documented statuses, correct object bytes, no sentinel, the
connection ends); mutated scripts never contain HEAD, so every answer's framing is known.

Everything is a pure function of ``(seed, index)``: a failure names both, and
:meth:`RequestGrammar.script` rebuilds the same bytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from urllib.parse import quote

from oca.http.semantics import Conditions, Decision, Representation, decide
from tests.reliability.badinput_engine import FieldValues
from tests.reliability.badinput_site import MAX_RANGES, BadInputSite, Obj

SUMMARY_PATH = "/oca/peer/summary"
MALFORMED = "malformed-request*"


@dataclass(frozen=True)
class Expect:
    """What one request must get back."""

    statuses: frozenset[int]
    errors: tuple[str, ...] = ()  # allowed JSON "error" values ("x*" = prefix); () = not checked
    closes: bool = False  # the server closes the connection after this answer
    obj: Obj | None = None  # the stored object answered (body bytes checked)
    decision: Decision | None = None  # the engine's decision, spans included
    keep_alive_header: bool = False  # an HTTP/1.0 keep-alive request: echoed in the answer


@dataclass(frozen=True)
class Case:
    data: bytes
    head: bool
    expect: Expect | None  # None: a truncated request, never answered
    label: str


@dataclass
class Script:
    ident: tuple[int, int]  # (seed, index)
    cases: list[Case]
    data: bytes
    cuts: tuple[int, ...] = ()
    raw: bool = False
    source: str = "127.0.0.1"

    @property
    def answered(self) -> int:
        """How many answers a structured script must get: up to the first closing one."""
        for i, c in enumerate(self.cases):
            if c.expect is None:
                return i
            if c.expect.closes:
                return i + 1
        return len(self.cases)


def _expect(status: int, *errors: str, closes: bool = False) -> Expect:
    return Expect(frozenset({status}), tuple(errors), closes)


@dataclass
class Draft:
    """A request being built: request line parts, raw field lines, body, line ending."""

    method: bytes
    target: bytes
    version: bytes = b"HTTP/1.1"
    lines: list[bytes] = field(default_factory=list)
    body: bytes = b""
    eol: bytes = b"\r\n"
    prefix: bytes = b""

    def encode(self) -> bytes:
        start = b" ".join((self.method, self.target, self.version))
        return self.prefix + self.eol.join([start, *self.lines]) + self.eol + self.eol + self.body


# Traversal targets, the status and reason they get, and whether the connection closes
# (llhttp itself refuses a few shapes as malformed; the target check refuses the rest and
# keeps the connection).
TRAVERSALS: list[tuple[bytes, int, str, bool]] = [
    (b"/titles/tos/../../../sentinel.txt", 400, "dot-segment", False),
    (b"/../sentinel.txt", 400, "dot-segment", False),
    (b"/titles/tos/%2e%2e/%2e%2e/%2e%2e/sentinel.txt", 400, "dot-segment", False),
    (b"/titles/tos/%2E%2E%2F%2E%2E%2Fsentinel.txt", 400, "encoded-slash", False),
    (b"/titles/tos/.%2e/.%2E/.%2e/sentinel.txt", 400, "dot-segment", False),
    (b"/titles/tos/%252e%252e/%252e%252e/sentinel.txt", 400, "double-encoded", False),
    (b"/titles/tos/%25252e%25252e/sentinel.txt", 400, "double-encoded", False),
    (b"/titles/tos/%c0%ae%c0%ae/%c0%ae%c0%ae/sentinel.txt", 400, "bad-utf8", False),
    (b"/titles/tos/%c0%ae%c0%ae%c0%af%c0%ae%c0%ae%c0%afsentinel.txt", 400, "bad-utf8", False),
    (b"/titles/tos/%e0%80%ae%e0%80%ae/sentinel.txt", 400, "bad-utf8", False),
    (b"/titles/tos/%c1%9c..%c1%9csentinel.txt", 400, "bad-utf8", False),
    (b"/titles/tos/..\\..\\..\\sentinel.txt", 400, "backslash", False),
    (b"/titles/tos/..%5c..%5c..%5csentinel.txt", 400, "backslash", False),
    (b"/titles/tos/..%5C..%5Csentinel.txt", 400, "backslash", False),
    (b"/titles/tos/%255c..%255csentinel.txt", 400, "double-encoded", False),
    (b"/titles/tos/v720/init.mp4%00../../sentinel.txt", 400, "control-char", False),
    (b"/titles/tos/%00/sentinel.txt", 400, "control-char", False),
    (b"//sentinel.txt", 400, "empty-segment", False),
    (b"/titles//tos/v720/init.mp4", 400, "empty-segment", False),
    (b"/./titles/tos/v720/init.mp4", 400, "dot-segment", False),
    (b"/titles/./tos/v720/init.mp4", 400, "dot-segment", False),
    (b"/titles/tos/v720/.", 400, "dot-segment", False),
    (b"/titles/tos/.%2e/%2e./sentinel.txt", 400, "dot-segment", False),
    (b"/titles/tos/..%2fsentinel.txt", 400, "encoded-slash", False),
    (b"/titles/tos/%2e%2e%5csentinel.txt", 400, "backslash", False),
    (b"/titles/tos/%u002e%u002e/sentinel.txt", 400, "bad-escape", False),
    (b"/titles/tos/%2/sentinel.txt", 400, "bad-escape", False),
    (b"http://localhost/../sentinel.txt", 400, "absolute-form", False),
    (b"http://localhost/titles/tos/v720/init.mp4", 400, "absolute-form", False),
    (b"file:///etc/passwd", 400, "absolute-form", False),
    (b"localhost:80", 400, MALFORMED, True),
    (b"../sentinel.txt", 400, MALFORMED, True),
    (b"sentinel.txt", 400, MALFORMED, True),
    (b"/" + b"../" * 40 + b"etc/passwd", 400, "dot-segment", False),
    (b"/" + b"%2e%2e/" * 20 + b"etc/passwd", 400, "dot-segment", False),
]

BAD_VERSIONS = (b"HTTP/1.2", b"HTTP/3.0", b"HTTP/1.10", b"http/1.1", b"HTTP/11", b"HTTP/1.1 ",
                b"HTTP/9.9", b"HTTP/", b"ICE/1.0")  # fmt: skip

# Paths of nothing stored (the stray file is on a disk, but not in the inventory).
ABSENT = ("/titles/tos/v720/seg-99999.m4s", "/titles/nope/x.m4s", "/x", "/titles/tos/stray.m4s",
          "/sentinel.txt", "/titles/tos/")  # fmt: skip

# (method, status, error, closes) of methods other than GET/HEAD/OPTIONS.
OTHER_METHODS: list[tuple[bytes, int, str, bool]] = [
    (b"POST", 405, "method-not-allowed", False),
    (b"PUT", 405, "method-not-allowed", False),
    (b"DELETE", 405, "method-not-allowed", False),
    (b"PATCH", 405, "method-not-allowed", False),
    (b"TRACE", 405, "method-not-allowed", False),
    (b"CONNECT", 405, "method-not-allowed", False),
    (b"PROPFIND", 501, "method-not-implemented", False),
    (b"MKCOL", 501, "method-not-implemented", False),
    (b"PURGE", 501, "method-not-implemented", False),
    (b"LINK", 501, "method-not-implemented", False),
    (b"SEARCH", 501, "method-not-implemented", False),
    (b"M-SEARCH", 501, "method-not-implemented", False),
    (b"QUERY", 501, "method-not-implemented", False),
    (b"FOO", 501, "method-not-implemented", True),
    (b"get", 501, "method-not-implemented", True),
    (b"GETX", 501, "method-not-implemented", True),
    (b"G3T", 501, "method-not-implemented", True),
    (b"\x01GET", 501, "method-not-implemented", True),
    (b"DESCRIBE", 400, MALFORMED, True),
]

_FILLER_NAMES = [b"User-Agent", b"Accept", b"Accept-Encoding", b"X-Fuzz", b"Origin", b"Referer",
                 b"Cookie", b"Via", b"X-Forwarded-For", b"Cache-Control", b"Pragma", b"DNT",
                 b"X-Requested-With", b"Accept-Language", b"If-Some-Thing", b"Range-X",
                 b"!#$%&'*+-.^_`|~", b"x"]  # fmt: skip
_BAD_NAME_BYTES = [b"(", b")", b"<", b">", b"@", b",", b";", b"\\", b'"', b"/", b"[", b"]",
                   b"?", b"=", b"{", b"}", b"\x80", b"\xff", b"\x00", b"\x7f", b"\x01"]  # fmt: skip
_CTL_BYTES = [bytes([c]) for c in (*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F)]
_VALUE_BYTES = bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100))
# Maps any byte onto a visible ASCII or obs-text byte: random field values in one call.
_TO_VALUE = bytes(_VALUE_BYTES[i % len(_VALUE_BYTES)] for i in range(256))


def _value_bytes(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n).translate(_TO_VALUE)


def _case_mix(name: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.6:
        return name
    return bytes(c ^ 0x20 if 0x41 <= (c & 0xDF) <= 0x5A and rng.random() < 0.5 else c
                 for c in name)  # fmt: skip


def _ows(rng: random.Random) -> tuple[bytes, bytes]:
    lead = rng.choice((b" ",) * 6 + (b"", b"  ", b"\t", b" \t"))
    trail = rng.choice((b"",) * 6 + (b" ", b"\t", b"  "))
    return lead, trail


class RequestGrammar:
    """Draws scripts against one :class:`BadInputSite`."""

    def __init__(self, site: BadInputSite) -> None:
        self.site = site
        # every stored object but the multi-MiB one (full GETs of it would dominate)
        self.objects = sorted(
            (o for o in site.objects.values() if o.size < 1 << 20), key=lambda o: o.path
        )
        tos = site.token("/titles/tos/")
        k2 = site.token("/titles/", kid="k2")
        self.good_tokens = [site.root_token, site.root_token, k2]
        self.title_token = tos  # covers /titles/tos/ only
        garbage = site.root_token.split(".")
        forged = ".".join([*garbage[:5], ("B" if garbage[5][0] == "A" else "A") + garbage[5][1:]])
        self.bad_tokens: list[tuple[str, str]] = [
            (forged, "token-bad-signature"),
            (site.token("/", secret=b"not-the-key"), "token-bad-signature"),
            (site.token("/", kid="k9", secret=b"k9-secret"), "token-unknown-key"),
            (site.token("/", ttl=-60), "token-expired"),
            (site.token("/", client="192.0.2.1"), "token-client-mismatch"),
            (site.root_token[:-1], "token-malformed"),
            (site.root_token + "A", "token-malformed"),
            ("v1.k1", "token-malformed"),
            ("garbage", "token-malformed"),
            (site.root_token.replace("v1.", "v2.", 1), "token-malformed"),
        ]

    # ------------------------------------------------------------------ scripts
    def script(self, seed: int, index: int) -> Script:
        rng = random.Random(f"wire/{seed}/{index}")
        raw = rng.random() < 0.3
        n = rng.choice((1, 1, 2, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20))
        cases: list[Case] = []
        tail = -1  # requests still to add after one that closes the connection
        while len(cases) < n and tail != 0:
            case = self.request(rng, allow_head=not raw)
            cases.append(case)
            if tail > 0:
                tail -= 1
            elif case.expect is not None and case.expect.closes:
                tail = rng.choice((0, 1, 1, 2))  # the smuggled tail: never answered
        if not raw and tail < 0 and rng.random() < 0.08:
            cases.append(self.truncated(rng))
        data = b"".join(c.data for c in cases)
        if raw:
            data = self.mutate(rng, data)
        cuts: tuple[int, ...] = ()
        if rng.random() < 0.3 and len(data) > 2:
            cuts = tuple(
                sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 4))))
            )
        return Script((seed, index), cases, data, cuts, raw)

    def truncated(self, rng: random.Random) -> Case:
        full = self._object_request(rng, allow_head=False)
        cut = rng.randint(1, len(full.data) - 2)
        return Case(full.data[:cut], False, None, "truncated " + full.label)

    def mutate(self, rng: random.Random, data: bytes) -> bytes:
        buf = bytearray(data)
        tokens = [b"\r\n", b"\n", b"\r", b" ", b"\t", b"\x00", b":", b"%", b"%2e", b"..", b"/",
                  b"\r\n\r\n", b"Transfer-Encoding: chunked\r\n", b"Content-Length: 5\r\n",
                  b"0\r\n\r\n", b"Upgrade: h2c\r\nConnection: upgrade\r\n", b"HTTP/1.0",
                  b"HTTP/2.0", b"Host: x\r\n", b"Range: bytes=0-1,", b"\xff", b"\x80",
                  b"Connection: close\r\n", b"Expect: 100-continue\r\n", b"GET / HTTP/1.1\r\n",
                  b"bytes=", b"-", b",", b"\\", b"%00", b"%c0%ae", b"9" * 30]  # fmt: skip
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(9)
            at = rng.randrange(len(buf) + 1)
            if op == 0 and buf:
                at = min(at, len(buf) - 1)
                buf[at] ^= 1 << rng.randrange(8)
            elif op == 1:
                buf[at:at] = bytes([rng.randrange(256)])
            elif op == 2:
                buf[at:at] = rng.choice(tokens)
            elif op == 3:
                del buf[at : at + rng.randint(1, 16)]
            elif op == 4:
                end = min(len(buf), at + rng.randint(1, 64))
                buf[end:end] = buf[at:end]
            elif op == 5 and len(buf) > 4:
                a, b = sorted(rng.sample(range(len(buf)), 2))
                buf[a:b] = buf[a:b][::-1] if rng.random() < 0.2 else buf[b : b + (b - a)] + buf[a:b]
            elif op == 6:
                crlf = bytes(buf).find(b"\r\n", at)
                if crlf >= 0:
                    del buf[crlf]
            elif op == 7:
                del buf[rng.randint(0, len(buf)) :]
            else:
                buf[at:at] = _value_bytes(rng, rng.randint(1, 8))
        out = bytes(buf)
        return out if b"HEAD" not in out else out.replace(b"HEAD", b"HEAX")

    # ------------------------------------------------------------------ requests
    def request(self, rng: random.Random, *, allow_head: bool) -> Case:
        roll = rng.random()
        if roll < 0.06:
            return self._other_method(rng)
        if roll < 0.09:
            return self._options(rng)
        if roll < 0.17:
            return self._with_defect(rng, allow_head)
        return self._get_like(rng, allow_head)

    def _finish(self, rng: random.Random, d: Draft, expect: Expect, label: str,
                *, host: bool = True) -> Case:  # fmt: skip
        """Add Host and fillers, a version and Connection choice; adjust closing."""
        if host:
            d.lines.insert(rng.randint(0, len(d.lines)), _case_mix(b"Host", rng) + b": oca.test")
        for _ in range(rng.choice((0, 0, 1, 1, 2, 4))):
            filler = self._filler(rng)
            if filler.startswith(b"Content-Length") and any(
                x.startswith(b"Content-Length") for x in d.lines
            ):
                continue  # one is harmless, two are a defect of their own
            d.lines.insert(rng.randint(0, len(d.lines)), filler)
        closes = expect.closes
        keep_alive_header = False
        roll = rng.random()
        if roll < 0.02:
            d.lines.append(b"Connection: close")
            closes = True
        elif roll < 0.04 and not expect.closes:
            d.version = b"HTTP/1.0"
            if rng.random() < 0.5:
                d.lines.append(b"Connection: keep-alive")
                keep_alive_header = True
            else:
                closes = True
        if rng.random() < 0.02:
            d.prefix = rng.choice((b"\r\n", b"\r\n\r\n", b"\n"))  # RFC 9112 §2.2
        exp = Expect(expect.statuses, expect.errors, closes, expect.obj, expect.decision,
                     keep_alive_header and not closes)  # fmt: skip
        return Case(d.encode(), d.method == b"HEAD", exp, label)

    def _filler(self, rng: random.Random) -> bytes:
        roll = rng.random()
        if roll < 0.05:
            return b"Content-Length: 0" if rng.random() < 0.5 else b"Content-Length: 000"
        if roll < 0.1:
            return (
                b"Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABk"
            )
        if roll < 0.13:
            return b"Expect: 100-continue"
        if roll < 0.16:
            return b"X-Oca-Since: x:" + str(rng.randrange(10**6)).encode()
        name = rng.choice(_FILLER_NAMES)
        if name == b"X-Fuzz":
            name += str(rng.randrange(100)).encode()
        value = _value_bytes(rng, rng.choice((0, 1, 5, 20, 100)))
        if len(value) > 2 and rng.random() < 0.3:
            value = value[:1] + b"\t" + value[1:]
        lead, trail = _ows(rng)
        return _case_mix(name, rng) + b":" + lead + value + trail

    def _target_of(self, rng: random.Random, path: str, token: str | None) -> bytes:
        target = quote(path) if token is None else f"/t/{token}{quote(path)}"
        roll = rng.random()
        if roll < 0.04:
            target += "?" + rng.choice(("x=1", "/../../sentinel.txt", "a=%zz&b=%00", "", "?"))
        elif roll < 0.06:
            target += "#" + rng.choice(("frag", "/../x", ""))
        elif roll < 0.08 and token is not None:
            # the token's dots and a path character percent-encoded: decoded once, same path
            target = target.replace(".", "%2E", 2).replace("titles", "%74itles", 1)
        return target.encode()

    def _other_method(self, rng: random.Random) -> Case:
        method, status, error, closes = rng.choice(OTHER_METHODS)
        target = self._target_of(rng, rng.choice(self.objects).path, rng.choice(self.good_tokens))
        if method == b"CONNECT":
            target = rng.choice((b"oca.test:443", target))
        d = Draft(method, target)
        return self._finish(rng, d, _expect(status, error, closes=closes), method.decode("latin-1"))

    def _options(self, rng: random.Random) -> Case:
        roll = rng.random()
        if roll < 0.2:
            d = Draft(b"OPTIONS", b"*")
        elif roll < 0.3:
            target, status, reason, closes = rng.choice(TRAVERSALS)
            d = Draft(b"OPTIONS", target)
            return self._finish(rng, d, _expect(status, reason, closes=closes), "OPTIONS traversal")
        else:
            d = Draft(b"OPTIONS", self._target_of(rng, rng.choice(self.objects).path, None))
        if rng.random() < 0.5:
            d.lines.append(b"Origin: https://player.example")
            d.lines.append(b"Access-Control-Request-Method: GET")
            if rng.random() < 0.5:
                value = _value_bytes(rng, rng.randint(0, 40))
                d.lines.append(b"Access-Control-Request-Headers: " + value)
        return self._finish(rng, d, _expect(204), "OPTIONS")

    def _get_like(self, rng: random.Random, allow_head: bool) -> Case:
        roll = rng.random()
        method = b"HEAD" if allow_head and rng.random() < 0.15 else b"GET"
        if roll < 0.6:
            return self._object_request(rng, allow_head=allow_head)
        if roll < 0.66:
            path = rng.choice(ABSENT)
            token = rng.choice(self.good_tokens) if path.startswith("/titles/") else None
            d = Draft(method, self._target_of(rng, path, token or self.good_tokens[0]))
            return self._finish(rng, d, _expect(404, "not-found"), "absent")
        if roll < 0.71:
            d = Draft(method, self._target_of(rng, rng.choice(self.objects).path, None))
            return self._finish(rng, d, _expect(403, "token-missing"), "unsigned")
        if roll < 0.79:
            token, reason = rng.choice(self.bad_tokens)
            if rng.random() < 0.3:
                token, reason = self.title_token, "token-path-not-covered"
                path = rng.choice(
                    ("/titles/sintel/v480/init.mp4", "/titles/tos2/v720/seg-00001.m4s")
                )
            else:
                path = rng.choice(self.objects).path
            d = Draft(method, self._target_of(rng, path, token))
            return self._finish(rng, d, _expect(403, reason), "bad token " + reason)
        if roll < 0.89:
            target, status, reason, closes = rng.choice(TRAVERSALS)
            if rng.random() < 0.5 and target.startswith(b"/"):
                target = f"/t/{rng.choice(self.good_tokens)}".encode() + target
            d = Draft(method, target)
            return self._finish(rng, d, _expect(status, reason, closes=closes), "traversal")
        if roll < 0.92:
            d = Draft(method, rng.choice((b"/healthz", b"/readyz", b"/healthz?x")))
            return self._finish(rng, d, _expect(200), "internal")
        if roll < 0.94:
            path = rng.choice(self.objects).path
            d = Draft(method, self._target_of(rng, path, rng.choice(self.good_tokens)))
            d.lines.append(b"X-Oca-Peer: " + rng.choice((b"id=x,exp=1,sig=00", b"", b"\xff")))
            return self._finish(rng, d, _expect(403, "peer-auth-no-key"), "peer header")
        if roll < 0.95:
            d = Draft(method, SUMMARY_PATH.encode())
            return self._finish(rng, d, _expect(403, "peer-auth-missing"), "peer summary")
        if roll < 0.96:
            d = Draft(method, b"*")
            return self._finish(rng, d, _expect(403, "token-missing"), "asterisk")
        if roll < 0.97:
            n = rng.randint(4097, 8000)
            d = Draft(method, b"/titles/" + b"a" * (n - 8))
            return self._finish(rng, d, _expect(414, "too-long"), "long target")
        if roll < 0.98:
            # a long query: the target is over 4096 bytes, the request line is not
            target = self._target_of(rng, rng.choice(self.objects).path, self.good_tokens[0])
            d = Draft(method, target + b"?q=" + b"x" * rng.randint(4096, 7000))
            return self._finish(rng, d, _expect(414, "too-long"), "long query")
        return self._object_request(rng, allow_head=allow_head)

    def _object_request(self, rng: random.Random, *, allow_head: bool) -> Case:
        obj = rng.choice(self.objects)
        method = "HEAD" if allow_head and rng.random() < 0.15 else "GET"
        token = rng.choice(self.good_tokens)
        if obj.path.startswith("/titles/tos/") and rng.random() < 0.2:
            token = self.title_token
        d = Draft(method.encode(), self._target_of(rng, obj.path, token))
        rep = Representation(obj.size, obj.etag, obj.last_modified)
        values = FieldValues(rng, rep, wire=True)
        seen: dict[str, str] = {}
        draws = [
            ("Range", 0.55, lambda: values.range_value()[0]),
            ("If-Range", 0.1, values.if_range),
            ("If-Match", 0.07, values.etag_list),
            ("If-None-Match", 0.08, values.etag_list),
            ("If-Modified-Since", 0.07, values.date),
            ("If-Unmodified-Since", 0.06, values.date),
        ]
        for name, p, draw in draws:
            if rng.random() >= p:
                continue
            for _ in range(2 if rng.random() < 0.04 else 1):  # a repeated field line
                value = draw()
                lead, trail = _ows(rng)
                d.lines.append(_case_mix(name.encode(), rng) + b":" + lead
                               + value.encode("latin-1") + trail)  # fmt: skip
                # What the server hands the engine: llhttp drops leading whitespace; the
                # protocol joins repeated lines with ", " (RFC 9110 §5.3).
                got = (value + trail.decode()).lstrip(" \t")
                seen[name] = seen[name] + ", " + got if name in seen else got
        cond = Conditions(
            method=method,
            range=seen.get("Range"),
            if_range=seen.get("If-Range"),
            if_match=seen.get("If-Match"),
            if_none_match=seen.get("If-None-Match"),
            if_modified_since=seen.get("If-Modified-Since"),
            if_unmodified_since=seen.get("If-Unmodified-Since"),
        )
        decision = decide(rep, cond, MAX_RANGES)
        errors: tuple[str, ...] = ()
        if decision.status >= 400:
            errors = (decision.reason,)
        expect = Expect(frozenset({decision.status}), errors, False, obj, decision)
        return self._finish(rng, d, expect, f"{method} {obj.path} {decision.reason}")

    # ------------------------------------------------------------------ defects
    def _with_defect(self, rng: random.Random, allow_head: bool) -> Case:
        obj = rng.choice(self.objects)
        method = b"HEAD" if allow_head and rng.random() < 0.2 else b"GET"
        d = Draft(method, self._target_of(rng, obj.path, self.good_tokens[0]))
        d.lines.append(b"Host: oca.test")
        kind = rng.randrange(24)
        ctl = rng.choice(_CTL_BYTES)
        if kind == 0:
            d.lines.remove(b"Host: oca.test")
            return self._closing(d, 400, "missing-host", "no Host")
        if kind == 1:
            d.lines.append(rng.choice((b"Host: other.test", b"host: oca.test", b"HOST:")))
            return self._closing(d, 400, "duplicate-host", "two Host")
        if kind == 2:
            d.lines.append(b"X-Ctl: a" + ctl + b"b")
            return self._closing(d, 400, MALFORMED, f"control byte {ctl!r} in a value")
        if kind == 3:
            d.lines.append(b"X-Cr: a\rb" if rng.random() < 0.5 else b"X-Lf: a\nb")
            return self._closing(d, 400, MALFORMED, "bare CR or LF in a value")
        if kind == 4:
            d.lines.insert(1, b"X-Folded: a")
            d.lines.insert(2, rng.choice((b" continued", b"\tcontinued", b"  chunked")))
            return self._closing(d, 400, MALFORMED, "obs-fold")
        if kind == 5:
            d.lines.append(rng.choice((b"X-Space : v", b"Range\t: bytes=0-1", b"Host : x")))
            return self._closing(d, 400, MALFORMED, "whitespace before the colon")
        if kind == 6:
            bad = rng.choice(_BAD_NAME_BYTES)
            d.lines.append(b"X" + bad + b"Y: v")
            return self._closing(d, 400, MALFORMED, f"field name with {bad!r}")
        if kind == 7:
            d.lines.append(b": empty-name")
            return self._closing(d, 400, MALFORMED, "empty field name")
        if kind == 8:
            d.eol = b"\n"
            return self._closing(d, 400, MALFORMED, "LF line endings")
        if kind == 9:
            pair = [b"Content-Length: 6", b"Transfer-Encoding: chunked"]
            if rng.random() < 0.5:
                pair.reverse()
            d.lines += pair
            d.body = b"0\r\n\r\nG"
            return self._closing(d, 400, (MALFORMED, "conflicting-framing"), "CL with TE")
        if kind == 10:
            a = rng.choice((b"0", b"5"))
            b = a if rng.random() < 0.5 else b"7"
            d.lines += [b"Content-Length: " + a, b"Content-Length: " + b]
            d.body = b"hello"
            errs = (MALFORMED, "conflicting-content-length")
            return self._closing(d, 400, errs, "two Content-Length")
        if kind == 11:
            n = rng.choice((1, 5, 100))
            d.lines.append(b"Content-Length: " + str(n).encode())
            d.body = b"x" * n
            return self._closing(d, 413, "request-body-too-large", "a body")
        if kind == 12:
            bad = rng.choice((b"-1", b"+5", b"0x5", b"5 5", b"1,1", b"", b"abc", b"5.0", b"\xff"))
            d.lines.append(b"Content-Length: " + bad)
            return self._closing(d, 400, MALFORMED, f"Content-Length {bad!r}")
        if kind == 13:
            d.lines.append(b"Content-Length: " + b"9" * rng.randint(20, 60))
            return self._closing(d, 400, MALFORMED, "Content-Length overflow")
        if kind == 14:
            te = rng.choice((b"chunked", b" chunked", b"chunked ", b"CHUNKED", b"\tchunked",
                             b"identity, chunked", b"gzip, chunked", b"gzip,chunked"))  # fmt: skip
            d.lines.append(b"Transfer-Encoding:" + te)
            d.body = b"5\r\nhello\r\n0\r\n\r\n"
            return self._closing(d, 413, "request-body-too-large", f"TE {te!r}")
        if kind == 15:
            te = rng.choice((b"identity", b"gzip", b"chunked, identity", b"xchunked", b"chunked;x",
                             b"chunked,chunked", b"", b"chunked\x0b"))  # fmt: skip
            if te == b"chunked,chunked" and rng.random() < 0.5:
                d.lines.append(b"Transfer-Encoding: chunked")
                te = b"chunked"
            d.lines.append(b"Transfer-Encoding: " + te)
            d.body = b"0\r\n\r\n"
            return self._closing(d, 400, (MALFORMED, "bad-transfer-encoding"), f"TE {te!r}")
        if kind == 16:
            d.version = rng.choice((b"HTTP/2.0", b"HTTP/0.9"))
            return self._closing(d, 505, "http-version-not-supported", "version")
        if kind == 17:
            d.version = rng.choice(BAD_VERSIONS)
            return self._closing(d, 400, MALFORMED, f"version {d.version!r}")
        if kind == 18:
            n = rng.randint(8193, 20000)
            d.target = b"/titles/" + b"b" * (n - 8)
            return self._closing(d, 414, "uri-too-long", "request line over the limit")
        if kind == 19:
            bad = rng.choice((b"\x7f", b"\x80", b"\x00", b"\xff", b"\x1b", b" x"))
            d.target = d.target[:5] + bad + d.target[5:]
            return self._closing(d, 400, MALFORMED, f"target with {bad!r}")
        if kind == 20:
            if rng.random() < 0.5:
                d.lines.append(b"X-Big: " + b"v" * rng.randint(16385, 30000))
            else:
                d.lines += [b"X-Many-%05d: vvvvvvvvvvvvvvvvvvvvvvvv" % i for i in range(1000)]
            return self._closing(d, 431, "header-fields-too-large", "header section too large")
        if kind == 21:
            d = Draft(b"PRI", b"*", b"HTTP/2.0", [], b"SM\r\n\r\n")
            return self._closing(d, 400, MALFORMED, "HTTP/2 preface")
        if kind == 22:
            # A "smuggled" request hidden in a body the server refuses to read.
            hidden = (
                b"GET /t/"
                + self.good_tokens[0].encode()
                + b"/titles/tos/SMUGGLED HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            if rng.random() < 0.5:
                d.lines.append(b"Content-Length: " + str(len(hidden)).encode())
                d.body = hidden
                return self._closing(d, 413, "request-body-too-large", "CL body holding a request")
            d.lines.append(b"Transfer-Encoding: chunked")
            d.body = b"%x\r\n" % len(hidden) + hidden + b"\r\n0\r\n\r\n"
            return self._closing(d, 413, "request-body-too-large", "chunk holding a request")
        # not a defect: obs-text in a field value is allowed (RFC 9110 §5.5)
        d.lines.append(b"X-Obs-Text: \x80\xff caf\xe9")
        expect = Expect(frozenset({200}), (), False, obj, None)
        return Case(d.encode(), method == b"HEAD", expect, "obs-text")

    def _closing(self, d: Draft, status: int, errors: str | tuple[str, ...], label: str) -> Case:
        errs = (errors,) if isinstance(errors, str) else errors
        return Case(d.encode(), d.method == b"HEAD", _expect(status, *errs, closes=True), label)
