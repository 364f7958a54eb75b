"""KubeEdge device-twin topics on the eventbus: messages in, results out, values as strings.

`<id>` is `<namespace>/<name>`. Apps publish `$hw/events/device/<id>/twin/update` with expected values (desired)
and get `…/twin/update/result`; `…/twin/get` is answered on `…/twin/get/result`; the gateway publishes
`…/twin/update/delta` and `…/twin/update/document` when a desired value changes, `…/state/update` when a
device's state changes, and answers `$hw/events/node/<node>/membership/get` on `…/membership/get/result`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec

from gateway.decoding import decode_json
from gateway.errors import ConfigError
from gateway.pipeline.twin import Twin, TwinProperty
from gateway.resources.values import to_wire_text

DEVICE_PREFIX = "$hw/events/device/"
SUBSCRIPTIONS = (
    "$hw/events/device/+/+/twin/update",
    "$hw/events/device/+/+/twin/get",
    "$hw/events/node/+/membership/get",
)


class BadMessage(Exception):
    """A message on a twin topic that cannot be handled: code and reason go back on the result topic."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ExpectedValue(msgspec.Struct):
    value: Any = None


class MsgTwinIn(msgspec.Struct):
    expected: ExpectedValue | None = None
    actual: Any = None
    optional: bool | None = None
    metadata: Any = None
    expected_version: Any = None
    actual_version: Any = None


class TwinUpdate(msgspec.Struct):
    twin: dict[str, MsgTwinIn]
    event_id: str = ""
    timestamp: int = 0


class EventRequest(msgspec.Struct):
    event_id: str = ""
    timestamp: int = 0


def now_ms() -> int:
    return int(time.time() * 1000)


def parse(payload: bytes, kind: type[Any]) -> Any:
    try:
        return decode_json(payload, kind, what="invalid message")
    except ConfigError as exc:
        raise BadMessage(400, str(exc)) from None


def event_id_of(payload: bytes) -> str:
    """The event_id of a message, if it has one, so even a rejected message gets a matching result."""
    try:
        data = decode_json(payload, what="message")
    except ConfigError:
        return ""
    return str(data.get("event_id", "")) if isinstance(data, dict) else ""


def msg_twin(prop: TwinProperty, model_type: str) -> dict[str, Any]:
    twin: dict[str, Any] = {"metadata": {"type": model_type}, "optional": False}
    if prop.desired is not None:
        twin["expected"] = {"value": to_wire_text(prop.desired),
                            "metadata": {"timestamp": int((prop.desired_at or 0) * 1000)}}
    if prop.reported is not None:
        twin["actual"] = {"value": to_wire_text(prop.reported),
                          "metadata": {"timestamp": int((prop.reported_at or 0) * 1000)}}
    return twin


def twin_message(twin: Twin, types: dict[str, str], event_id: str = "") -> dict[str, Any]:
    return {"event_id": event_id, "timestamp": now_ms(),
            "twin": {name: msg_twin(prop, types.get(name, "string")) for name, prop in twin.properties.items()}}


def error_result(event_id: str, code: int, reason: str) -> dict[str, Any]:
    return {"event_id": event_id, "timestamp": now_ms(), "code": code, "reason": reason}


def delta_message(twin: Twin, types: dict[str, str]) -> dict[str, Any] | None:
    deltas = twin.deltas()
    if not deltas:
        return None
    message = twin_message(twin, types, str(uuid.uuid4()))
    message["delta"] = {name: to_wire_text(value) for name, value in deltas.items()}
    return message


def document_message(name: str, before: TwinProperty, after: TwinProperty, model_type: str) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "timestamp": now_ms(),
            "twin": {name: {"last": msg_twin(before, model_type), "current": msg_twin(after, model_type)}}}


def device_topic(device_id: str, suffix: str) -> str:
    return f"{DEVICE_PREFIX}{device_id}/{suffix}"


def split_device_topic(topic: str) -> tuple[str, str]:
    """(`<namespace>/<name>`, the rest) of a device topic."""
    parts = topic[len(DEVICE_PREFIX):].split("/", 2)
    return f"{parts[0]}/{parts[1]}", parts[2]
