"""A read-only view of the store for the heartbeat reporter (adapter, blocking calls).

Theory of operation
-------------------
The reporter runs in the supervisor, beside the workers that own the store. Opening a
:class:`~oca.storage.store.Store` there would mean one more writer taking the disk
locks, cleaning temp areas and possibly rebuilding indexes on its own schedule. It
needs less: which disks work, what they hold, and the ``hits`` column. So it reads the
disks the way a :class:`Store` refreshes without writing: each disk's
``.oca/inventory.json`` is reloaded when its (inode, mtime, size) signature changes,
with no lock (writers replace it by rename, so a read sees the old file or the new),
and each disk is probed every ``storage.disk_check_interval_seconds`` with the same
write/read probe the workers use (:func:`~oca.storage.inventory.probe_disk`).

A disk's verdict is ``ok`` while its probe passes and its index has been read; a
failed probe, or an index that cannot be read while no earlier copy is at hand, fails
it with that reason. A disk whose root was a mount point when first seen and no longer
is one has lost its filesystem and fails; one whose filesystem is full stays ``ok``
(it serves what it holds) with a "full: ..." reason. A disk that the workers' read-error
limit holds failed (:mod:`oca.storage.errorlimit`, recorded on the disk) is failed here
too, with that reason, for as long as the hold lasts. An index that is momentarily
missing or corrupt after it was read once keeps its last copy: the workers rebuild it,
and the next signature change brings the new one. The served set is, as in the store,
the union of the healthy disks' records; a path's request total is the highest
``hits`` among the disks holding it (see :func:`oca.health.inventory.request_counts`
for why).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from typing import Literal

from oca.config import StorageConfig
from oca.errors import StorageError
from oca.health.verdict import DiskHealth
from oca.storage.errorlog import held_reason
from oca.storage.inventory import (
    DiskInventory,
    DiskLayout,
    FileSignature,
    describe_os_error,
    file_signature,
    probe_disk,
)

__all__ = ["DiskWatch", "StoreView"]


@dataclass(frozen=True, slots=True)
class StoreView:
    """The disks' verdicts and, when anything changed, the served paths' totals."""

    disks: tuple[DiskHealth, ...]
    version: int  # grows when the served set or any total may have changed
    totals: dict[str, int]  # path -> request total; keys = the served set
    joined: frozenset[str]  # paths held by disks that (re)joined at this version


class _Disk:
    __slots__ = ("capacity", "fs_total", "hits", "layout", "mount_point", "note", "probe_ok",
                 "reason", "root", "signature", "since_probe", "state", "tier", "used")  # fmt: skip

    def __init__(self, root: str, tier: str, capacity: int) -> None:
        self.root = root
        self.tier = tier
        self.layout = DiskLayout(root)
        self.capacity = capacity  # 0 = the filesystem's size
        self.fs_total = 0
        # From the last index read (records are not kept: path -> hits is all we need).
        self.hits: dict[str, int] | None = None
        self.used = 0
        self.signature: FileSignature | None = None
        self.state: Literal["ok", "failed"] = "failed"
        self.reason = "not checked yet"
        self.probe_ok = False
        self.since_probe = float("-inf")
        self.mount_point = False  # its root was a mount point when its probe passed
        self.note = ""  # what limits it while ok ("full: ..."), from the probe


class DiskWatch:
    """See the module docstring. Not thread-safe: call :meth:`poll` from one thread."""

    def __init__(self, cfg: StorageConfig) -> None:
        self._interval = cfg.disk_check_interval_seconds
        self._token = "health-" + secrets.token_hex(4)
        self._disks = [
            _Disk(p, t.name, t.capacity_bytes // len(t.paths) if t.capacity_bytes else 0)
            for t in cfg.tiers
            for p in t.paths
        ]
        self._version = 0
        self._totals: dict[str, int] = {}

    def poll(self, now: float) -> StoreView:
        """Probe the disks that are due, reload the indexes that changed (blocking)."""
        changed = False
        joined: list[_Disk] = []
        for d in self._disks:
            was = d.state
            if now - d.since_probe >= self._interval:
                d.since_probe = now
                probe = probe_disk(d.layout, self._token, mount_point=d.mount_point)
                held = held_reason(d.layout, now) if probe.ok else None
                d.probe_ok = probe.ok and held is None
                if d.probe_ok:
                    d.fs_total = probe.total_bytes
                    d.mount_point = d.mount_point or os.path.ismount(d.root)
                    d.note = probe.reason
                else:
                    d.state, d.reason = "failed", held or probe.reason
            if d.probe_ok:
                reloaded, error = self._reload(d)
                changed |= reloaded
                if error is not None:
                    d.state, d.reason = "failed", error
                elif d.hits is not None:
                    d.state, d.reason = "ok", ""
            if d.state != was:
                changed = True
                if d.state == "ok":
                    joined.append(d)
        if changed:
            self._version += 1
            self._totals = self._merge()
        return StoreView(
            tuple(self._health(d) for d in self._disks),
            self._version,
            self._totals,
            frozenset(p for d in joined if d.hits is not None for p in d.hits),
        )

    def _reload(self, d: _Disk) -> tuple[bool, str | None]:
        """Re-read ``d``'s index if its file changed: (whether it was re-read, the reason
        to fail the disk or None)."""
        missing = None if d.hits is not None else "its inventory has not been written yet"
        try:
            sig = file_signature(d.layout.inventory)
            if sig is None:
                return False, missing
            if d.hits is not None and sig == d.signature:
                return False, None
            inv = DiskInventory.load(d.root, disk=d.root, tier=d.tier)
        except FileNotFoundError:
            return False, missing
        except OSError as exc:
            return False, f"cannot read its inventory: {describe_os_error(exc)}"
        except StorageError as exc:  # corrupt or mid-rebuild: the workers rebuild it
            return False, None if d.hits is not None else f"its inventory is unusable: {exc}"
        d.hits = {path: rec.hits for path, rec in inv.records.items()}
        d.used = inv.used_bytes
        d.signature = inv.signature
        return True, None

    def _merge(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for d in self._disks:
            if d.state != "ok" or d.hits is None:
                continue
            for path, hits in d.hits.items():
                seen = totals.get(path)
                if seen is None or hits > seen:
                    totals[path] = hits
        return totals

    def _health(self, d: _Disk) -> DiskHealth:
        return DiskHealth(
            d.tier,
            d.root,
            d.state,
            d.reason if d.state != "ok" else d.note,
            d.capacity or d.fs_total,
            d.used,
            len(d.hits) if d.hits is not None else 0,
        )
