"""Peer request authentication: round trips, every failure reason, rotation, strict parsing."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oca.errors import OcaError
from oca.peering.auth import (
    PEER_HEADER,
    PEER_HEADER_LOWER,
    PeerAuthError,
    is_appliance_id,
    sign_peer,
    verify_peer,
)

OLD_KEY = bytes(range(32))
NEW_KEY = bytes(range(200, 232))
KEYS = [OLD_KEY]
NOW = 1_700_000_000.0
EXPIRES = int(NOW) + 60
PATH = "/titles/tos/v720/seg-00042.m4s"
HEADER_RE = re.compile(r"id=[A-Za-z0-9._-]{1,64},exp=(0|[1-9][0-9]*),sig=[0-9a-f]{64}")


def reason(
    value: str,
    method: str = "GET",
    path: str = PATH,
    *,
    now: float = NOW,
    keys: list[bytes] = KEYS,
    max_ttl_seconds: float = 300.0,
) -> str:
    """The reason verification fails with."""
    with pytest.raises(PeerAuthError) as info:
        verify_peer(value, method, path, now, keys, max_ttl_seconds=max_ttl_seconds)
    assert isinstance(info.value, OcaError)
    return info.value.reason


def valid(appliance: str = "oca-1.site", expires: int = EXPIRES) -> str:
    return sign_peer(OLD_KEY, appliance, "GET", PATH, expires)


# --------------------------------------------------------------------------- round trip


def test_header_names() -> None:
    assert PEER_HEADER == "X-Oca-Peer"
    assert PEER_HEADER.lower().encode("ascii") == PEER_HEADER_LOWER


def test_round_trip() -> None:
    value = valid()
    assert verify_peer(value, "GET", PATH, NOW, KEYS) == "oca-1.site"


def test_wire_format_is_the_documented_hmac() -> None:
    value = sign_peer(OLD_KEY, "oca-1", "HEAD", "/a/b", 1234)
    message = b"oca-peer-v1\noca-1\nHEAD\n/a/b\n1234"
    sig = hmac.new(OLD_KEY, message, hashlib.sha256).hexdigest()
    assert value == f"id=oca-1,exp=1234,sig={sig}"


def test_non_ascii_path_is_signed_as_utf8() -> None:
    path = "/titles/été/seg-1.m4s"
    value = sign_peer(OLD_KEY, "a", "GET", path, EXPIRES)
    message = f"oca-peer-v1\na\nGET\n{path}\n{EXPIRES}".encode()
    assert value.endswith(hmac.new(OLD_KEY, message, hashlib.sha256).hexdigest())
    assert verify_peer(value, "GET", path, NOW, KEYS) == "a"


@settings(max_examples=200, deadline=None)
@given(
    appliance=st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True),
    method=st.sampled_from(["GET", "HEAD"]),
    path=st.text(min_size=1).filter(lambda p: "\n" not in p).map(lambda p: "/" + p),
    ttl=st.integers(min_value=0, max_value=300),
)
def test_round_trip_property(appliance: str, method: str, path: str, ttl: int) -> None:
    expires = int(NOW) + ttl
    value = sign_peer(NEW_KEY, appliance, method, path, expires)
    assert HEADER_RE.fullmatch(value)
    assert verify_peer(value, method, path, NOW, [OLD_KEY, NEW_KEY]) == appliance
    assert reason(value, method, path + "x", keys=[OLD_KEY, NEW_KEY]) == "bad-signature"


# --------------------------------------------------------------------------- tampering


def test_tampered_method() -> None:
    assert reason(valid(), method="HEAD") == "bad-signature"


def test_tampered_path() -> None:
    assert reason(valid(), path="/titles/tos/v720/seg-00043.m4s") == "bad-signature"


def test_tampered_appliance() -> None:
    value = valid("oca-1").replace("id=oca-1,", "id=oca-2,")
    assert reason(value) == "bad-signature"


def test_tampered_expiry() -> None:
    value = valid().replace(f"exp={EXPIRES},", f"exp={EXPIRES + 1},")
    assert reason(value) == "bad-signature"


def test_tampered_signature() -> None:
    value = valid()
    last = value[-1]
    assert reason(value[:-1] + ("0" if last != "0" else "1")) == "bad-signature"


def test_wrong_key() -> None:
    assert reason(valid(), keys=[NEW_KEY]) == "bad-signature"


# --------------------------------------------------------------------------- time


def test_expired() -> None:
    value = valid(expires=int(NOW) - 1)
    assert reason(value) == "expired"


def test_valid_through_the_expiry_second() -> None:
    value = valid(expires=int(NOW))
    assert verify_peer(value, "GET", PATH, NOW, KEYS) == "oca-1.site"
    assert reason(value, now=NOW + 0.5) == "expired"


def test_too_far_in_future() -> None:
    value = valid(expires=int(NOW) + 301)
    assert reason(value) == "too-far-in-future"
    assert verify_peer(value, "GET", PATH, NOW + 1, KEYS) == "oca-1.site"


def test_max_ttl_is_configurable() -> None:
    value = valid(expires=int(NOW) + 10)
    assert reason(value, max_ttl_seconds=5.0) == "too-far-in-future"
    assert verify_peer(value, "GET", PATH, NOW, KEYS, max_ttl_seconds=10.0) == "oca-1.site"


def test_time_checks_come_before_the_signature() -> None:
    forged = f"id=x,exp={int(NOW) - 10},sig={'0' * 64}"
    assert reason(forged) == "expired"


# --------------------------------------------------------------------------- keys


def test_key_rotation_accepts_both_keys() -> None:
    old = sign_peer(OLD_KEY, "oca-1", "GET", PATH, EXPIRES)
    new = sign_peer(NEW_KEY, "oca-1", "GET", PATH, EXPIRES)
    assert old != new
    for keys in ([OLD_KEY, NEW_KEY], [NEW_KEY, OLD_KEY]):
        assert verify_peer(old, "GET", PATH, NOW, keys) == "oca-1"
        assert verify_peer(new, "GET", PATH, NOW, keys) == "oca-1"
    assert reason(old, keys=[NEW_KEY]) == "bad-signature"


def test_no_keys() -> None:
    assert reason(valid(), keys=[]) == "no-key"
    assert reason("garbage", keys=[]) == "no-key"


# --------------------------------------------------------------------------- malformed


SIG = "a" * 64


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        f"id=oca-1,exp={EXPIRES}",
        f"id=oca-1,sig={SIG}",
        f"exp={EXPIRES},sig={SIG}",
        f"exp={EXPIRES},id=oca-1,sig={SIG}",  # fields out of order
        f"id=oca-1,exp={EXPIRES},sig={SIG},x=1",  # an extra field
        f"id=oca-1, exp={EXPIRES}, sig={SIG}",  # spaces
        f" id=oca-1,exp={EXPIRES},sig={SIG}",
        f"id=oca-1,exp={EXPIRES},sig={SIG}\n",
        f"ID=oca-1,exp={EXPIRES},sig={SIG}",
        f"id=,exp={EXPIRES},sig={SIG}",  # empty id
        f"id={'a' * 65},exp={EXPIRES},sig={SIG}",  # id too long
        f"id=oca/1,exp={EXPIRES},sig={SIG}",  # id charset
        f"id=oca 1,exp={EXPIRES},sig={SIG}",
        f"id=océ,exp={EXPIRES},sig={SIG}",
        f"id=oca-1,exp=,sig={SIG}",
        f"id=oca-1,exp=12.5,sig={SIG}",  # non-integer expiry
        f"id=oca-1,exp=-5,sig={SIG}",
        f"id=oca-1,exp=+5,sig={SIG}",
        f"id=oca-1,exp=0{EXPIRES},sig={SIG}",  # leading zero
        f"id=oca-1,exp=1e9,sig={SIG}",
        f"id=oca-1,exp=١٢٣,sig={SIG}",  # non-ASCII digits
        f"id=oca-1,exp={EXPIRES},sig={'a' * 63}",  # short signature
        f"id=oca-1,exp={EXPIRES},sig={'a' * 65}",
        f"id=oca-1,exp={EXPIRES},sig={'A' * 64}",  # uppercase hex
        f"id=oca-1,exp={EXPIRES},sig={'g' * 64}",
        f"id=oca-1,exp={EXPIRES},sig=",
    ],
)
def test_malformed(value: str) -> None:
    assert reason(value) == "malformed"


def test_newline_in_request_method_or_path_is_malformed() -> None:
    assert reason(valid(), path=PATH + "\nx") == "malformed"
    assert reason(valid(), method="GET\n") == "malformed"


# --------------------------------------------------------------------------- signing


@pytest.mark.parametrize(
    ("appliance", "method", "path", "expires", "match"),
    [
        ("", "GET", PATH, EXPIRES, "appliance"),
        ("a" * 65, "GET", PATH, EXPIRES, "appliance"),
        ("oca 1", "GET", PATH, EXPIRES, "appliance"),
        ("oca,1", "GET", PATH, EXPIRES, "appliance"),
        ("océ", "GET", PATH, EXPIRES, "appliance"),
        ("oca-1", "GET", PATH, -1, "expires"),
        ("oca-1", "GET", PATH, 10**19, "expires"),
        ("oca-1", "GET", PATH, True, "expires"),
        ("oca-1", "GET\n", PATH, EXPIRES, "newline"),
        ("oca-1", "GET", PATH + "\n", EXPIRES, "newline"),
    ],
)
def test_sign_rejects_bad_input(
    appliance: str, method: str, path: str, expires: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        sign_peer(OLD_KEY, appliance, method, path, expires)


def test_sign_rejects_an_empty_key() -> None:
    with pytest.raises(ValueError, match="key"):
        sign_peer(b"", "oca-1", "GET", PATH, EXPIRES)


def test_is_appliance_id() -> None:
    assert is_appliance_id("oca-1.site_a")
    assert is_appliance_id("a" * 64)
    assert not is_appliance_id("a" * 65)
    assert not is_appliance_id("")
    assert not is_appliance_id("a\n")
    assert not is_appliance_id(1)


def test_unknown_reason_is_refused() -> None:
    with pytest.raises(ValueError):
        PeerAuthError("nope")  # type: ignore[arg-type]
