"""``oca demo``: the whole system in one command, on loopback (see :mod:`oca.demo.world`)."""

from oca.demo.world import run_demo

__all__ = ["run_demo"]
