"""Bloom filter: no false negatives, the measured false-positive rate, sizing, the wire contract."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oca.peering.bloom import BloomFilter

GOLDEN_KEY = "/titles/a/seg-1.m4s"


def positions_by_hand(key: str, m: int, k: int) -> list[int]:
    """The documented double-hashing scheme, written out independently of the module."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()
    h1 = int.from_bytes(digest[:8], "little")
    h2 = int.from_bytes(digest[8:], "little") | 1
    return [(h1 + i * h2) % m for i in range(k)]


# --------------------------------------------------------------------------- membership


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(st.text(max_size=40), max_size=300),
    fpr=st.sampled_from([0.5, 0.1, 0.01, 0.001]),
)
def test_no_false_negatives(keys: list[str], fpr: float) -> None:
    bloom = BloomFilter.for_capacity(len(keys), fpr)
    for key in keys:
        bloom.add(key)
    for key in keys:
        assert key in bloom


def test_measured_false_positive_rate_is_near_the_target() -> None:
    bloom = BloomFilter.for_capacity(20_000, 0.01)
    for i in range(20_000):
        bloom.add(f"/titles/t{i % 97}/v720/seg-{i:06d}.m4s")
    others = [f"/titles/other{i % 89}/v1080/seg-{i:06d}.m4s" for i in range(20_000)]
    false_positives = sum(key in bloom for key in others)
    assert false_positives / len(others) < 0.02


def test_empty_filter_holds_nothing() -> None:
    bloom = BloomFilter.for_capacity(100)
    assert "/a" not in bloom
    assert "" not in bloom


@pytest.mark.parametrize("key", [None, 1, b"/a", ("/a",)])
def test_non_string_keys_are_never_members(key: object) -> None:
    bloom = BloomFilter(64, 3, b"\xff" * 8)  # every bit set: any str is a member
    assert "/anything" in bloom
    assert key not in bloom


@settings(max_examples=100, deadline=None)
@given(keys=st.lists(st.text(max_size=30), max_size=100), probes=st.lists(st.text(max_size=30)))
def test_bytes_round_trip_preserves_membership(keys: list[str], probes: list[str]) -> None:
    bloom = BloomFilter.for_capacity(max(len(keys), 1), 0.05)
    for key in keys:
        bloom.add(key)
    copy = BloomFilter.from_bytes(bloom.m_bits, bloom.k, bloom.to_bytes())
    assert copy == bloom
    assert copy.to_bytes() == bloom.to_bytes()
    for key in keys + probes:
        assert (key in copy) == (key in bloom)


def test_from_bytes_copies_its_input() -> None:
    raw = bytearray(8)
    bloom = BloomFilter.from_bytes(64, 3, raw)
    bloom.add(GOLDEN_KEY)
    assert raw == bytearray(8)


# --------------------------------------------------------------------------- sizing


@pytest.mark.parametrize(
    ("n", "fpr", "m_bits", "k"),
    [
        # -1000 ln 0.01 / ln(2)^2 = 9585.06 -> 9586 -> 9592 (multiple of 8);
        # k = round(9592 / 1000 * ln 2) = round(6.649) = 7
        (1000, 0.01, 9592, 7),
        # -100 ln 0.001 / ln(2)^2 = 1437.76 -> 1438 -> 1440; k = round(9.981) = 10
        (100, 0.001, 1440, 10),
        # 9.59 -> 10 -> at least 64 bits; k = round(64 ln 2) = 44 -> clamped to 16
        (1, 0.01, 64, 16),
        # n <= 0 is sized as n = 1
        (0, 0.01, 64, 16),
        (-5, 0.01, 64, 16),
        # -10000 ln 0.05 / ln(2)^2 = 62352.24 -> 62353 -> 62360; k = round(4.322) = 4
        (10_000, 0.05, 62360, 4),
        # -1e6 ln 0.9 / ln(2)^2 = 219292.1 -> 219293 -> 219296; k = round(0.152) = 0 -> 1
        (1_000_000, 0.9, 219_296, 1),
    ],
)
def test_for_capacity_sizing(n: int, fpr: float, m_bits: int, k: int) -> None:
    bloom = BloomFilter.for_capacity(n, fpr)
    assert (bloom.m_bits, bloom.k) == (m_bits, k)
    assert bloom.to_bytes() == bytes(m_bits // 8)


@pytest.mark.parametrize("fpr", [0.0, 1.0, -0.1, 1.5])
def test_for_capacity_rejects_impossible_rates(fpr: float) -> None:
    with pytest.raises(ValueError, match="fpr"):
        BloomFilter.for_capacity(100, fpr)


@pytest.mark.parametrize(
    ("m_bits", "k", "bits", "match"),
    [
        (0, 3, None, "m_bits"),
        (-8, 3, None, "m_bits"),
        (63, 3, None, "m_bits"),
        (12, 3, None, "m_bits"),
        (True, 3, None, "m_bits"),
        (64, 0, None, "k must"),
        (64, 33, None, "k must"),
        (64, True, None, "k must"),
        (64, 3, b"\x00" * 7, "bits must be 8 bytes"),
        (64, 3, b"\x00" * 9, "bits must be 8 bytes"),
        (64, 3, "\x00" * 8, "bits must be bytes"),
    ],
)
def test_constructor_errors(m_bits: int, k: int, bits: bytes | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BloomFilter(m_bits, k, bits)


def test_constructor_limits_are_inclusive() -> None:
    assert BloomFilter(8, 1).k == 1
    assert BloomFilter(8, 32).k == 32
    assert BloomFilter(8, 1, bytearray(1)).m_bits == 8


# --------------------------------------------------------------------------- wire contract


def test_golden_vector() -> None:
    """Peers on other versions read these bits: a change here is a wire format change."""
    bloom = BloomFilter(64, 3)
    bloom.add(GOLDEN_KEY)

    positions = positions_by_hand(GOLDEN_KEY, 64, 3)
    assert positions == [29, 0, 35]
    expected = bytearray(8)
    for b in positions:
        expected[b >> 3] |= 1 << (b & 7)
    assert bloom.to_bytes() == bytes(expected)
    assert bloom.to_bytes() == bytes.fromhex("0100002008000000")


@settings(max_examples=100, deadline=None)
@given(
    key=st.text(max_size=60),
    m_bytes=st.integers(min_value=1, max_value=64),
    k=st.integers(min_value=1, max_value=32),
)
def test_bits_set_are_exactly_the_documented_positions(key: str, m_bytes: int, k: int) -> None:
    m = m_bytes * 8
    bloom = BloomFilter(m, k)
    bloom.add(key)
    expected = bytearray(m_bytes)
    for b in positions_by_hand(key, m, k):
        expected[b >> 3] |= 1 << (b & 7)
    assert bloom.to_bytes() == bytes(expected)
