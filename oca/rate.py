"""One rate cap shared by concurrent transfers (a token bucket in bytes): the fill's
window-long cap and the miss path's daytime cap."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class RateLimiter:
    """Transfers call :meth:`take` with the bytes they just received, before writing them.

    The bucket holds at most ``burst_seconds`` worth of bytes, so an idle period does not
    allow a burst above the cap afterwards for longer than that. Waiters are served in
    arrival order (an asyncio lock), so concurrent transfers share the cap fairly.
    """

    def __init__(
        self,
        rate_bits: float,
        *,
        burst_seconds: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate_bits <= 0:
            raise ValueError(f"rate_bits must be > 0, not {rate_bits}")
        self.rate = rate_bits / 8.0  # bytes per second
        self.capacity = max(self.rate * burst_seconds, 1.0)
        self._tokens = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now

    async def take(self, nbytes: int) -> None:
        async with self._lock:
            self._refill()
            self._tokens -= nbytes  # may go negative: the debt is waited out below
            if self._tokens < 0:
                await self._sleep(-self._tokens / self.rate)
                self._refill()
