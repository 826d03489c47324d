"""The control-plane steering service (see DESIGN.md)."""
