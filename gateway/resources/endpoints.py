"""Endpoint types: each type's properties Struct and the roles it can take in a route, the built-in ones, and the
checks of Endpoint and Route documents against them.

The loader gets the endpoint types as it gets the protocols: from the plugins (`gateway.sinks.registry`), or the
built-in ones below when it is given none. Sources are the core's (`bus`, `eventbus`, `rest`); route targets are
sinks registered through `register_sinks`; endpoints a plugin serves itself come from `register_endpoint_types`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from gateway import router
from gateway.errors import ConfigError
from gateway.resources.schema import Base, Endpoint, Route

DEFAULT_OLDER_FORM_TOPIC = "devices/+/+/telemetry"
Port = Annotated[int, Meta(ge=1, le=65535)]


def check_url(url: str, schemes: tuple[str, ...], field: str = "url") -> None:
    """ValueError `<field>: …` (a properties check naming its field) unless the URL has one of the schemes, a host
    and, if any, a numeric port."""
    expected = " or ".join(f"{scheme}://host:port" for scheme in schemes)
    try:
        parts = urlsplit(url)
        _ = parts.port  # parsed lazily: a port that is no number raises only here
    except ValueError:
        raise ValueError(f"{field}: {url!r} has a bad port (expected {expected})") from None
    if parts.scheme not in schemes or not parts.hostname or any(c.isspace() for c in url):
        raise ValueError(f"{field}: {url!r}: expected {expected}")


# --- the properties of the built-in endpoint types -----------------------------------------------------------


class Properties(Base, kw_only=True):
    """The properties of one endpoint type: unknown ones are refused, numbers may be given as strings."""


class BusProperties(Properties, kw_only=True):
    """The gateway's own bus (`devices/<ns>/<name>/telemetry`, …): no properties."""


class EventbusProperties(Properties, kw_only=True):
    """The local MQTT broker of the Gateway document's `eventbus` settings: no properties."""


class RestProperties(Properties, kw_only=True):
    """The cloud side: a path for `POST /api/v1/messages/<path>` as a source, a URL the gateway calls as a target
    (the route's `target_resource.resource`): no properties."""


class ServicebusProperties(Properties, kw_only=True):
    """A local HTTP service; each message is POSTed as it is to the route's `target_resource.path`."""

    service_port: Annotated[Port, Meta(description="the local service's port")]
    host: Annotated[str, Meta(min_length=1, description="the service's host")] = "127.0.0.1"


class MqttProperties(Properties, kw_only=True):
    """Any MQTT broker; the route's `target_resource.topic` names the topic."""

    url: Annotated[str, Meta(description="mqtt://host:port or mqtts://host:port; user:password@ may lead the host")]
    qos: Annotated[int, Meta(ge=0, le=1)] = 1
    batch: Annotated[int, Meta(ge=1, le=10_000, description="messages per publish, as one JSON array (1: each "
                                                            "message on its own)")] = 1
    username: str | None = None
    password: str | None = None
    ca_file: Annotated[str | None, Meta(description="CA certificate (PEM) to trust, for mqtts://")] = None

    def __post_init__(self) -> None:
        check_url(self.url, ("mqtt", "mqtts"))


