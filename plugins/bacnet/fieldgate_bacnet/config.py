"""The `bacnet-ip` protocol config and the property visitor of BACnet devices (checked when a file loads)."""

from __future__ import annotations

import builtins
import ipaddress
from typing import Annotated

from bacpypes3.basetypes import ObjectType, PropertyIdentifier
from msgspec import Meta

from gateway.resources.schema import Base

BACNET_PORT = 47808  # 0xBAC0, the port BACnet/IP uses unless told otherwise
MAX_INSTANCE = 4194302  # 4194303 is the wildcard instance
MAX_APDU = 1476  # the largest APDU BACnet/IP carries in one datagram

Instance = Annotated[int, Meta(ge=0, le=MAX_INSTANCE)]

# What a property read through a visitor can be, by object type (present-value) and by property; others: any.
ANALOG = frozenset({"analog-input", "analog-output", "analog-value", "large-analog-value", "integer-value",
                    "positive-integer-value", "accumulator", "pulse-converter", "loop"})
BINARY = frozenset({"binary-input", "binary-output", "binary-value", "binary-lighting-output"})
MULTI_STATE = frozenset({"multi-state-input", "multi-state-output", "multi-state-value"})
COMMANDABLE = frozenset({"analog-output", "analog-value", "binary-output", "binary-value", "multi-state-output",
                         "multi-state-value", "large-analog-value", "integer-value", "positive-integer-value",
                         "binary-lighting-output", "characterstring-value"})
NUMBER_TYPES = frozenset({"int", "float", "double"})
ANY_TYPE = frozenset({"int", "float", "double", "string", "boolean"})
PROPERTY_TYPES: dict[str, frozenset[str]] = {
    "object-name": frozenset({"string"}),
    "description": frozenset({"string"}),
    "units": frozenset({"int", "string"}),
    "out-of-service": frozenset({"boolean", "int"}),
    "event-state": frozenset({"int", "string"}),
    "reliability": frozenset({"int", "string"}),
    "status-flags": frozenset({"string"}),
    "number-of-states": frozenset({"int"}),
    "cov-increment": NUMBER_TYPES,
    "min-pres-value": NUMBER_TYPES,
    "max-pres-value": NUMBER_TYPES,
}


def parse_address(text: str, *, prefix: bool = False) -> tuple[str, int, int | None]:
    """`IP[:port]` (with `prefix`, also `IP/prefix[:port]`) as (ip, port, prefix length or None); ValueError else."""
    host, _, port_text = text.strip().partition(":")
    length: int | None = None
    if "/" in host:
        if not prefix:
            raise ValueError(f"{text!r}: expected IP[:port] without a network prefix")
        host, _, length_text = host.partition("/")
        if not length_text.isdigit() or not 0 <= int(length_text) <= 32:
            raise ValueError(f"{text!r}: the network prefix must be 0 to 32")
        length = int(length_text)
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IPv4 address") from None
    port = BACNET_PORT
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"{text!r}: the UDP port must be 1 to 65535")
        port = int(port_text)
    return str(ip), port, length


def object_type_name(value: str | int) -> str:
    """The standard name of an object type (`analog-value`, also `analogValue` or its number); ValueError else."""
    try:
        return str(ObjectType(value))
    except (ValueError, TypeError):
        raise ValueError(f"unknown object type {value!r}; e.g. analog-input, analog-value, binary-value, "
                         "multi-state-value, or a number for a vendor's own type") from None


def property_name(value: str | int) -> str:
    """The standard name of a property identifier (`present-value`, also `presentValue` or its number)."""
    try:
        return str(PropertyIdentifier(value))
    except (ValueError, TypeError):
        raise ValueError(f"unknown property {value!r}; e.g. present-value, object-name, units, or a number") from None


