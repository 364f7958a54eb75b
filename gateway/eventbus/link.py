"""The gateway's connection to the eventbus broker: reconnects forever, serves the KubeEdge twin topics and
publishes telemetry from the durable `eventbus` outbox."""

from __future__ import annotations

import asyncio
import copy
import logging
import random
import ssl
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiomqtt
import msgspec

from gateway.errors import ConfigError, FieldgateError, NotFound
from gateway.eventbus import kubeedge as ke
from gateway.logs import Throttle
from gateway.messages import (
    EVENTBUS_STATE,
    STATE_FILTER,
    TELEMETRY_FILTER,
    TWIN_FILTER,
    DeviceStateChange,
    EventbusStateChange,
    Report,
    TwinChange,
    eventbus_telemetry_topic,
)
from gateway.resources.schema import VALUE_MAX_LENGTH, EventbusSettings
from gateway.sinks.base import OutboxMessage, Sink, SinkError

if TYPE_CHECKING:
    from gateway.api import GatewayAPI
    from gateway.eventbus.broker import EmbeddedBroker

log = logging.getLogger(__name__)
_json = msgspec.json.Encoder()
OUTBOX = "eventbus"
INGRESS_BATCH = 256  # messages already queued are routed together: one router call for the lot
# The largest message taken from the broker: on a twin topic (several values, each up to its max_length, as JSON
# text), and for an eventbus-sourced route (as a REST message). Larger ones are refused whole, unread.
TWIN_MESSAGE_MAX = 4 * VALUE_MAX_LENGTH + (16 << 10)
ROUTE_MESSAGE_MAX = 1 << 20


def broker_address(settings: EventbusSettings) -> tuple[str, int, bool]:
    """(host, port, tls) of the broker the gateway connects to."""
    if settings.url == "embedded":
        host, _, port = settings.embedded_listen.rpartition(":")
        return host.strip("[]"), int(port), False
    parts = urlsplit(settings.url)
    tls = parts.scheme == "mqtts"
    if not parts.hostname:
        raise ConfigError(f"eventbus.url {settings.url!r}: no host")
    return parts.hostname, parts.port or (8883 if tls else 1883), tls


