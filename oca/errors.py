"""The exception root of the appliance package.

Errors are mapped to HTTP statuses or CLI exit codes once, at the edge (the protocol
and the CLI), never deep inside the core.
"""

from __future__ import annotations


class OcaError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(OcaError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""

    def __init__(self, key: str, detail: str) -> None:
        self.key = key
        self.detail = detail
        super().__init__(f"{key}: {detail}" if key else detail)


class StorageError(OcaError):
    """A storage operation failed (disk missing, I/O error, bad object)."""


class ObjectNotFound(StorageError):
    """No healthy disk holds the requested object."""


class DiskFailed(StorageError):
    """A disk failed during an operation; the disk has been marked failed."""

    def __init__(self, disk: str, reason: str) -> None:
        self.disk = disk
        self.reason = reason
        super().__init__(f"disk {disk} failed: {reason}")


class IntegrityError(StorageError):
    """Bytes on disk do not match the recorded size or sha256."""


class TokenError(OcaError):
    """A URL token is malformed, forged, expired or does not cover the request."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class CapacityExceeded(StorageError):
    """No healthy disk of the tier has room for the object within its capacity."""


class InventoryCorrupt(StorageError):
    """A disk's inventory file cannot be parsed or fails validation."""
