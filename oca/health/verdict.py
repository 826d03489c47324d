"""The appliance's health verdict: one state, and a reason for every problem.

Theory of operation
-------------------
Poll -> evaluate -> publish, as Traffic Monitor does for its caches: the reporter
gathers observations (disks with their states and reasons, worker counts, fill state,
problems met while polling such as an unreadable routing table) and :func:`evaluate`
turns them into a :class:`HealthVerdict`. The rules, in the order their reasons are
listed:

- a failed disk is a reason ("disk ssd:/srv/ssd0 failed: ..."); the box is
  ``degraded`` while another disk serves and ``unhealthy`` when none does; an ok disk
  with a reason (its filesystem is full) is listed ("disk ssd:/srv/ssd0 serves, but
  full: ...") without changing the state: it serves all it holds;
- no worker serving makes it ``unhealthy``; fewer than configured, ``degraded``;
- each polling problem (routes, NIC counters) makes it ``degraded``;
- refusing content (the steering grace policy) or shutting down sets ``serving``
  false, with the reason; the state itself says what is wrong with the box, not
  whether it takes players;
- draining is reported as a flag, not a problem: the box is fine and keeps serving its
  current players, the steering service only sends it no new ones.

Fill state travels with its own reason and does not change the state: a fill that
stopped early does not stop the box from serving what it holds.

This module is pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from oca.health.heartbeat import HealthJSON

__all__ = ["DiskHealth", "FillHealth", "HealthState", "HealthVerdict", "WorkerHealth", "evaluate"]

HealthState = Literal["healthy", "degraded", "unhealthy"]


@dataclass(frozen=True, slots=True)
class DiskHealth:
    tier: str
    path: str  # the disk root as configured
    state: Literal["ok", "failed"]
    reason: str  # why it is failed; for an ok disk what limits it ("full: ...") or ""
    capacity_bytes: int
    used_bytes: int
    objects: int


@dataclass(frozen=True, slots=True)
class WorkerHealth:
    configured: int
    running: int  # alive and ready
    starting: int = 0  # alive, not ready yet
    restarts: int = 0  # since the supervisor started


@dataclass(frozen=True, slots=True)
class FillHealth:
    state: Literal["idle", "running"]
    last_run_at: float | None  # when a fill last saved its counters (unix seconds)
    reason: str = ""


@dataclass(frozen=True, slots=True)
class HealthVerdict:
    state: HealthState
    reasons: tuple[str, ...]
    draining: bool
    serving: bool
    disks: tuple[DiskHealth, ...]
    workers: WorkerHealth
    fill: FillHealth

    def to_json(self) -> HealthJSON:
        return {
            "state": self.state,
            "reasons": list(self.reasons),
            "draining": self.draining,
            "serving": self.serving,
            "disks": [
                {
                    "tier": d.tier,
                    "path": d.path,
                    "state": d.state,
                    "reason": d.reason,
                    "capacity_bytes": d.capacity_bytes,
                    "used_bytes": d.used_bytes,
                }
                for d in self.disks
            ],
            "workers": {
                "configured": self.workers.configured,
                "running": self.workers.running,
                "restarts": self.workers.restarts,
            },
            "fill": {
                "state": self.fill.state,
                "last_run_at": self.fill.last_run_at,
                "reason": self.fill.reason,
            },
        }


_RANK: dict[HealthState, int] = {"healthy": 0, "degraded": 1, "unhealthy": 2}


def evaluate(
    disks: Sequence[DiskHealth],
    workers: WorkerHealth,
    fill: FillHealth,
    *,
    draining: bool = False,
    refusing: str | None = None,
    stopping: bool = False,
    problems: Sequence[str] = (),
) -> HealthVerdict:
    """The verdict for these observations (see the module docstring for the rules).

    ``refusing`` is the reason content is being refused, or None; ``problems`` are
    reasons met while polling (each makes the box at least degraded).
    """
    state: HealthState = "healthy"
    reasons: list[str] = []

    def worse(to: HealthState, reason: str) -> None:
        nonlocal state
        if _RANK[to] > _RANK[state]:
            state = to
        reasons.append(reason)

    failed = [d for d in disks if d.state != "ok"]
    for d in failed:
        worse("degraded", f"disk {d.tier}:{d.path} failed: {d.reason or 'no reason given'}")
    reasons.extend(f"disk {d.tier}:{d.path} serves, but {d.reason}" for d in disks
                   if d.state == "ok" and d.reason)  # fmt: skip
    if disks and len(failed) == len(disks):
        worse("unhealthy", f"no healthy disk (all {len(disks)} failed)")
    elif not disks:
        worse("unhealthy", "no disk is configured")
    w = workers
    if w.running <= 0:
        starting = f"; {w.starting} starting" if w.starting else ""
        worse("unhealthy", f"no worker is serving (0 of {w.configured}{starting})")
    elif w.running < w.configured:
        starting = f", {w.starting} starting" if w.starting else ""
        worse(
            "degraded",
            f"{w.running} of {w.configured} workers serving ({w.restarts} restarts{starting})",
        )
    for p in problems:
        worse("degraded", p)
    serving = True
    if refusing is not None:
        serving = False
        reasons.append(refusing)
    if stopping:
        serving = False
        reasons.append("shutting down: finishing current responses, taking no new players")
    return HealthVerdict(state, tuple(reasons), draining, serving, tuple(disks), workers, fill)
