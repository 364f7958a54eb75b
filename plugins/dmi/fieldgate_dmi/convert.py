"""fieldgate's documents as DMI messages (what edgecore's `dtcommon.ConvertDevice` and `ConvertDeviceModel` make of
KubeEdge's Device and DeviceModel), and twin values from the text mappers report."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from fieldgate_dmi import wire
from fieldgate_dmi.config import ConfigValue, DmiConfig, DmiVisitor
from gateway.protocols.base import BoundDevice
from gateway.resources.schema import PropertyModel
from gateway.resources.values import coerce, to_wire_text

# KubeEdge's property types (v1beta1 PropertyType) for fieldgate's model types; mappers lower-case them.
MODEL_TYPES = {"int": "INT", "float": "FLOAT", "double": "DOUBLE", "string": "STRING", "boolean": "BOOLEAN",
               "bytes": "BYTES"}
Desired = Mapping[str, tuple[Any, float | None]]  # property -> (desired value, when it was set)


def cycle_ms(seconds: float) -> int:
    """A cycle as KubeEdge gives it: whole milliseconds."""
    return max(round(seconds * 1000), 1)


def number_text(value: float) -> str:
    """A minimum or maximum as KubeEdge's string fields hold it: `0`, `100`, `-12.5`."""
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def model_name(device: BoundDevice) -> str:
    """The DeviceModel a device refers to: its `model`, or one named after its firmware profile."""
    if device.resource.model is not None:
        return device.resource.model
    return re.sub(r"[^a-z0-9]+", "-", str(device.resource.profile).lower()).strip("-") or "profile"


def model_message(name: str, namespace: str, properties: Iterable[PropertyModel]) -> Any:
    """A DMI DeviceModel."""
    model = wire.DeviceModel(name=name, namespace=namespace)
    for prop in properties:
        item = model.spec.properties.add(name=prop.name, description=prop.description, type=MODEL_TYPES[prop.type],
                                         accessMode=prop.access, unit=prop.unit)
        if prop.minimum is not None:
            item.minimum = number_text(prop.minimum)
        if prop.maximum is not None:
            item.maximum = number_text(prop.maximum)
    model.spec.SetInParent()
    return model


def _fill(data: Any, values: Mapping[str, ConfigValue]) -> None:
    for key, value in values.items():
        wire.pack_value(data[key], value)


def device_message(device: BoundDevice, desired: Desired) -> Any:
    """A DMI Device: the document with its protocol settings and visitors, and the twin's desired values of its
    ReadWrite properties (KubeEdge carries desired values in the device spec). Every property has `desired`,
    `visitors.configData` and `reportToCloud` set, as edgecore's conversion gives them: mappers read the first two
    without checking, and report a twin only when the third is true."""
    config: DmiConfig = device.config
    resource = device.resource
    message = wire.Device(name=resource.name, namespace=resource.namespace)
    spec = message.spec
    spec.deviceModelReference = model_name(device)
    spec.protocol.protocolName = config.mapper
    spec.protocol.configData.SetInParent()
    _fill(spec.protocol.configData.data, config.config_data)
    for name, bound in device.properties.items():
        visitor: DmiVisitor = bound.visitor
        prop = spec.properties.add(name=name, collectCycle=cycle_ms(bound.collect_interval),
                                   reportCycle=cycle_ms(bound.report_interval), reportToCloud=True)
        prop.desired.SetInParent()
        value, at = desired.get(name, (None, None))
        if value is not None and bound.writable:
            prop.desired.value = to_wire_text(value)
            prop.desired.metadata["type"] = bound.model.type
            if at is not None:
                prop.desired.metadata["timestamp"] = str(round(at * 1000))
        prop.visitors.protocolName = config.mapper
        prop.visitors.configData.SetInParent()
        _fill(prop.visitors.configData.data, visitor.config_data)
    message.status.reportToCloud = True
    message.status.reportCycle = cycle_ms(config.state_report_interval)
    return message


def reported_value(model: PropertyModel, text: str) -> Any:
    """A value a mapper reported (text, as KubeEdge twins carry values) as the property's type; ValueRejected when
    it is none. The model's minimum and maximum do not apply: the device says what it holds."""
    unbounded = msgspec.structs.replace(model, minimum=None, maximum=None)
    return coerce(unbounded, text)
