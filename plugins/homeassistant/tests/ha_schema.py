"""What Home Assistant's MQTT discovery accepts per component (abbreviations aside), from its documentation:
https://www.home-assistant.io/integrations/{sensor,binary_sensor,number,switch,text}.mqtt/ and
https://www.home-assistant.io/integrations/mqtt/#discovery-messages."""

from __future__ import annotations

from typing import Any

COMMON = {"availability", "availability_mode", "availability_template", "availability_topic", "device",
          "enabled_by_default", "encoding", "entity_category", "entity_picture", "icon", "json_attributes_template",
          "json_attributes_topic", "name", "object_id", "default_entity_id", "origin", "payload_available",
          "payload_not_available", "qos", "unique_id", "platform"}
COMPONENTS: dict[str, tuple[set[str], set[str]]] = {  # component: (required, allowed besides COMMON)
    "sensor": ({"state_topic"}, {"state_topic", "device_class", "expire_after", "force_update",
                                 "last_reset_value_template", "options", "suggested_display_precision",
                                 "state_class", "unit_of_measurement", "value_template"}),
    "binary_sensor": ({"state_topic"}, {"state_topic", "device_class", "expire_after", "force_update", "off_delay",
                                        "payload_off", "payload_on", "value_template"}),
    "number": ({"command_topic"}, {"command_topic", "command_template", "device_class", "min", "max", "mode",
                                   "optimistic", "payload_reset", "retain", "state_topic", "step",
                                   "unit_of_measurement", "value_template"}),
    "switch": ({"command_topic"}, {"command_topic", "command_template", "device_class", "optimistic",
                                   "payload_off", "payload_on", "retain", "state_off", "state_on", "state_topic",
                                   "value_template"}),
    "text": ({"command_topic"}, {"command_topic", "command_template", "max", "min", "mode", "pattern", "retain",
                                 "state_topic", "value_template"}),
}
DEVICE = {"configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model", "model_id",
          "name", "serial_number", "suggested_area", "sw_version", "via_device"}
AVAILABILITY = {"topic", "payload_available", "payload_not_available", "value_template"}
ORIGIN = {"name", "sw_version", "support_url"}
STRINGS = {"name", "unique_id", "state_topic", "command_topic", "value_template", "command_template",
           "unit_of_measurement", "device_class", "state_class", "payload_on", "payload_off", "state_on",
           "state_off", "mode"}
SENSOR_CLASSES = {"temperature": {"°C", "°F", "K"}, "power": {"W", "kW"}, "energy": {"Wh", "kWh", "MWh"},
                  "voltage": {"V", "mV"}, "current": {"A", "mA"}, "humidity": {"%"}, "frequency": {"Hz", "kHz"},
                  "pressure": {"Pa", "hPa", "kPa", "bar", "mbar"}}


def problems(component: str, config: dict[str, Any]) -> list[str]:
    """Everything in a discovery config that Home Assistant would reject or ignore."""
    required, allowed = COMPONENTS[component]
    found = [f"missing {key}" for key in sorted(required - config.keys())]
    found += [f"unknown key {key}" for key in sorted(config.keys() - allowed - COMMON)]
    found += [f"{key} is not a string" for key in STRINGS & config.keys() if not isinstance(config[key], str)]
    device = config.get("device", {})
    found += [f"unknown device key {key}" for key in sorted(device.keys() - DEVICE)]
    if "device" in config and not (device.get("identifiers") or device.get("connections")):
        found.append("a device needs identifiers or connections")
    for item in config.get("availability", []):
        found += [f"availability needs a topic: {item}" for _ in [0] if "topic" not in item]
        found += [f"unknown availability key {key}" for key in sorted(item.keys() - AVAILABILITY)]
    if "origin" in config and ("name" not in config["origin"] or config["origin"].keys() - ORIGIN):
        found.append(f"bad origin {config['origin']}")
    if config.get("state_class") not in (None, "measurement", "total", "total_increasing"):
        found.append(f"bad state_class {config['state_class']}")
    units = SENSOR_CLASSES.get(config.get("device_class", ""))
    if units is not None and config.get("unit_of_measurement") not in units:
        found.append(f"unit {config.get('unit_of_measurement')} does not fit device_class {config['device_class']}")
    if component == "number" and not config.get("min", 1) < config.get("max", 100):
        found.append("min must be below max")
    if config.get("mode", "auto") not in ("auto", "box", "slider", "text", "password"):
        found.append(f"bad mode {config['mode']}")
    return found