class HttpProperties(Properties, kw_only=True):
    """Any URL; the route's `target_resource.path`, if any, is appended to `url`."""

    url: Annotated[str, Meta(description="http://… or https://…")]
    mode: Annotated[Literal["batch", "each"], Meta(
        description="`batch`: one JSON array `[{topic, ts, payload}, …]` per batch; `each`: every message body as "
                    "it is, one request each")] = "batch"
    headers: Annotated[dict[str, str], Meta(description="request headers (the older `header.<Name>` properties "
                                                        "are read into this)")] = {}

    @classmethod
    def older_spellings(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """`header.<Name>: value` properties, as configurations had them, into `headers`."""
        prefixed = {key.removeprefix("header."): value for key, value in raw.items()
                    if isinstance(key, str) and key.startswith("header.")}
        if not prefixed:
            return raw
        rest = {key: value for key, value in raw.items() if not (isinstance(key, str) and key.startswith("header."))}
        headers = rest.get("headers", {})
        rest["headers"] = {**prefixed, **headers} if isinstance(headers, dict) else headers
        return rest

    def __post_init__(self) -> None:
        check_url(self.url, ("http", "https"))


# --- endpoint types --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointType:
    """What the loader knows of an endpoint type: its properties Struct and the roles it can take in a route.

    `source_resource` / `target_resource`: the key of a Route's `source_resource` / `target_resource` the type
    needs as a route source / target (`topic`, `path`, `resource`), "" when it takes the role without one, None
    when it cannot take the role. `older_form`: an Endpoint of another type may name it with `properties.plugin`
    (the form configurations had before the type existed); a route target named so implies a Route from the bus
    topic in its `topic` property (default `older_form_topic`) with the outbox `<type>:<namespace>/<name>`.
    """

    name: str
    properties: type[msgspec.Struct]
    source_resource: str | None = None
    target_resource: str | None = None
    target_resource_optional: bool = False
    older_form: bool = False
    older_form_topic: str = DEFAULT_OLDER_FORM_TOPIC
    description: str = ""
    provider: str = field(default="gateway", compare=False)  # the module that registered it

    @property
    def is_target(self) -> bool:
        return self.target_resource is not None


# The roles the core itself serves: every source (the bus, the eventbus and the REST API feed routes).
CORE_SOURCES: dict[str, EndpointType] = {
    "bus": EndpointType("bus", BusProperties, source_resource="topic",
                        description="the gateway's own bus topics, e.g. `devices/+/+/telemetry`"),
    "eventbus": EndpointType("eventbus", EventbusProperties, source_resource="topic",
                             description="topics on the local MQTT broker (published by local apps)"),
    "rest": EndpointType("rest", RestProperties, source_resource="path",
                         description="`POST /api/v1/messages/<path>` on the gateway (and through the registry)"),
}

# The built-in endpoint types: the core's sources with the route targets the built-in sink plugin
# (gateway.sinks.builtin) registers; what the loader checks against when it is given no types.
# tests/sinks/test_registry.py keeps this equal to what the plugins register.
BUILTIN_ENDPOINT_TYPES: dict[str, EndpointType] = {
    "bus": CORE_SOURCES["bus"],
    "eventbus": EndpointType("eventbus", EventbusProperties, source_resource="topic", target_resource="topic",
                             description=CORE_SOURCES["eventbus"].description),
    "rest": EndpointType("rest", RestProperties, source_resource="path", target_resource="resource",
                         description=CORE_SOURCES["rest"].description),
    "servicebus": EndpointType("servicebus", ServicebusProperties, target_resource="path",
                               description="a local HTTP service on a port"),
    "mqtt": EndpointType("mqtt", MqttProperties, target_resource="topic", description="any MQTT broker"),
    "http": EndpointType("http", HttpProperties, target_resource="path", target_resource_optional=True,
                         description="any URL"),
}


@dataclass(frozen=True)
class ImpliedRoute:
    """The route an Endpoint in the older form implies: bus messages on `topic` to that endpoint."""

    namespace: str
    endpoint: str
    type: str
    topic: str

    @property
    def outbox(self) -> str:
        return f"{self.type}:{self.namespace}/{self.endpoint}"


@dataclass(frozen=True)
class ResolvedEndpoint:
    """An Endpoint document read against the endpoint types: its type, its raw properties for that type's Struct,
    and, in the older form, the `plugin` it named and the route it implies."""

    type: EndpointType
    properties: dict[str, Any]
    older_plugin: str | None = None
    implied_route: ImpliedRoute | None = None


def known(types: Mapping[str, EndpointType]) -> str:
    return ", ".join(sorted(types)) or "none"


def resolve_endpoint(endpoint: Endpoint, types: Mapping[str, EndpointType]) -> ResolvedEndpoint:
    """The type an Endpoint has (itself, or in the older form the one `properties.plugin` names); ConfigError
    whose text starts with the field path."""
    properties = dict(endpoint.properties)
    plugin = properties.get("plugin")
    if plugin is None:
        endpoint_type = types.get(endpoint.type)
        if endpoint_type is None:
            raise ConfigError(f"$.type: unknown endpoint type {endpoint.type!r} (known: {known(types)})")
        return ResolvedEndpoint(endpoint_type, properties)
    if endpoint.type not in types:
        raise ConfigError(f"$.type: unknown endpoint type {endpoint.type!r} (known: {known(types)})")
    named = types.get(plugin) if isinstance(plugin, str) else None
    if named is None or not named.older_form:
        older = sorted(name for name, t in types.items() if t.older_form)
        raise ConfigError(f"$.properties.plugin: no installed plugin serves {plugin!r} (endpoint types named this "
                          f"way: {', '.join(older) or 'none'}; others are named by `type`)")
    del properties["plugin"]
    implied = None
    if named.is_target:
        topic = properties.pop("topic", named.older_form_topic)
        if not isinstance(topic, str):
            raise ConfigError(f"$.properties.topic: Expected str, got {type(topic).__name__}")
        try:
            router.validate_filter(topic)
        except ConfigError as exc:
            raise ConfigError(f"$.properties.topic: {exc}") from None
        implied = ImpliedRoute(endpoint.namespace, endpoint.name, named.name, topic)
    return ResolvedEndpoint(named, properties, plugin, implied)


def older_form_note(endpoint: Endpoint, resolved: ResolvedEndpoint) -> str:
    """What an Endpoint in the older form is read as, for the log."""
    note = (f"Endpoint {endpoint.namespace}/{endpoint.name} has the older form (`type: {endpoint.type}` with "
            f"`properties.plugin: {resolved.older_plugin}`): read as `type: {resolved.type.name}`")
    route = resolved.implied_route
    if route is not None:
        note += f" with a Route from the bus topic {route.topic!r} (outbox {route.outbox})"
    return note


def upgrade_spellings(properties_type: type[msgspec.Struct], raw: dict[str, Any]) -> dict[str, Any]:
    """The raw properties with the older spellings its Struct knows (an `older_spellings` classmethod) rewritten."""
    rewrite = getattr(properties_type, "older_spellings", None)
    return rewrite(raw) if callable(rewrite) else raw


_FIELD_MESSAGE = re.compile(r"^(?P<field>[A-Za-z_][A-Za-z0-9_]*): (?P<message>.+)$", re.S)


def field_of_message(properties_type: type[msgspec.Struct], message: str) -> tuple[str, str] | None:
    """(field, rest) when a check's message starts with one of the Struct's fields (`key_file: needs cert_file`)."""
    match = _FIELD_MESSAGE.match(message)
    if match and match["field"] in properties_type.__struct_fields__:
        return match["field"], match["message"]
    return None


def route_problems(route: Route, endpoint_types: Mapping[tuple[str, str], EndpointType | None],
                   types: Mapping[str, EndpointType]) -> list[tuple[str, str]]:
    """(field path, message) for everything wrong with a route, given the type of every endpoint by key (None for
    an endpoint whose type or properties are wrong: that is reported on the endpoint) and every known type."""
    problems: list[tuple[str, str]] = []
    for side in ("source", "target"):
        name = getattr(route, side)
        if (route.namespace, name) not in endpoint_types:
            problems.append((f"$.{side}", f"no Endpoint {route.namespace}/{name}"))
            continue
        endpoint_type = endpoint_types[(route.namespace, name)]
        if endpoint_type is None:
            continue
        key = endpoint_type.source_resource if side == "source" else endpoint_type.target_resource
        if key is None:
            able = sorted(t.name for t in types.values()
                          if (t.source_resource if side == "source" else t.target_resource) is not None)
            problems.append((f"$.{side}", f"a {endpoint_type.name} endpoint cannot be a route {side} (it can be: "
                                          f"{', '.join(able) or 'none'})"))
            continue
        resource = getattr(route, f"{side}_resource")
        if not key or (side == "target" and endpoint_type.target_resource_optional):
            continue
        if not resource.get(key):
            problems.append((f"$.{side}_resource.{key}", f"a {endpoint_type.name} {side} needs `{key}`"))
        elif key == "topic" and side == "source":
            try:
                router.validate_filter(resource[key])
            except ConfigError as exc:
                problems.append((f"$.{side}_resource.topic", str(exc)))
    return problems
