"""Bad input: every hostile request gets its documented status and leaves no trace.

One real appliance (``oca serve``, two workers, SSD and HDD tiers, two signing keys,
sentinel files planted where a traversal would land: see badinput_site.py) takes, in
order:

- a fuzzer of the range/precondition engine, in process (badinput_engine.py): drawn
  and mutated Range, If-Range, If-Match, If-None-Match, If-Modified-Since and
  If-Unmodified-Since values against drawn representations, every decision checked
  against what :mod:`oca.http.semantics` promises;
- a fuzzer of the request parser and the whole request path over real TCP
  (badinput_requests.py, badinput_runner.py): pipelines of grammar-drawn requests with
  their expected status, reason, spans and closing behaviour, a third of them mutated
  as raw bytes, split into several segments, on several connections at once; every
  answer must be well-formed HTTP/1.1 with a documented status (badinput_http.py), and
  every connection must end after the client half-closes;
- signed-URL attacks: forged, edited, wrong-key, expired and replayed after expiry,
  cross-title, cross-client (from 127.0.0.2), truncated and garbled tokens: 403 with
  the documented reason;
- path traversal in every encoding, bare and behind valid tokens: 400 with the target
  check's reason (or 404/200 where the name is harmless), never a sentinel's bytes;
- request smuggling shapes (CL.TE, TE.CL, duplicate Content-Length, Transfer-Encoding
  obfuscations, obs-fold, whitespace before the colon, bare CR/LF), each followed by a
  pipelined request that must never be answered, sent whole and split;
- oversized everything: request line, target, query, token, one header, header count,
  header section, Range parts and numbers, body, pipelined bursts.

The last test then checks that no worker restarted (same PIDs, no restart in the
log), that the appliance still serves a known object byte-exactly, and, with the
appliance stopped, that the store is exactly as before (``oca store ls --json`` and a
sha256 of every file under the appliance's root; only access statistics, logs and the
runtime directory may differ) and that no smuggled request reached the access log.

The default run draws 30,000 engine inputs and about 4,000 requests over the wire;
``pytest -m slow tests/reliability/test_bad_input.py`` runs the soak variant: one
million engine inputs and at least one million requests over the wire. Seeds are fixed
(``OCA_FUZZ_SEED`` overrides them); a failure names the seed and the input's index,
which rebuild that exact input (``engine_input(seed, i)``,
``RequestGrammar(site).script(seed, i)``).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson
import pytest

from oca.auth.tokens import TokenVerifier
from oca.errors import TokenError
from tests.appliance import Appliance, wait_until
from tests.reliability.badinput_engine import fuzz_engine
from tests.reliability.badinput_http import Answer, read_answers
from tests.reliability.badinput_requests import MALFORMED, TRAVERSALS, RequestGrammar
from tests.reliability.badinput_runner import WireStats, exchange, run_scripts
from tests.reliability.badinput_site import (
    BIG,
    BadInputSite,
    finish_bad_input_site,
    start_bad_input_site,
)

SEED = int(os.environ.get("OCA_FUZZ_SEED", "20240611"))
A = "/titles/tos/v720/init.mp4"
B = "/titles/sintel/v480/init.mp4"
TOS2 = "/titles/tos2/v720/seg-00001.m4s"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BadInputSite]:
    s = start_bad_input_site(tmp_path_factory.mktemp("badinput"))
    try:
        yield s
    finally:
        s.app.stop()


def req(target: str | bytes, *fields: str, method: str = "GET", close: bool = False) -> bytes:
    t = target.encode("latin-1") if isinstance(target, str) else target
    lines = [method.encode() + b" " + t + b" HTTP/1.1", b"Host: oca.test"]
    lines += [f.encode("latin-1") for f in fields]
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def one(site: BadInputSite, target: str | bytes, *fields: str, method: str = "GET",
        source: str = "127.0.0.1") -> Answer:  # fmt: skip
    answers, raw = exchange(
        site.address,
        req(target, *fields, method=method, close=True),
        site.by_etag,
        heads={0} if method == "HEAD" else (),
        source=source,
    )
    assert len(answers) == 1, raw[:600]
    return answers[0]


def assert_answer(ans: Answer, status: int, error: str | None, what: str) -> None:
    assert ans.status == status, f"{what}: {ans}"
    if error is not None and not ans.head:
        got = ans.error or ""
        assert got.startswith(error[:-1]) if error.endswith("*") else got == error, (what, got)


# --------------------------------------------------------------------------- fuzzing


def test_engine_fuzz_keeps_every_promise() -> None:
    stats = fuzz_engine(SEED, 30_000)
    print(f"engine fuzz seed={SEED}: {stats}")
    assert stats.inputs == 30_000
    assert set(stats.statuses) == {200, 206, 304, 412, 416}
    assert stats.statuses[206] > 1000 and stats.with_meaning > 5000, stats
    assert stats.longest_field > 100_000  # long values were drawn (and decided linearly)


def run_wire_fuzz(site: BadInputSite, seed: int, scripts: int, concurrency: int = 8) -> WireStats:
    grammar = RequestGrammar(site)
    stats = run_scripts(
        site.address,
        (grammar.script(seed, i) for i in range(scripts)),
        site.by_etag,
        concurrency=concurrency,
        timeout=60,
    )
    print(f"wire fuzz seed={seed}: {stats.summary()}")
    return stats


def test_wire_fuzz_every_answer_is_well_formed_and_documented(site: BadInputSite) -> None:
    stats = run_wire_fuzz(site, SEED, 900)
    assert stats.scripts == 900 and stats.requests > 3000, stats.summary()
    assert stats.mutated_requests > 600 and stats.unanswered_tail > 50, stats.summary()
    # the grammar reached every documented outcome, errors included
    for status in (200, 204, 206, 304, 400, 403, 404, 405, 412, 413, 414, 416, 501):
        assert stats.statuses[status] > 0, (status, stats.summary())
    assert stats.body_bytes_verified > 1_000_000, stats.summary()
    assert site.known_is_served()


# --------------------------------------------------------------------------- tokens


def _field_swapped(token: str, index: int, value: str) -> str:
    fields = token.split(".")
    fields[index] = value
    return ".".join(fields)


def token_cases(site: BadInputSite) -> list[tuple[str, str, int, str | None]]:
    """(what, target, status, error) for attacks from 127.0.0.1."""
    tos = site.token("/titles/tos/")
    sig = tos.split(".")[5]
    flipped = ("B" if sig[0] == "A" else "A") + sig[1:]
    with_client = site.token("/titles/tos/", client="127.0.0.1")
    return [
        ("a valid title token", site.signed(A, tos), 200, None),
        (
            "one signature character changed",
            site.signed(A, _field_swapped(tos, 5, flipped)),
            403,
            "token-bad-signature",
        ),
        (
            "an all-zero signature",
            site.signed(A, _field_swapped(tos, 5, "A" * 43)),
            403,
            "token-bad-signature",
        ),
        (
            "signed with a secret the appliance does not hold",
            site.signed(A, site.token("/titles/tos/", secret=b"guessed")),
            403,
            "token-bad-signature",
        ),
        (
            "k2's signature under the name k1",
            site.signed(A, site.token("/titles/tos/", kid="k1", secret=site.keys["k2"])),
            403,
            "token-bad-signature",
        ),
        (
            "k1's signature renamed k2",
            site.signed(A, _field_swapped(tos, 1, "k2")),
            403,
            "token-bad-signature",
        ),
        (
            "an unknown key id",
            site.signed(A, site.token("/titles/tos/", kid="k9", secret=b"s")),
            403,
            "token-unknown-key",
        ),
        (
            "the expiry pushed a day later",
            site.signed(A, _field_swapped(tos, 2, str(int(tos.split(".")[2]) + 86400))),
            403,
            "token-bad-signature",
        ),
        (
            "the prefix widened to /",
            site.signed(A, _field_swapped(tos, 3, "Lw")),
            403,
            "token-bad-signature",
        ),
        (
            "the client restriction removed",
            site.signed(A, _field_swapped(with_client, 4, "~")),
            403,
            "token-bad-signature",
        ),
        (
            "expired an hour ago",
            site.signed(A, site.token("/titles/tos/", ttl=-3600)),
            403,
            "token-expired",
        ),
        (
            "expired at the epoch",
            site.signed(A, site.token("/titles/tos/", expires=0)),
            403,
            "token-expired",
        ),
        ("cross-title: a tos token on sintel", site.signed(B, tos), 403, "token-path-not-covered"),
        (
            "cross-title: prefix /titles/tos on /titles/tos2",
            site.signed(TOS2, site.token("/titles/tos")),
            403,
            "token-path-not-covered",
        ),
        ("the same prefix on its own title", site.signed(A, site.token("/titles/tos")), 200, None),
        (
            "a one-object token on its neighbour",
            site.signed("/titles/tos/v720/seg-00001.m4s", site.token(A)),
            403,
            "token-path-not-covered",
        ),
        (
            "cross-title by dot segments",
            f"/t/{tos}/titles/tos/../sintel/v480/init.mp4",
            400,
            "dot-segment",
        ),
        (
            "cross-title by encoded dots",
            f"/t/{tos}/titles/tos/%2e%2e/sintel/v480/init.mp4",
            400,
            "dot-segment",
        ),
        (
            "cross-title by an encoded slash",
            f"/t/{tos}/titles/tos/..%2fsintel/v480/init.mp4",
            400,
            "encoded-slash",
        ),
        (
            "cross-client: bound to 192.0.2.7",
            site.signed(A, site.token("/", client="192.0.2.7")),
            403,
            "token-client-mismatch",
        ),
        (
            "cross-client: bound to ::1",
            site.signed(A, site.token("/", client="::1")),
            403,
            "token-client-mismatch",
        ),
        ("no token at all", A, 403, "token-missing"),
        ("a token with no object path after it", f"/t/{tos}", 403, "token-missing"),
        ("an empty token segment", f"/t/{A}", 400, "empty-segment"),
        ("a path segment taken for a token", f"/t{A}", 403, "token-malformed"),
        ("a token in the query string", f"{A}?token={tos}", 403, "token-missing"),
        ("a token of 3,000 characters", f"/t/{'v1.' + 'A' * 2997}{A}", 403, "token-malformed"),
        ("a token of 5,000 characters", f"/t/{'A' * 5000}{A}", 414, "too-long"),
        (
            "the token percent-encoded (decoded once: the same token)",
            site.signed(A, tos).replace(".", "%2E").replace("%2Emp4", ".mp4"),
            200,
            None,
        ),
    ]


def test_token_attacks_get_the_documented_403(site: BadInputSite) -> None:
    cases = token_cases(site)
    data = b"".join(req(target) for _, target, _, _ in cases)
    answers, raw = exchange(site.address, data, site.by_etag)
    assert len(answers) == len(cases), raw[-500:]
    for (what, _, status, error), ans in zip(cases, answers, strict=True):
        assert_answer(ans, status, error, what)
        if status == 200:
            assert ans.body == site.objects[A].data


def test_truncated_and_garbled_tokens_are_403_never_200(site: BadInputSite) -> None:
    tos = site.token("/titles/tos/")
    verifier = TokenVerifier(site.keys)
    now = time.time()
    cases: list[tuple[str, str]] = []
    for cut in range(1, len(tos)):
        cases.append((f"/t/{tos[:cut]}{A}", "token-malformed"))
    alphabet = "AZaz09-_.~"
    for i, ch in enumerate(tos):
        bad = next(c for c in alphabet[i % len(alphabet) :] + alphabet if c != ch)
        garbled = tos[:i] + bad + tos[i + 1 :]
        with pytest.raises(TokenError) as refused:
            verifier.verify(garbled, A, now, "127.0.0.1")
        cases.append((f"/t/{garbled}{A}", f"token-{refused.value.reason}"))
    data = b"".join(req(target) for target, _ in cases)
    answers, raw = exchange(site.address, data, site.by_etag)
    assert len(answers) == len(cases), raw[-500:]
    reasons = set()
    for (target, error), ans in zip(cases, answers, strict=True):
        assert_answer(ans, 403, error, target)
        reasons.add(error)
    assert {"token-malformed", "token-bad-signature", "token-unknown-key"} <= reasons


@pytest.mark.parametrize(
    ("bound", "source", "status"),
    [
        ("127.0.0.1", "127.0.0.2", 403),
        ("127.0.0.2", "127.0.0.1", 403),
        ("127.0.0.2", "127.0.0.2", 200),
        ("127.0.0.0/31", "127.0.0.1", 200),
        ("127.0.0.0/31", "127.0.0.2", 403),
        ("::ffff:127.0.0.2", "127.0.0.2", 200),
        ("::ffff:127.0.0.2", "127.0.0.1", 403),
    ],
)
def test_token_bound_to_one_client_is_refused_from_another(
    site: BadInputSite, bound: str, source: str, status: int
) -> None:
    target = site.signed(A, site.token("/titles/tos/", client=bound))
    ans = one(site, target, source=source)
    assert_answer(ans, status, "token-client-mismatch" if status == 403 else None, bound)
    if status == 200:
        assert ans.body == site.objects[A].data


def test_token_replayed_after_expiry_is_refused(site: BadInputSite) -> None:
    expires = int(time.time()) + 2
    target = site.signed(A, site.token("/titles/tos/", expires=expires))
    first = one(site, target)
    assert (first.status, first.body) == (200, site.objects[A].data)
    assert one(site, target, method="HEAD").status == 200
    wait_until(lambda: time.time() > expires + 0.2, 10, "the token's expiry")
    for method in ("GET", "HEAD"):
        assert_answer(one(site, target, method=method), 403, "token-expired", method)
    # the verifier's cache of checked tokens must not outlive the expiry either
    answers, _ = exchange(site.address, req(target) * 3, site.by_etag)
    assert [a.status for a in answers] == [403, 403, 403]


# --------------------------------------------------------------------------- traversal

# Targets that are harmless names once decoded (404), or that carry a traversal only in
# the query or fragment, which are not part of the object's name (200, the right bytes).
HARMLESS: list[tuple[bytes, int, str | None]] = [
    (b"/titles/tos/v720/init.mp4?/../../../sentinel.txt", 200, None),
    (b"/titles/tos/v720/init.mp4?x=%00&y=%2e%2e%2f", 200, None),
    (b"/titles/tos/v720/init.mp4#/../../sentinel.txt", 200, None),
    (b"/titles/tos/%ef%bc%8e%ef%bc%8e/sentinel.txt", 404, "not-found"),  # fullwidth dots
    (b"/titles/..;/sentinel.txt", 404, "not-found"),
    (b"/titles/tos/...", 404, "not-found"),
    (b"/titles/tos/stray.m4s", 404, "not-found"),  # on a disk, but not in the index
    (b"/sentinel.txt", 404, "not-found"),
    (b"/.oca/inventory.json", 404, "not-found"),
    (b"/objects/titles/tos/v720/init.mp4", 404, "not-found"),
    (b"/titles/tos/v720/init.mp4%20", 404, "not-found"),
    (b"/titles/tos/v720/init.mp4.", 404, "not-found"),
    (b"/titles/tos/v720/INIT.MP4", 404, "not-found"),
    (b"/titles/tos/v720/init.mp4/", 404, "not-found"),
]


def test_path_traversal_in_every_encoding_never_reaches_a_file(site: BadInputSite) -> None:
    tos = site.token("/titles/tos/").encode()
    prefixes = [b"", b"/t/" + site.root_token.encode(), b"/t/" + tos]
    keep: list[tuple[bytes, str, int, str | None]] = []  # answered on one connection
    closing: list[tuple[bytes, str, int, str]] = []
    for target, status, reason, closes in TRAVERSALS:
        for prefix in prefixes if target.startswith(b"/") else [b""]:
            for method in ("GET", "HEAD"):
                if closes:
                    closing.append((prefix + target, method, status, reason))
                else:
                    keep.append((prefix + target, method, status, reason))
    for target, status, error in HARMLESS:
        for prefix in prefixes:
            for method in ("GET", "HEAD"):
                if not prefix:
                    keep.append((target, method, 403, "token-missing"))
                elif prefix.endswith(tos) and not target.startswith(b"/titles/tos/"):
                    keep.append((prefix + target, method, 403, "token-path-not-covered"))
                else:
                    keep.append((prefix + target, method, status, error))
    data = b"".join(req(t, method=m) for t, m, _, _ in keep)
    heads = {i for i, (_, m, _, _) in enumerate(keep) if m == "HEAD"}
    answers, raw = exchange(site.address, data, site.by_etag, heads=heads)
    assert len(answers) == len(keep), raw[-500:]
    for (target, method, status, error), ans in zip(keep, answers, strict=True):
        assert_answer(ans, status, error, f"{method} {target!r}")
        if status == 200 and method == "GET":
            assert ans.body == site.objects[A].data, target
    for target, method, status, error in closing:
        assert_answer(one(site, target, method=method), status, error, f"{method} {target!r}")
    assert len(keep) + len(closing) > 250
    for p in site.sentinels:
        assert p.read_bytes().startswith(b"OCA-SENTINEL-"), p  # still there, untouched


# --------------------------------------------------------------------------- smuggling

# (what, the request's own fields, its body, answers before the smuggled request (None
# for the method's normal answer), the error of the last one)
SHAPES: list[tuple[str, list[str], bytes, list[int | None], str | None]] = [
    ("CL.TE", ["Content-Length: 6", "Transfer-Encoding: chunked"], b"0\r\n\r\nG", [400], MALFORMED),
    (
        "TE.CL",
        ["Transfer-Encoding: chunked", "Content-Length: 4"],
        b"5c\r\nGPOST / HTTP/1.1\r\n0\r\n\r\n",
        [400],
        MALFORMED,
    ),
    (
        "CL: 0 with TE",
        ["Content-Length: 0", "Transfer-Encoding: chunked"],
        b"0\r\n\r\n",
        [400],
        MALFORMED,
    ),
    (
        "duplicate Content-Length, same value",
        ["Content-Length: 5", "Content-Length: 5"],
        b"hello",
        [400],
        MALFORMED,
    ),
    (
        "duplicate Content-Length, different values",
        ["Content-Length: 5", "Content-Length: 40"],
        b"hello",
        [400],
        MALFORMED,
    ),
    ("Content-Length list", ["Content-Length: 5, 5"], b"hello", [400], MALFORMED),
    ("Content-Length with a sign", ["Content-Length: +5"], b"hello", [400], MALFORMED),
    ("Content-Length with a NUL", ["Content-Length: 5\x00"], b"hello", [400], MALFORMED),
    (
        "Content-Length with leading zeros",
        ["Content-Length: " + "0" * 40 + "5"],
        b"hello",
        [413],
        "request-body-too-large",
    ),
    ("space before the colon", ["Content-Length : 5"], b"hello", [400], MALFORMED),
    ("tab before the colon", ["Transfer-Encoding\t: chunked"], b"0\r\n\r\n", [400], MALFORMED),
    (
        "obs-fold hiding a Transfer-Encoding",
        ["X-A: b", " Transfer-Encoding: chunked"],
        b"0\r\n\r\n",
        [400],
        MALFORMED,
    ),
    (
        "obs-fold continuing Transfer-Encoding",
        ["Transfer-Encoding:", " chunked"],
        b"0\r\n\r\n",
        [400],
        MALFORMED,
    ),
    (
        "obs-fold continuing Content-Length",
        ["Content-Length: 0", "\t5"],
        b"hello",
        [400],
        MALFORMED,
    ),
    (
        "Transfer-Encoding: chunked, identity",
        ["Transfer-Encoding: chunked, identity"],
        b"0\r\n\r\n",
        [400],
        MALFORMED,
    ),
    (
        "Transfer-Encoding twice",
        ["Transfer-Encoding: chunked", "Transfer-Encoding: identity"],
        b"0\r\n\r\n",
        [400],
        MALFORMED,
    ),
    (
        "Transfer-Encoding: xchunked",
        ["Transfer-Encoding: xchunked"],
        b"0\r\n\r\n",
        [400],
        "bad-transfer-encoding",
    ),
    (
        "Transfer-Encoding: identity",
        ["Transfer-Encoding: identity"],
        b"hello",
        [400],
        "bad-transfer-encoding",
    ),
    (
        "Transfer-Encoding: gzip",
        ["Transfer-Encoding: gzip"],
        b"hello",
        [400],
        "bad-transfer-encoding",
    ),
    (
        "Transfer-Encoding: chunked;ext",
        ["Transfer-Encoding: chunked;x=1"],
        b"0\r\n\r\n",
        [400],
        "bad-transfer-encoding",
    ),
    (
        "Transfer-Encoding with a vertical tab",
        ["Transfer-Encoding:\x0bchunked"],
        b"0\r\n\r\n",
        [400],
        MALFORMED,
    ),
    (
        "Transfer-Encoding: CHUNKED",
        ["Transfer-Encoding: CHUNKED"],
        b"0\r\n\r\n",
        [413],
        "request-body-too-large",
    ),
    (
        "Transfer-Encoding after a tab",
        ["Transfer-Encoding:\tchunked"],
        b"0\r\n\r\n",
        [413],
        "request-body-too-large",
    ),
    (
        "Transfer-Encoding: gzip, chunked",
        ["Transfer-Encoding: gzip, chunked"],
        b"0\r\n\r\n",
        [413],
        "request-body-too-large",
    ),
    (
        "a chunk holding a request",
        ["Transfer-Encoding: chunked"],
        b"3c\r\nGET /x HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 29 + b"\r\n\r\n\r\n0\r\n\r\n",
        [413],
        "request-body-too-large",
    ),
    (
        "Expect: 100-continue with a body",
        ["Expect: 100-continue", "Content-Length: 40"],
        b"",
        [413],
        "request-body-too-large",
    ),
    (
        "bare LF inside a value",
        ["X-A: b\nTransfer-Encoding: chunked"],
        b"0\r\n\r\n",
        [400],
        MALFORMED,
    ),
    ("bare CR inside a value", ["X-A: b\rContent-Length: 5"], b"hello", [400], MALFORMED),
    (
        "Transfer_Encoding (not the field): no body, the rest is garbage",
        ["Transfer_Encoding: chunked"],
        b"0\r\n\r\n",
        [None, 501],
        "method-not-implemented",
    ),
    ("Content-Length: 0: plain pipelining", ["Content-Length: 0"], b"", [None, 404], None),
    (
        "Upgrade: h2c is ignored, the next request is HTTP/1.1",
        [
            "Upgrade: h2c",
            "Connection: Upgrade, HTTP2-Settings",
            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        ],
        b"",
        [None, 404],
        None,
    ),
    (
        "Upgrade: websocket is ignored",
        ["Upgrade: websocket", "Connection: keep-alive, Upgrade"],
        b"",
        [None, 404],
        None,
    ),
]


def _normal(method: str) -> int:
    return 405 if method == "POST" else 200


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_smuggling_shapes_get_their_status_and_the_smuggled_request_is_never_answered(
    site: BadInputSite, shape: tuple[str, list[str], bytes, list[int | None], str | None]
) -> None:
    what, fields, body, statuses, error = shape
    pipelined = statuses[-1] == 404  # a legitimate pipeline: the second request is answered
    for n, (method, split) in enumerate(
        [(m, s) for m in ("GET", "POST", "HEAD") for s in (False, True)]
    ):
        marker = "PIPELINED" if pipelined else "SMUGGLED"
        follower = req(site.signed(f"/titles/tos/{marker}-{n}.m4s"))
        first = req(site.signed(A), *fields, method=method) + body
        data: bytes | list[bytes] = first + follower
        if split:  # the same bytes in four segments, 20 ms apart
            cut = [len(first) // 3, 2 * len(first) // 3, len(first)]
            data = [first[: cut[0]], first[cut[0] : cut[1]], first[cut[1] :], follower]
        heads = {0} if method == "HEAD" else set()
        answers, raw = exchange(site.address, data, site.by_etag, heads=heads, pause=0.02)
        expected = [_normal(method) if s is None else s for s in statuses]
        got = [a.status for a in answers]
        where = f"{what} ({method}, split={split})"
        assert got == expected, f"{where}: {got} != {expected}: {raw[:800]!r}"
        if not pipelined:
            assert answers[-1].closes, f"{where}: the connection must close after {got[-1]}"
            if error is not None:
                assert_answer(answers[-1], expected[-1], error, where)
            if expected[-1] >= 400:
                assert b"HTTP/1.1 100" not in raw, where
        if method == "HEAD":
            assert answers[0].body == b"", where


def test_pipelined_requests_behind_connect_are_answered(site: BadInputSite) -> None:
    follower = req(site.signed(A))
    for target in (b"oca.test:443", site.signed(A).encode()):
        answers, _ = exchange(site.address, req(target, method="CONNECT") + follower, site.by_etag)
        assert [a.status for a in answers] == [405, 200]
        assert answers[1].body == site.objects[A].data


def test_errors_answering_head_carry_no_body(site: BadInputSite) -> None:
    cases = [
        (req(site.signed(A), "X-Bad: a\x01b", method="HEAD"), 400),
        (req(site.signed(A), "Content-Length: 5", method="HEAD") + b"hello", 413),
        (req(site.signed(A), "Transfer-Encoding: chunked", method="HEAD") + b"0\r\n\r\n", 413),
        (req("/titles/" + "x" * 9000, method="HEAD"), 414),
        (req(site.signed(A), "X-Big: " + "x" * 17000, method="HEAD"), 431),
        (b"HEAD / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"HEAD /\x7f HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ]
    for data, status in cases:
        # The HEAD framing: a body would be read as the next response and fail the check.
        answers, raw = exchange(site.address, data, site.by_etag, heads={0})
        assert [a.status for a in answers] == [status], raw[:400]
        assert int(answers[0].get("content-length") or 0) > 0 and raw.endswith(b"\r\n\r\n")


def test_a_head_that_times_out_gets_a_408_without_body(tmp_path: Path) -> None:
    app = Appliance(tmp_path, workers=1, tiers=(("ssd", 1),), extra="header_timeout_seconds = 1")
    app.start()
    try:
        sock = socket.create_connection(app.host_port, timeout=10)
        try:
            sock.sendall(b"HEAD /titles/x.m4s HTTP/1.1\r\nHost: oca.test\r\nX-Slow: ")
            raw = b""
            while chunk := sock.recv(65536):  # the 408 is due within about 2 s
                raw += chunk
        finally:
            sock.close()
    finally:
        app.stop()
    answers, _ = read_answers(raw, lambda i: True)
    assert [a.status for a in answers] == [408] and answers[0].closes, raw
    assert raw.endswith(b"\r\n\r\n"), raw  # no body after the head


# --------------------------------------------------------------------------- oversized


def ranges(specs: Iterable[str]) -> str:
    return "Range: bytes=" + ",".join(specs)


def oversized_cases(site: BadInputSite) -> list[tuple[str, bytes, int, str | None, bool]]:
    """(what, bytes sent, status, error, closes)."""
    s = site.signed(A)
    size = site.objects[A].size
    return [
        ("request line over 8 KiB", req("/titles/" + "a" * 9000), 414, "uri-too-long", True),
        ("request line of 1 MiB", req("/titles/" + "a" * (1 << 20)), 414, "uri-too-long", True),
        ("target over 4 KiB", req("/titles/" + "a" * 5000), 414, "too-long", False),
        ("query over 4 KiB", req(s + "?q=" + "x" * 5000), 414, "too-long", False),
        (
            "method of 100 KB",
            b"A" * 100_000 + b" / HTTP/1.1\r\n\r\n",
            501,
            "method-not-implemented",
            True,
        ),
        ("version of 10 KB", b"GET / HTTP/" + b"1" * 10_000 + b"\r\n\r\n", 400, MALFORMED, True),
        (
            "one header of 17 KB",
            req(s, "X-Big: " + "x" * 17_000),
            431,
            "header-fields-too-large",
            True,
        ),
        (
            "one header of 1 MiB",
            req(s, "X-Big: " + "x" * (1 << 20)),
            431,
            "header-fields-too-large",
            True,
        ),
        (
            "a header name of 20 KB",
            req(s, "X" * 20_000 + ": v"),
            431,
            "header-fields-too-large",
            True,
        ),
        (
            "a Host of 17 KB",
            b"GET / HTTP/1.1\r\nHost: " + b"h" * 17_000 + b"\r\n\r\n",
            431,
            "header-fields-too-large",
            True,
        ),
        (
            "2,000 headers",
            req(s, *[f"X-{i}: v" for i in range(2000)]),
            431,
            "header-fields-too-large",
            True,
        ),
        (
            "20 headers of 900 bytes",
            req(s, *[f"X-{i}: {'v' * 900}" for i in range(20)]),
            431,
            "header-fields-too-large",
            True,
        ),
        (
            "Range of 17 parts",
            req(s, ranges(f"{i * 10}-{i * 10}" for i in range(17))),
            200,
            None,
            False,
        ),
        ("Range of 3,000 parts", req(s, ranges(["1-1"] * 3000)), 200, None, False),
        ("Range of 20 KB", req(s, ranges(["0-0"] * 5000)), 431, "header-fields-too-large", True),
        (
            "Range of 16 disjoint parts",
            req(s, ranges(f"{i * 100}-{i * 100 + 9}" for i in range(16))),
            206,
            None,
            False,
        ),
        (
            "Range start of 20 digits",
            req(s, "Range: bytes=99999999999999999999-"),
            200,
            None,
            False,
        ),
        (
            "Range start of 19 digits",
            req(s, "Range: bytes=9999999999999999999-"),
            416,
            "range-unsatisfiable",
            False,
        ),
        (
            "Range end of 26 digits",
            req(s, "Range: bytes=0-99999999999999999999999999"),
            200,
            None,
            False,
        ),
        ("Range end of 19 digits", req(s, "Range: bytes=0-9999999999999999999"), 206, None, False),
        (
            "Range suffix of 19 digits",
            req(s, "Range: bytes=-9223372036854775807"),
            206,
            None,
            False,
        ),
        (
            "Range past 2**64",
            req(s, "Range: bytes=18446744073709551616-18446744073709551617"),
            200,
            None,
            False,
        ),
        ("Range at the size", req(s, f"Range: bytes={size}-"), 416, "range-unsatisfiable", False),
        (
            "Content-Length of 1 GB",
            req(s, "Content-Length: 1000000000"),
            413,
            "request-body-too-large",
            True,
        ),
        (
            "Content-Length of 30 digits",
            req(s, "Content-Length: " + "9" * 30),
            400,
            MALFORMED,
            True,
        ),
        (
            "a 2 MiB body",
            req(s, "Content-Length: 2097152") + b"b" * (2 << 20),
            413,
            "request-body-too-large",
            True,
        ),
        (
            "a chunk size of 30 digits",
            req(s, "Transfer-Encoding: chunked") + b"f" * 30 + b"\r\n",
            413,
            "request-body-too-large",
            True,
        ),
        ("an If-None-Match of 15 KB", req(s, "If-None-Match: " + '"x", ' * 3000), 200, None, False),
        (
            "an If-Modified-Since of 15 KB",
            req(s, "If-Modified-Since: " + "Sun, " * 3000),
            200,
            None,
            False,
        ),
    ]


def test_oversized_everything_gets_its_documented_status(site: BadInputSite) -> None:
    follower = req(site.signed(A))
    for what, data, status, error, closes in oversized_cases(site):
        answers, raw = exchange(site.address, data + follower, site.by_etag)
        got = [a.status for a in answers]
        expected = [status] if closes else [status, 200]
        assert got == expected, f"{what}: {got} != {expected}: {raw[:400]!r}"
        assert_answer(answers[0], status, error, what)
        assert answers[0].closes == closes, what


def test_a_megabyte_of_empty_lines_then_a_request_is_answered(site: BadInputSite) -> None:
    # RFC 9112 §2.2: empty lines before a request-line are ignored; none is buffered.
    answers, _ = exchange(site.address, b"\r\n" * (1 << 19) + req(site.signed(A)), site.by_etag)
    assert [a.status for a in answers] == [200]


def test_a_burst_of_pipelined_requests_is_answered_in_full(site: BadInputSite) -> None:
    # 2,000 small requests (about 300 KB) in one write, much more than a request head may
    # be: each request is small, so none of them is "too large".
    one_req = req(site.signed(A), "Range: bytes=0-9", "X-Pad: " + "p" * 40)
    answers, _ = exchange(site.address, one_req * 2000, site.by_etag)
    assert [a.status for a in answers] == [206] * 2000
    assert all(a.body == site.objects[A].data[:10] for a in answers)


def test_a_closing_answer_arrives_whole_with_requests_pipelined_behind_it(
    site: BadInputSite,
) -> None:
    # A 4 MiB answer with Connection: close, 80 more requests behind it (the last 40 sent
    # once the server has stopped reading its full queue), and a client that reads slowly:
    # the server must shut its side and drain, not reset the connection under the answer.
    first = req(site.signed(BIG), close=True)
    more = req(site.signed(A)) * 40
    answers, _ = exchange(
        site.address,
        [first + more, more],
        site.by_etag,
        pause=0.3,
        rcvbuf=8192,
        wait_before_reading=0.3,
    )
    assert [a.status for a in answers] == [200]
    assert answers[0].closes and answers[0].body == site.objects[BIG].data


# --------------------------------------------------------------------------- no trace


def test_no_worker_restarted_and_the_store_is_untouched(site: BadInputSite) -> None:
    """Runs last: the appliance after everything above."""
    assert sorted(site.app.worker_pids()) == site.pids, "a worker was restarted"
    assert site.known_is_served()
    problems = finish_bad_input_site(site)
    assert problems == [], problems
    smuggled = _access_log_paths(site.app.root / "access.log", "SMUGGLED")
    assert smuggled == [], f"smuggled requests reached the request path: {smuggled[:5]}"


def _access_log_paths(log: Path, marker: str) -> list[str]:
    out = []
    for line in log.read_bytes().splitlines():
        if marker.encode() in line:
            out.append(str(orjson.loads(line).get("path")))
    return out


# --------------------------------------------------------------------------- soak


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_soak_a_million_inputs(tmp_path: Path) -> None:
    started = time.monotonic()
    engine = fuzz_engine(SEED + 1, 1_000_000)
    engine_seconds = time.monotonic() - started
    print(f"engine fuzz seed={SEED + 1}: {engine} in {engine_seconds:.0f}s")
    assert engine.inputs == 1_000_000
    site = start_bad_input_site(tmp_path)
    try:
        total = WireStats()
        batch = 0
        while total.requests < 1_000_000:
            stats = run_wire_fuzz(site, SEED + 2 + batch, 20_000, concurrency=12)
            total.merge(stats)
            batch += 1
        print(f"wire fuzz total: {total.summary()}")
        assert sorted(site.app.worker_pids()) == site.pids, "a worker was restarted"
        assert site.known_is_served()
    finally:
        problems = finish_bad_input_site(site)
    assert problems == [], problems
