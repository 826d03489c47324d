"""What "the inventory matches the disks" means after a crash, checked on real disks.

Theory of operation
-------------------
The store's design (:mod:`oca.storage.inventory`) gives each disk root ``R``::

    R/objects/<path>        the bytes of /<path>, exactly as served
    R/.oca/inventory.json   the index: path, size, sha256 of every object
    R/.oca/journal.json     paths a writer is committing; empty when no commit is unfinished
    R/.oca/lock             flock taken by every writer around index read-modify-write
    R/.oca/tmp/             <token>.lock (flocked by its live owner) and <token>-<n>.part
    R/.oca/fill/<sha>.part  a fill's resumable download of the object with that sha256
    R/.oca/miss/<pid>-<hex>.part  a worker's miss-path download
    R/.oca/quarantine/      objects that failed verification

and every process that opens the store finishes what a dead writer left: it replays the
journal, deletes temp files no live writer owns and index temp files; a worker deletes the
miss part files of workers that are gone; a fill deletes part files its plan will not
resume. So once the killed process has been restarted (and has opened the store), a
disk checked under its writer lock (no commit can be half done while we hold it) must
satisfy all of this:

1. ``inventory.json`` loads and validates; ``journal.json`` is empty.
2. Every listed object's file exists, is a regular file of the recorded size, and hashes
   to the recorded sha256, which is the source file's sha256; a ``user.oca.sha256``
   xattr, when it is valid for the file's mtime, names the same digest.
3. Every regular file under ``objects/`` is listed (no unlisted complete object).
4. ``.oca/tmp`` holds only lock files some live process holds (``/proc/locks``) and the
   part files of those tokens; ``.oca`` holds no index temp file and no corrupt index
   set aside; ``quarantine/`` is empty.
5. Fill part files are named for an object of the current manifest, no longer than it,
   and their bytes are the first bytes of that object (a resumable prefix).
6. Miss part files belong to a live worker of the appliance.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from oca.errors import InventoryCorrupt
from oca.storage.inventory import (
    DiskInventory,
    DiskLayout,
    disk_lock,
    read_journal_entries,
    read_sha256_xattr,
    scan_objects,
)

_TMP_PART = re.compile(r"([0-9a-f]+)-\d+\.part")
_MISS_PART = re.compile(r"(\d+)-[0-9a-f]+\.part")
_META_ALLOWED = {"lock", "inventory.json", "journal.json", "tmp", "quarantine", "fill", "miss"}


@dataclass
class DiskCheck:
    root: str
    objects: int = 0
    bytes: int = 0
    fill_parts: int = 0
    miss_parts: int = 0
    probes: int = 0
    listed: dict[str, str] = field(default_factory=dict)  # path -> sha256
    problems: list[str] = field(default_factory=list)


def held_flocks() -> set[tuple[int, int, int]]:
    """(major, minor, inode) of every file someone holds a flock on (``/proc/locks``)."""
    out: set[tuple[int, int, int]] = set()
    with open("/proc/locks") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) < 6 or parts[1] != "FLOCK" or parts[2] == "->":
                continue
            major, minor, inode = parts[5].split(":")
            out.add((int(major, 16), int(minor, 16), int(inode)))
    return out


def _lock_held(path: str, held: set[tuple[int, int, int]]) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return True  # gone meanwhile: nothing left behind
    return (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) in held


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def check_disk(
    root: Path,
    sources: Mapping[str, bytes],
    *,
    live_workers: Collection[int],
    fill_objects: Mapping[str, str] | None = None,  # sha256 -> path of the current manifest
) -> DiskCheck:
    """Check one disk of a running appliance (see the module docstring)."""
    layout = DiskLayout(str(root))
    out = DiskCheck(str(root))
    bad = out.problems.append
    with disk_lock(layout):
        commits, removals = read_journal_entries(layout)
        if commits or removals:
            bad(f"{root}: the journal still lists {commits + removals}: left unfinished")
        try:
            inv = DiskInventory.load(str(root))
        except (OSError, InventoryCorrupt) as exc:
            bad(f"{root}: inventory.json does not load: {exc}")
            return out
        files = {p: (f, st) for p, f, st in scan_objects(layout)}
        for path, rec in inv.records.items():
            out.listed[path] = rec.sha256
            got = files.get(path)
            if got is None:
                bad(f"{root}: {path} is listed but has no file")
                continue
            file, st = got
            if st.st_size != rec.size:
                bad(f"{root}: {path} is listed with {rec.size} bytes, its file has {st.st_size}")
                continue
            digest = _sha256(file)
            out.objects += 1
            out.bytes += st.st_size
            src = sources.get(path)
            want = hashlib.sha256(src).hexdigest() if src is not None else None
            if digest != rec.sha256:
                bad(f"{root}: {path} hashes to {digest[:12]}, listed as {rec.sha256[:12]}")
            elif want != digest:
                bad(f"{root}: {path} is not the source's bytes ({digest[:12]} vs {want})")
            tag = read_sha256_xattr(file, st.st_mtime_ns)
            if tag is not None and tag != digest:
                bad(f"{root}: {path} carries a sha256 xattr {tag[:12]} for other bytes")
        for path in files.keys() - inv.records.keys():
            bad(f"{root}: {path} is a file under objects/ that the inventory does not list")
        _check_meta(layout, out)
        _check_fill_parts(layout, sources, fill_objects or {}, out)
        _check_miss_parts(layout, live_workers, out)
    return out


def _check_meta(layout: DiskLayout, out: DiskCheck) -> None:
    bad = out.problems.append
    for name in os.listdir(layout.meta):
        if name.startswith("probe-"):
            out.probes += 1  # a live process's health probe (stale ones go after an hour)
        elif name not in _META_ALLOWED:
            bad(f"{layout.root}: .oca/{name} is left over")
    if os.listdir(layout.quarantine):
        bad(f"{layout.root}: something was quarantined: {os.listdir(layout.quarantine)}")
    names = os.listdir(layout.tmp)
    held = held_flocks()
    dead = {n for n in names if n.endswith(".lock") and not _lock_held(f"{layout.tmp}/{n}", held)}
    if dead:  # a writer may be between creating its lock file and locking it: look again
        time.sleep(0.3)
        held = held_flocks()
        dead = {n for n in dead if not _lock_held(f"{layout.tmp}/{n}", held)}
    live = {n[: -len(".lock")] for n in names if n.endswith(".lock") and n not in dead}
    for name in sorted(dead):
        bad(f"{layout.root}: .oca/tmp/{name} belongs to a writer that is gone")
    for name in names:
        if name.endswith(".lock"):
            continue
        m = _TMP_PART.fullmatch(name)
        owned = m is not None and m.group(1) in live
        if not owned and os.path.exists(f"{layout.tmp}/{name}"):
            bad(f"{layout.root}: .oca/tmp/{name} has no live owner")


def _check_fill_parts(layout: DiskLayout, sources: Mapping[str, bytes],
                      fill_objects: Mapping[str, str], out: DiskCheck) -> None:  # fmt: skip
    folder = os.path.join(layout.root, ".oca", "fill")
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return
    for name in names:
        out.fill_parts += 1
        sha = name.removesuffix(".part")
        path = fill_objects.get(sha)
        if path is None:
            out.problems.append(f"{layout.root}: .oca/fill/{name} is no object of the manifest")
            continue
        try:
            data = Path(folder, name).read_bytes()
        except FileNotFoundError:
            continue  # committed meanwhile (a fill renames its part into the store)
        src = sources[path]
        if len(data) > len(src) or data != src[: len(data)]:
            out.problems.append(
                f"{layout.root}: .oca/fill/{name} ({len(data)} bytes) is not a prefix of {path}"
            )


def _check_miss_parts(layout: DiskLayout, live_workers: Collection[int], out: DiskCheck) -> None:
    folder = os.path.join(layout.root, ".oca", "miss")
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return
    for name in names:
        out.miss_parts += 1
        m = _MISS_PART.fullmatch(name)
        owned = m is not None and int(m.group(1)) in live_workers
        if not owned and os.path.exists(os.path.join(folder, name)):
            out.problems.append(
                f"{layout.root}: .oca/miss/{name} belongs to no live worker "
                f"(live: {sorted(live_workers)})"
            )
