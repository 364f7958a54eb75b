"""The payload codec against Eclipse Tahu's generated protobuf classes (an independent implementation)."""

from __future__ import annotations

import math

import pytest
from fieldgate_sparkplug.payload import (
    DataType,
    Metric,
    Payload,
    PayloadError,
    PropertyValue,
    decode_payload,
    encode_payload,
    signed,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from tahutils.tahu import sparkplug_b_pb2 as tahu


def tahu_decode(data: bytes) -> tahu.Payload:
    payload = tahu.Payload()
    payload.ParseFromString(data)
    return payload


def test_every_scalar_type_decodes_with_tahu() -> None:
    metrics = [
        Metric("i8", 2, 1000, DataType.Int8, -1),
        Metric("i16", 3, 1000, DataType.Int16, -300),
        Metric("i32", 4, 1000, DataType.Int32, -70000),
        Metric("i64", 5, 1000, DataType.Int64, -(1 << 40)),
        Metric("u16", 6, 1000, DataType.UInt16, 65535),
        Metric("u32", 7, 1000, DataType.UInt32, 4_000_000_000),
        Metric("u64", 8, 1000, DataType.UInt64, (1 << 64) - 1),
        Metric("f", 9, 1000, DataType.Float, 1.5),
        Metric("d", 10, 1000, DataType.Double, -2.25e100),
        Metric("b", 11, 1000, DataType.Boolean, True),
        Metric("s", 12, 1000, DataType.String, "grüß"),
        Metric("raw", 13, 1000, DataType.Bytes, b"\x00\xff"),
        Metric("null", 14, 1000, DataType.Double, None),
        Metric("unit", 15, 1000, DataType.Float, 2.0,
               {"engUnit": PropertyValue(DataType.String, "degC"), "engLow": PropertyValue(DataType.Double, -40.0),
                "readOnly": PropertyValue(DataType.Boolean, True)}),
    ]
    decoded = tahu_decode(encode_payload(Payload(1234, metrics, seq=7)))
    assert decoded.timestamp == 1234 and decoded.seq == 7
    by_name = {m.name: m for m in decoded.metrics}
    assert [m.alias for m in decoded.metrics] == list(range(2, 16))
    assert by_name["i8"].datatype == tahu.Int8 and by_name["i8"].int_value == 0xFFFFFFFF
    assert by_name["i16"].int_value == (-300) & 0xFFFFFFFF
    assert by_name["i32"].int_value == (-70000) & 0xFFFFFFFF
    assert by_name["i64"].long_value == (-(1 << 40)) & ((1 << 64) - 1)
    assert by_name["u16"].int_value == 65535 and by_name["u32"].int_value == 4_000_000_000
    assert by_name["u64"].long_value == (1 << 64) - 1
    assert by_name["f"].float_value == 1.5 and by_name["d"].double_value == -2.25e100
    assert by_name["b"].boolean_value is True and by_name["s"].string_value == "grüß"
    assert by_name["raw"].bytes_value == b"\x00\xff"
    assert by_name["null"].is_null and not by_name["null"].HasField("double_value")
    props = by_name["unit"].properties
    assert list(props.keys) == ["engUnit", "engLow", "readOnly"]
    assert props.values[0].type == tahu.String and props.values[0].string_value == "degC"
    assert props.values[1].double_value == -40.0 and props.values[2].boolean_value is True


def test_a_float_beyond_float32_becomes_infinity() -> None:
    metrics = [Metric("big", 2, 1, DataType.Float, 1e300), Metric("small", 3, 1, DataType.Float, -1e300)]
    big, small = tahu_decode(encode_payload(Payload(1, metrics, seq=1))).metrics
    assert big.float_value == math.inf and small.float_value == -math.inf


def test_ddata_metrics_carry_alias_and_value_only() -> None:
    metric = Metric(alias=9, timestamp=5, value=3.5, value_type=DataType.Float)
    decoded = tahu_decode(encode_payload(Payload(1, [metric], seq=255))).metrics[0]
    assert decoded.alias == 9 and decoded.float_value == 3.5
    assert not decoded.HasField("name") and not decoded.HasField("datatype")


def test_commands_encoded_by_tahu_decode() -> None:
    payload = tahu.Payload()
    payload.timestamp = 99
    for name, datatype, field, value in [("Node Control/Rebirth", tahu.Boolean, "boolean_value", True),
                                          ("sp", tahu.Double, "double_value", 30.5),
                                          ("mode", tahu.Int16, "int_value", (-2) & 0xFFFFFFFF),
                                          ("label", tahu.String, "string_value", "x")]:
        metric = payload.metrics.add()
        metric.name, metric.datatype = name, datatype
        setattr(metric, field, value)
    aliased = payload.metrics.add()
    aliased.alias, aliased.long_value = 12, 7
    decoded = decode_payload(payload.SerializeToString())
    assert decoded.timestamp == 99
    rebirth, sp, mode, label, by_alias = decoded.metrics
    assert (rebirth.name, rebirth.value, rebirth.value_field) == ("Node Control/Rebirth", True, "boolean_value")
    assert sp.datatype is DataType.Double and sp.value == 30.5
    assert mode.datatype is DataType.Int16 and signed(DataType.Int16, int(mode.value or 0)) == -2
    assert label.value == "x"
    assert by_alias.name == "" and by_alias.alias == 12 and by_alias.value == 7 and by_alias.datatype is None


@pytest.mark.parametrize("data, reason", [
    (b"\x12\x05\x0a\x03ab", "announced"),  # a metric longer than what is left
    (b"\x12\x04\x0a\x02\xff\xfe", "UTF-8"),  # a name that is not text
    (b"\x08" + b"\xff" * 11, "varint"),  # an endless varint
    (b"\x0b", "wire type"),  # a group start: not in this proto
    (b"\x12\x02\x20\x63", "datatype"),  # datatype 99
    (b"\x12\x02\x0a\x01", "announced"),
    (b"\x00", "field number 0"),
])
def test_malformed_payloads_raise_payload_error(data: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        decode_payload(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_decode_or_raise_payload_error(data: bytes) -> None:
    try:
        decode_payload(data)
    except PayloadError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.integers(-(1 << 31), (1 << 31) - 1), st.floats(width=32, allow_nan=False), st.text(max_size=20))
def test_round_trip(integer: int, number: float, text: str) -> None:
    payload = Payload(5, [Metric("a", 2, 1, DataType.Int32, integer), Metric("b", 3, 1, DataType.Float, number),
                          Metric("c", 4, 1, DataType.String, text)], seq=1)
    a, b, c = decode_payload(encode_payload(payload)).metrics
    assert signed(DataType.Int32, int(a.value or 0)) == integer
    assert b.value == number or (math.isinf(number) and b.value == number)
    assert c.value == text
