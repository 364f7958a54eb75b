"""The poller: one task per device reading its properties on their collect intervals and writing twin deltas.

Properties with the same collect and report interval form a schedule; schedules due together are read with one
cached read plan. Every protocol call runs inside the device's timeout budget, so a dead device only ever costs
its own task time; after a failure the device reconnects with exponential backoff and jitter.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import random
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.errors import DeviceSilent, DeviceTimeout, FieldgateError, ProtocolError
from gateway.logs import Throttle, log_context
from gateway.pipeline import twin as rules
from gateway.pipeline.twin import DeviceState, Twin, TwinProperty
from gateway.protocols.base import BoundDevice, BoundProperty, Protocol, ReadResult

if TYPE_CHECKING:
    from gateway.api import GatewayAPI

log = logging.getLogger(__name__)
_internal_errors = Throttle(log, 300.0)

MIN_BACKOFF = 0.5
MAX_BACKOFF = 30.0
WRITE_RETRY = 5.0
EARLY = 0.0005  # a schedule due within this many seconds is read in the same cycle
# Upper bounds (seconds) of the cycle-lateness histogram buckets (/metrics); the last bucket is everything above.
LATENESS_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

ReportCallback = Callable[[str, float, dict[str, Any]], None]
StateCallback = Callable[[Twin, DeviceState, str], None]


@dataclass(eq=False)
class Schedule:
    interval: float
    report_interval: float
    props: tuple[BoundProperty, ...]
    next_collect: float = 0.0
    next_report: float = 0.0


@dataclass
class PollStats:
    """Counters and recent cycle lateness of one device (seconds)."""

    cycles: int = 0
    read_errors: int = 0
    writes: int = 0
    write_errors: int = 0
    missed: int = 0
    pushes: int = 0  # value sets the device pushed (subscriptions) between reads
    lateness: deque[float] = field(default_factory=lambda: deque(maxlen=4096))
    lateness_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENESS_BUCKETS) + 1))
    lateness_sum: float = 0.0
    last_cycle: float = 0.0

    def record_lateness(self, seconds: float) -> None:
        """Keep a recent sample and count it in its bucket (counts since the poller started, never trimmed)."""
        self.lateness.append(seconds)
        self.lateness_counts[bisect.bisect_left(LATENESS_BUCKETS, seconds)] += 1
        self.lateness_sum += seconds


def make_schedules(device: BoundDevice) -> list[Schedule]:
    groups: dict[tuple[float, float], list[BoundProperty]] = {}
    for prop in device.properties.values():
        groups.setdefault((prop.collect_interval, prop.report_interval), []).append(prop)
    return [Schedule(collect, report, tuple(props)) for (collect, report), props in sorted(groups.items())]


class DevicePoller:
    """Polls one device; `run()` is the supervised task."""

    def __init__(self, device: BoundDevice, protocol_cls: type[Protocol], twin: Twin, *,
                 on_report: ReportCallback, on_state: StateCallback, gateway: GatewayAPI | None = None) -> None:
        self.device = device
        self.protocol_cls = protocol_cls
        self.gateway = gateway
        self.twin = twin
        self.on_report = on_report
        self.on_state = on_state
        self.budget = float(device.resource.timeout)
        self.stats = PollStats()
        self.schedules = make_schedules(device)
        self._protocol: Protocol | None = None
        self._plans: dict[tuple[int, ...], Any] = {}
        self._models = {name: bound.model for name, bound in device.properties.items()}
        self._writable = tuple(name for name, bound in device.properties.items() if bound.writable)
        self._waiter: asyncio.Future[None] | None = None
        self._retry_at: dict[str, float] = {}
        self._answered = False  # a read since the last (re)connect brought values
        self._failing: set[str] = set()  # properties whose last reading failed

    # --- supervised loop --------------------------------------------------------------------------------------

    async def run(self) -> None:
        with log_context(device=self.device.id):  # the protocol plugin's lines in this task name the device too
            await self._run()

    async def _run(self) -> None:
        backoff = min(MIN_BACKOFF, self.protocol_cls.max_backoff)
        try:
            while True:
                self._answered = False
                try:
                    await self._connect()
                    await self._poll_forever()
                except (FieldgateError, TimeoutError, OSError) as exc:
                    self._fail(describe(exc, self.budget))
                except Exception as exc:  # a protocol plugin bug must not take the device task down for good
                    self._fail(f"internal error: {type(exc).__name__}: {exc}", exc)
                await self._close()
                if self._answered:
                    # it worked until now: try again soon. A connect alone does not count: on a shared serial
                    # line it succeeds for a unit that never answers, and each try of that unit costs the bus
                    # a whole timeout
                    backoff = min(MIN_BACKOFF, self.protocol_cls.max_backoff)
                await asyncio.sleep(backoff * random.uniform(0.75, 1.25))
                backoff = min(backoff * 2, MAX_BACKOFF, self.protocol_cls.max_backoff)
        finally:
            await self._close()

    def wake(self) -> None:
        """Cut the current sleep short (a desired value is waiting to be written)."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # --- connection ---------------------------------------------------------------------------------------------

    async def _connect(self) -> None:
        protocol = self.protocol_cls(self.device)
        protocol.gateway = self.gateway
        protocol.data_dir = self.gateway.data_dir if self.gateway is not None else None
        protocol.on_push(lambda result: self._pushed(protocol, result))
        self._protocol = protocol
        self._plans.clear()
        self._failing.clear()
        async with asyncio.timeout(self.budget):
            await self._protocol.open()
        rules.rewrite_on_reconnect(self.twin, self._writable)
        now = asyncio.get_running_loop().time()
        for schedule in self.schedules:
            # Devices started together would all wake at the same instant: spread them over the interval.
            phase = (zlib.crc32(self.device.id.encode()) % 1000) / 1000 * min(schedule.interval, 1.0)
            schedule.next_collect = now + phase
            schedule.next_report = now + phase

    async def _close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.on_push(None)
            try:
                async with asyncio.timeout(self.budget):
                    await protocol.close()
            except Exception as exc:
                log.debug("%s: close failed: %s", self.device.id, exc)

    def _fail(self, reason: str, exc: BaseException | None = None) -> None:
        self.stats.read_errors += 1
        rules.mark_unreachable(self.twin)
        if exc is not None:  # a protocol plugin's bug: its traceback is worth a line, not one every attempt
            _internal_errors.log(logging.WARNING, f"{self.device.id} {type(exc).__name__}", "%s: %s", self.device.id,
                                 reason, exc_info=exc)
        else:
            # The state change says it once (gateway.pipeline.devices logs it); a line every attempt of a hundred
            # devices behind one dead connection would bury everything else.
            log.debug("%s: %s", self.device.id, reason)
        self._set_state("offline", reason)

    def _silent(self, exc: DeviceSilent) -> None:
        """A device that sends its values itself has been quiet too long: offline, but its connection stays."""
        self.stats.read_errors += 1
        rules.mark_unreachable(self.twin)
        self._set_state("offline", str(exc))

    def _set_state(self, state: DeviceState, reason: str) -> None:
        if self.twin.set_state(state, reason):
            self.on_state(self.twin, state, reason)

    # --- polling ------------------------------------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        loop = asyncio.get_running_loop()
        schedules = self.schedules
        if not schedules:
            self._set_state("online", "")
        while True:
            if self._writable and any(p.pending for p in self._pending_candidates()):
                await self._write_deltas(loop.time())
            if not schedules:
                await self._sleep_until(loop.time() + 3600)
                continue
            deadline = min(s.next_collect for s in schedules)
            await self._sleep_until(deadline)
            now = loop.time()
            due = [s for s in schedules if s.next_collect <= now + EARLY]
            if not due:
                continue  # woken early for a write
            self.stats.record_lateness(max(now - min(s.next_collect for s in due), 0.0))
            try:
                async with asyncio.timeout(self.budget):
                    result = await self._read(due)
            except DeviceSilent as exc:
                self._silent(exc)
            else:
                self.stats.cycles += 1
                self.stats.last_cycle = loop.time() - now
                self._apply(result, time.time(), due, now)
            for schedule in due:
                schedule.next_collect += schedule.interval
                if schedule.next_collect <= now:  # fell behind: skip the missed cycles instead of bursting
                    missed = int((now - schedule.next_collect) // schedule.interval) + 1
                    self.stats.missed += missed
                    schedule.next_collect += missed * schedule.interval

    def _pushed(self, protocol: Protocol, result: ReadResult) -> None:
        """Values the device reported by itself (a subscription): into the twin and reported at once. The device's
        state stays with its reads: a notification says nothing about the properties it does not carry."""
        if protocol is not self._protocol:
            return  # from a connection that has been closed since
        ts = time.time()
        try:
            fresh = rules.apply_readings(self.twin, self._models, result.values, dict(result.errors), ts)
        except Exception as exc:  # a plugin's bad value must not reach into the plugin's notification handler
            _internal_errors.log(logging.WARNING, f"{self.device.id} push", "%s: pushed values dropped: %s",
                                 self.device.id, exc, exc_info=exc)
            return
        self.stats.pushes += 1
        if fresh:
            self._answered = True
            self.on_report(self.device.id, ts, fresh)

    def _pending_candidates(self) -> list[TwinProperty]:
        """The twin properties that may have a desired value to write (a read-only one never has)."""
        props = self.twin.properties
        return [props[name] for name in self._writable if name in props]

    async def _read(self, due: list[Schedule]) -> ReadResult:
        assert self._protocol is not None
        key = tuple(id(s) for s in due)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._protocol.plan([p for s in due for p in s.props])
        return await self._protocol.read(plan)

    def _apply(self, result: ReadResult, ts: float, due: list[Schedule], now: float) -> None:
        if result.values:
            self._answered = True
        fresh = rules.apply_readings(self.twin, self._models, result.values, result.errors, ts)
        reporting: list[Schedule] = []
        for schedule in due:
            if schedule.next_report > now + EARLY:
                continue
            reporting.append(schedule)
            schedule.next_report += schedule.report_interval
            if schedule.next_report <= now:  # behind: stay on the collect grid, or reports would be skipped
                missed = int((now - schedule.next_report) // schedule.report_interval) + 1
                schedule.next_report += missed * schedule.report_interval
        if len(reporting) == len(due):  # every due schedule reports: what was read well is the report
            report = fresh
        else:
            report = {bound.name: fresh[bound.name] for schedule in reporting for bound in schedule.props
                      if bound.name in fresh}
        # The device's state follows every property's last reading, not only this read's: with schedules of
        # different intervals, a property that fails on one would otherwise flip the device between unhealthy and
        # online from one cycle to the next.
        failing = self._failing
        if fresh:
            failing.difference_update(fresh)
        if result.errors:
            self.stats.read_errors += 1
            failing.update(name for name in result.errors if name in self.twin.properties)
        if failing:
            props = self.twin.properties
            first = next(iter(result.errors.items()), None) or min(
                (name, props[name].error or "") for name in failing if name in props)
            self._set_state("unhealthy", f"{len(failing)} properties failed, e.g. {first[0]}: {first[1]}")
        elif result.values:
            self._set_state("online", "")
        # else: nothing new and no error (a device that pushes its values sent none since): says nothing of it
        if report:
            self.on_report(self.device.id, ts, report)

    async def _write_deltas(self, now: float) -> None:
        assert self._protocol is not None
        for name, twin_prop in self.twin.properties.items():
            if not twin_prop.pending or self._retry_at.get(name, 0.0) > now:
                continue
            prop = self.device.properties[name]
            if not prop.writable or twin_prop.desired is None:
                twin_prop.pending = False
                continue
            desired = twin_prop.desired
            try:
                async with asyncio.timeout(self.budget):
                    await self._protocol.write(prop, desired)
                    self.stats.writes += 1
                    result = await self._read_back(prop)
            except DeviceTimeout:
                raise  # the connection is gone: reconnect, then write again
            except ProtocolError as exc:
                self.stats.write_errors += 1
                rules.write_failed(twin_prop, str(exc))
                self._retry_at[name] = now + WRITE_RETRY
                log.warning("%s: writing %s=%r failed: %s", self.device.id, name, desired, exc)
                continue
            rules.write_done(twin_prop, desired)
            self._retry_at.pop(name, None)
            ts = time.time()
            self._apply(result, ts, [], asyncio.get_running_loop().time())
            if name in result.values:
                self.on_report(self.device.id, ts, {name: twin_prop.reported})

    async def _read_back(self, prop: BoundProperty) -> ReadResult:
        """Read a property just written; a device that sends its values itself confirms with its next message."""
        assert self._protocol is not None
        try:
            return await self._protocol.read(self._protocol.plan([prop]))
        except DeviceSilent as exc:
            self._silent(exc)
            return ReadResult()

    async def _sleep_until(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        if deadline <= loop.time():
            return
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        handle = loop.call_at(deadline, _resolve, waiter)
        try:
            await waiter
        finally:
            handle.cancel()
            self._waiter = None


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def describe(exc: BaseException, budget: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within the {budget:g}s timeout budget"
    if isinstance(exc, OSError):
        return f"connection failed: {exc}"
    return str(exc) or type(exc).__name__
