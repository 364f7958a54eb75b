"""FieldTable.decode on every backend against the struct reference, and the error rules."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codec import FieldSpec, register_count
from gateway.errors import CodecError
from tests.codec import reference

NUMERIC = ["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]
ORDERS = st.sampled_from(["big", "little"])
SCALES = st.one_of(st.just(1.0), st.sampled_from([0.1, 0.01, 10.0, -2.5, 1e-300, 1e300]))
REGISTER = st.integers(0, 0xFFFF)


@st.composite
def fields(draw: st.DrawFn, max_offset: int = 40) -> FieldSpec:
    kind = draw(st.sampled_from([*NUMERIC, "string", "bool"]))
    extra: dict[str, Any] = {}
    if kind == "string":
        extra["length"] = draw(st.integers(1, 9))
    if kind == "bool":
        extra["bit"] = draw(st.one_of(st.none(), st.integers(0, 15)))
    return FieldSpec(
        offset=draw(st.integers(0, max_offset)),
        type=kind,
        byte_order=draw(ORDERS),
        word_order=draw(ORDERS),
        scale=draw(SCALES) if kind in NUMERIC else 1.0,
        **extra,
    )


def canon(values: list[Any]) -> list[Any]:
    return [reference.canonical(v) for v in values]


@settings(max_examples=300, deadline=None)
@given(specs=st.lists(fields(), max_size=12), block=st.lists(REGISTER, min_size=49, max_size=60))
def test_decode_matches_struct_reference(FieldTable: Any, specs: list[FieldSpec], block: list[int]) -> None:
    table = FieldTable(specs)
    expected = [reference.decode(spec, block) for spec in specs]
    assert canon(table.decode(block)) == canon(expected)


@settings(max_examples=200, deadline=None)
@given(specs=st.lists(fields(), max_size=12), block=st.lists(REGISTER, min_size=49, max_size=60))
def test_decode_wire_reads_frame_bytes_like_decode(FieldTable: Any, specs: list[FieldSpec], block: list[int]) -> None:
    """The block as a Modbus frame carries it (big-endian pairs) decodes to what the register list gives."""
    table = FieldTable(specs)
    wire = struct.pack(f">{len(block)}H", *block)
    expected = [reference.decode(spec, block) for spec in specs]
    assert canon(table.decode_wire(wire)) == canon(expected)


def test_decode_wire_errors_name_the_problem(FieldTable: Any) -> None:
    table = FieldTable([FieldSpec(offset=0, type="int16"), FieldSpec(offset=1, type="int32")])
    with pytest.raises(CodecError, match="even length, got 5 bytes"):
        table.decode_wire(b"\x00\x01\x00\x02\x00")
    with pytest.raises(CodecError, match=r"needs registers 1..2 but the block has 2"):
        table.decode_wire(b"\x00\x01\x00\x02")
    assert table.decode_wire(b"\xff\xfe\x00\x01\x00\x02") == [-2, 0x00010002]


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_float_specials_survive(FieldTable: Any, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["float32", "float64"]))
    fmt = ">f" if kind == "float32" else ">d"
    value = data.draw(
        st.one_of(
            st.sampled_from([math.nan, -math.nan, math.inf, -math.inf, -0.0, 0.0]),
            st.floats(width=32 if kind == "float32" else 64),
        )
    )
    raw = struct.pack(fmt, value)
    if data.draw(st.booleans()):  # arbitrary bit patterns, signalling NaN payloads included
        raw = data.draw(st.binary(min_size=len(raw), max_size=len(raw)))
    block = [int.from_bytes(raw[k : k + 2], "big") for k in range(0, len(raw), 2)]
    spec = FieldSpec(offset=0, type=kind, scale=data.draw(SCALES))
    assert canon(FieldTable([spec]).decode(block)) == canon([reference.decode(spec, block)])


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=24), byte_order=ORDERS)
def test_strings_cut_strip_and_replace_like_python(FieldTable: Any, raw: bytes, byte_order: str) -> None:
    if len(raw) % 2:
        raw += b"\x00"  # odd lengths: the last register carries one byte and a NUL
    registers = [int.from_bytes(raw[k : k + 2], byte_order) for k in range(0, len(raw), 2)] or [0]
    spec = FieldSpec(offset=0, type="string", length=len(registers), byte_order=byte_order)
    assert FieldTable([spec]).decode(registers) == [raw.split(b"\x00", 1)[0].decode("utf-8", "replace").rstrip(" ")]


def test_known_values(FieldTable: Any) -> None:
    specs = [
        FieldSpec(offset=0, type="float32"),
        FieldSpec(offset=2, type="int16", scale=0.1),
        FieldSpec(offset=3, type="uint32", word_order="little"),
        FieldSpec(offset=5, type="int16", byte_order="little"),
        FieldSpec(offset=6, type="string", length=3),
        FieldSpec(offset=9, type="bool", bit=15),
        FieldSpec(offset=9, type="bool"),
    ]
    block = [0x41C8, 0x0000, 0xFF29, 0x0002, 0x0001, 0xFEFF, 0x6869, 0x2020, 0x0000, 0x8000]
    assert FieldTable(specs).decode(block) == [25.0, -21.5, 0x00010002, -2, "hi", True, True]


def test_integers_stay_int_unless_scaled(FieldTable: Any) -> None:
    values = FieldTable([FieldSpec(offset=0, type="int32"), FieldSpec(offset=0, type="int32", scale=2.0)]).decode(
        [0xFFFF, 0xFFFE]
    )
    assert values == [-2, -4.0]
    assert type(values[0]) is int and type(values[1]) is float


def test_bits_block(FieldTable: Any) -> None:
    table = FieldTable([FieldSpec(offset=0, type="bool"), FieldSpec(offset=2, type="bool")], bits=True)
    assert table.decode([1, 1, 0]) == [True, False]
    assert table.decode([False, True, True]) == [False, True]
    with pytest.raises(CodecError, match=r"block\[1\] = 2 is not a bit"):
        table.decode([0, 2, 1])
    with pytest.raises(CodecError, match="only bool fields"):
        FieldTable([FieldSpec(offset=0, type="int16")], bits=True)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ([0, 1], r"field 1 \(offset 1, int32\) needs registers 1..2 but the block has 2"),
        ([0, 70000, 1], r"block\[1\] = 70000 is not a register"),
        ([0, -1, 1], r"block\[1\] = -1 is not a register"),
        ([0, 1.5, 1], r"block\[1\] = 1.5 is not a register"),
        ([0, 2**70, 1], r"is not a register"),
        ([0, "1", 1], r"is not a register"),
    ],
)
def test_bad_blocks(FieldTable: Any, block: list[Any], message: str) -> None:
    table = FieldTable([FieldSpec(offset=0, type="int16"), FieldSpec(offset=1, type="int32")])
    with pytest.raises(CodecError, match=message):
        table.decode(block)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (FieldSpec(offset=0, type="int24"), "unknown type 'int24'"),
        (FieldSpec(offset=0, type="int32", byte_order="middle"), "byte_order must be"),
        (FieldSpec(offset=0, type="int32", word_order="LE"), "word_order must be"),
        (FieldSpec(offset=0, type="bool", bit=16), "bit must be in 0..15"),
        (FieldSpec(offset=0, type="bool", bit=-1), "bit must be in 0..15"),
        (FieldSpec(offset=0, type="int16", bit=3), "bit is only allowed on a bool"),
        (FieldSpec(offset=-1, type="int16"), "offset must be"),
        (FieldSpec(offset=0, type="string", length=0), "length must be"),
        (FieldSpec(offset=0, type="int16", scale=0.0), "scale must be"),
        (FieldSpec(offset=0, type="int16", scale=math.nan), "scale must be"),
        (FieldSpec(offset=0, type="int16", deadband=-1.0), "deadband must be"),
    ],
)
def test_bad_fields_name_the_field(FieldTable: Any, spec: FieldSpec, message: str) -> None:
    with pytest.raises(CodecError, match=r"field 1 \(offset -?\d+, \w+\): " + message):
        FieldTable([FieldSpec(offset=0, type="int16"), spec])


@settings(max_examples=200, deadline=None)
@given(
    specs=st.lists(fields(max_offset=20), max_size=6),
    block=st.lists(st.one_of(REGISTER, st.integers(-5, 70000), st.floats(allow_nan=False)), max_size=24),
)
def test_backends_raise_alike(specs: list[FieldSpec], block: list[Any]) -> None:
    """Out-of-range values, floats and short blocks: the same outcome, message included, on both backends."""
    from tests.codec.conftest import BACKENDS

    outcomes = []
    for param in BACKENDS:
        table_class = param.values[0]
        if table_class is None:
            pytest.skip("gateway._native is not built")
        try:
            outcomes.append(("ok", canon(table_class(specs).decode(block))))
        except CodecError as exc:
            outcomes.append(("error", str(exc)))
    assert outcomes[0] == outcomes[1]


def test_register_count() -> None:
    assert [register_count(FieldSpec(offset=0, type=t)) for t in ("int16", "float32", "uint64", "bool")] == [
        1,
        2,
        4,
        1,
    ]
    assert register_count(FieldSpec(offset=0, type="string", length=7)) == 7
    with pytest.raises(CodecError, match="unknown field type"):
        register_count(FieldSpec(offset=0, type="nope"))


def test_empty_table_and_bytes_block(FieldTable: Any) -> None:
    assert FieldTable([]).decode([1, 2]) == []
    assert FieldTable([FieldSpec(offset=1, type="uint16")]).decode(b"\x05\x06") == [6]