class EventbusLink:
    """One MQTT client session at a time; `run()` is the supervised task, once `attach()` gave it the gateway."""

    def __init__(self, node_name: str, settings: EventbusSettings, broker: EmbeddedBroker | None = None) -> None:
        self.node_name = node_name
        self.settings = settings
        self.broker = broker  # the embedded one: connect only while it serves, with the credentials it was given
        self._api: GatewayAPI | None = None
        self.host, self.port, self.tls = broker_address(settings)
        self.client: aiomqtt.Client | None = None
        self.connected_since: float | None = None
        self.received = 0
        self.rejected = 0
        self.too_large = 0  # of the rejected: larger than TWIN_MESSAGE_MAX or ROUTE_MESSAGE_MAX
        self._state_logged = ""
        self._subscribed: set[str] = set()
        self._inbox: asyncio.Queue[aiomqtt.Message] | None = None
        self._rejections = Throttle(log)  # the same bad message again is counted, not logged again

    def attach(self, api: GatewayAPI) -> None:
        """Serve this gateway: its twins on the twin topics, its telemetry into the `eventbus` outbox."""
        self._api = api
        api.subscribe(TELEMETRY_FILTER, self.on_telemetry)
        api.subscribe(TWIN_FILTER, self.on_twin_change)
        api.subscribe(STATE_FILTER, self.on_state)

    @property
    def api(self) -> GatewayAPI:
        if self._api is None:
            raise RuntimeError("the eventbus link serves no gateway yet: attach() it first")
        return self._api

    def current_client(self) -> aiomqtt.Client | None:
        """The client of the current session, None while disconnected."""
        return self.client

    def _inbox_type(self) -> type[asyncio.Queue[aiomqtt.Message]]:
        """The client's incoming queue, kept where run() can drain what is already queued without waiting."""
        link = self

        class Inbox(asyncio.Queue[aiomqtt.Message]):
            def __init__(self, maxsize: int = 0) -> None:
                super().__init__(maxsize)
                link._inbox = self

        return Inbox

    # --- connection -------------------------------------------------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.settings.ca_file)
        if self.settings.cert_file:
            context.load_cert_chain(self.settings.cert_file, self.settings.key_file)
        return context

    def login(self) -> tuple[str | None, str | None]:
        """(username, password) the gateway logs in with: its own user at the embedded broker, else the settings'."""
        if self.broker is not None:
            return self.broker.credentials.username, self.broker.credentials.password
        return self.settings.username, self.settings.password

    async def run(self) -> None:
        backoff = 0.5
        username, password = self.login()
        while True:
            if self.broker is not None:
                await self.broker.ready.wait()
            try:
                async with aiomqtt.Client(
                    self.host, self.port, username=username, password=password,
                    identifier=f"fieldgate-{self.node_name}", tls_context=self._tls_context(),
                    timeout=10, keepalive=30, max_inflight_messages=1000, max_queued_outgoing_messages=100_000,
                    queue_type=self._inbox_type(),
                ) as client:
                    client.pending_calls_threshold = 1 << 30  # batches are published together on purpose
                    self.client = client
                    self.connected_since = time.time()
                    self._log_state("connected", f"eventbus connected to {self.host}:{self.port}")
                    backoff = 0.5
                    self._subscribed = set()
                    await self.resubscribe()
                    self._announce(True)  # sinks deliver what waited, now; plugins republish their state
                    async for message in client.messages:
                        await self._handle_batch([message, *self._queued()])
            except aiomqtt.MqttError as exc:
                self._log_state("down", f"eventbus {self.host}:{self.port} unreachable, retrying: {exc}")
            finally:
                was_connected = self.client is not None
                self.client = None
                self.connected_since = None
                if was_connected:
                    self._announce(False)
            await asyncio.sleep(backoff * random.uniform(0.75, 1.25))
            backoff = min(backoff * 2, 5.0)  # a local broker: come back quickly

    def _announce(self, connected: bool) -> None:
        self.api.publish(EVENTBUS_STATE, EventbusStateChange(connected, f"{self.host}:{self.port}", time.time()))

    def topics(self) -> set[str]:
        return {*ke.SUBSCRIPTIONS[:2], f"$hw/events/node/{self.node_name}/membership/get",
                *self.api.routes.eventbus_topics()}

    async def resubscribe(self) -> None:
        """Subscribe to what the twin topics and the eventbus-sourced routes need now."""
        client = self.client
        if client is None:
            return
        wanted = self.topics()
        for topic in sorted(self._subscribed - wanted):
            await client.unsubscribe(topic, timeout=10)
        for topic in sorted(wanted - self._subscribed):
            await client.subscribe(topic, qos=1, timeout=10)
        self._subscribed = wanted

    def _log_state(self, state: str, message: str) -> None:
        if state != self._state_logged:
            self._state_logged = state
            (log.info if state == "connected" else log.warning)(message)

    async def publish(self, topic: str, payload: Any, qos: int = 0, *, retain: bool = False) -> bool:
        """Publish now if connected (responses and notifications; durable traffic goes through the outbox); False
        when not connected or the publish failed."""
        client = self.client
        if client is None:
            return False
        data = payload if isinstance(payload, bytes) else _json.encode(payload)
        try:
            await client.publish(topic, data, qos=qos, retain=retain, timeout=5)
        except (aiomqtt.MqttError, TimeoutError):
            return False
        return True

    # --- incoming ---------------------------------------------------------------------------------------------

    def _queued(self) -> list[aiomqtt.Message]:
        messages: list[aiomqtt.Message] = []
        inbox = self._inbox
        while inbox is not None and len(messages) < INGRESS_BATCH - 1:
            try:
                messages.append(inbox.get_nowait())
            except asyncio.QueueEmpty:
                break
        return messages

    async def _handle_batch(self, messages: list[aiomqtt.Message]) -> None:
        """In arrival order; consecutive messages for eventbus-sourced routes go through the router at once."""
        routed: list[tuple[str, bytes]] = []
        for message in messages:
            topic, payload = str(message.topic), bytes(message.payload or b"")
            if topic.startswith(("$hw/events/node/", ke.DEVICE_PREFIX)):
                if routed:
                    self._route(routed)
                    routed = []
                if len(payload) > TWIN_MESSAGE_MAX:
                    self.received += 1
                    self._refuse_size(topic, len(payload), TWIN_MESSAGE_MAX, reply=True)
                    continue
                await self._handle(topic, payload)
            elif len(payload) > ROUTE_MESSAGE_MAX:
                self.received += 1
                self._refuse_size(topic, len(payload), ROUTE_MESSAGE_MAX, reply=False)
            else:
                routed.append((topic, payload))
        if routed:
            self._route(routed)

    def _refuse_size(self, topic: str, size: int, limit: int, *, reply: bool) -> None:
        """A message too large to take: dropped unread (a twin topic gets a 413 result), logged throttled, counted."""
        self.too_large += 1
        reason = f"the message has {size} bytes, more than the {limit} this topic takes"
        if reply:
            self._reject(topic, f"{topic}/result", b"", 413, reason, key=f"{topic} too large")
            return
        self.rejected += 1
        self._rejections.log(logging.WARNING, f"{topic} too large", "eventbus: dropped a message on %s: %s", topic,
                             reason)

    def _route(self, messages: list[tuple[str, bytes]]) -> None:
        self.received += len(messages)
        self.api.routes.from_eventbus_many(messages)

    async def _handle(self, topic: str, payload: bytes) -> None:
        """A membership request or a device's twin topic."""
        self.received += 1
        result_topic = f"{topic}/result"
        try:
            if topic.startswith("$hw/events/node/"):
                await self._membership(result_topic, payload)
                return
            device_id, action = ke.split_device_topic(topic)
            if action == "twin/update":
                await self.publish(result_topic, await self._twin_update(device_id, payload), qos=1)
            elif action == "twin/get":
                request = ke.parse(payload, ke.EventRequest)
                await self.publish(result_topic, self._twin_document(device_id, request.event_id), qos=1)
        except ke.BadMessage as exc:
            self._reject(topic, result_topic, payload, exc.code, exc.reason)
        except NotFound as exc:
            self._reject(topic, result_topic, payload, 404, str(exc))
        except FieldgateError as exc:
            self._reject(topic, result_topic, payload, 400, str(exc))
        except Exception:  # a failure of ours: this message gets an answer, the ones queued behind it are served
            log.exception("eventbus: handling a message on %s failed", topic)
            self._reject(topic, result_topic, payload, 500, "internal error: the gateway's log has the details")

    def _reject(self, topic: str, result_topic: str, payload: bytes, code: int, reason: str, *,
                key: str | None = None) -> None:
        self.rejected += 1
        self._rejections.log(logging.WARNING, key or f"{topic} {reason}", "eventbus: rejected a message on %s: %s",
                             topic, reason)
        result = ke.error_result(ke.event_id_of(payload), code, reason)
        task = asyncio.get_running_loop().create_task(self.publish(result_topic, result, qos=1))
        task.add_done_callback(lambda t: t.exception())

    def _types(self, device_id: str) -> dict[str, str]:
        device = self.api.devices().get(device_id)
        if device is None:
            raise NotFound(f"no device {device_id}")
        return {name: prop.model.type for name, prop in device.properties.items()}

    def _twin_document(self, device_id: str, event_id: str) -> dict[str, Any]:
        types = self._types(device_id)
        return ke.twin_message(self.api.twin(device_id), types, event_id)

    async def _twin_update(self, device_id: str, payload: bytes) -> dict[str, Any]:
        update = ke.parse(payload, ke.TwinUpdate)
        types = self._types(device_id)
        values: dict[str, Any] = {}
        for name, twin in update.twin.items():
            if twin.expected is None:
                raise ke.BadMessage(400, f"{name}: only expected values can be set; reported values come from "
                                         "the device")
            values[name] = twin.expected.value
        if not values:
            raise ke.BadMessage(400, "the message sets no value")
        for name in values:  # check everything first: an update is applied whole or not at all
            if name not in types:
                raise NotFound(f"device {device_id} has no property {name!r}")
        self.api.check_desired(device_id, values)
        for name, value in values.items():
            await self.api.set_desired(device_id, name, value, actor="eventbus")
        return ke.twin_message(self.api.twin(device_id), types, update.event_id)

    async def _membership(self, result_topic: str, payload: bytes) -> None:
        request = ke.parse(payload, ke.EventRequest)
        devices = []
        for device_id, bound in sorted(self.api.devices().items()):
            twin = self.api.twin(device_id)
            types: dict[str, str] = {name: prop.model.type for name, prop in bound.properties.items()}
            devices.append({"id": device_id, "name": bound.resource.name, "description": bound.resource.description,
                            "state": twin.state, "attributes": {k: {"value": v} for k, v in
                                                                bound.resource.labels.items()},
                            "twin": ke.twin_message(twin, types)["twin"]})
        await self.publish(result_topic, {"event_id": request.event_id, "timestamp": ke.now_ms(),
                                          "devices": devices}, qos=1)

    # --- notifications from the bus ------------------------------------------------------------------------

    def on_telemetry(self, topic: str, report: Report) -> None:
        payload = _json.encode({"ts": int(report.ts * 1000), "values": report.values})
        self.api.add_outbox(OUTBOX, eventbus_telemetry_topic(self.node_name, report.device), payload)

    def on_twin_change(self, topic: str, change: TwinChange) -> None:
        if self.client is None:
            return
        types = self._types(change.device)
        twin = self.api.twin(change.device)
        after = twin.properties[change.property]
        before = copy.copy(after)
        before.desired, before.desired_at = change.previous, change.previous_at
        notes = [(ke.device_topic(change.device, "twin/update/document"),
                  ke.document_message(change.property, before, after, types[change.property]))]
        delta = ke.delta_message(twin, types)
        if delta is not None:
            notes.append((ke.device_topic(change.device, "twin/update/delta"), delta))
        for note_topic, message in notes:
            self._spawn(self.publish(note_topic, message, qos=1))

    def on_state(self, topic: str, change: DeviceStateChange) -> None:
        if self.client is not None:
            self._spawn(self.publish(ke.device_topic(change.device, "state/update"),
                                     {"event_id": "", "timestamp": int(change.ts * 1000), "state": change.state},
                                     qos=1))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        task.add_done_callback(lambda t: t.exception())

    def describe(self) -> dict[str, Any]:
        return {"url": self.settings.url, "broker": f"{self.host}:{self.port}", "connected": self.client is not None,
                "connected_since": self.connected_since, "received": self.received, "rejected": self.rejected,
                "too_large": self.too_large}


class EventbusSink(Sink):
    """Publishes outbox messages (telemetry) to the eventbus broker, QoS 1 by default, in order."""

    name = "eventbus"

    def __init__(self, link: EventbusLink, qos: int) -> None:
        self.link = link
        self.qos = qos

    async def send(self, batch: list[OutboxMessage]) -> None:
        client = self.link.client
        if client is None:
            raise SinkError("the eventbus broker is not connected")
        try:
            # Queued in order by the client, acknowledged together: one round trip per batch, not per message.
            await asyncio.gather(*(client.publish(m.topic, m.payload, qos=self.qos, timeout=10) for m in batch))
        except (aiomqtt.MqttError, TimeoutError) as exc:
            raise SinkError(f"publishing to the eventbus failed: {exc}") from exc


__all__ = ["OUTBOX", "EventbusLink", "EventbusSink"]
