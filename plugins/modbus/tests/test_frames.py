"""Register answers keep their frame's bytes (fieldgate_modbus.frames) and the codec reads those bytes."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from fieldgate_modbus.frames import WireHoldingRegisters, WireInputRegisters
from fieldgate_modbus.protocol import ModbusTcp
from fieldgate_modbus.sim import SimUnit
from modbus_helpers import bind, points
from pymodbus.exceptions import ModbusIOException


@pytest.mark.parametrize("answer", [WireHoldingRegisters, WireInputRegisters])
def test_an_answer_keeps_the_bytes_and_makes_registers_on_demand(answer: Any) -> None:
    pdu = answer()
    pdu.decode(b"\x06" + struct.pack(">3H", 1, 0xFFFF, 0x1234) + b"\x99")  # a trailing byte is not the block's
    assert pdu.wire == struct.pack(">3H", 1, 0xFFFF, 0x1234)
    assert pdu.registers == [1, 0xFFFF, 0x1234]
    assert "3 registers" in str(pdu)


@pytest.mark.parametrize("frame", [b"", b"\x03\x00\x01\x02", b"\x08\x00\x01"], ids=["empty", "odd", "short"])
def test_a_garbled_answer_is_refused(frame: bytes) -> None:
    with pytest.raises(ModbusIOException, match="byte count"):
        WireHoldingRegisters().decode(frame)


async def test_a_read_decodes_the_frame_bytes(tcp_sim: Any) -> None:
    visitors = {"t": {"register": "HoldingRegister", "offset": 2, "type": "float32"},
                "c": {"register": "InputRegister", "offset": 0, "type": "int16", "scale": 0.5}}
    sim = await tcp_sim([SimUnit(1, points(visitors, {"t": 21.5, "c": -3.5}))])
    protocol = bind(ModbusTcp, {"host": "127.0.0.1", "port": sim.port, "unit": 1, "timeout": 1}, visitors)
    assert isinstance(protocol, ModbusTcp)
    try:
        plan = protocol.plan(list(protocol.device.properties.values()))
        raw = await protocol._read_block(plan.blocks[0])
        assert isinstance(raw, bytes)  # the answer's bytes, not a list made register by register
        result = await protocol.read(plan)
        assert result.values == {"t": 21.5, "c": -3.5} and not result.errors
    finally:
        await protocol.close()
