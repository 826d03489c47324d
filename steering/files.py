"""Atomic file replacement for the service's state files (catalog, fleet, popularity)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable


def write_atomic(path: str, data: bytes, *, prefix: str = ".state-") -> None:
    """Replace ``path`` with ``data`` so a crash leaves the old file or the new one:
    a temporary file in the same directory, fsync, rename, fsync of the directory."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_temp_files(directory: str, prefixes: Iterable[str]) -> list[str]:
    """Delete the temporary files :func:`write_atomic` calls with one of ``prefixes``
    left in ``directory`` when their writer was killed before the rename; the names
    removed. Only the one writer of those files may call this, while it writes none."""
    starts = tuple(prefixes)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    removed = []
    for name in sorted(names):
        if name.startswith(starts) and name.endswith(".tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))
                removed.append(name)
    return removed
