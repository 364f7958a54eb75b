"""BACnet values to plain Python values (what the twin converts to the model's type), and back for writes."""

from __future__ import annotations

import math
from typing import Any

import msgspec
from bacpypes3.basetypes import ObjectType, PropertyIdentifier
from bacpypes3.constructeddata import AnyAtomic, Array
from bacpypes3.errors import AbortException, RejectException
from bacpypes3.primitivedata import (
    Atomic,
    BitString,
    Boolean,
    CharacterString,
    Date,
    Double,
    Enumerated,
    Integer,
    Null,
    ObjectIdentifier,
    OctetString,
    Real,
    Time,
    Unsigned,
)
from bacpypes3.vendor import get_vendor_info

from fieldgate_bacnet.config import ANALOG, BINARY, MULTI_STATE, BacnetVisitor

ARRAY_ALL = 0xFFFFFFFF


def plain(value: Any) -> Any:
    """A decoded BACnet value as a plain value: numbers, booleans, strings; enumerations as their number, bit
    strings as "0101…", object identifiers as "type,instance", a Null as None, lists as JSON text."""
    if isinstance(value, AnyAtomic):
        value = value.get_value()
    if value is None or isinstance(value, Null):
        return None
    if isinstance(value, Boolean | bool):
        return bool(value)
    if isinstance(value, Real | Double | float):
        return float(value)
    if isinstance(value, Enumerated | Unsigned | Integer | int):
        return int(value)
    if isinstance(value, CharacterString | str):
        return str(value)
    if isinstance(value, BitString):
        return "".join("1" if bit else "0" for bit in value)
    if isinstance(value, ObjectIdentifier):
        return str(value)
    if isinstance(value, OctetString | bytes):
        return bytes(value).hex()
    if isinstance(value, Date | Time):
        return str(value)
    if isinstance(value, list | tuple):
        return msgspec.json.encode([_jsonable(plain(item)) for item in value]).decode()
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def wire_value(visitor: BacnetVisitor, value: Any) -> Any:
    """What to write for a model value: a float to an analog present-value, 1/0 to a binary one, an unsigned number
    to a multi-state one; other properties take the value as it is (bacpypes3 casts it to the property's type)."""
    if visitor.is_present_value and visitor.index is None:
        if visitor.object_type in ANALOG:
            return float(value)
        if visitor.object_type in BINARY:
            return 1 if value else 0
        if visitor.object_type in MULTI_STATE:
            number = int(value)
            if number < 1:
                raise ValueError(f"a multi-state present-value is 1 or more, got {value!r}")
            return number
    return value


def decode(vendor: int, object_type: Any, prop: Any, index: int | None, value: Any) -> Any:
    """A property's value as the device sent it (an Any), decoded by the property's type and made plain; a value
    that does not decode as that type raises ValueError (the one property is bad, not the whole answer)."""
    object_class = get_vendor_info(vendor).get_object_class(ObjectType(object_type))
    property_type = object_class.get_property_type(PropertyIdentifier(prop)) if object_class is not None else None
    if property_type is None:
        raise ValueError(f"the gateway knows no type for {prop} of a {object_type}")
    if issubclass(property_type, Array) and index is not None:
        property_type = Unsigned if index == 0 else property_type._subtype
    try:
        # devices answer Null where a value is missing (bacpypes3 PR #101): a None, not an error
        decoded = value.cast_out(property_type, null=issubclass(property_type, Atomic))
        return plain(decoded)
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, RejectException, AbortException) as exc:
        raise ValueError(f"not a {getattr(property_type, '__name__', property_type)}: {exc}") from None


def decode_notified(vendor: int, object_type: Any, property_value: Any) -> tuple[str, int | None, Any]:
    """(property name, array index, plain value) of one BACnetPropertyValue of a change-of-value notification."""
    prop = PropertyIdentifier(property_value.propertyIdentifier)
    index = array_index(property_value.propertyArrayIndex)
    return str(prop), index, decode(vendor, object_type, prop, index, property_value.value)


def array_index(index: Any) -> int | None:
    """An array index as sent, None for the whole property (some devices send BACNET_ARRAY_ALL, 2^32 - 1, for it)."""
    if index is None or int(index) == ARRAY_ALL:
        return None
    return int(index)
