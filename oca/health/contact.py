"""Contact with the steering service, and what to do when it is lost (the grace policy).

Theory of operation
-------------------
An appliance serves the players the steering service sends it, with URLs the service
signs. When the appliance cannot reach any steering replica, its view of the control
plane ages: nobody knows whether it is still healthy, its inventory may be stale in the
service's eyes, and operators may have reconfigured the fleet. Open Connect appliances
keep serving through short outages and stop after a longer one; here the operator picks:

- contact is *up* while at least one steering URL answered its latest heartbeat;
- when every URL has failed, contact is *lost* since the last successful heartbeat
  (or since the start, if there never was one), and the appliance keeps serving;
- once lost for ``grace_seconds`` the grace period is *over*: with policy ``stop``
  the appliance refuses new content requests (503 with Retry-After, ``/readyz`` not
  ready), with ``serve`` it keeps serving and only says so;
- any successful heartbeat restores contact, and with it service.

Each transition happens once and yields one :class:`ContactEvent` whose ``message`` is
the log line, so an outage logs three lines however long it lasts.

This module is pure: the clock is an argument.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

__all__ = ["ContactEvent", "ContactState", "ContactTracker", "Policy"]

ContactState = Literal["up", "lost", "over"]
Policy = Literal["serve", "stop"]


@dataclass(frozen=True, slots=True)
class ContactEvent:
    kind: Literal["lost", "grace-over", "recovered"]
    message: str
    refusing: bool  # whether content is refused from now on


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class ContactTracker:
    """The contact state machine (see the module docstring)."""

    __slots__ = ("_contacted", "_grace", "_last_ok", "_policy", "_state")

    def __init__(self, grace_seconds: float, policy: Policy, started_at: float) -> None:
        self._grace = grace_seconds
        self._policy: Policy = policy
        self._state: ContactState = "up"
        self._last_ok = started_at  # contact counts as lost since the start until a success
        self._contacted = False

    @property
    def state(self) -> ContactState:
        return self._state

    @property
    def refusing(self) -> bool:
        return self._state == "over" and self._policy == "stop"

    @property
    def last_ok(self) -> float:
        return self._last_ok

    def refusal_reason(self, now: float) -> str | None:
        """The reason content is refused now, or None when it is served."""
        if not self.refusing:
            return None
        return (
            f"steering unreachable for {now - self._last_ok:.1f} s (grace {self._grace:g} s "
            "over, policy=stop): refusing new content requests"
        )

    def observe(self, reachable: bool | None, now: float, detail: str = "") -> ContactEvent | None:
        """Feed one observation: True = some URL answered its latest heartbeat, False =
        every URL failed its latest (``detail`` says how), None = only time passed."""
        if reachable:
            was, since = self._state, self._last_ok
            self._last_ok = now
            self._contacted = True
            self._state = "up"
            if was == "up":
                return None
            refused = was == "over" and self._policy == "stop"
            via = f" ({detail})" if detail else ""
            tail = "; serving content again" if refused else ""
            return ContactEvent(
                "recovered",
                f"steering reachable again{via} after {now - since:.1f} s without contact{tail}",
                False,
            )
        if reachable is False and self._state == "up":
            self._state = "lost"
            why = f": {detail}" if detail else ""
            start = "" if self._contacted else "the start, "
            lost = (
                f"steering unreachable: no steering URL answered since {start}"
                f"{_when(self._last_ok)} ({now - self._last_ok:.1f} s ago){why}; serving "
                f"continues for the grace period of {self._grace:g} s, then "
                f"policy={self._policy}"
            )
            over = self._maybe_over(now)
            if over is not None:  # the grace already ended: report both transitions
                return ContactEvent("grace-over", f"{lost}. {over.message}", over.refusing)
            return ContactEvent("lost", lost, False)
        if self._state == "lost":
            return self._maybe_over(now)
        return None

    def _maybe_over(self, now: float) -> ContactEvent | None:
        if now - self._last_ok < self._grace:
            return None
        self._state = "over"
        age = now - self._last_ok
        if self._policy == "stop":
            text = "policy=stop: refusing new content requests"
        else:
            text = "policy=serve: keep serving"
        return ContactEvent(
            "grace-over",
            f"steering unreachable for {age:.1f} s; grace period over; {text}",
            self.refusing,
        )
