"""The messages on the gateway's bus and their topics: what pollers, the twin and the eventbus publish, and what
sinks, routes, plugins and the uplink subscribe to.

Topics (`<id>` is `<namespace>/<name>` of a device):
- `devices/<id>/telemetry`: a `Report`, the values of the properties whose report was due;
- `devices/<id>/twin`: a `TwinChange`, a desired value changed;
- `devices/<id>/state`: a `DeviceStateChange`, the device went online, unhealthy or offline;
- `gateway/eventbus/state`: an `EventbusStateChange`, the gateway's link to the local broker connected or dropped.
"""

from __future__ import annotations

from typing import Any

import msgspec

TELEMETRY_FILTER = "devices/+/+/telemetry"
TWIN_FILTER = "devices/+/+/twin"
STATE_FILTER = "devices/+/+/state"
EVENTBUS_STATE = "gateway/eventbus/state"


class Report(msgspec.Struct, frozen=True):
    """One device report on the bus: the values of the properties whose report was due."""

    device: str
    ts: float
    values: dict[str, Any]


class TwinChange(msgspec.Struct, frozen=True):
    """A desired value changed (on the bus as devices/<ns>/<name>/twin)."""

    device: str
    property: str
    desired: Any
    previous: Any
    previous_at: float | None


class DeviceStateChange(msgspec.Struct, frozen=True):
    """A device's state changed: online, unhealthy or offline, with the reason."""

    device: str
    state: str
    reason: str
    ts: float


class EventbusStateChange(msgspec.Struct, frozen=True):
    """The gateway's link to the eventbus broker connected (a new session) or dropped."""

    connected: bool
    broker: str
    ts: float


def eventbus_telemetry_topic(node: str, device_id: str) -> str:
    """Where the gateway publishes a device's telemetry on the local MQTT broker (the MQTT telemetry contract)."""
    return f"fieldgate/{node}/{device_id}/telemetry"


def telemetry_topic(device_id: str) -> str:
    return f"devices/{device_id}/telemetry"


def state_topic(device_id: str) -> str:
    return f"devices/{device_id}/state"


def twin_topic(device_id: str) -> str:
    return f"devices/{device_id}/twin"
