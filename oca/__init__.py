"""oca: the edge cache appliance data plane (serving, storage, signed URLs, metrics)."""

from __future__ import annotations

__version__ = "0.1.0"
