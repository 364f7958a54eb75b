"""One Sparkplug B edge node: an MQTT session per connection, each with its bdSeq and NDEATH will, the births
of the node and its devices, DDATA of changed values, DDEATH of devices that go offline, and host commands.

Everything a session publishes goes through one queue and one task, so seq numbers follow the order of the
messages. Readings are published live, not through an outbox: after a reconnect the births carry the current
value of every metric, which is how a Sparkplug host learns the state it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from fieldgate_sparkplug.metrics import (
    BDSEQ,
    REBIRTH,
    REBIRTH_ALIAS,
    Aliases,
    DeviceMetrics,
    birth_metric,
    command_value,
    data_metric,
    device_metrics,
    device_topic,
    metric_value,
    node_topic,
    now_ms,
    sparkplug_device_id,
    state_topic,
)
from fieldgate_sparkplug.payload import DataType, Metric, Payload, PayloadError, decode_payload, encode_payload
from fieldgate_sparkplug.settings import BdSeqCounter, NodeSettings
from gateway.api import GatewayAPI
from gateway.errors import FieldgateError, NotFound
from gateway.logs import Throttle
from gateway.messages import STATE_FILTER, TELEMETRY_FILTER, DeviceStateChange, Report
from gateway.pipeline.twin import same_value

log = logging.getLogger(__name__)
LIVE_STATES = ("online", "unhealthy")
QUEUE_SIZE = 10_000
MIN_BACKOFF = 0.5
MAX_BACKOFF = 10.0
PUBLISH_TIMEOUT = 10.0


class SessionEnded(FieldgateError):
    """The session ends on purpose (the primary host went offline); the node connects again."""


@dataclass(frozen=True, slots=True)
class Incoming:
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    error: aiomqtt.MqttError | None


@dataclass(frozen=True, slots=True)
class ConfigChanged:
    pass


Event = Report | DeviceStateChange | Incoming | ConnectionLost | ConfigChanged


@dataclass
class BornDevice:
    metrics: DeviceMetrics
    last: dict[str, Any]  # the value each metric was last published with
    read_at: dict[str, float]  # when that value was read: an older report queued behind the birth is stale


@dataclass
class Session:
    """One MQTT connection: its bdSeq, the seq of its last message and the devices born in it."""

    client: aiomqtt.Client
    bd_seq: int
    seq: int = 0
    alive: bool = False  # an NBIRTH was published
    born: dict[str, BornDevice] = field(default_factory=dict)
    host_online_at: int = -1  # timestamp of the last primary host STATE message
    lost: asyncio.Event = field(default_factory=asyncio.Event)  # the reader saw the connection end

    def next_seq(self) -> int:
        self.seq = (self.seq + 1) % 256
        return self.seq


def _payload_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return b"" if payload is None else str(payload).encode()


class EdgeNode:
    """The edge node of one Endpoint document; `run()` is the supervised task."""

    def __init__(self, gateway: GatewayAPI, settings: NodeSettings) -> None:
        self.gateway = gateway
        self.settings = settings
        self.bd_seq = BdSeqCounter(gateway.data_dir, settings)
        self.aliases = Aliases()
        self.events: asyncio.Queue[Event] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self.session: Session | None = None
        self.published: dict[str, int] = {}
        self.rejected = 0
        self._rejections = Throttle(log)  # the same bad command again is counted, not logged again
        self._overflow = False
        self._subscriptions: list[int] = []
        self._logged_state = ""

    # --- wiring -------------------------------------------------------------------------------------------------

    def attach(self) -> None:
        """Follow device reports and device states on the gateway's bus."""
        self._subscriptions = [self.gateway.subscribe(TELEMETRY_FILTER, self._on_bus),
                               self.gateway.subscribe(STATE_FILTER, self._on_bus)]

    def detach(self) -> None:
        for sub_id in self._subscriptions:
            self.gateway.unsubscribe(sub_id)
        self._subscriptions = []

    def config_changed(self) -> None:
        self._enqueue(ConfigChanged())

    def _on_bus(self, topic: str, message: Any) -> None:
        if isinstance(message, Report | DeviceStateChange):
            self._enqueue(message)

    def _enqueue(self, event: Event) -> None:
        if self.session is None or not self.session.alive:
            return  # the next births carry the current state
        try:
            self.events.put_nowait(event)
        except asyncio.QueueFull:
            self._overflow = True  # caught up with a rebirth once the queue is empty

    def topic(self, kind: str, device: str | None = None) -> str:
        if device is None:
            return node_topic(self.settings.group_id, kind, self.settings.edge_node_id)
        return device_topic(self.settings.group_id, kind, self.settings.edge_node_id, device)

    def describe(self) -> dict[str, Any]:
        session = self.session
        return {"group_id": self.settings.group_id, "edge_node_id": self.settings.edge_node_id,
                "broker": f"{self.settings.host}:{self.settings.port}", "connected": session is not None,
                "bd_seq": session.bd_seq if session else None, "born_devices": len(session.born) if session else 0,
                "published": dict(self.published), "rejected_commands": self.rejected}

    # --- the connection -----------------------------------------------------------------------------------------

    async def run(self) -> None:
        backoff = MIN_BACKOFF
        while True:
            started = time.monotonic()
            try:
                await self._connect_and_serve()
            except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
                self._log_state("down", f"sparkplug {self.settings.label}: broker {self.settings.host}:"
                                        f"{self.settings.port} unreachable or lost, retrying: {exc}")
            except SessionEnded as exc:
                self._log_state("ended", f"sparkplug {self.settings.label}: {exc}")
            finally:
                self.session = None
            if time.monotonic() - started > 30:
                backoff = MIN_BACKOFF
            await asyncio.sleep(backoff * random.uniform(0.75, 1.25))
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _connect_and_serve(self) -> None:
        bd_seq = await asyncio.to_thread(self.bd_seq.upcoming)
        will = aiomqtt.Will(self.topic("NDEATH"), self._ndeath(bd_seq), qos=1, retain=False)
        settings = self.settings
        async with aiomqtt.Client(
            settings.host, settings.port, identifier=settings.client_id, username=settings.username,
            password=settings.password, tls_context=settings.tls_context(), will=will, clean_session=True,
            keepalive=settings.keepalive, timeout=PUBLISH_TIMEOUT,
        ) as client:
            await asyncio.to_thread(self.bd_seq.commit, bd_seq)
            session = Session(client, bd_seq)
            self._drain()
            self.session = session
            self._log_state("connected", f"sparkplug {settings.label}: connected to {settings.host}:{settings.port}"
                                         f" (bdSeq {bd_seq})")
            await client.subscribe(self.topic("NCMD"), qos=1, timeout=PUBLISH_TIMEOUT)
            await client.subscribe(self.topic("DCMD", "+"), qos=1, timeout=PUBLISH_TIMEOUT)
            if settings.primary_host_id is not None:
                await client.subscribe(state_topic(settings.primary_host_id), qos=1, timeout=PUBLISH_TIMEOUT)
            reader = asyncio.create_task(self._read(session), name=f"sparkplug {settings.label} reader")
            try:
                if settings.primary_host_id is None:
                    await self._birth(session)
                while True:
                    await self._handle(session, await self.events.get())
                    if self._overflow and self.events.empty() and session.alive:
                        self._overflow = False
                        log.warning("sparkplug %s: fell behind the devices; publishing births again",
                                    settings.label)
                        await self._birth(session)
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

    async def _read(self, session: Session) -> None:
        error: aiomqtt.MqttError | None = None
        try:
            async for message in session.client.messages:
                await self.events.put(Incoming(str(message.topic), _payload_bytes(message.payload)))
        except aiomqtt.MqttError as exc:
            error = exc
        session.lost.set()
        await self.events.put(ConnectionLost(error))

    def _drain(self) -> None:
        while not self.events.empty():
            self.events.get_nowait()
        self._overflow = False

    def _log_state(self, state: str, message: str) -> None:
        if state != self._logged_state:
            self._logged_state = state
            (log.info if state == "connected" else log.warning)(message)

    async def close(self) -> None:
        """Publish the NDEATH of the current session (a clean disconnect does not send the will)."""
        session = self.session
        if session is None:
            return
        session.alive = False
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            await session.client.publish(self.topic("NDEATH"), self._ndeath(session.bd_seq), qos=1, timeout=2)
            self._count("NDEATH")

    # --- publishing ---------------------------------------------------------------------------------------------

    def _ndeath(self, bd_seq: int) -> bytes:
        return encode_payload(Payload(now_ms(), [Metric(BDSEQ, datatype=DataType.UInt64, value=bd_seq)]))

    async def _publish(self, session: Session, kind: str, payload: Payload, device: str | None = None) -> None:
        topic = self.topic(kind, device)
        publish = session.client.publish(topic, encode_payload(payload), qos=self.settings.qos, retain=False,
                                         timeout=PUBLISH_TIMEOUT)
        if self.settings.qos == 0:
            await publish
        else:  # a QoS 1 publish waits for its PUBACK; a lost connection never sends one, so stop waiting then
            await _unless_lost(session, publish)
        self._count(kind)

    def _count(self, kind: str) -> None:
        self.published[kind] = self.published.get(kind, 0) + 1

    async def _birth(self, session: Session) -> None:
        """NBIRTH (seq 0) and a DBIRTH for every device that is online."""
        session.alive = True  # from now on bus events queue up behind the births
        session.born.clear()
        session.seq = 0
        now = now_ms()
        metrics = [Metric(BDSEQ, timestamp=now, datatype=DataType.UInt64, value=session.bd_seq),
                   Metric(REBIRTH, REBIRTH_ALIAS, now, DataType.Boolean, False)]
        await self._publish(session, "NBIRTH", Payload(now, metrics, seq=0))
        for device_id in sorted(self.gateway.config.devices):
            await self._dbirth(session, device_id)

    async def _dbirth(self, session: Session, device_id: str) -> None:
        bound = self.gateway.config.devices.get(device_id)
        twin = self.gateway.twins().get(device_id)
        if bound is None or twin is None or twin.state not in LIVE_STATES:
            return
        metrics = device_metrics(bound, self.aliases)
        born = BornDevice(metrics, {}, {})
        payload_metrics = []
        for name, spec in metrics.specs.items():
            prop = twin.properties.get(name)
            metric = birth_metric(spec, prop.reported if prop else None, prop.reported_at if prop else None)
            born.last[name] = metric.value
            born.read_at[name] = (prop.reported_at or 0.0) if prop else 0.0
            payload_metrics.append(metric)
        session.born[device_id] = born
        await self._publish(session, "DBIRTH", Payload(now_ms(), payload_metrics, session.next_seq()),
                            metrics.sparkplug_id)

    async def _ddeath(self, session: Session, device_id: str) -> None:
        born = session.born.pop(device_id, None)
        if born is not None:
            await self._publish(session, "DDEATH", Payload(now_ms(), [], session.next_seq()),
                                born.metrics.sparkplug_id)

    async def _ddata(self, session: Session, report: Report) -> None:
        born = session.born.get(report.device)
        if born is None:
            await self._dbirth(session, report.device)  # carries the values of this report too
            return
        changed = []
        for name, raw in report.values.items():
            spec = born.metrics.specs.get(name)
            if spec is None:
                continue
            if report.ts < born.read_at.get(name, 0.0):
                continue
            value = metric_value(spec, raw)
            if name in born.last and _same(born.last[name], value):
                continue
            born.last[name], born.read_at[name] = value, report.ts
            changed.append(data_metric(spec, value, report.ts))
        if changed:
            await self._publish(session, "DDATA", Payload(now_ms(), changed, session.next_seq()),
                                born.metrics.sparkplug_id)

    async def _reconcile(self, session: Session) -> None:
        """Devices removed or redefined die; new and redefined ones that are online are born."""
        devices = self.gateway.config.devices
        for device_id, born in list(session.born.items()):
            bound = devices.get(device_id)
            if bound is None or device_metrics(bound, self.aliases) != born.metrics:
                await self._ddeath(session, device_id)
        for device_id in sorted(devices.keys() - session.born.keys()):
            await self._dbirth(session, device_id)

    # --- events -------------------------------------------------------------------------------------------------

    async def _handle(self, session: Session, event: Event) -> None:
        if isinstance(event, ConnectionLost):
            raise event.error or aiomqtt.MqttError("the broker closed the connection")
        if isinstance(event, Incoming):
            await self._incoming(session, event)
        elif not session.alive:
            return
        elif isinstance(event, Report):
            await self._ddata(session, event)
        elif isinstance(event, DeviceStateChange):
            if event.state in LIVE_STATES:
                if event.device not in session.born:
                    await self._dbirth(session, event.device)
            elif event.state == "offline":
                await self._ddeath(session, event.device)
        elif isinstance(event, ConfigChanged):
            await self._reconcile(session)

    async def _incoming(self, session: Session, message: Incoming) -> None:
        parts = message.topic.split("/")
        kind = "STATE" if parts[1:2] == ["STATE"] else parts[2] if len(parts) > 2 else ""
        rebirth = False
        try:
            if kind == "STATE":
                await self._host_state(session, message.payload)
                return
            payload = decode_payload(message.payload)
            if kind == "NCMD":
                rebirth = self._ncmd(payload)
            elif kind == "DCMD":
                await self._dcmd(session, message.topic.rsplit("/", 1)[-1], payload)
        except SessionEnded:
            raise
        except FieldgateError as exc:
            self.rejected += 1
            self._rejections.log(logging.ERROR, f"{message.topic} {exc}", "sparkplug %s: ignored %s on %s: %s",
                                 self.settings.label, kind or "a message", message.topic, exc)
        except Exception:  # a command must never take the edge node down
            self.rejected += 1
            log.exception("sparkplug %s: ignored %s on %s after an internal error", self.settings.label,
                          kind or "a message", message.topic)
        if rebirth and session.alive:
            log.info("sparkplug %s: rebirth requested", self.settings.label)
            await self._birth(session)

    def _ncmd(self, payload: Payload) -> bool:
        """Whether the NCMD asks for a rebirth; other node commands are logged as not supported."""
        if not payload.metrics:
            raise PayloadError("the NCMD carries no metrics")
        rebirth = False
        for metric in payload.metrics:
            name = metric.name or (REBIRTH if metric.alias == REBIRTH_ALIAS else f"alias {metric.alias}")
            if name != REBIRTH:
                log.warning("sparkplug %s: NCMD metric %r is not supported; ignored it", self.settings.label, name)
                continue
            if metric.value_field != "boolean_value":
                raise PayloadError(f"{REBIRTH}: expected a Boolean value, got {metric.value_field or 'none'}")
            rebirth = rebirth or metric.value is True
        return rebirth

    async def _dcmd(self, session: Session, sparkplug_id: str, payload: Payload) -> None:
        """Set desired values as the REST API does: all checked first, then applied together."""
        device_id = next((d for d in self.gateway.config.devices if sparkplug_device_id(d) == sparkplug_id), None)
        if device_id is None:
            raise NotFound(f"no device {sparkplug_id!r} on this edge node")
        born = session.born.get(device_id)
        metrics = born.metrics if born else device_metrics(self.gateway.config.devices[device_id], self.aliases)
        if not payload.metrics:
            raise PayloadError("the DCMD carries no metrics")
        values: dict[str, Any] = {}
        for metric in payload.metrics:
            spec = metrics.specs.get(metric.name) if metric.name else (
                metrics.by_alias(metric.alias) if metric.alias is not None else None)
            if spec is None:
                label = repr(metric.name) if metric.name else (
                    f"alias {metric.alias}" if metric.alias is not None else "a metric without name or alias")
                raise NotFound(f"{label} is not a metric of {sparkplug_id}")
            values[spec.name] = command_value(metric, spec)
        self.gateway.check_desired(device_id, values)
        for name, value in values.items():
            await self.gateway.set_desired(device_id, name, value, actor="sparkplug")
        log.info("sparkplug %s: DCMD set %s of %s", self.settings.label,
                 ", ".join(f"{k}={v!r}" for k, v in values.items()), device_id)

    async def _host_state(self, session: Session, payload: bytes) -> None:
        """The primary host's STATE (Sparkplug 3.0 JSON): births once it is online, NDEATH when it goes away."""
        try:
            state = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested thousands deep
            raise PayloadError("STATE is not JSON") from None
        if not isinstance(state, dict) or not isinstance(state.get("online"), bool):
            raise PayloadError('STATE: expected {"online": true|false, "timestamp": <ms>}')
        timestamp = state.get("timestamp", 0)
        timestamp = timestamp if isinstance(timestamp, int) and not isinstance(timestamp, bool) else 0
        if timestamp < session.host_online_at:
            return  # an older message than one already seen
        session.host_online_at = timestamp
        if state["online"] and not session.alive:
            log.info("sparkplug %s: primary host %s is online", self.settings.label, self.settings.primary_host_id)
            await self._birth(session)
        elif not state["online"] and session.alive:
            await self.close()
            raise SessionEnded(f"primary host {self.settings.primary_host_id} went offline; reconnecting")


def _same(before: Any, after: Any) -> bool:
    if before is None or after is None:
        return before is None and after is None
    return same_value(before, after)


async def _unless_lost(session: Session, publish: Coroutine[Any, Any, object]) -> None:
    """Await the publish, or raise MqttError as soon as the session's connection is lost, whichever is first."""
    sending = asyncio.ensure_future(publish)
    lost = asyncio.ensure_future(session.lost.wait())
    try:
        await asyncio.wait((sending, lost), return_when=asyncio.FIRST_COMPLETED)
    finally:
        lost.cancel()
    if not sending.done():
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        raise aiomqtt.MqttError("the connection was lost before the broker acknowledged a publish")
    sending.result()
