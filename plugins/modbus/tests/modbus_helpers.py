"""Helpers for the Modbus plugin tests: devices bound by hand, simulated points."""

from __future__ import annotations

from typing import Any

import msgspec
from fieldgate_modbus.config import ModbusVisitor, RtuConfig, TcpConfig
from fieldgate_modbus.protocol import ModbusProtocol, ModbusRtu, ModbusTcp
from fieldgate_modbus.sim import SimPoint

from gateway.protocols.base import BoundDevice, BoundProperty
from gateway.resources.schema import Device, DeviceProperty, PropertyModel, ProtocolRef

MODEL_TYPE = {"bool": "boolean", "string": "string", "float32": "double", "float64": "double"}


def model_type(visitor: ModbusVisitor) -> str:
    if visitor.scale != 1 and visitor.wire_type not in ("bool", "string"):
        return "double"
    return MODEL_TYPE.get(visitor.wire_type, "int")


def bind(
    protocol: type[ModbusProtocol],
    config: dict[str, Any],
    visitors: dict[str, dict[str, Any]],
    *,
    name: str = "dev",
    access: str = "ReadWrite",
) -> ModbusProtocol:
    """A protocol instance for a device with these visitors, bound the way the core binds one."""
    cfg = msgspec.convert(config, protocol.config_type)
    props = {}
    for prop_name, raw in visitors.items():
        visitor = msgspec.convert(raw, ModbusVisitor)
        model = PropertyModel(name=prop_name, type=model_type(visitor), access=access)  # type: ignore[arg-type]
        spec = DeviceProperty(name=prop_name, visitor=raw)
        props[prop_name] = BoundProperty(prop_name, model, spec, visitor, 1.0, 1.0)
    resource = Device(name=name, protocol=ProtocolRef(name=protocol.names[0], config=config))
    return protocol(BoundDevice(resource, cfg, props))


def points(visitors: dict[str, dict[str, Any]], values: dict[str, Any]) -> list[SimPoint]:
    out = []
    for name, raw in visitors.items():
        visitor = msgspec.convert(raw, ModbusVisitor)
        out.append(
            SimPoint(
                name,
                visitor,
                PropertyModel(name=name, type=model_type(visitor)),  # type: ignore[arg-type]
                values[name],
            )
        )
    return out


__all__ = ["ModbusRtu", "ModbusTcp", "RtuConfig", "TcpConfig", "bind", "points"]
