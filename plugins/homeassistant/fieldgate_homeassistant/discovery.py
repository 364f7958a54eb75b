"""Home Assistant MQTT discovery documents for the properties of fieldgate devices.

https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery: one retained config message per entity at
`<prefix>/<component>/<node_id>/<object_id>/config`. Entities read the gateway's telemetry topic and set values
through the KubeEdge twin/update topic the gateway already serves, so no command path of its own is needed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from gateway import __version__
from gateway.messages import eventbus_telemetry_topic
from gateway.protocols.base import BoundDevice, BoundProperty

NUMERIC = ("int", "float", "double")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True, slots=True)
class UnitClass:
    unit: str  # as Home Assistant spells it
    device_class: str | None
    state_class: str = "measurement"


# fieldgate/UCUM-ish unit -> Home Assistant unit, device class and state class
UNITS: dict[str, UnitClass] = {
    "degC": UnitClass("°C", "temperature"), "°C": UnitClass("°C", "temperature"),
    "degF": UnitClass("°F", "temperature"), "°F": UnitClass("°F", "temperature"),
    "K": UnitClass("K", "temperature"),
    "W": UnitClass("W", "power"), "kW": UnitClass("kW", "power"),
    "VA": UnitClass("VA", "apparent_power"), "var": UnitClass("var", "reactive_power"),
    "Wh": UnitClass("Wh", "energy", "total_increasing"), "kWh": UnitClass("kWh", "energy", "total_increasing"),
    "MWh": UnitClass("MWh", "energy", "total_increasing"),
    "V": UnitClass("V", "voltage"), "mV": UnitClass("mV", "voltage"),
    "A": UnitClass("A", "current"), "mA": UnitClass("mA", "current"),
    "%RH": UnitClass("%", "humidity"),
    "Hz": UnitClass("Hz", "frequency"),
    "Pa": UnitClass("Pa", "pressure"), "hPa": UnitClass("hPa", "pressure"), "kPa": UnitClass("kPa", "pressure"),
    "bar": UnitClass("bar", "pressure"), "mbar": UnitClass("mbar", "pressure"),
}


def safe_id(text: str) -> str:
    """An id Home Assistant accepts in a discovery topic: letters, digits, `_` and `-`."""
    return _UNSAFE.sub("_", text)


def state_update_topic(device_id: str) -> str:
    return f"$hw/events/device/{device_id}/state/update"


def twin_update_topic(device_id: str) -> str:
    return f"$hw/events/device/{device_id}/twin/update"


def _value_template(prop: str, on_off: bool = False) -> str:
    # `values` must be subscripted: `value_json.values` is the dict's method in Jinja. A report carries only the
    # properties that were due, so the others keep their state (`this`).
    value = f"value_json['values'][{prop!r}]"
    if on_off:
        value = f"('true' if {value} else 'false')"
    return f"{{{{ {value} if {prop!r} in value_json['values'] else this.state }}}}"


def _command_template(prop: str) -> str:
    """KubeEdge twin/update JSON with the new value as the expected value (a string, as KubeEdge carries it)."""
    message = {"event_id": "homeassistant", "timestamp": 0, "twin": {prop: {"expected": {"value": "@@"}}}}
    return json.dumps(message, separators=(",", ":")).replace('"@@"', '"{{ value }}"')


def component(prop: BoundProperty) -> str:
    kind, writable = prop.model.type, prop.writable
    if kind == "boolean":
        return "switch" if writable else "binary_sensor"
    if kind in NUMERIC:
        return "number" if writable else "sensor"
    return "text" if writable and kind == "string" else "sensor"


def device_info(device: BoundDevice, node: str) -> dict[str, Any]:
    labels = device.resource.labels
    info: dict[str, Any] = {"identifiers": [safe_id(f"fieldgate_{node}_{device.id}")], "name": device.resource.name,
                            "manufacturer": labels.get("manufacturer", "fieldgate"),
                            "model": labels.get("model", device.resource.model or "device")}
    if "serial" in labels:
        info["serial_number"] = labels["serial"]
    return info


def entity_config(device: BoundDevice, prop: BoundProperty, node: str) -> tuple[str, dict[str, Any]]:
    """(component, config payload) of one device property."""
    kind = component(prop)
    model = prop.model
    config: dict[str, Any] = {
        "name": prop.name,
        "unique_id": safe_id(f"fieldgate_{node}_{device.id}_{prop.name}"),
        "state_topic": eventbus_telemetry_topic(node, device.id),
        "value_template": _value_template(prop.name, on_off=model.type == "boolean"),
        "availability": [{"topic": state_update_topic(device.id),
                          "value_template": "{{ 'online' if value_json['state'] == 'online' else 'offline' }}"}],
        "device": device_info(device, node),
        "origin": {"name": "fieldgate", "sw_version": __version__},
    }
    units = UNITS.get(model.unit)
    if kind in ("sensor", "number") and model.type in NUMERIC:
        if model.unit:
            config["unit_of_measurement"] = units.unit if units else model.unit
        if units and units.device_class:
            config["device_class"] = units.device_class
        if kind == "sensor":
            config["state_class"] = units.state_class if units else "measurement"
    if kind in ("binary_sensor", "switch"):
        config["payload_on"], config["payload_off"] = "true", "false"
    if kind == "switch":
        config["state_on"], config["state_off"] = "true", "false"
    if kind in ("number", "switch", "text"):
        config["command_topic"] = twin_update_topic(device.id)
        config["command_template"] = _command_template(prop.name)
        config["qos"] = 1
    if kind == "number":
        config["min"] = model.minimum if model.minimum is not None else -1e9
        config["max"] = model.maximum if model.maximum is not None else 1e9
        config["step"] = 1 if model.type == "int" else 0.01
        config["mode"] = "slider" if model.minimum is not None and model.maximum is not None else "box"
    return kind, config


def discovery_messages(devices: dict[str, BoundDevice], node: str, prefix: str) -> dict[str, dict[str, Any]]:
    """Every config message, by topic `<prefix>/<component>/<node>_<ns>_<device>/<property>/config`."""
    messages: dict[str, dict[str, Any]] = {}
    for device_id, device in sorted(devices.items()):
        object_node = safe_id(f"{node}_{device_id}")
        for name, prop in sorted(device.properties.items()):
            kind, config = entity_config(device, prop, node)
            messages[f"{prefix}/{kind}/{object_node}/{safe_id(name)}/config"] = config
    return messages
