"""The core's side of every sink: one SinkRunner per outbox, supervised, woken when the store commits messages to
its outbox, retried with backoff, drained on a clean stop, trimmed by the outbox limits, counted for status and
metrics. Routes, the eventbus and plugins add sinks here; none runs its own delivery loop.

A message enters a sink's outbox when the store commits it (the writer's group commit); the runner is woken by that
commit and takes the message from memory, not from the file, unless it is behind. From then on the message is either
delivered or still in the outbox after any crash. Delivery is ordered and at least once: a batch is removed only
after the sink acknowledged all of it, and within one run nothing is sent twice."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from gateway.logs import log_context
from gateway.pipeline.supervisor import Supervisor
from gateway.sinks.base import OutboxMessage, Sink, SinkError
from gateway.store import Store

log = logging.getLogger(__name__)
RATE_WINDOW = 60.0


class Sinks:
    """The running sinks by outbox name."""

    def __init__(self, store: Store, supervisor: Supervisor) -> None:
        self.store = store
        self.supervisor = supervisor
        self.runners: dict[str, SinkRunner] = {}
        store.outboxes.on_flush.append(self._committed)

    def start(self, outbox: str, sink: Sink, *, log_fields: dict[str, str] | None = None) -> SinkRunner:
        """Deliver the outbox `outbox` into `sink` from now on, in a supervised task."""
        runner = self.runners[outbox] = SinkRunner(outbox, sink, self.store)
        runner.log_fields = dict(log_fields or {})
        self.supervisor.start(f"sink {outbox}", runner.run)
        return runner

    async def stop(self, outbox: str) -> None:
        """Stop delivering an outbox; what it holds stays in the store."""
        await self.supervisor.cancel(f"sink {outbox}")
        self.runners.pop(outbox, None)

    def notify_all(self) -> None:
        """A link came back: every sink retries now instead of at the end of its backoff."""
        for runner in self.runners.values():
            runner.notify()

    def _committed(self, outboxes: set[str]) -> None:
        for outbox in outboxes:
            runner = self.runners.get(outbox)
            if runner is not None:
                runner.notify()

    async def drain(self, timeout: float) -> None:
        """Commit what is queued and give working sinks a moment to deliver it (what is left stays durable)."""
        await self.store.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(  # noqa: ASYNC110  (polling several sinks, bounded)
                self.store.outboxes.depth.get(name) and runner.stats.state != "failing"
                for name, runner in self.runners.items()):
            await asyncio.sleep(0.05)

    async def trim(self, max_messages: int, max_age: float) -> None:
        """Drop the oldest messages of every outbox beyond the limits (the stated drop-oldest policy)."""
        for outbox, runner in list(self.runners.items()):
            dropped = await self.store.outboxes.trim(outbox, max_messages, max_age)
            if dropped:
                runner.stats.dropped += dropped
                log.warning("outbox %s was full: dropped its %d oldest messages (drop-oldest policy)", outbox,
                            dropped)

    def describe(self) -> dict[str, dict[str, Any]]:
        return {name: {**runner.describe(), "outbox_depth": self.store.outboxes.depth.get(name, 0)}
                for name, runner in self.runners.items()}


@dataclass
class SinkStats:
    delivered: int = 0
    failures: int = 0
    dropped: int = 0
    last_error: str = ""
    last_delivery: float | None = None
    state: str = "idle"  # idle | delivering | failing | replaying
    recent: deque[tuple[float, int]] = field(default_factory=deque)  # (monotonic time, delivered) of the last minute
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=4096))


class SinkRunner:
    """Drains one outbox into one sink: batches in order, retries with backoff, rate-limited replay."""

    def __init__(self, outbox: str, sink: Sink, store: Store, *, batch: int = 500, timeout: float = 10.0,
                 replay_rate: float = 5000.0, min_backoff: float = 0.5, max_backoff: float = 30.0) -> None:
        self.outbox = outbox
        self.sink = sink
        self.store = store
        self.batch = batch
        self.timeout = timeout
        self.replay_rate = replay_rate
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.stats = SinkStats()
        self._wakeup = asyncio.Event()
        self._last_sent = 0
        self._started = 0.0
        self.log_fields: dict[str, str] = {}  # context fields of its log lines besides the sink (a route's name)

    def notify(self) -> None:
        """New messages were committed to this outbox."""
        self._wakeup.set()

    async def run(self) -> None:
        with log_context(sink=self.outbox, **self.log_fields):
            await self._run()

    async def _run(self) -> None:
        self._started = time.monotonic()
        await self.sink.open()
        backoff = self.min_backoff
        try:
            while True:
                # Cleared before the query, not after: a flush that commits while the query runs still wakes us.
                self._wakeup.clear()
                rows = await self.store.outboxes.batch(self.outbox, self._last_sent, self.batch)
                if not rows:
                    self.stats.state = "idle" if self.stats.state != "failing" else self.stats.state
                    await self._pause(1.0, clear=False)
                    continue
                batch = [OutboxMessage(*row) for row in rows]
                started = time.monotonic()
                try:
                    async with asyncio.timeout(self.timeout):
                        await self.sink.send(batch)
                except (SinkError, TimeoutError, OSError) as exc:
                    self._failed(exc)
                    await self._pause(backoff * random.uniform(0.75, 1.25))  # cut short when the target is back
                    backoff = min(backoff * 2, self.max_backoff)
                    continue
                if self.stats.state == "failing":
                    log.info("sink %s delivers again", self.outbox)
                backoff = self.min_backoff
                self._last_sent = batch[-1].seq
                self.store.outboxes.ack(self.outbox, self._last_sent, len(batch))  # deleted by the next commit
                now = time.time()
                self._count_rate(len(batch), time.monotonic())
                self.stats.delivered += len(batch)
                self.stats.last_delivery = now
                self.stats.latencies.extend(now - m.created for m in batch)
                full = len(batch) == self.batch
                self.stats.state = "replaying" if full else "delivering"
                if full and self.replay_rate:  # a backlog: keep the target and the box breathing
                    elapsed = time.monotonic() - started
                    await asyncio.sleep(max(len(batch) / self.replay_rate - elapsed, 0))
        finally:
            await self.sink.close()

    def _count_rate(self, delivered: int, now: float) -> None:
        recent = self.stats.recent
        recent.append((now, delivered))
        while recent and recent[0][0] < now - RATE_WINDOW:
            recent.popleft()

    def rate(self) -> float:
        """Messages delivered per second over the last minute (or since the start, if that is shorter)."""
        now = time.monotonic()
        window = min(RATE_WINDOW, now - self._started) if self._started else RATE_WINDOW
        delivered = sum(n for t, n in self.stats.recent if t >= now - RATE_WINDOW)
        return delivered / window if window > 0 else 0.0

    async def _pause(self, seconds: float, *, clear: bool = True) -> None:
        """Sleep until `notify()` (new messages, the target reconnected) or `seconds` pass."""
        if clear:
            self._wakeup.clear()
        try:
            async with asyncio.timeout(seconds):  # not wait_for: in 3.11 it can swallow a cancellation
                await self._wakeup.wait()
        except TimeoutError:
            pass

    def _failed(self, exc: BaseException) -> None:
        error = str(exc) or type(exc).__name__
        self.stats.failures += 1
        if self.stats.state != "failing" or error != self.stats.last_error:
            log.warning("sink %s cannot deliver, keeping messages in its outbox: %s", self.outbox, error)
        self.stats.state = "failing"
        self.stats.last_error = error

    def describe(self) -> dict[str, Any]:
        latencies = sorted(self.stats.latencies)
        return {
            "sink": self.sink.name,
            "state": self.stats.state,
            "delivered": self.stats.delivered,
            "failures": self.stats.failures,
            "dropped": self.stats.dropped + getattr(self.sink, "dropped", 0),  # limits, and what the target refused
            "rate_per_s": round(self.rate(), 1),
            "last_error": self.stats.last_error,
            "latency_ms": {
                "p50": round(latencies[len(latencies) // 2] * 1000, 1) if latencies else None,
                "p99": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1) if len(latencies) > 1 else None,
            },
        }
