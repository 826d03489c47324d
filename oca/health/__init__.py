"""Health reporting to the steering service: heartbeats, drain, and the grace policy.

The supervisor runs one :class:`oca.health.reporter.HeartbeatReporter` per appliance.
Every ``steering.interval_seconds`` it polls the box (disks and their indexes, workers,
fill, drain flag, routes, NIC and CPU load), evaluates a verdict with reasons
(:mod:`oca.health.verdict`), and posts a signed heartbeat (:mod:`oca.health.heartbeat`)
to each steering URL, with the inventory as a full list or a delta per replica
(:mod:`oca.health.inventory`). When every steering URL stays unreachable past
``steering.grace_seconds``, :mod:`oca.health.contact` decides what happens next.
"""
