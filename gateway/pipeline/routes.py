"""Message routes: from a source endpoint and resource to a target endpoint and resource, each with its own
durable outbox and counters (as KubeEdge's Rule status).

Sources: `bus` (a topic filter on the gateway's bus, e.g. `devices/+/+/telemetry`), `eventbus` (an MQTT topic
filter on the local broker, published by local apps) and `rest` (a path: `POST /api/v1/messages/<path>` on the
gateway, and the registry's REST API that forwards to it). Targets: `eventbus` (a local MQTT topic), `servicebus`
(a local HTTP service on a port), `rest` (a URL, called by the gateway), `mqtt` (any broker) and `http` (any URL).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from gateway import router
from gateway.errors import ConfigError
from gateway.messages import Report
from gateway.pipeline.bus import Bus
from gateway.resources.schema import Endpoint, Route
from gateway.sinks.base import OutboxMessage, Sink, SinkError, SinkRunner
from gateway.sinks.manager import Sinks
from gateway.store import Store

if TYPE_CHECKING:
    import aiomqtt

    from gateway.resources.loader import Config

log = logging.getLogger(__name__)

SOURCES = {"bus": "topic", "eventbus": "topic", "rest": "path"}
TARGETS = {"eventbus": "topic", "servicebus": "path", "rest": "resource", "mqtt": "topic", "http": "path"}
_json = msgspec.json.Encoder()


def route_problems(route: Route, endpoints: dict[tuple[str, str], Endpoint]) -> list[tuple[str, str]]:
    """(field path, message) for everything wrong with a route, given the endpoints."""
    problems: list[tuple[str, str]] = []
    for side, kinds in (("source", SOURCES), ("target", TARGETS)):
        endpoint = endpoints.get((route.namespace, getattr(route, side)))
        if endpoint is None:
            problems.append((f"$.{side}", f"no Endpoint {route.namespace}/{getattr(route, side)}"))
            continue
        if endpoint.type not in kinds:
            problems.append((f"$.{side}", f"a {endpoint.type} endpoint cannot be a route {side} (it can be: "
                                          f"{', '.join(sorted(kinds))})"))
            continue
        resource = getattr(route, f"{side}_resource")
        key = kinds[endpoint.type]
        if endpoint.type == "http" and side == "target":
            continue  # the path is optional: the endpoint's url may be complete
        if not resource.get(key):
            problems.append((f"$.{side}_resource.{key}", f"a {endpoint.type} {side} needs `{key}`"))
        elif key == "topic" and side == "source":
            try:
                router.validate_filter(resource[key])
            except ConfigError as exc:
                problems.append((f"$.{side}_resource.topic", str(exc)))
    return problems


def endpoint_problems(endpoint: Endpoint) -> list[tuple[str, str]]:
    props = endpoint.properties
    if endpoint.type == "servicebus" and not props.get("service_port", "").isdigit():
        return [("$.properties.service_port", "a servicebus endpoint needs the local service's port")]
    if endpoint.type in ("mqtt", "http") and not props.get("url"):
        return [("$.properties.url", f"a {endpoint.type} endpoint needs a url")]
    return []


def message_bytes(message: Any) -> bytes:
    """A bus message as JSON (device reports as the telemetry contract's {ts, values} plus the device)."""
    if isinstance(message, bytes):
        return message
    if isinstance(message, Report):
        return _json.encode({"device": message.device, "ts": int(message.ts * 1000), "values": message.values})
    return _json.encode(msgspec.to_builtins(message))


def render(template: str, node: str, topic: str) -> str:
    """Fill `{node}`, `{namespace}`, `{device}` (from a devices/<ns>/<name>/… topic) and `{topic}`."""
    parts = topic.split("/")
    namespace, device = (parts[1], parts[2]) if parts[0] == "devices" and len(parts) > 3 else ("", "")
    try:
        return template.format(node=node, namespace=namespace, device=device, topic=topic)
    except (KeyError, IndexError, ValueError):
        return template


EventbusClient = Callable[[], "aiomqtt.Client | None"]


class EventbusTarget(Sink):
    name = "eventbus"

    def __init__(self, client: EventbusClient) -> None:
        self.client = client

    async def send(self, batch: list[OutboxMessage]) -> None:
        client = self.client()
        if client is None:
            raise SinkError("the eventbus broker is not connected")
        for message in batch:
            await client.publish(message.topic, message.payload, qos=1, timeout=10)


@dataclass
class RouteRuntime:
    route: Route
    source: Endpoint
    target: Endpoint
    runner: SinkRunner
    accepted: int = 0
    rejected: int = 0

    @property
    def outbox(self) -> str:
        return f"route:{self.route.namespace}/{self.route.name}"

    def describe(self, depth: int) -> dict[str, Any]:
        stats = self.runner.stats
        return {"namespace": self.route.namespace, "name": self.route.name,
                "source": f"{self.source.type}:{self.route.source}",
                "target": f"{self.target.type}:{self.route.target}",
                "accepted": self.accepted, "successes": stats.delivered, "failures": stats.failures,
                "dropped": stats.dropped + getattr(self.runner.sink, "dropped", 0), "last_error": stats.last_error,
                "state": stats.state, "outbox_depth": depth}


def make_sink(node_name: str, eventbus: EventbusClient, route: Route, target: Endpoint) -> Sink:
    from gateway.sinks.http import HttpSink  # imported when a route needs one: httpx alone costs ~9 MB
    from gateway.sinks.mqtt import MqttSink

    resource = route.target_resource
    if target.type == "eventbus":
        return EventbusTarget(eventbus)
    if target.type == "servicebus":
        host = target.properties.get("host", "127.0.0.1")
        return HttpSink(f"http://{host}:{target.properties['service_port']}{resource['path']}", mode="each")
    if target.type == "rest":
        return HttpSink(resource["resource"], mode="each")
    if target.type == "http":
        headers = {k.removeprefix("header."): v for k, v in target.properties.items() if k.startswith("header.")}
        mode = target.properties.get("mode", "batch")
        return HttpSink(target.properties["url"] + resource.get("path", ""), mode=mode, headers=headers)
    return MqttSink(target.properties["url"], client_id=f"fieldgate-{node_name}-{route.name}",
                    qos=int(target.properties.get("qos", "1")), batch_size=int(target.properties.get("batch", "1")),
                    username=target.properties.get("username"), password=target.properties.get("password"),
                    ca_file=target.properties.get("ca_file"))


class Routes:
    """The routes of the running configuration: sources wired to per-route outboxes."""

    def __init__(self, node_name: str, bus: Bus, store: Store, sinks: Sinks, eventbus: EventbusClient | None) -> None:
        self.node_name = node_name
        self.bus = bus
        self.store = store
        self.sinks = sinks
        self.eventbus = eventbus  # the eventbus link's client of the moment; None when the eventbus is off
        self.routes: dict[str, RouteRuntime] = {}
        self._bus_subscriptions: list[int] = []
        self.eventbus_router = router.new_router()
        self._eventbus_ids: dict[int, RouteRuntime] = {}

    def start(self, config: Config) -> None:
        for (ns, name), route in sorted(config.routes.items()):
            source = config.endpoints[(ns, route.source)]
            target = config.endpoints[(ns, route.target)]
            if "eventbus" in (source.type, target.type) and self.eventbus is None:
                log.warning("route %s/%s uses the eventbus, which is off (eventbus.url: none)", ns, name,
                            extra={"route": f"{ns}/{name}"})
            outbox = f"route:{ns}/{name}"
            sink = make_sink(self.node_name, self.eventbus or _no_client, route, target)
            runner = self.sinks.start(outbox, sink, log_fields={"route": f"{ns}/{name}"})
            runtime = RouteRuntime(route, source, target, runner)
            self.routes[outbox] = runtime
            if source.type == "bus":
                self._bus_subscriptions.append(
                    self.bus.subscribe(route.source_resource["topic"], self._bus_handler(runtime)))
            elif source.type == "eventbus":
                route_id = len(self._eventbus_ids) + 1
                self._eventbus_ids[route_id] = runtime
                self.eventbus_router.add(route_id, route.source_resource["topic"])

    async def stop(self) -> None:
        for sub_id in self._bus_subscriptions:
            self.bus.unsubscribe(sub_id)
        for outbox in self.routes:
            await self.sinks.stop(outbox)
        self.routes.clear()
        self._bus_subscriptions.clear()
        self._eventbus_ids.clear()
        self.eventbus_router = router.new_router()

    async def reconcile(self, old: Config, new: Config) -> bool:
        """Rewire the routes when they or the endpoints changed; True when they did."""
        if old.routes == new.routes and old.endpoints == new.endpoints:
            return False
        await self.stop()
        self.start(new)
        return True

    def eventbus_topics(self) -> list[str]:
        return sorted({r.route.source_resource["topic"] for r in self._eventbus_ids.values()})

    def _bus_handler(self, runtime: RouteRuntime) -> Callable[[str, Any], None]:
        def handler(topic: str, message: Any) -> None:
            self.accept(runtime, topic, message_bytes(message))

        return handler

    def accept(self, runtime: RouteRuntime, topic: str, payload: bytes) -> None:
        resource = runtime.route.target_resource
        target_topic = render(resource.get("topic", topic), self.node_name, topic)
        self.store.outboxes.add(runtime.outbox, target_topic, payload)
        runtime.accepted += 1

    def from_eventbus(self, topic: str, payload: bytes) -> bool:
        """Route a message a local app published; True when a route took it."""
        return self.from_eventbus_many([(topic, payload)]) == 1

    def from_eventbus_many(self, messages: Sequence[tuple[str, bytes]]) -> int:
        """Route messages local apps published, in order, with one router call; how many a route took."""
        try:
            matches = self.eventbus_router.match_many([topic for topic, _ in messages])
        except ConfigError:  # a topic no broker should pass on: route the others one by one
            matches = [self._match_or_log(topic) for topic, _ in messages]
        taken = 0
        for (topic, payload), ids in zip(messages, matches, strict=True):
            for route_id in ids:
                self.accept(self._eventbus_ids[route_id], topic, payload)
            taken += bool(ids)
        return taken

    def _match_or_log(self, topic: str) -> tuple[int, ...]:
        try:
            return tuple(self.eventbus_router.match(topic))
        except ConfigError as exc:
            log.warning("eventbus message dropped: %s", exc)
            return ()

    def from_rest(self, path: str, payload: bytes, namespace: str | None = None) -> list[str]:
        """Route a message posted to a REST path (of one namespace, or any); the names of the routes that took
        it."""
        taken = []
        for runtime in list(self.routes.values()):
            source_path = runtime.route.source_resource.get("path", "")
            if (runtime.source.type == "rest" and (namespace is None or runtime.route.namespace == namespace)
                    and source_path.strip("/") == path.strip("/")):
                self.accept(runtime, path, payload)
                taken.append(f"{runtime.route.namespace}/{runtime.route.name}")
        return taken

    def describe(self) -> list[dict[str, Any]]:
        depth = self.store.outboxes.depth
        return [runtime.describe(depth.get(outbox, 0)) for outbox, runtime in sorted(self.routes.items())]


def _no_client() -> None:
    return None
