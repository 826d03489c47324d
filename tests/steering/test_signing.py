"""steering.signing: tokens byte-identical to the appliance's, verified by its verifier."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oca.auth.tokens import TokenVerifier, sign_token, split_token_path
from oca.errors import TokenError
from steering.signing import Signer, SigningError, canonical_client, split_signed_path

SECRET_A = bytes(range(32))
SECRET_B = bytes(range(100, 140))
EXPIRES = 1_800_000_000
NOW = EXPIRES - 60


def test_token_matches_the_appliance_format() -> None:
    signer = Signer({"a": SECRET_A.hex()}, "a")
    token = signer.token("/titles/tos/", EXPIRES)
    assert token == sign_token("a", SECRET_A, "/titles/tos/", EXPIRES)
    assert token.startswith(f"v1.a.{EXPIRES}.L3RpdGxlcy90b3Mv.~.")
    claims = TokenVerifier({"a": SECRET_A}).verify(token, "/titles/tos/v1/1.m4s", NOW, "192.0.2.1")
    assert claims.prefix == "/titles/tos/" and claims.expires == EXPIRES


def test_signed_base_and_url() -> None:
    signer = Signer({"a": SECRET_A}, "a")
    base = signer.signed_base("http://10.1.0.1:8080/", "/titles/tos/", EXPIRES)
    token = signer.token("/titles/tos/", EXPIRES)
    assert base == f"http://10.1.0.1:8080/t/{token}/titles/tos/"
    url = signer.signed_url("https://[2001:db8::1]:8443", "/titles/tos/a b.m4s", EXPIRES)
    assert url.startswith("https://[2001:db8::1]:8443/t/v1.a.")
    assert url.endswith("/titles/tos/a%20b.m4s")
    assert signer.signed_path("/titles/tos/v/1.m4s", EXPIRES).endswith("/titles/tos/v/1.m4s")


def test_rotation_several_keys_one_signs() -> None:
    old_and_new = Signer({"old": SECRET_A, "new": SECRET_B.hex()}, "old")
    rotated = old_and_new.with_signing_key("new")
    assert rotated.key_ids == frozenset({"old", "new"}) and rotated.signing_key_id == "new"
    token = rotated.token("/titles/tos/", EXPIRES)
    assert token.startswith("v1.new.")
    both = TokenVerifier({"old": SECRET_A, "new": SECRET_B})
    assert both.verify(token, "/titles/tos/x", NOW, "192.0.2.1").key_id == "new"
    with pytest.raises(TokenError) as info:
        TokenVerifier({"old": SECRET_A}).verify(token, "/titles/tos/x", NOW, "192.0.2.1")
    assert info.value.reason == "unknown-key"


def test_client_binding() -> None:
    signer = Signer({"a": SECRET_A}, "a")
    token = signer.token("/titles/tos/", EXPIRES, client="::ffff:203.0.113.7/120")
    verifier = TokenVerifier({"a": SECRET_A})
    assert verifier.verify(token, "/titles/tos/x", NOW, "203.0.113.200").client == "203.0.113.0/24"
    with pytest.raises(TokenError) as info:
        verifier.verify(token, "/titles/tos/x", NOW, "198.51.100.1")
    assert info.value.reason == "client-mismatch"


@pytest.mark.parametrize(
    ("keys", "signing", "field"),
    [
        ({}, "a", "keys"),
        ({"a": "zz" * 32}, "a", "keys[a]"),
        ({"a": "00" * 31}, "a", "keys[a]"),
        ({"a": b"short"}, "a", "keys[a]"),
        ({"bad id": SECRET_A}, "bad id", "keys"),
        ({"a": SECRET_A}, "b", "signing_key_id"),
    ],
)
def test_bad_keys(keys: dict[str, bytes | str], signing: str, field: str) -> None:
    with pytest.raises(SigningError) as info:
        Signer(keys, signing)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda s: s.token("titles/", EXPIRES), "prefix"),
        (lambda s: s.token("/t/", -1), "expires"),
        (lambda s: s.token("/t/", True), "expires"),
        (lambda s: s.token("/t/", 10**19), "expires"),
        (lambda s: s.token("/t/", EXPIRES, client="fe80::1%eth0"), "client"),
        (lambda s: s.token("/t/", EXPIRES, client="nope"), "client"),
        (lambda s: s.signed_base("http://h:1/cdn", "/t/", EXPIRES), "base_url"),
        (lambda s: s.signed_base("ftp://h", "/t/", EXPIRES), "base_url"),
        (lambda s: s.signed_path("rel", EXPIRES), "path"),
    ],
)
def test_bad_arguments(call: object, field: str) -> None:
    signer = Signer({"a": SECRET_A}, "a")
    with pytest.raises(SigningError) as info:
        call(signer)  # type: ignore[operator]
    assert info.value.field == field


prefixes = st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=0, max_size=30).map(
    lambda s: "/" + s
)
clients = st.one_of(
    st.none(),
    st.ip_addresses().map(str),
    st.tuples(st.ip_addresses(v=4), st.integers(0, 32)).map(lambda t: f"{t[0]}/{t[1]}"),
    st.tuples(st.ip_addresses(v=6), st.integers(0, 128)).map(lambda t: f"{t[0]}/{t[1]}"),
)


@given(prefixes, st.integers(0, 10**19 - 1), clients, st.sampled_from(["a", "k-2_X"]))
def test_identical_to_oca_sign_token(
    prefix: str, expires: int, client: str | None, key_id: str
) -> None:
    signer = Signer({key_id: SECRET_B}, key_id)
    assert signer.token(prefix, expires, client) == sign_token(
        key_id, SECRET_B, prefix, expires, client
    )
    if client is not None:
        assert canonical_client(client) == canonical_client(canonical_client(client))


@given(st.text(max_size=40))
def test_split_matches_oca(path: str) -> None:
    assert split_signed_path(path) == split_token_path(path)
