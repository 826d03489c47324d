"""Tiered object storage: disks, placement, the persistent inventory."""
