"""Run one store operation and SIGKILL the process at a chosen instant inside it.

Random kills rarely land in a window a few microseconds wide, such as the one between
saving a disk's index and unlinking the object file an operation removes. This module
makes the kill land there: it wraps ``os.unlink`` so that the first unlink of a file
under a disk's ``objects/`` sends SIGKILL to this very process before anything is
unlinked (the kill itself is real: no handler, no cleanup runs), then runs the real
operation on the real store::

    python -m tests.reliability.crash_inject -c oca.toml remove /titles/a/seg-1.m4s
    python -m tests.reliability.crash_inject -c oca.toml move /titles/a/seg-1.m4s ssd

The caller then opens the store as the next process would and checks what is on disk.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from oca.config import load_config
from oca.storage.store import Store


def _kill_at_object_unlink() -> None:
    real = os.unlink

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        if f"{os.sep}objects{os.sep}" in os.fsdecode(path):
            os.kill(os.getpid(), signal.SIGKILL)
        real(path, *args, **kwargs)

    os.unlink = unlink  # type: ignore[assignment]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.reliability.crash_inject")
    ap.add_argument("-c", "--config", required=True)
    ap.add_argument("op", choices=("remove", "move"))
    ap.add_argument("path")
    ap.add_argument("tier", nargs="?", default="")
    args = ap.parse_args(argv)
    with Store.open(load_config(args.config).storage) as store:
        _kill_at_object_unlink()
        if args.op == "remove":
            store.remove(args.path)
        else:
            store.move(args.path, args.tier)
    return 0  # not reached when the operation unlinks an object file


if __name__ == "__main__":
    sys.exit(main())
