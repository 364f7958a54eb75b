"""modbus-tcp against real pymodbus servers on loopback: decoding, merging, writes."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from fieldgate_modbus.protocol import ModbusTcp
from fieldgate_modbus.sim import SimUnit
from fieldgate_modbus.wire import from_registers, to_registers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from modbus_helpers import bind, points


def tcp(port: int, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "unit": 1, "timeout": 1.0, **extra}


async def test_reads_every_type(tcp_sim: Any) -> None:
    visitors = {
        "i16": {"register": "HoldingRegister", "offset": 0, "type": "int16"},
        "u16": {"register": "HoldingRegister", "offset": 1, "type": "uint16"},
        "i32": {"register": "HoldingRegister", "offset": 2, "type": "int32", "word_order": "little"},
        "u32": {"register": "HoldingRegister", "offset": 4, "type": "uint32", "byte_order": "little"},
        "i64": {"register": "InputRegister", "offset": 0, "type": "int64"},
        "u64": {
            "register": "InputRegister",
            "offset": 4,
            "type": "uint64",
            "word_order": "little",
            "byte_order": "little",
        },
        "f32": {"register": "InputRegister", "offset": 8, "type": "float32"},
        "f64": {"register": "InputRegister", "offset": 10, "type": "float64", "word_order": "little"},
        "text": {"register": "HoldingRegister", "offset": 6, "type": "string", "length": 4},
        "scaled": {"register": "HoldingRegister", "offset": 10, "type": "int16", "scale": 0.1},
        "flag": {"register": "HoldingRegister", "offset": 11, "bit": 5},
        "coil": {"register": "CoilRegister", "offset": 3},
        "input": {"register": "DiscreteInput", "offset": 17},
    }
    values = {
        "i16": -1234,
        "u16": 65000,
        "i32": -70000,
        "u32": 4_000_000_000,
        "i64": -(2**40),
        "u64": 2**63 + 5,
        "f32": 21.5,
        "f64": -1.0e-3,
        "text": "ABCDEFG",
        "scaled": -12.3,
        "flag": True,
        "coil": True,
        "input": True,
    }
    sim = await tcp_sim([SimUnit(1, points(visitors, values))])
    protocol = bind(ModbusTcp, tcp(sim.port), visitors)
    await protocol.open()
    try:
        result = await protocol.read(protocol.plan(list(protocol.device.properties.values())))
    finally:
        await protocol.close()
    assert result.errors == {}
    expected = dict(values, scaled=pytest.approx(-12.3))
    assert result.values == expected
    assert type(result.values["i16"]) is int and type(result.values["flag"]) is bool


WIRE_VALUES = {
    "int16": st.integers(-(2**15), 2**15 - 1),
    "uint16": st.integers(0, 2**16 - 1),
    "int32": st.integers(-(2**31), 2**31 - 1),
    "uint32": st.integers(0, 2**32 - 1),
    "int64": st.integers(-(2**63), 2**63 - 1),
    "uint64": st.integers(0, 2**64 - 1),
    "float32": st.floats(width=32, allow_nan=False),
    "float64": st.floats(allow_nan=False),
}


def reference_registers(wire: str, value: Any, byte_order: str, word_order: str) -> list[int]:
    """An independent register image: struct big-endian bytes, then the orders applied by hand."""
    fmt = {
        "int16": "h",
        "uint16": "H",
        "int32": "i",
        "uint32": "I",
        "int64": "q",
        "uint64": "Q",
        "float32": "f",
        "float64": "d",
    }[wire]
    data = struct.pack(">" + fmt, value)
    words = [data[i : i + 2] for i in range(0, len(data), 2)]
    if word_order == "little":
        words.reverse()
    if byte_order == "little":
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


@st.composite
def fields(draw: st.DrawFn) -> tuple[str, Any, str, str]:
    wire = draw(st.sampled_from(sorted(WIRE_VALUES)))
    return (
        wire,
        draw(WIRE_VALUES[wire]),
        draw(st.sampled_from(["big", "little"])),
        draw(st.sampled_from(["big", "little"])),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cases=st.lists(fields(), min_size=1, max_size=8))
async def test_decoding_matches_struct_reference(tcp_sim: Any, cases: list[tuple[str, Any, str, str]]) -> None:
    visitors: dict[str, dict[str, Any]] = {}
    values: dict[str, Any] = {}
    offset = 0
    for i, (wire, value, byte_order, word_order) in enumerate(cases):
        visitors[f"p{i}"] = {
            "register": "HoldingRegister",
            "offset": offset,
            "type": wire,
            "byte_order": byte_order,
            "word_order": word_order,
        }
        # the simulator's images must be the reference's too, or the test would prove nothing
        assert to_registers(wire, value, byte_order=byte_order, word_order=word_order) == reference_registers(
            wire, value, byte_order, word_order
        )
        values[f"p{i}"] = value
        offset += len(reference_registers(wire, value, byte_order, word_order)) + i % 3
    sim = await tcp_sim([SimUnit(1, points(visitors, values))])
    protocol = bind(ModbusTcp, tcp(sim.port), visitors)
    try:
        result = await protocol.read(protocol.plan(list(protocol.device.properties.values())))
    finally:
        await protocol.close()
        await sim.stop()
    for name, value in values.items():
        got = result.values[name]
        assert got == value or (value != value and got != got), (name, visitors[name], value, got)


async def test_merges_reads_into_few_requests(tcp_sim: Any) -> None:
    # 40 float32 in holding registers 0..79, with gaps of 4; 10 in input registers far away; 20 coils
    visitors: dict[str, dict[str, Any]] = {}
    for i in range(40):
        visitors[f"h{i}"] = {"register": "HoldingRegister", "offset": i * 6, "type": "float32"}
    for i in range(10):
        visitors[f"i{i}"] = {"register": "InputRegister", "offset": 1000 + i * 20, "type": "uint16"}
    for i in range(20):
        visitors[f"c{i}"] = {"register": "Coil", "offset": i * 3}
    values = {
        name: (i * 1.5 if name.startswith("h") else (i % 2 == 0 if name.startswith("c") else i))
        for i, name in enumerate(visitors)
    }
    sim = await tcp_sim([SimUnit(1, points(visitors, values))])
    protocol = bind(ModbusTcp, tcp(sim.port, max_gap=8), visitors)
    plan = protocol.plan(list(protocol.device.properties.values()))
    # holding: 0..235 → 2 blocks (≤125); input: gaps of 19 > 8 → 10 blocks; coils: one block
    assert [(b.kind, b.start, b.count) for b in plan.blocks][:2] == [
        ("HoldingRegister", 0, 122),
        ("HoldingRegister", 126, 110),
    ]
    assert len(plan.blocks) == 2 + 10 + 1
    sim.requests.clear()
    try:
        result = await protocol.read(plan)
    finally:
        await protocol.close()
    assert len(sim.requests) == 13
    assert result.errors == {}
    assert result.values == values
    wide = bind(ModbusTcp, tcp(sim.port, max_gap=20), visitors)
    assert len(wide.plan(list(wide.device.properties.values())).blocks) == 2 + 2 + 1


async def test_writes_land_with_the_right_encoding(tcp_sim: Any) -> None:
    visitors = {
        "setpoint": {"register": "HoldingRegister", "offset": 10, "type": "int16", "scale": 0.1},
        "big": {"register": "HoldingRegister", "offset": 20, "type": "float32", "word_order": "little"},
        "counter": {"register": "HoldingRegister", "offset": 30, "type": "uint32"},
        "name": {"register": "HoldingRegister", "offset": 40, "type": "string", "length": 3},
        "enable": {"register": "HoldingRegister", "offset": 50, "bit": 4},
        "other_bit": {"register": "HoldingRegister", "offset": 50, "bit": 0},
        "relay": {"register": "Coil", "offset": 7},
    }
    values = {
        "setpoint": 0,
        "big": 0.0,
        "counter": 0,
        "name": "",
        "enable": False,
        "other_bit": True,
        "relay": False,
    }
    sim = await tcp_sim([SimUnit(1, points(visitors, values))])
    protocol = bind(ModbusTcp, tcp(sim.port), visitors)
    props = protocol.device.properties
    sim.requests.clear()
    try:
        await protocol.write(props["setpoint"], 22.47)  # 224.7 → 225: rounded, not truncated
        await protocol.write(props["big"], 1.5)
        await protocol.write(props["counter"], 70000)
        await protocol.write(props["name"], "abc")
        await protocol.write(props["enable"], True)
        await protocol.write(props["relay"], True)
        result = await protocol.read(protocol.plan(list(props.values())))
    finally:
        await protocol.close()
    functions = [r.function for r in sim.requests]
    assert functions[:7] == [6, 16, 16, 16, 3, 6, 5]
    assert sim.value(1, "setpoint") == pytest.approx(22.5)
    assert from_registers("int16", to_registers("int16", 22.5, scale=0.1)) == 225
    assert sim.value(1, "big") == 1.5 and sim.value(1, "counter") == 70000 and sim.value(1, "name") == "abc"
    assert sim.value(1, "enable") is True and sim.value(1, "relay") is True
    assert result.values["other_bit"] is True  # the read-modify-write kept the neighbour bit
    assert result.values["setpoint"] == pytest.approx(22.5)


async def test_read_only_registers_are_not_written(tcp_sim: Any) -> None:
    visitors = {"t": {"register": "InputRegister", "offset": 0, "type": "int16"}}
    sim = await tcp_sim([SimUnit(1, points(visitors, {"t": 1}))])
    protocol = bind(ModbusTcp, tcp(sim.port), visitors)
    from gateway.errors import ProtocolError

    with pytest.raises(ProtocolError, match="cannot be written"):
        await protocol.write(protocol.device.properties["t"], 2)
    await protocol.close()
