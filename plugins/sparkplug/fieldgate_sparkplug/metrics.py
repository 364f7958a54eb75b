"""How fieldgate devices look in Sparkplug B: topics, device ids, metric datatypes and values.

A device `<namespace>/<name>` is the Sparkplug device `<name>` in the `default` namespace and `<namespace>:<name>`
in the others (names never hold `:`), so every id is a valid topic level. Each property is a metric of the same
name; its alias is unique across the edge node and stays the same while the gateway runs.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any

from fieldgate_sparkplug.payload import (
    INT32_FIELD_TYPES,
    INT64_FIELD_TYPES,
    TEXT_TYPES,
    DataType,
    Metric,
    PropertyValue,
    Value,
    signed,
)
from gateway.errors import ConfigError, ValueRejected
from gateway.protocols.base import BoundDevice, BoundProperty

NAMESPACE = "spBv1.0"
BDSEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
REBIRTH_ALIAS = 1
FIRST_DEVICE_ALIAS = 2
_INVALID_ID = re.compile(r"[/+#]")

# Modbus wire types of an unscaled integer property name its exact Sparkplug type.
WIRE_INT_TYPES = {"int16": DataType.Int16, "uint16": DataType.UInt16, "int32": DataType.Int32,
                  "uint32": DataType.UInt32, "int64": DataType.Int64, "uint64": DataType.UInt64}
MODEL_TYPES = {"float": DataType.Float, "double": DataType.Double, "boolean": DataType.Boolean,
               "string": DataType.String, "bytes": DataType.Bytes}
INTEGER_TYPES = INT32_FIELD_TYPES | {DataType.Int64, DataType.UInt64}
NUMERIC_TYPES = INTEGER_TYPES | {DataType.Float, DataType.Double}
_INT_RANGES = {DataType.Int8: (-(1 << 7), (1 << 7) - 1), DataType.Int16: (-(1 << 15), (1 << 15) - 1),
               DataType.Int32: (-(1 << 31), (1 << 31) - 1), DataType.Int64: (-(1 << 63), (1 << 63) - 1),
               DataType.UInt8: (0, (1 << 8) - 1), DataType.UInt16: (0, (1 << 16) - 1),
               DataType.UInt32: (0, (1 << 32) - 1), DataType.UInt64: (0, (1 << 64) - 1)}
_VALUE_FIELDS = {**dict.fromkeys(INT32_FIELD_TYPES, "int_value"), **dict.fromkeys(INT64_FIELD_TYPES, "long_value"),
                 DataType.Float: "float_value", DataType.Double: "double_value",
                 DataType.Boolean: "boolean_value", **dict.fromkeys(TEXT_TYPES, "string_value"),
                 DataType.Bytes: "bytes_value"}


def node_topic(group_id: str, kind: str, edge_node_id: str) -> str:
    return f"{NAMESPACE}/{group_id}/{kind}/{edge_node_id}"


def device_topic(group_id: str, kind: str, edge_node_id: str, device: str) -> str:
    return f"{NAMESPACE}/{group_id}/{kind}/{edge_node_id}/{device}"


def state_topic(host_id: str) -> str:
    return f"{NAMESPACE}/STATE/{host_id}"


def sparkplug_device_id(device_id: str) -> str:
    namespace, _, name = device_id.partition("/")
    return name if namespace == "default" else f"{namespace}:{name}"


def valid_id(value: str) -> bool:
    """A group, edge node or host id: not empty, and no `/`, `+` or `#` (it is one topic level)."""
    return bool(value) and not _INVALID_ID.search(value)


def check_id(what: str, value: str) -> str:
    """`value` when it is a valid id (`valid_id`); ConfigError naming `what` otherwise."""
    if not valid_id(value):
        raise ConfigError(f"{what} {value!r}: must be a non-empty topic level without '/', '+' or '#'")
    return value


def now_ms() -> int:
    return int(time.time() * 1000)


def to_ms(ts: float) -> int:
    return int(ts * 1000)


def datatype_of(prop: BoundProperty) -> DataType:
    """The Sparkplug type of a property: its model type, narrowed by an unscaled integer wire type."""
    kind = prop.model.type
    if kind != "int":
        return MODEL_TYPES[kind]
    wire = getattr(prop.visitor, "type", None)
    scale = getattr(prop.visitor, "scale", 1.0)
    if isinstance(wire, str) and wire in WIRE_INT_TYPES and scale == 1:
        return WIRE_INT_TYPES[wire]
    return DataType.Int64


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One property as a metric: what a DBIRTH declares about it."""

    name: str
    alias: int
    datatype: DataType
    unit: str
    minimum: float | None
    maximum: float | None
    writable: bool

    def properties(self) -> dict[str, PropertyValue]:
        """The metric's property set: unit and limits as engineering properties, and whether it can be set."""
        props: dict[str, PropertyValue] = {}
        if self.unit:
            props["engUnit"] = PropertyValue(DataType.String, self.unit)
        if self.minimum is not None:
            props["engLow"] = PropertyValue(DataType.Double, float(self.minimum))
        if self.maximum is not None:
            props["engHigh"] = PropertyValue(DataType.Double, float(self.maximum))
        props["readOnly"] = PropertyValue(DataType.Boolean, not self.writable)
        return props


