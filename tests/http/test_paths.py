"""Request-target normalisation: attack shapes, valid names, and a property over all bytes."""

from __future__ import annotations

from urllib.parse import quote, unquote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from oca.errors import OcaError
from oca.http.paths import MAX_TARGET_BYTES, PathRejected, normalize_target

# (raw target, status, reason)
ATTACKS: list[tuple[bytes, int, str]] = [
    # dot segments, raw and in every encoding
    (b"/../etc/passwd", 400, "dot-segment"),
    (b"/titles/../../etc/passwd", 400, "dot-segment"),
    (b"/titles/tos/..", 400, "dot-segment"),
    (b"/titles/./tos/seg-1.m4s", 400, "dot-segment"),
    (b"/titles/tos/.", 400, "dot-segment"),
    (b"/.", 400, "dot-segment"),
    (b"/..", 400, "dot-segment"),
    (b"/../", 400, "dot-segment"),
    (b"/titles/..?x=/ok", 400, "dot-segment"),
    (b"/titles/..#frag", 400, "dot-segment"),
    (b"/%2e%2e/etc/passwd", 400, "dot-segment"),
    (b"/%2E%2E/etc/passwd", 400, "dot-segment"),
    (b"/%2E%2e/etc/passwd", 400, "dot-segment"),
    (b"/titles/.%2e/x", 400, "dot-segment"),
    (b"/titles/%2e./x", 400, "dot-segment"),
    (b"/titles/%2e/x", 400, "dot-segment"),
    (b"/titles/%2E", 400, "dot-segment"),
    # double encoding: a decoded "%" followed by two hex digits
    (b"/%252e%252e/etc/passwd", 400, "double-encoded"),
    (b"/titles/%252E./x", 400, "double-encoded"),
    (b"/titles/%252f..%252f/x", 400, "double-encoded"),
    (b"/titles/%255c/x", 400, "double-encoded"),
    (b"/titles/%2500", 400, "double-encoded"),
    (b"/titles/a%2541", 400, "double-encoded"),
    # An unexpanded DASH format tag decodes to "%05": indistinguishable from a double
    # encoding, so refused. Packagers expand templates; no real segment is named so.
    (b"/titles/tos/seg-%24Number%2505d%24.m4s", 400, "double-encoded"),
    # encoded slash
    (b"/titles%2f..%2fetc/passwd", 400, "encoded-slash"),
    (b"/titles/%2F", 400, "encoded-slash"),
    (b"/%2e%2e%2f%2e%2e%2fetc", 400, "encoded-slash"),
    # backslash, raw and encoded
    (b"/titles\\..\\etc\\passwd", 400, "backslash"),
    (b"/titles/a\\b", 400, "backslash"),
    (b"/titles/%5c..%5cetc", 400, "backslash"),
    (b"/titles/%5C", 400, "backslash"),
    (b"/..\\", 400, "backslash"),
    # NUL and control characters, raw and encoded, in the path or the query
    (b"/titles/seg.m4s\x00.txt", 400, "control-char"),
    (b"/titles/seg.m4s%00.txt", 400, "control-char"),
    (b"/titles/a%0d%0aSet-Cookie:x", 400, "control-char"),
    (b"/titles/a%0A", 400, "control-char"),
    (b"/titles/a\r\nX: y", 400, "control-char"),
    (b"/titles/a%09b", 400, "control-char"),
    (b"/titles/a%1fb", 400, "control-char"),
    (b"/titles/a%7fb", 400, "control-char"),
    (b"/titles/a\x7fb", 400, "control-char"),
    (b"/titles/a\tb", 400, "control-char"),
    (b"/titles/a?q=\x00", 400, "control-char"),
    # invalid percent escapes
    (b"/titles/%zz", 400, "bad-escape"),
    (b"/titles/%4", 400, "bad-escape"),
    (b"/titles/%", 400, "bad-escape"),
    (b"/titles/%%32%65", 400, "bad-escape"),
    (b"/titles/%g0", 400, "bad-escape"),
    (b"/titles/%-1", 400, "bad-escape"),
    # empty segments
    (b"//etc/passwd", 400, "empty-segment"),
    (b"/titles//tos", 400, "empty-segment"),
    (b"/titles/tos//", 400, "empty-segment"),
    # not valid UTF-8 once decoded (including overlong encodings of "/" and ".")
    (b"/titles/%ff", 400, "bad-utf8"),
    (b"/titles/%c0%af..%c0%af", 400, "bad-utf8"),
    (b"/titles/%c0%ae%c0%ae/x", 400, "bad-utf8"),
    (b"/titles/%e0%80%ae", 400, "bad-utf8"),
    (b"/titles/%ed%a0%80", 400, "bad-utf8"),  # an encoded UTF-16 surrogate
    (b"/titles/\xff\xfe", 400, "bad-utf8"),
    # raw space
    (b"/titles/a b", 400, "invalid-char"),
    # not origin-form
    (b"http://evil.example/etc/passwd", 400, "absolute-form"),
    (b"https://cdn.example/titles/tos/seg-1.m4s", 400, "absolute-form"),
    (b"HTTP://x/", 400, "absolute-form"),
    (b"file:///etc/passwd", 400, "absolute-form"),
    (b"mailto:a@b", 400, "absolute-form"),
    (b"evil.example:443", 400, "authority-form"),
    (b"[::1]:8080", 400, "authority-form"),
    (b"127.0.0.1:80", 400, "authority-form"),
    (b"titles/tos/seg-1.m4s", 400, "not-origin-form"),
    (b"../etc/passwd", 400, "not-origin-form"),
    (b"\\etc\\passwd", 400, "not-origin-form"),
    (b"%2fetc/passwd", 400, "not-origin-form"),
    (b"**", 400, "not-origin-form"),
    (b"?x=1", 400, "not-origin-form"),
    (b"", 400, "empty"),
    # length
    (b"/" + b"a" * MAX_TARGET_BYTES, 414, "too-long"),
    (b"/a?" + b"q" * MAX_TARGET_BYTES, 414, "too-long"),
    (b"/../" * 2000, 414, "too-long"),
]


