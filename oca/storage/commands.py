"""The ``oca store`` subcommands: ``import``, ``ls`` and ``verify``.

Each takes the storage configuration and a text stream, prints human output to it and
returns the process exit code; argument parsing and logging setup belong to the CLI
shell. The commands open the store like any other process sharing the disks (another
``oca serve`` may be running), so they go through :class:`Store` and its disk locks and
never touch the files directly.

Exit codes: 0 when everything asked for was done, 1 otherwise (a file could not be
imported, an object failed verification, a disk could not be used).
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from collections.abc import Iterator
from typing import TextIO

import orjson

from oca.config import StorageConfig
from oca.errors import StorageError
from oca.storage.inventory import validate_object_path
from oca.storage.store import PutRequest, Store


def format_bytes(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _open(cfg: StorageConfig, out: TextIO, *, create: bool) -> Store | None:
    try:
        store = Store.open(cfg, create=create)
    except (OSError, StorageError) as exc:
        print(f"error: cannot open the store: {exc}", file=out)
        return None
    if not store.ready:
        print("error: no usable disk:", file=out)
        for s in store.disks():
            print(f"  {s.id} (tier {s.tier}): {s.reason}", file=out)
        store.close()
        return None
    return store


def _report_failed_disks(store: Store, out: TextIO, consequence: str) -> int:
    failed = [s for s in store.disks() if s.state == "failed"]
    for s in failed:
        print(f"# disk {s.id} (tier {s.tier}) is failed: {s.reason}; {consequence}", file=out)
    return len(failed)


def run_import(cfg: StorageConfig, src_dir: str, out: TextIO, *, tier: str | None = None) -> int:
    """Copy every regular file under ``src_dir`` into the store as ``/<relative path>``."""
    if not os.path.isdir(src_dir):
        print(f"error: {src_dir} is not a directory", file=out)
        return 1
    store = _open(cfg, out, create=True)
    if store is None:
        return 1
    with store:
        target = tier if tier is not None else store.tiers[0]
        if target not in store.tiers:
            print(f"error: unknown tier {target!r}; configured: {', '.join(store.tiers)}", file=out)
            return 1
        counts: Counter[str] = Counter()

        def requests() -> Iterator[PutRequest]:
            for path, file, st in _walk(src_dir, out, counts):
                old = store.lookup(path)
                if (
                    old is not None
                    and old.tier == target
                    and old.size == st.st_size
                    and old.mtime == st.st_mtime_ns / 1e9
                ):
                    counts["unchanged"] += 1
                    continue
                yield PutRequest(path, file)

        per_disk: Counter[str] = Counter()
        imported = nbytes = 0
        for outcome in store.put_many(requests(), tier=target):
            if outcome.record is None:
                counts["failed"] += 1
                print(f"error: {outcome.path}: {outcome.error}", file=out)
                continue
            imported += 1
            nbytes += outcome.record.size
            per_disk[outcome.record.disk] += 1
        print(
            f"imported {imported} objects ({format_bytes(nbytes)}) into tier {target}; "
            f"{counts['unchanged']} unchanged, {counts['skipped']} skipped, "
            f"{counts['failed']} failed",
            file=out,
        )
        for disk, n in sorted(per_disk.items()):
            print(f"  {disk}: {n} objects", file=out)
        return 1 if counts["failed"] else 0


#: The appliance reads ``/t/<token>/...`` as a signed URL (see oca.auth.tokens), so
#: an object stored under it could never be addressed.
RESERVED_PREFIX = "/t/"


def _walk(
    src_dir: str, out: TextIO, counts: Counter[str]
) -> Iterator[tuple[str, str, os.stat_result]]:
    """(object path, file, stat) of the regular files under ``src_dir``, sorted."""
    for directory, dirnames, filenames in os.walk(src_dir, onerror=lambda e: _walk_error(e, out)):
        for name in list(dirnames):
            full = os.path.join(directory, name)
            if os.path.islink(full):
                print(f"warning: skipping {full}: symbolic link", file=out)
                counts["skipped"] += 1
                dirnames.remove(name)
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(directory, name)
            try:
                st = os.lstat(full)
            except OSError as exc:
                print(f"error: {full}: {exc.strerror}", file=out)
                counts["failed"] += 1
                continue
            if not stat.S_ISREG(st.st_mode):
                kind = "symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                print(f"warning: skipping {full}: {kind}", file=out)
                counts["skipped"] += 1
                continue
            path = "/" + os.path.relpath(full, src_dir).replace(os.sep, "/")
            why = validate_object_path(path)
            if why is None and path.startswith(RESERVED_PREFIX):
                why = f"{RESERVED_PREFIX} is reserved for signed-URL tokens"
            if why is not None:
                shown = path.encode("utf-8", "backslashreplace").decode("utf-8")
                print(f"error: {shown}: cannot be an object path: {why}", file=out)
                counts["failed"] += 1
                continue
            yield path, full, st


def _walk_error(exc: OSError, out: TextIO) -> None:
    print(f"error: cannot list {exc.filename}: {exc.strerror}", file=out)


def run_ls(cfg: StorageConfig, out: TextIO, *, as_json: bool = False) -> int:
    """List the objects: ``path<TAB>size<TAB>tier<TAB>disk<TAB>sha256 prefix`` per line."""
    store = _open(cfg, out, create=False)
    if store is None:
        return 1
    with store:
        records = sorted(store.records(), key=lambda r: r.path)
        if as_json:
            out.write(orjson.dumps(records, option=orjson.OPT_APPEND_NEWLINE).decode("utf-8"))
            return 0
        _report_failed_disks(store, out, "its objects are not listed")
        for r in records:
            out.write(f"{r.path}\t{r.size}\t{r.tier}\t{r.disk}\t{r.sha256[:12]}\n")
        return 0


def run_rm(cfg: StorageConfig, paths: list[str], out: TextIO) -> int:
    """Remove objects (index first, then the file); exit 1 if any was not held."""
    store = _open(cfg, out, create=False)
    if store is None:
        return 1
    missing = 0
    with store:
        for path in paths:
            try:
                removed = store.remove(path)
            except StorageError as exc:
                print(f"oca store rm: {path}: {exc}", file=out)
                missing += 1
                continue
            if removed:
                print(f"removed {path}", file=out)
            else:
                print(f"not held: {path}", file=out)
                missing += 1
    return 1 if missing else 0


def run_verify(cfg: StorageConfig, out: TextIO, *, quarantine: bool = True) -> int:
    """Re-hash every object; exit 1 if any is bad or a disk could not be verified."""
    store = _open(cfg, out, create=False)
    if store is None:
        return 1
    with store:
        report = store.verify(quarantine=quarantine)
        for p in report.problems:
            label = "warning" if p.kind == "orphan" else "BAD"
            action = f" ({p.action})" if p.action else ""
            print(f"{label} {p.kind}: {p.path} on {p.disk}: {p.detail}{action}", file=out)
        failed = _report_failed_disks(store, out, "its objects were not verified")
        orphans = len(report.problems) - len(report.bad)
        print(
            f"verified {report.objects} objects ({format_bytes(report.bytes)}): "
            f"{len(report.bad)} bad, {report.quarantined} quarantined, "
            f"{orphans} orphan files, {failed} failed disks",
            file=out,
        )
        return 0 if report.ok else 1
