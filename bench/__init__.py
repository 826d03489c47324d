"""Benchmarks users run against the appliance (``oca bench ...``)."""
