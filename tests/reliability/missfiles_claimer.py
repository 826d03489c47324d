"""One of several processes racing for the miss path's transfer lock of one object.

Run as ``python -m tests.reliability.missfiles_claimer LOCK_DIR ROUNDS``: ``ROUNDS``
times, claim the transfer of one fixed path with
:meth:`oca.peering.misses.SharedTransfer.claim`. As the leader, create the file
``LOCK_DIR/../leader`` with ``O_EXCL`` (it fails if another process leads at the same
time), keep it for a moment, remove it and release the transfer (which removes the
transfer's files); as a follower, read the state once and let go. Prints one JSON line:
``{"leader": n, "followed": n, "overlaps": n}``, overlaps being the rounds in which
another leader's marker was already there.
"""

from __future__ import annotations

import os
import sys
import time

import orjson

from oca.peering.misses import SharedTransfer
from oca.peering.transfer import Transfer

PATH = "/titles/race/v1/seg-001.m4s"


def main(argv: list[str]) -> int:
    lock_dir, rounds = argv[0], int(argv[1])
    marker = os.path.join(os.path.dirname(lock_dir), "leader")
    counts = {"leader": 0, "followed": 0, "overlaps": 0}
    for _ in range(rounds):
        lock = SharedTransfer.claim(lock_dir, PATH)
        if not lock.leader:
            lock.observe(Transfer(PATH, None))
            lock.close()
            counts["followed"] += 1
            continue
        counts["leader"] += 1
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            counts["overlaps"] += 1
            fd = -1
        time.sleep(0.0002)
        if fd >= 0:
            os.close(fd)
            os.unlink(marker)
        t = Transfer(PATH, None)
        t.state = "done"
        lock.release(t)
    sys.stdout.write(orjson.dumps(counts).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
