"""Tests of the tiered object store, on real files in per-test temporary directories."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from oca.config import StorageConfig, TierConfig


def make_config(
    tmp: Path,
    *,
    ssd: int = 2,
    hdd: int = 1,
    ssd_capacity: int = 0,
    hdd_capacity: int = 0,
) -> StorageConfig:
    """Two tiers of disks, each disk a directory under ``tmp``."""
    tiers = [TierConfig("ssd", tuple(str(tmp / f"ssd{i}") for i in range(ssd)), ssd_capacity)]
    if hdd:
        tiers.append(
            TierConfig("hdd", tuple(str(tmp / f"hdd{i}") for i in range(hdd)), hdd_capacity)
        )
    return StorageConfig(tiers=tuple(tiers))


def write_source(directory: Path, name: str, data: bytes) -> str:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def xattrs_supported(directory: Path) -> bool:
    probe = directory / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.oca.test", b"1")
    except OSError:
        return False
    finally:
        probe.unlink()
    return True
