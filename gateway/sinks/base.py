"""The sink contract and the delivery loop that drains a sink's durable outbox in order.

A sink class serves one endpoint type as a route target (`register_sinks`): it names the type, its properties
Struct and the key of a route's `target_resource` it needs, and builds itself for a route from the converted
properties, that `target_resource` and a `SinkContext`. The core owns the rest: the outbox, the SinkRunner, retries,
ordering and counters.

A message enters a sink's outbox when the store commits it (every flush interval); from then on it is either
delivered or still in the outbox after any crash. Delivery is ordered and at least once: a batch is removed only
after the sink acknowledged all of it, and within one run nothing is sent twice.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from gateway.errors import FieldgateError
from gateway.logs import log_context
from gateway.resources.endpoints import DEFAULT_OLDER_FORM_TOPIC
from gateway.store import Store

if TYPE_CHECKING:
    from gateway.api import GatewayAPI

log = logging.getLogger(__name__)
RATE_WINDOW = 60.0


class SinkError(FieldgateError):
    """A sink could not deliver a batch (target down, refused, timed out); the batch is retried."""


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    seq: int
    topic: str
    payload: bytes
    created: float


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What a sink may need besides its properties: the node, the route it delivers for, the gateway API."""

    node_name: str
    namespace: str
    route_name: str  # the Route's name (an implied route's: its endpoint's)
    api: GatewayAPI


class Sink(abc.ABC):
    """A northbound target. `send` delivers a whole batch in order or raises SinkError."""

    name: ClassVar[str]  # the endpoint type it serves as a route target
    # The endpoint type's properties, converted at load (numbers given as strings accepted); set by every sink
    # registered through `register_sinks`.
    properties_type: ClassVar[type[msgspec.Struct]]
    target_resource: ClassVar[str] = ""  # the key of a route's target_resource it needs ("": none)
    target_resource_optional: ClassVar[bool] = False
    # Endpoints of another type naming this one with `properties.plugin` (configurations from before the type
    # existed) are read as this type with an implied route from this bus topic (or their `topic` property).
    older_form: ClassVar[bool] = False
    older_form_topic: ClassVar[str] = DEFAULT_OLDER_FORM_TOPIC
    description: ClassVar[str] = ""

    @classmethod
    def for_route(cls, properties: Any, target_resource: Mapping[str, str], context: SinkContext) -> Sink:
        """The sink delivering one route's outbox; `properties` is an instance of `properties_type`."""
        raise NotImplementedError(f"{cls.__name__} is not a route target")

    async def open(self) -> None:  # noqa: B027  (optional: most sinks connect lazily in send)
        """Prepare (connect lazily in `send` if the target may be down at start)."""

    @abc.abstractmethod
    async def send(self, batch: list[OutboxMessage]) -> None:
        """Deliver every message of the batch, in order; raise SinkError when not all were acknowledged."""

    async def close(self) -> None:  # noqa: B027  (optional)
        """Release connections; must not raise."""


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
                await self.store.outboxes.ack(self.outbox, self._last_sent)
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