class BacnetConfig(Base, kw_only=True):
    """`protocol.config` of a `bacnet-ip` device; devices with the same `local_address` share one endpoint there."""

    address: Annotated[str, Meta(min_length=7, max_length=21, description="the device: IP[:port] (port 47808 unless "
                                                                          "given)")]
    device_instance: Annotated[Instance, Meta(description="the device object's instance number")]
    local_address: Annotated[str, Meta(min_length=7, max_length=21, description=(
        "the gateway's own BACnet/IP endpoint: IP[:port]; 0.0.0.0 listens on every interface"))] = "0.0.0.0:47808"
    local_instance: Annotated[Instance, Meta(description="the device instance of the gateway's own device object; "
                                                         "devices sharing a local_address must agree")] = 4194000
    timeout: Annotated[float, Meta(gt=0, le=60, description="seconds to wait for one answer")] = 2.0
    retries: Annotated[int, Meta(ge=0, le=5, description="extra attempts after an unanswered request")] = 1
    read_multiple: Annotated[bool, Meta(description="read with ReadPropertyMultiple where the device offers it")] = True
    max_apdu: Annotated[Annotated[int, Meta(ge=50, le=MAX_APDU)] | None, Meta(description=(
        "bytes one answer may hold; default: what the device says (max-apdu-length-accepted)"))] = None
    cov: Annotated[bool, Meta(description="subscribe to changes of value (SubscribeCOV) where the device offers it; "
                                          "else every property is polled")] = True
    cov_lifetime: Annotated[int, Meta(ge=10, le=86400, description=(
        "seconds a subscription lasts; renewed at half of it, which also checks the device is there"))] = 300
    cov_confirmed: Annotated[bool, Meta(description="ask for confirmed notifications (acknowledged)")] = False

    def __post_init__(self) -> None:
        try:
            parse_address(self.address)
        except ValueError as exc:
            raise ValueError(f"address: {exc}") from None
        try:
            parse_address(self.local_address)
        except ValueError as exc:
            raise ValueError(f"local_address: {exc}") from None

    @property
    def endpoint(self) -> tuple[str, int]:
        ip, port, _ = parse_address(self.local_address)
        return ip, port

    @property
    def device_address(self) -> tuple[str, int]:
        ip, port, _ = parse_address(self.address)
        return ip, port


class BacnetVisitor(Base, kw_only=True):
    """Where one property lives in a BACnet device: an object and one of its properties."""

    object_type: Annotated[str | int, Meta(description=(
        "analog-input, analog-value, binary-value, multi-state-value, … (or a number)"))]
    instance: Annotated[Instance, Meta(description="the object's instance number")]
    property: Annotated[str | int, Meta(description="the property (or its number)")] = "present-value"
    index: Annotated[Annotated[int, Meta(ge=0, le=0xFFFFFFFE)] | None, Meta(
        description="array index (0: the array's length)")] = None
    priority: Annotated[Annotated[int, Meta(ge=1, le=16)] | None, Meta(description=(
        "write priority of a commandable present-value (default 16, the lowest)"))] = None
    cov: Annotated[bool, Meta(description="follow by COV where the device offers it (false: always poll)")] = True

    def __post_init__(self) -> None:
        try:
            self.object_type = object_type_name(_number_or_name(self.object_type))
        except ValueError as exc:
            raise ValueError(f"object_type: {exc}") from None
        try:
            self.property = property_name(_number_or_name(self.property))
        except ValueError as exc:
            raise ValueError(f"property: {exc}") from None
        if self.priority is not None and not self.is_present_value:
            raise ValueError("priority: only a present-value is written with a priority")

    @builtins.property  # the field `property` hides the builtin in this class
    def is_present_value(self) -> bool:
        return self.property == "present-value"

    @builtins.property
    def object_id(self) -> str:
        return f"{self.object_type},{self.instance}"

    def describe(self) -> str:
        index = f"[{self.index}]" if self.index is not None else ""
        return f"{self.object_id} {self.property}{index}"

    @builtins.property
    def write_priority(self) -> int | None:
        """The priority writes carry: the visitor's, 16 for a commandable present-value, none otherwise."""
        if not self.is_present_value or self.object_type not in COMMANDABLE:
            return self.priority
        return self.priority or 16


def _number_or_name(value: str | int) -> str | int:
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def model_types(visitor: BacnetVisitor) -> frozenset[str]:
    """Model types a property read through this visitor may declare."""
    if visitor.is_present_value and visitor.index is None:
        if visitor.object_type in ANALOG:
            return NUMBER_TYPES
        if visitor.object_type in BINARY:
            return frozenset({"boolean", "int"})
        if visitor.object_type in MULTI_STATE:
            return frozenset({"int"})
    if visitor.index == 0:
        return frozenset({"int"})
    return PROPERTY_TYPES.get(str(visitor.property), ANY_TYPE)
