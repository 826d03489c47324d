"""A Bloom filter with a fixed, documented hashing scheme: the peer-summary wire contract.

Theory of operation
-------------------
A Bloom filter (Bloom 1970) answers "is this key in the set?" with no false negatives
and a tunable rate of false positives, in a few bits per key. An appliance publishes
one over the object paths it holds, so a peer at the same site can decide locally,
without a round trip, whether asking that appliance for a missed object is worth it.
A false positive costs one peer request that ends in a 404; a false negative never
happens for a key that was added.

Sizing follows the standard analysis (Broder & Mitzenmacher, "Network Applications of
Bloom Filters: A Survey", Internet Mathematics 1(4), 2004): for ``n`` keys and a target
false-positive rate ``p``, ``m = ceil(-n ln p / (ln 2)^2)`` bits, raised to at least 64
and rounded up to a multiple of 8, and ``k = round(m / n * ln 2)`` probes computed
from that final ``m``, clamped to ``1..16``.

Hashing (the wire contract)
---------------------------
Peers running different software versions exchange the raw bit array, so the bit
positions of a key are part of the wire format and must never change without a new
summary schema version. The ``k`` positions come from double hashing (Kirsch &
Mitzenmacher, "Less Hashing, Same Performance: Building a Better Bloom Filter",
ESA 2006), which keeps the asymptotic false-positive rate of ``k`` independent hashes
while computing only one digest per key::

    d  = blake2b(key.encode("utf-8"), digest_size=16).digest()
    h1 = int.from_bytes(d[:8], "little")
    h2 = int.from_bytes(d[8:], "little") | 1
    bit_i = (h1 + i * h2) % m            for i in range(k)

Bit ``b`` is stored in byte ``b >> 3`` of the array, under the mask ``1 << (b & 7)``
(least significant bit first). ``h2`` is forced odd so that when ``m`` is a power of
two the probe sequence never degenerates to a single position.

This module is pure: no I/O.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

__all__ = ["MAX_K", "BloomFilter"]

MAX_K = 32  # the largest probe count a filter accepts (from the wire or otherwise)
_MAX_SIZED_K = 16  # the largest probe count for_capacity chooses
_MIN_BITS = 64
_LN2 = math.log(2.0)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class BloomFilter:
    """A Bloom filter over ``str`` keys with ``m_bits`` bits and ``k`` probes per key."""

    __slots__ = ("_bits", "_k", "_m")

    def __init__(self, m_bits: int, k: int, bits: bytes | bytearray | None = None) -> None:
        if not _is_int(m_bits) or m_bits <= 0 or m_bits % 8 != 0:
            raise ValueError(f"m_bits must be a positive multiple of 8, got {m_bits!r}")
        if not _is_int(k) or not 1 <= k <= MAX_K:
            raise ValueError(f"k must be an integer in 1..{MAX_K}, got {k!r}")
        if bits is None:
            self._bits = bytearray(m_bits // 8)
        else:
            if not isinstance(bits, bytes | bytearray):
                raise ValueError(f"bits must be bytes, got {type(bits).__name__}")
            if len(bits) != m_bits // 8:
                raise ValueError(
                    f"bits must be {m_bits // 8} bytes for {m_bits} bits, got {len(bits)}"
                )
            self._bits = bytearray(bits)
        self._m = m_bits
        self._k = k

    @classmethod
    def for_capacity(cls, n: int, fpr: float = 0.01) -> BloomFilter:
        """An empty filter sized for ``n`` keys at a false-positive rate of ``fpr``."""
        if not 0.0 < fpr < 1.0:
            raise ValueError(f"fpr must lie strictly between 0 and 1, got {fpr!r}")
        n = max(n, 1)
        m = math.ceil(-n * math.log(fpr) / (_LN2 * _LN2))
        m = max(m, _MIN_BITS)
        m = (m + 7) // 8 * 8
        k = min(max(round(m / n * _LN2), 1), _MAX_SIZED_K)
        return cls(m, k)

    @classmethod
    def from_bytes(cls, m_bits: int, k: int, data: bytes | bytearray) -> BloomFilter:
        """A filter from its wire form; raises ValueError when the parts disagree."""
        return cls(m_bits, k, data)

    @property
    def m_bits(self) -> int:
        """The number of bits in the array."""
        return self._m

    @property
    def k(self) -> int:
        """The number of probes per key."""
        return self._k

    def to_bytes(self) -> bytes:
        """The bit array, ``m_bits // 8`` bytes, least significant bit first."""
        return bytes(self._bits)

    def add(self, key: str) -> None:
        """Set the ``k`` bits of ``key``."""
        bits = self._bits
        for b in self._positions(key):
            bits[b >> 3] |= 1 << (b & 7)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        bits = self._bits
        return all(bits[b >> 3] & (1 << (b & 7)) for b in self._positions(key))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BloomFilter):
            return NotImplemented
        return self._m == other._m and self._k == other._k and self._bits == other._bits

    __hash__ = None  # type: ignore[assignment]  # mutable: equal filters may later differ

    def __repr__(self) -> str:
        return f"BloomFilter(m_bits={self._m}, k={self._k})"

    def _positions(self, key: str) -> Iterator[int]:
        digest = hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()
        h1 = int.from_bytes(digest[:8], "little")
        h2 = int.from_bytes(digest[8:], "little") | 1
        m = self._m
        for i in range(self._k):
            yield (h1 + i * h2) % m
