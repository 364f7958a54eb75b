"""Register answers that keep the bytes their frame carried.

pymodbus turns a register answer into a list of ints with one `struct.unpack` per register, and formats every
answer for a debug line even when debug is off. The codec reads the frame's bytes directly
(`FieldTable.decode_wire`), so these answer classes keep the bytes and make the list only when something asks for
`registers`. They are registered on each client's decoder (`register`), for function codes 3 and 4.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, ReadInputRegistersResponse


class _WireRegisters:
    """The shared part: `wire` holds the registers' bytes, `registers` is made from them on demand."""

    function_code: int
    wire: bytes = b""
    _registers: Sequence[int] | None = None

    def decode(self, data: bytes) -> None:
        size = int(data[0]) if data else -1
        if size < 0 or size + 1 > len(data) or size & 1:
            raise ModbusIOException(
                f"byte count {size} does not fit a {len(data)}-byte answer of whole registers",
                function_code=self.function_code,
            )
        self.wire = bytes(data[1 : 1 + size])
        self._registers = None

    @property
    def registers(self) -> Sequence[int]:
        if self._registers is None:
            self._registers = list(struct.unpack(f">{len(self.wire) >> 1}H", self.wire))
        return self._registers

    @registers.setter
    def registers(self, value: Sequence[int]) -> None:
        self._registers = value

    def __str__(self) -> str:  # pymodbus formats every answer for its debug log, enabled or not
        return f"{type(self).__name__}({len(self.wire) >> 1} registers)"


class WireHoldingRegisters(_WireRegisters, ReadHoldingRegistersResponse):
    """Function code 3's answer."""


class WireInputRegisters(_WireRegisters, ReadInputRegistersResponse):
    """Function code 4's answer."""


def register_answers(client: Any) -> None:
    """Have `client` decode register answers into the classes above."""
    client.register(WireHoldingRegisters)
    client.register(WireInputRegisters)
