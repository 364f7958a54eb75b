"""encode / encode_bit: rounding, ranges, orders; and every encoded value decodes back on every backend."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codec import FieldSpec, encode, encode_bit
from gateway.errors import CodecError

ORDERS = st.sampled_from(["big", "little"])


@pytest.mark.parametrize(
    ("value", "scale", "registers"),
    [
        (21.5, 0.1, [215]),
        (0.25, 0.1, [3]),  # 2.5 rounds away from zero
        (-0.25, 0.1, [0xFFFD]),
        (2.5, 1.0, [3]),
        (-2.5, 1.0, [0xFFFD]),
        (0.49999999999999994, 1.0, [0]),  # not rounded up by floating point
        (7, 1.0, [7]),
    ],
)
def test_rounds_half_away_from_zero(value: float, scale: float, registers: list[int]) -> None:
    assert encode(FieldSpec(offset=0, type="int16", scale=scale), value) == registers


@pytest.mark.parametrize(
    ("spec", "value", "message"),
    [
        (FieldSpec(offset=0, type="int16"), 32768, "outside int16 range"),
        (FieldSpec(offset=0, type="uint16"), -1, "outside uint16 range"),
        (FieldSpec(offset=0, type="uint16", scale=0.1), 6553.56, "outside uint16 range"),
        (FieldSpec(offset=0, type="int64"), 2**63, "outside int64 range"),
        (FieldSpec(offset=0, type="int32"), math.nan, "can not be written"),
        (FieldSpec(offset=0, type="int32"), "12", "expected a number"),
        (FieldSpec(offset=0, type="float32"), 1e39, "does not fit in float32"),
        (FieldSpec(offset=0, type="string", length=2), "hello", "do not fit in 2 registers"),
        (FieldSpec(offset=0, type="bool", bit=3), True, "use encode_bit"),
        (FieldSpec(offset=0, type="bool"), 2, "expected a bool"),
        (FieldSpec(offset=0, type="int16", scale=0), 1, "scale must be"),
    ],
)
def test_rejects_what_does_not_fit(spec: FieldSpec, value: Any, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        encode(spec, value)


def test_orders_strings_and_bits() -> None:
    assert encode(FieldSpec(offset=0, type="uint32", word_order="little"), 0x00010002) == [2, 1]
    assert encode(FieldSpec(offset=0, type="uint32", byte_order="little"), 0x00010002) == [0x0100, 0x0200]
    assert encode(FieldSpec(offset=0, type="float32"), 25.0) == [0x41C8, 0]
    assert encode(FieldSpec(offset=0, type="string", length=2), "abc") == [0x6162, 0x6300]
    assert encode(FieldSpec(offset=0, type="string", length=1, byte_order="little"), "ab") == [0x6261]
    assert encode(FieldSpec(offset=0, type="bool"), True) == [1]
    assert encode_bit(FieldSpec(offset=0, type="bool", bit=3), 0x00F0, True) == [0x00F8]
    assert encode_bit(FieldSpec(offset=0, type="bool", bit=4), 0x00F0, False) == [0x00E0]
    assert encode_bit(FieldSpec(offset=0, type="bool", bit=0, byte_order="little"), 0x0000, True) == [0x0100]
    with pytest.raises(CodecError, match="current register"):
        encode_bit(FieldSpec(offset=0, type="bool", bit=0), 70000, True)


INT_TYPES = {"int16": (16, True), "uint16": (16, False), "int32": (32, True), "uint32": (32, False),
             "int64": (64, True), "uint64": (64, False)}


@settings(max_examples=300, deadline=None)
@given(data=st.data(), byte_order=ORDERS, word_order=ORDERS)
def test_round_trip(FieldTable: Any, data: st.DataObject, byte_order: str, word_order: str) -> None:
    kind = data.draw(st.sampled_from([*INT_TYPES, "float32", "float64", "string", "bool"]))
    extra: dict[str, Any] = {}
    if kind in INT_TYPES:
        width, signed = INT_TYPES[kind]
        low = -(2 ** (width - 1)) if signed else 0
        value: Any = data.draw(st.integers(low, low + 2**width - 1))
    elif kind == "float64":
        value = data.draw(st.floats())
    elif kind == "float32":
        value = data.draw(st.floats(width=32))
    elif kind == "bool":
        value = data.draw(st.booleans())
    else:
        value = data.draw(st.text(alphabet=st.characters(exclude_characters="\x00", codec="utf-8"), max_size=6))
        value = value.rstrip(" ")
        extra["length"] = max(1, (len(value.encode()) + 1) // 2)
    spec = FieldSpec(offset=1, type=kind, byte_order=byte_order, word_order=word_order, **extra)
    registers = encode(spec, value)
    (decoded,) = FieldTable([spec]).decode([0, *registers])
    if isinstance(value, float):
        assert struct.pack("<d", decoded) == struct.pack("<d", value) or (math.isnan(value) and math.isnan(decoded))
    else:
        assert decoded == value
