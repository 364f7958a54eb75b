"""The `dmi` endpoint's properties, and the protocol config and visitor of devices that a KubeEdge mapper serves
(checked when a file loads)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from gateway.resources.durations import Duration
from gateway.resources.schema import Base

INT64 = 2**63  # a protobuf int64 holds -INT64 .. INT64 - 1 (here, not from the wire module: protobuf is 2 MB to import)

DEFAULT_SOCKET = "/etc/kubeedge/dmi.sock"
SOCKET_PATH_MAX = 100  # bytes: a unix socket path is at most 107, and the socket is bound beside it first
ConfigKey = Annotated[str, Meta(min_length=1, max_length=128)]
ConfigValue = str | int | float | bool


class DmiProperties(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """The gateway's DMI server (KubeEdge's `DeviceManagerService`), which mappers register with."""

    socket: Annotated[str, Meta(min_length=1, max_length=SOCKET_PATH_MAX, description=(
        "absolute path of the unix socket mappers call (edgecore's default); created owner-only, removed on stop"))
    ] = DEFAULT_SOCKET
    max_message_bytes: Annotated[int, Meta(ge=4096, le=64 << 20, description=(
        "the largest call a mapper may send; a larger one is refused (RESOURCE_EXHAUSTED)"))] = 1 << 20
    call_timeout: Annotated[Duration, Meta(description="each call to a mapper waits at most this long")
                            ] = Duration(10.0)

    def __post_init__(self) -> None:
        if not self.socket.startswith("/") or "\x00" in self.socket:
            raise ValueError(f"socket: expected an absolute path, got {self.socket!r}")
        if len(self.socket.encode()) > SOCKET_PATH_MAX:
            raise ValueError(f"socket: {len(self.socket.encode())} bytes, above {SOCKET_PATH_MAX} (a unix socket "
                             "path is short)")
        if not 0 < self.call_timeout <= 300:
            raise ValueError("call_timeout: expected more than 0s and at most 5m")


def _check_values(field: str, data: dict[str, Any]) -> None:
    """Customized values travel as one scalar each (edgecore converts nothing else): name the key that is not."""
    for key, value in data.items():
        if isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < INT64:
            raise ValueError(f"{field}.{key}: {value} does not fit a 64-bit integer")
        if not isinstance(value, str | int | float | bool):
            raise ValueError(f"{field}.{key}: expected a string, a number or a boolean (mappers take one scalar "
                             f"per key), got {type(value).__name__}")


class DmiConfig(Base, kw_only=True):
    """`protocol.config` of a `dmi` device, which the mapper registered for protocol `mapper` polls and reports."""

    mapper: Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=63, description=(
        "the protocol the device's mapper registers with (its `MapperInfo.protocol`, KubeEdge's `protocolName`), "
        "e.g. `modbus`"))]
    config_data: Annotated[dict[ConfigKey, Any], Meta(description=(
        "the mapper's protocol settings as KubeEdge's `spec.protocol.configData` has them (scalar values)"))] = {}
    state_report_interval: Annotated[Duration, Meta(description=(
        "how often the mapper reports the device's state (`ReportDeviceStates`)"))] = Duration(5.0)

    def __post_init__(self) -> None:
        _check_values("config_data", self.config_data)
        if self.state_report_interval < 0.1:
            raise ValueError("state_report_interval: must be at least 100ms")


class DmiVisitor(Base, kw_only=True):
    """Where the mapper finds one property: KubeEdge's `visitors.configData`, passed on as it is."""

    config_data: Annotated[dict[ConfigKey, Any], Meta(description=(
        "the mapper's settings for the property (scalar values), e.g. `{register: HoldingRegister, offset: 0}`"))
    ] = {}

    def __post_init__(self) -> None:
        _check_values("config_data", self.config_data)
