"""Which disk of a tier an object goes to: rendezvous (highest random weight) hashing.

Theory of operation
-------------------
Rendezvous hashing (Thaler and Ravishankar, "Using name-based mappings to increase hit
rates", IEEE/ACM Transactions on Networking 6(1), 1998) gives every (disk, object) pair
a pseudo-random score and ranks the disks of a tier by descending score for that object:

    score(d, p) = first 8 bytes of blake2b(d || 0x00 || p), read as an unsigned integer

Properties the store relies on:

- Deterministic and stateless: every process that knows the disk ids computes the same
  ranking, with no table to share or persist.
- Minimal movement: the ranking of a path over a set of disks is the ranking over a
  superset with the extra disks deleted. Removing disk ``d`` therefore changes the first
  choice only of the paths whose first choice was ``d`` (about 1/n of them), and adding a
  disk takes about 1/(n+1) of the paths, all from their previous first choice.
- Uniform: blake2b output is uniform, so each disk comes first for about 1/n of paths.

The whole ranking is returned, not only the winner, so the store can fall through to the
next disk when the first is full or failed. Placement decides where a new object is
written; where an existing object *is* comes from the inventory, so objects never move
just because a disk came or went. The 0x00 separator keeps ("ab", "c") and ("a", "bc")
apart; ties (equal 64-bit scores) break on the disk id so the order is total.

This module is a pure core: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def placement_score(disk_id: str, path: str) -> int:
    """The rendezvous weight of ``disk_id`` for the object ``path`` (higher wins)."""
    data = (
        disk_id.encode("utf-8", "surrogatepass") + b"\x00" + path.encode("utf-8", "surrogatepass")
    )
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def rank_disks(path: str, disk_ids: Sequence[str]) -> list[str]:
    """``disk_ids`` (duplicates dropped) ordered best first for the object ``path``."""
    unique = list(dict.fromkeys(disk_ids))
    return sorted(unique, key=lambda d: (placement_score(d, path), d), reverse=True)
