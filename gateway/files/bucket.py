"""The node's file bandwidth cap: a token bucket both directions draw from, so a big transfer leaves the rest of
the link (heartbeats, telemetry) room."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """`await take(n)` returns once n bytes fit the rate; a burst of at most `burst` bytes (a quarter of a second's
    worth, at least one HTTPS chunk) goes at once, so a transfer that paused (a dropped link) does not rush the link
    when it resumes. A rate of None is no cap."""

    def __init__(self, rate: float | None, burst: float | None = None) -> None:
        self.configure(rate, burst)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def configure(self, rate: float | None, burst: float | None = None) -> None:
        self.rate = rate if rate and rate > 0 else None
        self.burst = max(burst or 0.0, (self.rate or 0.0) / 4, 1 << 20)
        self._tokens = min(getattr(self, "_tokens", self.burst), self.burst)

    async def take(self, amount: int) -> None:
        if self.rate is None:
            return
        async with self._lock:  # first come, first served
            while True:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= amount or self._tokens >= self.burst:
                    self._tokens -= amount  # may go below zero for a chunk larger than the burst
                    return
                await asyncio.sleep((min(amount, self.burst) - self._tokens) / self.rate)
