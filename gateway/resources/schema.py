"""Resource documents: one schema for YAML files, the REST API and the registry (msgspec Structs)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from gateway.resources.durations import Duration

NAME_PATTERN = r"^[a-z0-9]+([-.][a-z0-9]+)*$"
Name = Annotated[
    str,
    Meta(
        pattern=NAME_PATTERN,
        max_length=253,
        description="lowercase letters, digits, '-' and '.', starting and ending alphanumeric, no two symbols in a row",
    ),
]
PropertyName = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$", max_length=128)]
ModelType = Literal["int", "float", "double", "string", "boolean", "bytes"]
Access = Literal["ReadWrite", "ReadOnly"]


class Base(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """Every schema object rejects unknown fields and takes keyword arguments only."""


class Document(Base, tag_field="kind", kw_only=True):
    """Fields every resource document carries."""

    name: Name
    namespace: Name = "default"
    labels: dict[str, str] = {}
    description: str = ""

    @property
    def kind(self) -> str:
        return type(self).__struct_config__.tag  # type: ignore[return-value]

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)


# --- Gateway -------------------------------------------------------------------------------------------------


class HttpSettings(Base, kw_only=True):
    listen: Annotated[str, Meta(description="HOST:PORT of the local web UI and REST API")] = "127.0.0.1:8080"


class EventbusSettings(Base, kw_only=True):
    url: Annotated[str, Meta(
        pattern=r"^(embedded|none|mqtts?://[^/\s]+)$",
        description="mqtt://host:port, mqtts://host:port, `embedded` (a broker run by the gateway) or `none`",
    )] = "embedded"
    embedded_listen: Annotated[str, Meta(description="HOST:PORT of the embedded broker")] = "127.0.0.1:1883"
    username: str | None = None
    password: str | None = None
    ca_file: Annotated[str | None, Meta(description="CA certificate (PEM) to trust, for mqtts://")] = None
    cert_file: Annotated[str | None, Meta(description="client certificate (PEM), for mqtts://")] = None
    key_file: Annotated[str | None, Meta(description="client key (PEM), for mqtts://")] = None
    telemetry_qos: Annotated[int, Meta(ge=0, le=1)] = 1
    outbox_max_messages: Annotated[int, Meta(ge=1000, description="oldest dropped beyond this")] = 1_000_000
    outbox_max_age: Annotated[Duration, Meta(description="older messages are dropped")] = Duration(7 * 86400)


class StoreSettings(Base, kw_only=True):
    history_max_age: Duration = Duration(7 * 86400)
    history_max_bytes: Annotated[int, Meta(ge=1 << 20)] = 256 << 20
    flush_interval: Duration = Duration(0.1)


class Gateway(Document, tag="Gateway", kw_only=True):
    """Node settings; read from the local configuration only."""

    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    eventbus: EventbusSettings = msgspec.field(default_factory=EventbusSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)


# --- Device models and devices --------------------------------------------------------------------------------


class PropertyModel(Base, kw_only=True):
    name: PropertyName
    type: ModelType
    access: Access = "ReadOnly"
    unit: str = ""
    minimum: float | None = None
    maximum: float | None = None
    description: str = ""


class DeviceModel(Document, tag="DeviceModel", kw_only=True):
    protocol: str = ""
    properties: list[PropertyModel] = []


class ProtocolRef(Base, kw_only=True):
    name: Annotated[str, Meta(min_length=1)]
    config: dict[str, Any] = {}


class DeviceProperty(Base, kw_only=True):
    name: PropertyName
    collect_interval: Duration = Duration(1.0)
    report_interval: Duration | None = None
    desired: Any = None
    visitor: dict[str, Any] = {}


class Device(Document, tag="Device", kw_only=True):
    model: Name | None = None
    profile: str | None = None
    protocol: ProtocolRef
    timeout: Annotated[Duration, Meta(description="budget for one poll cycle of this device")] = Duration(3.0)
    node: Name | None = None
    properties: list[DeviceProperty] = []


# --- Message endpoints and routes ----------------------------------------------------------------------------

EndpointType = Literal["rest", "eventbus", "servicebus", "bus", "mqtt", "http"]


class Endpoint(Document, tag="Endpoint", kw_only=True):
    """Where messages come from or go to: `rest` (the cloud side), `eventbus` (the local MQTT broker),
    `servicebus` (a local HTTP service: `service_port`), `bus` (the gateway's own bus), `mqtt` (any broker:
    `url`, `qos`, `batch`, `username`, `password`, `ca_file`), `http` (any URL: `url`, `mode` batch|each,
    `header.<Name>`)."""

    type: EndpointType
    properties: dict[str, str] = {}


class Route(Document, tag="Route", kw_only=True):
    """Messages from a source endpoint and resource (`topic` or `path`) to a target endpoint and resource
    (`topic`, `path` or `resource` URL); `{node}`, `{namespace}`, `{device}` and `{topic}` fill target topics."""

    source: Name
    source_resource: dict[str, str] = {}
    target: Name
    target_resource: dict[str, str] = {}


AnyDocument = Gateway | DeviceModel | Device | Endpoint | Route
KINDS: dict[str, type[Document]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (Gateway, DeviceModel, Device, Endpoint, Route)
}


def dec_hook(target: type, raw: Any) -> Any:
    """msgspec hook for the custom types of the schema."""
    if target is Duration:
        return Duration.parse(raw)
    raise NotImplementedError(f"no decoder for {target!r}")


def enc_hook(value: Any) -> Any:
    if isinstance(value, Duration):
        return float(value)
    raise NotImplementedError(f"no encoder for {type(value)!r}")
