"""The core's side of every sink: one SinkRunner per outbox, supervised, woken when the store commits messages to
its outbox, retried with backoff, drained on a clean stop, trimmed by the outbox limits, counted for status and
metrics. Routes, the eventbus and plugins add sinks here; none runs its own delivery loop."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from gateway.pipeline.supervisor import Supervisor
from gateway.sinks.base import Sink, SinkRunner
from gateway.store import Store

log = logging.getLogger(__name__)


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