@dataclass(frozen=True, slots=True)
class DeviceMetrics:
    """The metrics of one device in the running configuration."""

    device_id: str
    sparkplug_id: str
    specs: dict[str, MetricSpec]

    def by_alias(self, alias: int) -> MetricSpec | None:
        return next((spec for spec in self.specs.values() if spec.alias == alias), None)


class Aliases:
    """Metric aliases unique across the edge node; a property keeps its alias while the gateway runs."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, str], int] = {}
        self._next = FIRST_DEVICE_ALIAS

    def alias(self, device_id: str, prop: str) -> int:
        key = (device_id, prop)
        alias = self._known.get(key)
        if alias is None:
            alias = self._known[key] = self._next
            self._next += 1
        return alias


def device_metrics(device: BoundDevice, aliases: Aliases) -> DeviceMetrics:
    specs = {name: MetricSpec(name, aliases.alias(device.id, name), datatype_of(prop), prop.model.unit,
                              prop.model.minimum, prop.model.maximum, prop.writable)
             for name, prop in sorted(device.properties.items())}
    return DeviceMetrics(device.id, sparkplug_device_id(device.id), specs)


def metric_value(spec: MetricSpec, value: Any) -> Value:
    """A reported value as the metric's type; None (sent as a null value) when it does not fit."""
    if value is None:
        return None
    datatype = spec.datatype
    if datatype in INTEGER_TYPES:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            low, high = _INT_RANGES[datatype]
            return value if low <= value <= high else None
        return None
    if datatype in (DataType.Float, DataType.Double):
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    if datatype is DataType.Boolean:
        return value if isinstance(value, bool) else None
    if datatype is DataType.Bytes:
        return value if isinstance(value, bytes) else None
    return value if isinstance(value, str) else str(value)


def birth_metric(spec: MetricSpec, value: Any, ts: float | None) -> Metric:
    return Metric(spec.name, spec.alias, to_ms(ts) if ts else now_ms(), spec.datatype, metric_value(spec, value),
                  spec.properties())


def data_metric(spec: MetricSpec, value: Value, ts: float) -> Metric:
    """A DDATA metric: by alias only, without name and datatype (the DBIRTH declared them)."""
    return Metric(alias=spec.alias, timestamp=to_ms(ts), value=value, value_type=spec.datatype)


def _family(datatype: DataType) -> str:
    if datatype in NUMERIC_TYPES:
        return "number"
    if datatype in TEXT_TYPES:
        return "text"
    return datatype.name


def command_value(metric: Metric, spec: MetricSpec) -> Any:
    """The value a DCMD metric sets, checked against the metric's Sparkplug type (limits are checked later)."""
    declared = metric.datatype if metric.datatype is not None else spec.datatype
    if _family(declared) != _family(spec.datatype):
        raise ValueRejected(f"{spec.name}: a {declared.name} value cannot set a {spec.datatype.name} metric")
    if metric.value is None:
        raise ValueRejected(f"{spec.name}: the metric carries no value")
    expected = _VALUE_FIELDS.get(declared)
    if metric.value_field != expected:
        raise ValueRejected(f"{spec.name}: a {declared.name} metric carries its value in {expected}, "
                            f"not {metric.value_field}")
    value = metric.value
    if isinstance(value, int) and not isinstance(value, bool):
        value = signed(declared, value)
    return value