@pytest.mark.parametrize(("target", "status", "reason"), ATTACKS)
def test_attack_shapes_are_rejected(target: bytes, status: int, reason: str) -> None:
    with pytest.raises(PathRejected) as info:
        normalize_target(target)
    assert (info.value.status, info.value.reason) == (status, reason)


def test_attack_table_is_large_and_distinct() -> None:
    assert len(ATTACKS) >= 40
    assert len({target for target, _, _ in ATTACKS}) == len(ATTACKS)


def test_path_rejected_is_an_oca_error() -> None:
    error = PathRejected(400, "dot-segment")
    assert isinstance(error, OcaError)
    assert (error.status, error.reason, str(error)) == (400, "dot-segment", "400 dot-segment")


VALID: list[tuple[bytes, str]] = [
    (b"/", "/"),
    (b"/titles/tos/v720/seg-00042.m4s", "/titles/tos/v720/seg-00042.m4s"),
    (b"/titles/tos/v720.mp4", "/titles/tos/v720.mp4"),
    (b"/titles/tos/", "/titles/tos/"),
    (b"/titles/a%20b/seg-1.m4s?x=1", "/titles/a b/seg-1.m4s"),
    (b"/titles/a%20b/seg-1.m4s#frag", "/titles/a b/seg-1.m4s"),
    (b"/titles/tos/manifest.mpd?", "/titles/tos/manifest.mpd"),
    (b"/titles/tos/x?a=../../etc&b=%00", "/titles/tos/x"),
    (b"/titles/Am%C3%A9lie/seg-1.m4s", "/titles/Amélie/seg-1.m4s"),
    (b"/titles/am%c3%a9lie/seg-1.m4s", "/titles/amélie/seg-1.m4s"),
    ("/titles/Amélie/seg-1.m4s".encode(), "/titles/Amélie/seg-1.m4s"),
    (b"/titles/%E5%8D%83%E3%81%A8%E5%8D%83%E5%B0%8B/init.mp4", "/titles/千と千尋/init.mp4"),
    (b"/titles/%F0%9F%8E%AC/seg-1.m4s", "/titles/🎬/seg-1.m4s"),
    (
        b"/titles/tos/v720/bw=3000000,res=1280x720/seg-1.m4s",
        "/titles/tos/v720/bw=3000000,res=1280x720/seg-1.m4s",
    ),
    (b"/titles/tos/v%3D720%2Ca/seg.m4s", "/titles/tos/v=720,a/seg.m4s"),
    (b"/titles/tos/seg-%24Number%24.m4s", "/titles/tos/seg-$Number$.m4s"),
    (
        b"/titles/tos/seg-$RepresentationID$-$Time$.m4s",
        "/titles/tos/seg-$RepresentationID$-$Time$.m4s",
    ),
    (b"/titles/tos/100%25.m4s", "/titles/tos/100%.m4s"),
    (b"/titles/tos/50%25off", "/titles/tos/50%off"),
    (b"/titles/...", "/titles/..."),
    (b"/titles/..a/.b/a..", "/titles/..a/.b/a.."),
    (b"/titles/.well-known/x", "/titles/.well-known/x"),
    (b"/titles/tos/%2e%2e%2e", "/titles/tos/..."),
    (b"/titles/a~b_c-d.e", "/titles/a~b_c-d.e"),
    (b"/titles/a%3Fb/x", "/titles/a?b/x"),
    (b"/titles/(x)[y]!@;:+&'*", "/titles/(x)[y]!@;:+&'*"),
    (
        b"/t/v1.a.1700000000.L3RpdGxlcy90b3Mv.~.sig/titles/tos/x",
        "/t/v1.a.1700000000.L3RpdGxlcy90b3Mv.~.sig/titles/tos/x",
    ),
    (b"/" + b"a" * (MAX_TARGET_BYTES - 1), "/" + "a" * (MAX_TARGET_BYTES - 1)),
    (b"*", "*"),
]


