"""The pure-Python codec backend: the reference twin of the C table in native/codec.c."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from typing import Any

from gateway.codec.fields import (
    CompiledField,
    FieldSpec,
    block_too_short,
    check_block,
    compile_fields,
)
from gateway.errors import CodecError

_FLOAT32 = struct.Struct(">f")
_FLOAT64 = struct.Struct(">d")
_BITS = struct.Struct("<d")
_SIGN_BITS = {0: 16, 2: 32, 4: 64}  # signed type code -> width


def _assemble(field: CompiledField, registers: Sequence[int]) -> int:
    if field.word_swap:
        registers = registers[::-1]
    raw = 0
    for register in registers:
        if field.byte_swap:
            register = ((register & 0xFF) << 8) | (register >> 8)
        raw = (raw << 16) | register
    return raw


def _decode_string(field: CompiledField, registers: Sequence[int]) -> str:
    data = bytearray()
    for register in registers:
        high, low = register >> 8, register & 0xFF
        data += bytes((low, high) if field.byte_swap else (high, low))
    end = data.find(0)
    if end >= 0:
        del data[end:]
    return bytes(data).rstrip(b" ").decode("utf-8", "replace")


def _decoder(field: CompiledField, bits: bool) -> Callable[[Sequence[int]], Any]:
    start, code, scale = field.offset, field.type_code, field.scale
    stop = start + field.length
    if bits:
        return lambda block: block[start] != 0
    if code == 9:  # bool
        bit = field.bit

        def decode_bool(block: Sequence[int]) -> bool:
            register = _assemble(field, block[start : start + 1])
            return register != 0 if bit < 0 else bool((register >> bit) & 1)

        return decode_bool
    if code == 8:
        return lambda block: _decode_string(field, block[start:stop])
    if code in (6, 7):
        unpack, width = (_FLOAT32.unpack, 4) if code == 6 else (_FLOAT64.unpack, 8)

        def decode_float(block: Sequence[int]) -> float:
            value: float = unpack(_assemble(field, block[start:stop]).to_bytes(width, "big"))[0]
            return value if scale == 1.0 else value * scale

        return decode_float
    width = _SIGN_BITS.get(code, 0)  # 0: unsigned

    def decode_int(block: Sequence[int]) -> int | float:
        raw = _assemble(field, block[start:stop])
        if width and raw >> (width - 1):
            raw -= 1 << width
        return raw if scale == 1.0 else float(raw * scale)

    return decode_int


def _changed(field: CompiledField, old: Any, new: Any) -> bool:
    if isinstance(new, bool | str):
        return bool(new != old)
    if new == old:
        return False
    if isinstance(new, float) and (math.isnan(new) or math.isnan(old) or math.isinf(new) or math.isinf(old)):
        return not (math.isnan(new) and math.isnan(old) and _BITS.pack(new) == _BITS.pack(old))
    threshold = abs(old) * field.deadband / 100 if field.deadband_percent else field.deadband
    return bool(abs(new - old) > threshold)


class FieldTable:
    """Decodes register blocks for a fixed list of fields; remembers the last reported values."""

    def __init__(self, fields: Sequence[FieldSpec], *, bits: bool = False) -> None:
        self._specs = list(fields)
        self._bits = bits
        self._fields = compile_fields(self._specs, bits=bits)
        self._decoders = [_decoder(field, bits) for field in self._fields]
        self._previous: list[Any] | None = None

    def _check(self, block: Sequence[int]) -> None:
        check_block(block, bits=self._bits)
        size = len(block)
        for index, field in enumerate(self._fields):
            span = 1 if self._bits else field.length
            if field.offset + span > size:
                raise block_too_short(index, self._specs[index], size, bits=self._bits)

    def decode(self, block: Sequence[int]) -> list[Any]:
        """One value per field, in field order."""
        self._check(block)
        return [decode(block) for decode in self._decoders]

    def decode_wire(self, data: bytes) -> list[Any]:
        """`decode` for registers as a Modbus frame carries them: two bytes each, big-endian."""
        if len(data) & 1:
            raise CodecError(f"a register block on the wire has an even length, got {len(data)} bytes")
        return self.decode(struct.unpack(f">{len(data) >> 1}H", data))

    def decode_changes(self, block: Sequence[int]) -> list[tuple[int, Any]]:
        """(field index, value) for the fields that moved beyond their deadband since last reported."""
        values = self.decode(block)
        previous = self._previous
        if previous is None:
            self._previous = values
            return list(enumerate(values))
        changes = []
        for index, value in enumerate(values):
            if _changed(self._fields[index], previous[index], value):
                previous[index] = value
                changes.append((index, value))
        return changes

    def reset_changes(self) -> None:
        """Forget the last reported values: the next decode_changes reports every field."""
        self._previous = None
