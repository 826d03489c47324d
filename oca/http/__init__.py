"""HTTP semantics for the data plane: pure decisions, no I/O (RFC 9110)."""
