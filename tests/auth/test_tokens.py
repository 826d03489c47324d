"""Signed URL tokens: round trips, every failure reason, rotation, caching, properties."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import string

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from oca.auth import tokens
from oca.auth.tokens import (
    TOKEN_PATH_MARKER,
    TokenClaims,
    TokenVerifier,
    sign_token,
    signed_path,
    split_token_path,
)
from oca.errors import TokenError

SECRET_A = bytes(range(32))
SECRET_B = bytes(range(100, 132))
KEYS = {"a": SECRET_A, "b": SECRET_B}
EXPIRES = 1_700_000_000
NOW = EXPIRES - 3600
TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~-]+")


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def forge(body: str, secret: bytes = SECRET_A) -> str:
    """A token with a valid signature over an arbitrary (possibly malformed) body."""
    signature = hmac.new(secret, body.encode("utf-8"), hashlib.sha256).digest()
    return f"{body}.{b64(signature)}"


def reason(verifier: TokenVerifier, token: str, path: str, now: float, ip: str) -> str:
    with pytest.raises(TokenError) as info:
        verifier.verify(token, path, now, ip)
    return info.value.reason


# --------------------------------------------------------------------------- round trip


def test_sign_and_verify_roundtrip() -> None:
    token = sign_token("a", SECRET_A, "/titles/tos/", EXPIRES)
    claims = TokenVerifier(KEYS).verify(token, "/titles/tos/v720/seg-00042.m4s", NOW, "192.0.2.1")
    assert claims == TokenClaims(key_id="a", expires=EXPIRES, prefix="/titles/tos/", client=None)


def test_wire_format() -> None:
    token = sign_token("key-1", SECRET_A, "/titles/tos/", EXPIRES, client="203.0.113.0/24")
    fields = token.split(".")
    assert fields[:3] == ["v1", "key-1", str(EXPIRES)]
    assert fields[3] == b64(b"/titles/tos/")
    assert fields[4] == b64(b"203.0.113.0/24")
    body = ".".join(fields[:5])
    assert fields[5] == b64(hmac.new(SECRET_A, body.encode(), hashlib.sha256).digest())
    assert len(fields[5]) == 43
    assert TOKEN_CHARS.fullmatch(token)
    assert sign_token("a", SECRET_A, "/", 0).split(".")[4] == "~"


def test_unicode_prefix_roundtrip() -> None:
    token = sign_token("a", SECRET_A, "/titles/Amélie ☃/", EXPIRES)
    assert TOKEN_CHARS.fullmatch(token)
    claims = TokenVerifier(KEYS).verify(token, "/titles/Amélie ☃/seg-1.m4s", NOW, "::1")
    assert claims.prefix == "/titles/Amélie ☃/"


def test_client_canonicalised_when_signing() -> None:
    verifier = TokenVerifier(KEYS)
    cases = {
        "203.0.113.7": "203.0.113.7",
        "203.0.113.7/32": "203.0.113.7",
        "203.0.113.77/24": "203.0.113.0/24",
        "2001:DB8::1": "2001:db8::1",
        "2001:db8:0:0::/48": "2001:db8::/48",
        "::ffff:203.0.113.7": "203.0.113.7",
        "::ffff:203.0.113.0/120": "203.0.113.0/24",
    }
    for given_client, canonical in cases.items():
        token = sign_token("a", SECRET_A, "/", EXPIRES, client=given_client)
        peer = canonical.split("/")[0]
        assert verifier.verify(token, "/x", NOW, peer).client == canonical


@pytest.mark.parametrize(
    ("key_id", "prefix", "expires", "client"),
    [
        ("", "/", EXPIRES, None),
        ("a.b", "/", EXPIRES, None),
        ("a" * 65, "/", EXPIRES, None),
        ("a", "titles/", EXPIRES, None),
        ("a", "", EXPIRES, None),
        ("a", "/", -1, None),
        ("a", "/", 10**19, None),
        ("a", "/", EXPIRES, "not-an-ip"),
        ("a", "/", EXPIRES, "203.0.113.0/33"),
        ("a", "/", EXPIRES, "fe80::1%eth0"),
    ],
)
def test_sign_rejects_unencodable_input(
    key_id: str, prefix: str, expires: int, client: str | None
) -> None:
    with pytest.raises(ValueError):
        sign_token(key_id, SECRET_A, prefix, expires, client)


def test_sign_rejects_empty_secret_and_non_int_expiry() -> None:
    with pytest.raises(ValueError):
        sign_token("a", b"", "/", EXPIRES)
    with pytest.raises(ValueError):
        sign_token("a", SECRET_A, "/", True)
    with pytest.raises(ValueError):
        sign_token("a", SECRET_A, "/", 1.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- paths


def test_signed_path_defaults_prefix_to_directory() -> None:
    url = signed_path("a", SECRET_A, "/titles/tos/v720/seg-00042.m4s", EXPIRES)
    token, path = split_token_path(url)
    assert url.startswith(f"/{TOKEN_PATH_MARKER}/")
    assert path == "/titles/tos/v720/seg-00042.m4s"
    assert token is not None
    claims = TokenVerifier(KEYS).verify(token, path, NOW, "192.0.2.1")
    assert claims.prefix == "/titles/tos/v720/"
    assert reason(TokenVerifier(KEYS), token, "/titles/tos/a1/x", NOW, "::1") == "path-not-covered"


def test_signed_path_with_title_prefix_and_client() -> None:
    url = signed_path(
        "b", SECRET_B, "/titles/tos/manifest.mpd", EXPIRES, prefix="/titles/tos/", client="::1"
    )
    token, path = split_token_path(url)
    assert token is not None
    assert path == "/titles/tos/manifest.mpd"
    verifier = TokenVerifier(KEYS)
    assert verifier.verify(token, "/titles/tos/v720/seg-1.m4s", NOW, "::1").client == "::1"
    assert signed_path("a", SECRET_A, "/x.mp4", EXPIRES).startswith("/t/v1.a.")
    with pytest.raises(ValueError):
        signed_path("a", SECRET_A, "x.mp4", EXPIRES)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/t/TOKEN/a/b", ("TOKEN", "/a/b")),
        ("/t/TOKEN/", ("TOKEN", "/")),
        ("/t/v1.a.1.Lw.~.sig/x.m4s", ("v1.a.1.Lw.~.sig", "/x.m4s")),
        ("/t/TOKEN", (None, "/t/TOKEN")),
        ("/t//a", (None, "/t//a")),
        ("/t/", (None, "/t/")),
        ("/t", (None, "/t")),
        ("/tt/TOKEN/a", (None, "/tt/TOKEN/a")),
        ("/titles/t/TOKEN/a", (None, "/titles/t/TOKEN/a")),
        ("/a/b", (None, "/a/b")),
        ("", (None, "")),
        ("*", (None, "*")),
    ],
)
def test_split_token_path(path: str, expected: tuple[str | None, str]) -> None:
    assert split_token_path(path) == expected


# --------------------------------------------------------------------------- failure reasons


def test_bad_signature_when_one_character_flips() -> None:
    verifier = TokenVerifier(KEYS)
    token = sign_token("a", SECRET_A, "/titles/tos/", EXPIRES, client="203.0.113.7")
    sig_start = token.rfind(".") + 1
    for index in (sig_start, sig_start + 10, sig_start + 30):
        flipped = "B" if token[index] != "B" else "C"
        forged = token[:index] + flipped + token[index + 1 :]
        assert reason(verifier, forged, "/titles/tos/x", NOW, "203.0.113.7") == "bad-signature"


def test_bad_signature_when_claims_are_edited() -> None:
    verifier = TokenVerifier(KEYS)
    token = sign_token("a", SECRET_A, "/titles/tos/", EXPIRES, client="203.0.113.7")
    v, kid, exp, prefix, client, sig = token.split(".")
    edits = [
        [v, kid, str(EXPIRES + 86400), prefix, client, sig],  # extend the expiry
        [v, kid, exp, b64(b"/"), client, sig],  # widen the prefix
        [v, kid, exp, prefix, "~", sig],  # drop the client restriction
        [v, kid, exp, prefix, b64(b"0.0.0.0/0"), sig],  # widen the client block
        [v, "b", exp, prefix, client, sig],  # claim another known key
    ]
    for edit in edits:
        edited = ".".join(edit)
        assert reason(verifier, edited, "/titles/tos/x", NOW, "203.0.113.7") == "bad-signature"


def test_bad_signature_when_signed_with_another_secret() -> None:
    token = sign_token("a", SECRET_B, "/", EXPIRES)
    assert reason(TokenVerifier(KEYS), token, "/x", NOW, "::1") == "bad-signature"


def test_unknown_key() -> None:
    token = sign_token("retired", SECRET_A, "/", EXPIRES)
    assert reason(TokenVerifier(KEYS), token, "/x", NOW, "::1") == "unknown-key"
    assert reason(TokenVerifier({}), token, "/x", NOW, "::1") == "unknown-key"


def test_expired_one_second_after_expiry_and_valid_at_expiry() -> None:
    verifier = TokenVerifier(KEYS)
    token = sign_token("a", SECRET_A, "/", EXPIRES)
    assert verifier.verify(token, "/x", EXPIRES, "::1").expires == EXPIRES
    assert reason(verifier, token, "/x", EXPIRES + 1, "::1") == "expired"
    assert reason(verifier, token, "/x", EXPIRES + 0.001, "::1") == "expired"


@pytest.mark.parametrize(
    ("prefix", "path", "covered"),
    [
        ("/titles/tos/", "/titles/tos/v720/seg-1.m4s", True),
        ("/titles/tos/", "/titles/tos/", True),
        ("/titles/tos/", "/titles/tos", False),
        ("/titles/tos/", "/titles/tos2/x", False),
        ("/titles/tos/", "/titles/other/x", False),
        ("/titles/tos", "/titles/tos", True),
        ("/titles/tos", "/titles/tos/", True),
        ("/titles/tos", "/titles/tos/x", True),
        ("/titles/tos", "/titles/tos2/x", False),
        ("/titles/tos", "/titles/tos2", False),
        ("/titles/tos", "/titles/to", False),
        ("/titles/tos", "/titles", False),
        ("/titles/tos/v720.mp4", "/titles/tos/v720.mp4", True),
        ("/titles/tos/v720.mp4", "/titles/tos/v720.mp4.bak", False),
        ("/", "/anything/at/all", True),
        ("/", "/", True),
        ("/a", "/A", False),
    ],
)
def test_prefix_covers_on_segment_boundaries(prefix: str, path: str, covered: bool) -> None:
    verifier = TokenVerifier(KEYS)
    token = sign_token("a", SECRET_A, prefix, EXPIRES)
    if covered:
        assert verifier.verify(token, path, NOW, "::1").prefix == prefix
    else:
        assert reason(verifier, token, path, NOW, "::1") == "path-not-covered"


@pytest.mark.parametrize(
    ("client", "client_ip", "matches"),
    [
        ("203.0.113.7", "203.0.113.7", True),
        ("203.0.113.7", "203.0.113.8", False),
        ("203.0.113.7", "::ffff:203.0.113.7", True),
        ("203.0.113.7", "::ffff:203.0.113.8", False),
        ("203.0.113.0/24", "203.0.113.200", True),
        ("203.0.113.0/24", "203.0.114.1", False),
        ("203.0.113.0/24", "::ffff:203.0.113.9", True),
        ("203.0.113.0/24", "2001:db8::1", False),
        ("::ffff:203.0.113.7", "203.0.113.7", True),
        ("2001:db8::1", "2001:db8::1", True),
        ("2001:db8::1", "2001:DB8:0::1", True),
        ("2001:db8::1", "2001:db8::2", False),
        ("2001:db8::/32", "2001:db8:ffff::1", True),
        ("2001:db8::/32", "2001:db9::1", False),
        ("2001:db8::/32", "203.0.113.7", False),
        ("fe80::/64", "fe80::1%eth0", True),
        ("0.0.0.0/0", "198.51.100.1", True),
        ("203.0.113.7", "", False),
        ("203.0.113.7", "not-an-address", False),
        ("203.0.113.7", "unix:/run/oca.sock", False),
    ],
)
def test_client_restriction(client: str, client_ip: str, matches: bool) -> None:
    verifier = TokenVerifier(KEYS)
    token = sign_token("a", SECRET_A, "/", EXPIRES, client=client)
    if matches:
        assert verifier.verify(token, "/x", NOW, client_ip).client is not None
    else:
        assert reason(verifier, token, "/x", NOW, client_ip) == "client-mismatch"


def test_no_client_restriction_accepts_any_peer_text() -> None:
    verifier = TokenVerifier(KEYS)
    token = sign_token("a", SECRET_A, "/", EXPIRES)
    for peer in ("203.0.113.7", "::1", "", "unix"):
        assert verifier.verify(token, "/x", NOW, peer).client is None


def test_checks_run_in_the_documented_order() -> None:
    verifier = TokenVerifier(KEYS)
    token = sign_token("a", SECRET_A, "/titles/tos/", EXPIRES, client="203.0.113.7")
    # Everything wrong at once: the earliest check names the failure.
    assert reason(verifier, token, "/other", EXPIRES + 1, "198.51.100.1") == "expired"
    assert reason(verifier, token, "/other", NOW, "198.51.100.1") == "path-not-covered"
    assert reason(verifier, token[:-3] + "AAA", "/other", EXPIRES + 1, "x") == "bad-signature"
    unknown = sign_token("zz", SECRET_B, "/titles/tos/", EXPIRES)
    assert reason(verifier, unknown[:-3] + "AAA", "/other", EXPIRES + 1, "x") == "unknown-key"


def _malformed_tokens() -> list[str]:
    good = sign_token("a", SECRET_A, "/titles/tos/", EXPIRES)
    v, kid, exp, prefix, client, sig = good.split(".")
    not_utf8 = b64(b"/caf\xe9/")
    fullwidth = b64("\uff12\uff10\uff13.0.113.7".encode())
    return [
        "",
        ".",
        "v1",
        "garbage",
        good + ".",
        "." + good,
        good.replace(".", "..", 1),
        ".".join([v, kid, exp, prefix, sig]),  # five fields
        ".".join([v, kid, exp, prefix, client, sig, sig]),  # seven fields
        forge(f"v2.a.{EXPIRES}.{prefix}.~"),  # unknown version
        forge(f"V1.a.{EXPIRES}.{prefix}.~"),
        forge(f"v1..{EXPIRES}.{prefix}.~"),  # empty key id
        forge(f"v1.a+b.{EXPIRES}.{prefix}.~"),  # key id outside the alphabet
        forge(f"v1.{'k' * 65}.{EXPIRES}.{prefix}.~"),  # key id too long
        forge(f"v1.a..{prefix}.~"),  # empty expiry
        forge(f"v1.a.0{EXPIRES}.{prefix}.~"),  # leading zero
        forge(f"v1.a.-{EXPIRES}.{prefix}.~"),  # sign
        forge(f"v1.a.+{EXPIRES}.{prefix}.~"),
        forge(f"v1.a.1e9.{prefix}.~"),  # not decimal digits
        forge(f"v1.a.{'9' * 20}.{prefix}.~"),  # beyond 64 bits
        forge(f"v1.a.١٢٣.{prefix}.~"),  # non-ASCII digits
        forge(f"v1.a.{EXPIRES} .{prefix}.~"),
        forge(f"v1.a.{EXPIRES}..~"),  # empty prefix
        forge(f"v1.a.{EXPIRES}.{prefix}=.~"),  # padding
        forge(f"v1.a.{EXPIRES}.L3RpdGxlcy90b3Mv+.~"),  # standard (not url-safe) alphabet
        forge(f"v1.a.{EXPIRES}.L3h.~"),  # "/x" spelled with non-zero padding bits
        forge(f"v1.a.{EXPIRES}.L.~"),  # impossible base64 length
        forge(f"v1.a.{EXPIRES}.{b64(b'titles/')}.~"),  # prefix without leading slash
        forge(f"v1.a.{EXPIRES}.{not_utf8}.~"),  # prefix not UTF-8
        forge(f"v1.a.{EXPIRES}.{prefix}."),  # empty client field
        forge(f"v1.a.{EXPIRES}.{prefix}.~~"),
        forge(f"v1.a.{EXPIRES}.{prefix}.{b64(b'not-an-ip')}"),  # client not an address
        forge(f"v1.a.{EXPIRES}.{prefix}.{b64(b'203.0.113.0/33')}"),
        forge(f"v1.a.{EXPIRES}.{prefix}.{fullwidth}"),  # fullwidth digits
        f"v1.a.{EXPIRES}.{prefix}.~.",  # empty signature
        f"v1.a.{EXPIRES}.{prefix}.~.{sig[:-1]}",  # short signature
        f"v1.a.{EXPIRES}.{prefix}.~.{sig}A",  # long signature
        f"v1.a.{EXPIRES}.{prefix}.~.{sig[:-1]}/",  # character outside the alphabet
        f"v1.a.{EXPIRES}.{prefix}.~.{sig[:-1]}B",  # non-zero padding bits
        good + "\n",
        " " + good,
        good.replace("v1", "v1\x00"),
        good + "A" * 5000,  # oversized
        "v1.a.1.Lw.~." + "é" * 43,
    ]


@pytest.mark.parametrize("token", _malformed_tokens())
def test_malformed(token: str) -> None:
    assert reason(TokenVerifier(KEYS), token, "/titles/tos/x", NOW, "::1") == "malformed"


def test_forge_helper_produces_valid_tokens() -> None:
    # The malformed table relies on forge(); a well-formed forged body must verify.
    good = sign_token("a", SECRET_A, "/titles/tos/", EXPIRES)
    assert forge(good.rsplit(".", 1)[0]) == good


# --------------------------------------------------------------------------- rotation


def test_key_rotation() -> None:
    old = sign_token("old", SECRET_A, "/", EXPIRES)
    new = sign_token("new", SECRET_B, "/", EXPIRES)
    both = TokenVerifier({"old": SECRET_A, "new": SECRET_B})
    assert both.verify(old, "/x", NOW, "::1").key_id == "old"
    assert both.verify(new, "/x", NOW, "::1").key_id == "new"
    # Reload: a new verifier without the old key replaces the old verifier.
    rotated = TokenVerifier({"new": SECRET_B})
    assert rotated.key_ids == frozenset({"new"})
    assert reason(rotated, old, "/x", NOW, "::1") == "unknown-key"
    assert rotated.verify(new, "/x", NOW, "::1").key_id == "new"
    # A key id reused with a different secret invalidates the old tokens.
    replaced = TokenVerifier({"old": SECRET_B})
    assert reason(replaced, old, "/x", NOW, "::1") == "bad-signature"


def test_verifier_keeps_no_reference_to_caller_mapping() -> None:
    keys = {"a": SECRET_A}
    verifier = TokenVerifier(keys)
    keys.clear()
    token = sign_token("a", SECRET_A, "/", EXPIRES)
    assert verifier.verify(token, "/x", NOW, "::1").key_id == "a"


# --------------------------------------------------------------------------- caching


def test_one_signature_check_per_token(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_parse = tokens._parse

    def counting_parse(token: str) -> tuple[object, ...]:
        calls.append(token)
        return real_parse(token)

    monkeypatch.setattr(tokens, "_parse", counting_parse)
    verifier = TokenVerifier(KEYS)
    token = sign_token("a", SECRET_A, "/titles/tos/", EXPIRES, client="203.0.113.0/24")
    for number in range(1000):
        path = f"/titles/tos/v720/seg-{number:05d}.m4s"
        verifier.verify(token, path, NOW, "203.0.113.7")
    assert len(calls) == 1
    # Cached claims are still checked against time, path and client on every call.
    assert reason(verifier, token, "/titles/tos/x", EXPIRES + 1, "203.0.113.7") == "expired"
    assert reason(verifier, token, "/titles/tos2/x", NOW, "203.0.113.7") == "path-not-covered"
    assert reason(verifier, token, "/titles/tos/x", NOW, "198.51.100.1") == "client-mismatch"
    assert len(calls) == 1


def test_failures_are_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_parse = tokens._parse

    def counting_parse(token: str) -> tuple[object, ...]:
        calls.append(token)
        return real_parse(token)

    monkeypatch.setattr(tokens, "_parse", counting_parse)
    verifier = TokenVerifier(KEYS)
    forged = sign_token("a", SECRET_B, "/", EXPIRES)
    for _ in range(3):
        assert reason(verifier, forged, "/x", NOW, "::1") == "bad-signature"
    assert len(calls) == 3


def test_cache_is_bounded_and_evicts_least_recently_used(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_parse = tokens._parse

    def counting_parse(token: str) -> tuple[object, ...]:
        calls.append(token)
        return real_parse(token)

    monkeypatch.setattr(tokens, "_parse", counting_parse)
    verifier = TokenVerifier(KEYS, cache_size=2)
    first, second, third = (sign_token("a", SECRET_A, f"/t{n}/", EXPIRES) for n in range(3))
    verifier.verify(first, "/t0/x", NOW, "::1")
    verifier.verify(second, "/t1/x", NOW, "::1")
    verifier.verify(first, "/t0/x", NOW, "::1")  # first is now the most recent
    verifier.verify(third, "/t2/x", NOW, "::1")  # evicts second
    assert calls == [first, second, third]
    verifier.verify(first, "/t0/x", NOW, "::1")
    assert calls == [first, second, third]
    verifier.verify(second, "/t1/x", NOW, "::1")
    assert calls == [first, second, third, second]
    many = TokenVerifier(KEYS, cache_size=8)
    for n in range(100):
        many.verify(sign_token("a", SECRET_A, "/", EXPIRES + n), "/x", NOW, "::1")
    assert len(many._cache) == 8


def test_peer_cache_is_bounded_and_keeps_verdicts() -> None:
    verifier = TokenVerifier(KEYS, cache_size=4)
    token = sign_token("a", SECRET_A, "/", EXPIRES, client="203.0.113.0/24")
    for host in range(50):
        peer = f"203.0.113.{host}"
        assert verifier.verify(token, "/x", NOW, peer).client == "203.0.113.0/24"
        assert verifier.verify(token, "/x", NOW, peer).client == "203.0.113.0/24"
        assert reason(verifier, token, "/x", NOW, f"198.51.100.{host}") == "client-mismatch"
        assert reason(verifier, token, "/x", NOW, "garbage") == "client-mismatch"
    assert len(verifier._peers) <= 4


def test_cache_can_be_disabled() -> None:
    verifier = TokenVerifier(KEYS, cache_size=0)
    token = sign_token("a", SECRET_A, "/", EXPIRES)
    for _ in range(3):
        assert verifier.verify(token, "/x", NOW, "::1").key_id == "a"
    assert len(verifier._cache) == 0


# --------------------------------------------------------------------------- properties

SEGMENTS = st.sampled_from(["a", "b", "ab", "tos", "tos2", "v720", "seg-1.m4s", "é", "a b"])
PREFIXES = st.builds(
    lambda segs, slash: "/" + "/".join(segs) + ("/" if slash and segs else ""),
    st.lists(SEGMENTS, max_size=3),
    st.booleans(),
)
PATHS = st.builds(
    lambda segs, slash: "/" + "/".join(segs) + ("/" if slash else ""),
    st.lists(SEGMENTS, max_size=4),
    st.booleans(),
)
CLIENT_CLAIMS = st.sampled_from(
    [
        None,
        "203.0.113.7",
        "203.0.113.0/24",
        "203.0.0.0/16",
        "0.0.0.0/0",
        "::ffff:203.0.113.7",
        "2001:db8::1",
        "2001:db8::/32",
        "::/0",
    ]
)
PEERS = st.sampled_from(
    [
        "203.0.113.7",
        "203.0.113.8",
        "203.0.9.1",
        "198.51.100.1",
        "::ffff:203.0.113.7",
        "::ffff:198.51.100.1",
        "2001:db8::1",
        "2001:db8:1::5",
        "2001:db9::1",
        "::1",
        "",
        "garbage",
    ]
)


def model_covers(prefix: str, path: str) -> bool:
    if prefix.endswith("/"):
        return path.startswith(prefix)
    wanted = prefix.split("/")
    return path.split("/")[: len(wanted)] == wanted


def model_client_ok(claim: str | None, peer: str) -> bool:
    if claim is None:
        return True
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    network = ipaddress.ip_network(claim)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped:
        mapped = network.network_address.ipv4_mapped
        network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
    return address.version == network.version and address in network


@given(
    prefix=PREFIXES,
    path=PATHS,
    client=CLIENT_CLAIMS,
    peer=PEERS,
    expires=st.integers(min_value=0, max_value=2**40),
    offset=st.sampled_from([-86400.0, -1.0, -0.5, 0.0, 0.25, 1.0, 86400.0]),
)
@example(prefix="/tos", path="/tos2/a", client=None, peer="::1", expires=10, offset=0.0)
@example(prefix="/tos", path="/tos/a", client=None, peer="::1", expires=10, offset=0.0)
def test_verifies_iff_the_rules_hold(
    prefix: str, path: str, client: str | None, peer: str, expires: int, offset: float
) -> None:
    verifier = TokenVerifier(KEYS)
    token = sign_token("a", SECRET_A, prefix, expires, client)
    assert TOKEN_CHARS.fullmatch(token)
    now = expires + offset
    expected = (
        "expired"
        if now > expires
        else "path-not-covered"
        if not model_covers(prefix, path)
        else "client-mismatch"
        if not model_client_ok(client, peer)
        else None
    )
    if expected is None:
        claims = verifier.verify(token, path, now, peer)
        assert (claims.key_id, claims.expires, claims.prefix) == ("a", expires, prefix)
    else:
        assert reason(verifier, token, path, now, peer) == expected
    # The URL form splits back into exactly this token and path.
    assert split_token_path(f"/t/{token}{path}") == (token, path)


@given(token=st.text(max_size=200), path=st.text(max_size=50), peer=st.text(max_size=40))
def test_arbitrary_text_raises_only_token_error(token: str, path: str, peer: str) -> None:
    verifier = TokenVerifier(KEYS)
    try:
        verifier.verify(token, path, NOW, peer)
    except TokenError as exc:
        assert exc.reason in {
            "malformed",
            "unknown-key",
            "bad-signature",
            "expired",
            "path-not-covered",
            "client-mismatch",
        }
    else:  # pragma: no cover - would need a forged HMAC
        pytest.fail(f"random text verified: {token!r}")


TOKEN_ALPHABET = string.ascii_letters + string.digits + "._~-"


@given(
    token_text=st.text(alphabet=TOKEN_ALPHABET, max_size=120),
    parts=st.lists(
        st.one_of(
            st.sampled_from(["v1", "a", "b", "~", "Lw", "L3Rvcy8", str(EXPIRES)]),
            st.text(alphabet=TOKEN_ALPHABET, max_size=50),
        ),
        min_size=6,
        max_size=6,
    ),
)
def test_token_shaped_text_never_verifies(token_text: str, parts: list[str]) -> None:
    verifier = TokenVerifier(KEYS)
    for candidate in (token_text, ".".join(parts)):
        with pytest.raises(TokenError):
            verifier.verify(candidate, "/tos/x", NOW, "::1")


@given(
    prefix=PREFIXES,
    client=CLIENT_CLAIMS,
    data=st.data(),
)
def test_any_single_character_edit_is_rejected_before_the_claims(
    prefix: str, client: str | None, data: st.DataObject
) -> None:
    token = sign_token("a", SECRET_A, prefix, EXPIRES, client)
    index = data.draw(st.integers(min_value=0, max_value=len(token) - 1))
    replacement = data.draw(st.sampled_from(TOKEN_ALPHABET))
    assume(replacement != token[index])
    edited = token[:index] + replacement + token[index + 1 :]
    with pytest.raises(TokenError) as info:
        TokenVerifier(KEYS).verify(edited, "/", NOW, "203.0.113.7")
    assert info.value.reason in {"malformed", "unknown-key", "bad-signature"}
