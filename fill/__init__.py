"""The fill agent: nightly push fill, eviction and tier placement (see DESIGN.md)."""
