"""Message routes: from a source endpoint and resource to a target endpoint and resource, each with its own
durable outbox and counters (as KubeEdge's Rule status).

Sources are the core's: `bus` (a topic filter on the gateway's bus, e.g. `devices/+/+/telemetry`), `eventbus` (an
MQTT topic filter on the local broker, published by local apps) and `rest` (a path: `POST /api/v1/messages/<path>`
on the gateway, and the registry's REST API that forwards to it). Targets are sinks of the types registered through
`register_sinks` (built in: `eventbus`, `servicebus`, `rest`, `mqtt`, `http`; plugins add more, e.g. `influxdb`);
the checks of routes against the endpoint types are the loader's (gateway.resources.endpoints).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from gateway import router
from gateway.errors import ConfigError
from gateway.messages import Report
from gateway.pipeline.bus import Bus
from gateway.resources.endpoints import ImpliedRoute
from gateway.resources.schema import Route
from gateway.sinks.base import Sink, SinkContext
from gateway.sinks.manager import SinkRunner, Sinks
from gateway.store import Store

if TYPE_CHECKING:
    from gateway.api import GatewayAPI
    from gateway.resources.loader import Config

log = logging.getLogger(__name__)

_json = msgspec.json.Encoder()


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


@dataclass
class RouteRuntime:
    """One running route: where its messages come from, the outbox they wait in and the sink that drains it."""

    namespace: str
    name: str
    outbox: str
    source_type: str
    source: str  # the source endpoint's name (an implied route's: its bus topic)
    source_resource: Mapping[str, str]
    target_type: str
    target: str
    target_resource: Mapping[str, str]
    accepted: int = 0
    rejected: int = 0
    runner: SinkRunner = field(init=False)  # set when its sink starts

    @classmethod
    def of_route(cls, route: Route, config: Config) -> RouteRuntime:
        ns = route.namespace
        return cls(ns, route.name, f"route:{ns}/{route.name}", config.endpoint_types[(ns, route.source)],
                   route.source, route.source_resource, config.endpoint_types[(ns, route.target)], route.target,
                   route.target_resource)

    @classmethod
    def of_implied(cls, implied: ImpliedRoute) -> RouteRuntime:
        return cls(implied.namespace, implied.endpoint, implied.outbox, "bus", implied.topic,
                   {"topic": implied.topic}, implied.type, implied.endpoint, {})

    def describe(self, depth: int) -> dict[str, Any]:
        stats = self.runner.stats
        return {"namespace": self.namespace, "name": self.name,
                "source": f"{self.source_type}:{self.source}", "target": f"{self.target_type}:{self.target}",
                "accepted": self.accepted, "successes": stats.delivered, "failures": stats.failures,
                "dropped": stats.dropped + getattr(self.runner.sink, "dropped", 0), "last_error": stats.last_error,
                "state": stats.state, "outbox_depth": depth}


class Routes:
    """The routes of the running configuration (and those Endpoints in the older form imply): sources wired to
    per-route outboxes, each drained by a sink built through the registered sink types."""

    def __init__(self, node_name: str, bus: Bus, store: Store, sinks: Sinks, sink_types: Mapping[str, type[Sink]],
                 *, eventbus_on: bool) -> None:
        self.node_name = node_name
        self.bus = bus
        self.store = store
        self.sinks = sinks
        self.sink_types = sink_types
        self.eventbus_on = eventbus_on
        self.api: GatewayAPI | None = None  # set by attach(); sinks get it in their context
        self.routes: dict[str, RouteRuntime] = {}
        self._bus_subscriptions: list[int] = []
        self.eventbus_router = router.new_router()
        self._eventbus_ids: dict[int, RouteRuntime] = {}

    def attach(self, api: GatewayAPI) -> None:
        self.api = api

    def start(self, config: Config) -> None:
        for (ns, _), route in sorted(config.routes.items()):
            self._start(RouteRuntime.of_route(route, config), config.endpoint_properties[(ns, route.target)])
        for key, implied in sorted(config.implied_routes.items()):
            self._start(RouteRuntime.of_implied(implied), config.endpoint_properties[key])

    def _start(self, runtime: RouteRuntime, properties: Any) -> None:
        route = f"{runtime.namespace}/{runtime.name}"
        if "eventbus" in (runtime.source_type, runtime.target_type) and not self.eventbus_on:
            log.warning("route %s uses the eventbus, which is off (eventbus.url: none)", route,
                        extra={"route": route})
        assert self.api is not None, "Routes.attach(api) comes first"
        sink_type = self.sink_types.get(runtime.target_type)
        try:
            if sink_type is None:
                raise ConfigError(f"no sink serves endpoint type {runtime.target_type!r}")
            context = SinkContext(self.node_name, runtime.namespace, runtime.name, self.api)
            sink = sink_type.for_route(properties, runtime.target_resource, context)
        except Exception as exc:  # a plugin's sink that cannot be built must not stop the other routes
            log.error("route %s to %s: no sink: %s", route, runtime.target_type, exc, extra={"route": route})
            return
        runtime.runner = self.sinks.start(runtime.outbox, sink, log_fields={"route": route})
        self.routes[runtime.outbox] = runtime
        if runtime.source_type == "bus":
            self._bus_subscriptions.append(
                self.bus.subscribe(runtime.source_resource["topic"], self._bus_handler(runtime)))
        elif runtime.source_type == "eventbus":
            route_id = len(self._eventbus_ids) + 1
            self._eventbus_ids[route_id] = runtime
            self.eventbus_router.add(route_id, runtime.source_resource["topic"])

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
        return sorted({r.source_resource["topic"] for r in self._eventbus_ids.values()})

    def _bus_handler(self, runtime: RouteRuntime) -> Callable[[str, Any], None]:
        def handler(topic: str, message: Any) -> None:
            self.accept(runtime, topic, message_bytes(message))

        return handler

    def accept(self, runtime: RouteRuntime, topic: str, payload: bytes) -> None:
        resource = runtime.target_resource
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
            source_path = runtime.source_resource.get("path", "")
            if (runtime.source_type == "rest" and (namespace is None or runtime.namespace == namespace)
                    and source_path.strip("/") == path.strip("/")):
                self.accept(runtime, path, payload)
                taken.append(f"{runtime.namespace}/{runtime.name}")
        return taken

    def describe(self) -> list[dict[str, Any]]:
        depth = self.store.outboxes.depth
        return [runtime.describe(depth.get(outbox, 0)) for outbox, runtime in sorted(self.routes.items())]

