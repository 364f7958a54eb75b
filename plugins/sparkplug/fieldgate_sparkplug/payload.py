"""The Sparkplug B payload (`sparkplug_b.proto` of Eclipse Tahu, package org.eclipse.tahu.protobuf) as typed
dataclasses, with the protobuf wire encoding and decoding of the parts an edge node sends and receives.

Scalar metrics and property sets are handled; DataSets, Templates, MetaData and extensions are skipped when
decoding (a command never needs them) and never sent. Decoding checks every length and wire type and raises
PayloadError for anything malformed: command payloads come from the network.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum

from gateway.errors import FieldgateError

MAX_DEPTH = 8  # property sets may nest; a hostile payload must not recurse without end
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1
FLOAT32_MAX = 3.4028234663852886e38

Value = bool | int | float | str | bytes | None


class PayloadError(FieldgateError):
    """A Sparkplug payload could not be decoded (truncated, wrong wire types, invalid UTF-8)."""


class DataType(IntEnum):
    """Sparkplug B 3.0 data types (the subset a scalar metric or property can carry)."""

    Unknown = 0
    Int8 = 1
    Int16 = 2
    Int32 = 3
    Int64 = 4
    UInt8 = 5
    UInt16 = 6
    UInt32 = 7
    UInt64 = 8
    Float = 9
    Double = 10
    Boolean = 11
    String = 12
    DateTime = 13
    Text = 14
    UUID = 15
    Bytes = 17
    PropertySet = 20


SIGNED_BITS = {DataType.Int8: 8, DataType.Int16: 16, DataType.Int32: 32, DataType.Int64: 64}
INT32_FIELD_TYPES = frozenset({DataType.Int8, DataType.Int16, DataType.Int32, DataType.UInt8, DataType.UInt16,
                               DataType.UInt32})
INT64_FIELD_TYPES = frozenset({DataType.Int64, DataType.UInt64, DataType.DateTime})
TEXT_TYPES = frozenset({DataType.String, DataType.Text, DataType.UUID})


@dataclass(slots=True)
class PropertyValue:
    type: DataType
    value: Value = None  # None: is_null


@dataclass(slots=True)
class Metric:
    """One metric. `value` is None for a null value; on decoding, `value_field` names the field it came from."""

    name: str = ""
    alias: int | None = None
    timestamp: int | None = None
    datatype: DataType | None = None
    value: Value = None
    properties: dict[str, PropertyValue] = field(default_factory=dict)
    value_field: str = ""
    value_type: DataType | None = None  # encodes the value when `datatype` is left out (DDATA)


@dataclass(slots=True)
class Payload:
    timestamp: int | None = None
    metrics: list[Metric] = field(default_factory=list)
    seq: int | None = None


# --- encoding ---------------------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _len_field(number: int, data: bytes) -> bytes:
    return _key(number, _LEN) + _varint(len(data)) + data


def _uint_field(number: int, value: int) -> bytes:
    return _key(number, _VARINT) + _varint(value)


def _value_fields(datatype: DataType, value: Value, numbers: tuple[int, int, int, int, int, int, int | None]) -> bytes:
    """The value field of a metric or property: numbers of int, long, float, double, boolean, string, bytes."""
    int_no, long_no, float_no, double_no, bool_no, string_no, bytes_no = numbers
    if datatype in INT32_FIELD_TYPES:
        return _uint_field(int_no, _as_int(value) & _U32)  # two's complement in 32 bits, as Tahu does
    if datatype in INT64_FIELD_TYPES:
        return _uint_field(long_no, _as_int(value) & _U64)
    if datatype is DataType.Float:
        number = _as_float(value)
        if math.isfinite(number) and abs(number) > FLOAT32_MAX:
            number = math.copysign(math.inf, number)  # what a float32 register would hold
        return _key(float_no, _I32) + struct.pack("<f", number)
    if datatype is DataType.Double:
        return _key(double_no, _I64) + struct.pack("<d", _as_float(value))
    if datatype is DataType.Boolean:
        return _uint_field(bool_no, 1 if value else 0)
    if datatype in TEXT_TYPES:
        return _len_field(string_no, str(value).encode())
    if datatype is DataType.Bytes and bytes_no is not None:
        return _len_field(bytes_no, value if isinstance(value, bytes) else str(value).encode())
    raise ValueError(f"cannot encode a {datatype.name} value")


def _as_int(value: Value) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return round(value)
    raise ValueError(f"expected an integer, got {value!r}")


def _as_float(value: Value) -> float:
    if isinstance(value, int | float):
        return float(value)
    raise ValueError(f"expected a number, got {value!r}")


def _encode_property_set(properties: dict[str, PropertyValue]) -> bytes:
    out = bytearray()
    for key in properties:
        out += _len_field(1, key.encode())
    for prop in properties.values():
        body = _uint_field(1, prop.type)
        if prop.value is None:
            body += _uint_field(2, 1)
        else:
            body += _value_fields(prop.type, prop.value, (3, 4, 5, 6, 7, 8, None))
        out += _len_field(2, body)
    return bytes(out)


def encode_metric(metric: Metric) -> bytes:
    out = bytearray()
    if metric.name:
        out += _len_field(1, metric.name.encode())
    if metric.alias is not None:
        out += _uint_field(2, metric.alias)
    if metric.timestamp is not None:
        out += _uint_field(3, metric.timestamp)
    if metric.datatype is not None:
        out += _uint_field(4, metric.datatype)
    if metric.properties:
        out += _len_field(9, _encode_property_set(metric.properties))
    if metric.value is None:
        out += _uint_field(7, 1)
    else:
        datatype = metric.datatype if metric.datatype is not None else metric.value_type
        if datatype is None:
            raise ValueError(f"metric {metric.name or metric.alias}: a value needs a datatype to be encoded")
        out += _value_fields(datatype, metric.value, (10, 11, 12, 13, 14, 15, 16))
    return bytes(out)


def encode_payload(payload: Payload) -> bytes:
    out = bytearray()
    if payload.timestamp is not None:
        out += _uint_field(1, payload.timestamp)
    for metric in payload.metrics:
        out += _len_field(2, encode_metric(metric))
    if payload.seq is not None:
        out += _uint_field(3, payload.seq)
    return bytes(out)


# --- decoding ---------------------------------------------------------------------------------------------------


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise PayloadError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & _U64, pos
        shift += 7
        if shift >= 70:
            raise PayloadError("varint longer than 10 bytes")


def _fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of every field; fixed-size values come back as raw bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise PayloadError("field number 0")
        if wire == _VARINT:
            value, pos = _read_varint(data, pos)
            yield number, wire, value
            continue
        if wire == _LEN:
            size, pos = _read_varint(data, pos)
        elif wire in (_I64, _I32):
            size = 8 if wire == _I64 else 4
        else:
            raise PayloadError(f"field {number}: unsupported wire type {wire}")
        if pos + size > len(data):
            raise PayloadError(f"field {number}: {size} bytes announced, {len(data) - pos} left")
        yield number, wire, data[pos:pos + size]
        pos += size


def _expect(number: int, wire: int, wanted: int) -> None:
    if wire != wanted:
        raise PayloadError(f"field {number}: wire type {wire}, expected {wanted}")


def _text(number: int, raw: int | bytes) -> str:
    assert isinstance(raw, bytes)
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise PayloadError(f"field {number}: invalid UTF-8") from None


_VALUE_WIRES = {"int_value": _VARINT, "long_value": _VARINT, "float_value": _I32, "double_value": _I64,
                "boolean_value": _VARINT, "string_value": _LEN, "bytes_value": _LEN}


def _decode_value(name: str, number: int, wire: int, raw: int | bytes) -> Value:
    _expect(number, wire, _VALUE_WIRES[name])
    if name in ("int_value", "long_value"):
        assert isinstance(raw, int)
        return raw & _U32 if name == "int_value" else raw
    if name == "boolean_value":
        return bool(raw)
    assert isinstance(raw, bytes)
    if name == "float_value":
        return float(struct.unpack("<f", raw)[0])
    if name == "double_value":
        return float(struct.unpack("<d", raw)[0])
    if name == "string_value":
        return _text(number, raw)
    return raw


def _datatype(number: int, raw: int) -> DataType:
    try:
        return DataType(raw)
    except ValueError:
        raise PayloadError(f"field {number}: unsupported datatype {raw}") from None


_PROPERTY_VALUE_FIELDS = {3: "int_value", 4: "long_value", 5: "float_value", 6: "double_value",
                          7: "boolean_value", 8: "string_value"}


def _decode_property_value(data: bytes, depth: int) -> PropertyValue:
    result = PropertyValue(DataType.Unknown)
    for number, wire, raw in _fields(data):
        if number == 1:
            _expect(number, wire, _VARINT)
            assert isinstance(raw, int)
            result.type = _datatype(number, raw)
        elif number in _PROPERTY_VALUE_FIELDS:
            result.value = _decode_value(_PROPERTY_VALUE_FIELDS[number], number, wire, raw)
        elif number == 9:
            _expect(number, wire, _LEN)
            assert isinstance(raw, bytes)
            _decode_property_set(raw, depth + 1)  # checked, not kept: nested sets carry nothing we use
    return result


def _decode_property_set(data: bytes, depth: int) -> dict[str, PropertyValue]:
    if depth > MAX_DEPTH:
        raise PayloadError(f"property sets nested deeper than {MAX_DEPTH}")
    keys: list[str] = []
    values: list[PropertyValue] = []
    for number, wire, raw in _fields(data):
        if number == 1:
            _expect(number, wire, _LEN)
            keys.append(_text(number, raw))
        elif number == 2:
            _expect(number, wire, _LEN)
            assert isinstance(raw, bytes)
            values.append(_decode_property_value(raw, depth))
    if len(keys) != len(values):
        raise PayloadError(f"property set with {len(keys)} keys and {len(values)} values")
    return dict(zip(keys, values, strict=True))


_METRIC_VALUE_FIELDS = {10: "int_value", 11: "long_value", 12: "float_value", 13: "double_value",
                        14: "boolean_value", 15: "string_value", 16: "bytes_value"}


def decode_metric(data: bytes) -> Metric:
    metric = Metric()
    for number, wire, raw in _fields(data):
        if number == 1:
            _expect(number, wire, _LEN)
            metric.name = _text(number, raw)
        elif number in (2, 3, 4):
            _expect(number, wire, _VARINT)
            assert isinstance(raw, int)
            if number == 2:
                metric.alias = raw
            elif number == 3:
                metric.timestamp = raw
            else:
                metric.datatype = _datatype(number, raw)
        elif number == 9:
            _expect(number, wire, _LEN)
            assert isinstance(raw, bytes)
            metric.properties = _decode_property_set(raw, 1)
        elif number in _METRIC_VALUE_FIELDS:
            metric.value_field = _METRIC_VALUE_FIELDS[number]
            metric.value = _decode_value(metric.value_field, number, wire, raw)
    return metric


def decode_payload(data: bytes) -> Payload:
    """A payload from its protobuf encoding; raises PayloadError when it is not one."""
    payload = Payload()
    for number, wire, raw in _fields(data):
        if number in (1, 3):
            _expect(number, wire, _VARINT)
            assert isinstance(raw, int)
            if number == 1:
                payload.timestamp = raw
            else:
                payload.seq = raw
        elif number == 2:
            _expect(number, wire, _LEN)
            assert isinstance(raw, bytes)
            try:
                payload.metrics.append(decode_metric(raw))
            except PayloadError as exc:
                raise PayloadError(f"metric {len(payload.metrics) + 1}: {exc}") from None
    return payload


def signed(datatype: DataType, value: int) -> int:
    """An integer read from an int_value/long_value field as the signed type says (two's complement)."""
    bits = SIGNED_BITS.get(datatype)
    if bits is None:
        return value
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value