@pytest.mark.parametrize(("target", "expected"), VALID)
def test_valid_targets(target: bytes, expected: str) -> None:
    assert normalize_target(target) == expected


# --------------------------------------------------------------------------- properties


def has_dot_segment(path: str) -> bool:
    return any(segment in {".", ".."} for segment in path.split("/"))


@given(st.binary(max_size=300))
@example(b"/%2e%2e/")
@example(b"/%252e%252e/")
@example(b"/.%2e")
@example(b"*")
def test_any_bytes_either_safe_path_or_path_rejected(target: bytes) -> None:
    try:
        path = normalize_target(target)
    except PathRejected as exc:
        assert exc.status in {400, 414}
        assert exc.reason
        return
    if path == "*":
        assert target == b"*"
        return
    assert path.startswith("/")
    assert not has_dot_segment(path)
    assert "\\" not in path
    assert "\x00" not in path
    assert "//" not in path
    assert not any(ord(char) < 0x20 or ord(char) == 0x7F for char in path)
    # Decoding again changes nothing: no layer downstream can see another path.
    assert unquote(path, errors="strict") == path


# Bytes a URL-shaped target is made of, heavy on the characters attacks use.
URL_PIECES = st.sampled_from(
    [
        *("/", ".", "..", "%", "%2e", "%2E", "%2f", "%5c", "%25", "%00", "\\", "?", "#"),
        *("a", "é", "%c0%ae", "%c3%a9", "2e", "5c", "%%", " ", ":", "\x00", "\n"),
    ]
)


@given(st.lists(URL_PIECES, max_size=30))
def test_url_shaped_input_either_safe_path_or_path_rejected(pieces: list[str]) -> None:
    target = "".join(pieces).encode("utf-8")
    try:
        path = normalize_target(target)
    except PathRejected:
        return
    assert path == "*" or path.startswith("/")
    assert not has_dot_segment(path)
    assert "\\" not in path
    assert "\x00" not in path


SAFE_SEGMENT = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Cc"),
        blacklist_characters="/\\",
    ),
    min_size=1,
    max_size=12,
).filter(lambda segment: segment not in {".", ".."} and "%" not in segment)


@given(st.lists(SAFE_SEGMENT, min_size=1, max_size=6), st.booleans(), st.text(max_size=20))
def test_quoted_object_paths_round_trip(segments: list[str], slash: bool, query: str) -> None:
    path = "/" + "/".join(segments) + ("/" if slash else "")
    target = quote(path).encode("ascii") + b"?" + quote(query).encode("ascii")
    assert normalize_target(target) == path
