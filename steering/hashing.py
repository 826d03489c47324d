"""Rendezvous (highest-random-weight) hashing of titles onto appliances.

Theory of operation
-------------------
Every (title, appliance) pair gets a pseudo-random weight; a title's appliances, in
order of preference, are the candidates sorted by that weight, highest first
(Thaler and Ravishankar, "Using name-based mappings to increase hit rates", IEEE/ACM
ToN 1998). Adding or removing one appliance changes a title's order only by inserting
or deleting that appliance, so only the titles for which it ranks among the first few
move, and no table has to be kept or shared: every steering replica computes the same
order from the names alone.

Fill planning (which appliances of a site hold a title) and ranking (which of them a
player is sent to) use this one function, so players are steered to the appliances
the title was filled onto.

The weight is the BLAKE2b digest (8 bytes) of ``title_id + "\\0" + appliance_id`` in
UTF-8, read as a big-endian unsigned integer. Ties (equal weights are possible but
unlikely) are broken by appliance id, so the order is total.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["rendezvous_order", "rendezvous_weight"]


def rendezvous_weight(title_id: str, appliance_id: str) -> int:
    """The weight of ``appliance_id`` for ``title_id``: an unsigned 64-bit integer."""
    digest = hashlib.blake2b(f"{title_id}\0{appliance_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_order(title_id: str, appliance_ids: Iterable[str]) -> list[str]:
    """``appliance_ids`` in order of preference for ``title_id``: highest weight first,
    ties by appliance id."""
    head = title_id.encode() + b"\0"
    blake2b = hashlib.blake2b
    keyed = [
        (-int.from_bytes(blake2b(head + a.encode(), digest_size=8).digest(), "big"), a)
        for a in appliance_ids
    ]  # the same weight as rendezvous_weight, without its per-call overhead
    keyed.sort()
    return [a for _, a in keyed]
