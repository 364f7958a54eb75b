"""Values to registers for writes; pure Python on both backends (a write is not a hot path)."""

from __future__ import annotations

import math
import struct
from typing import Any

from gateway.codec.fields import INTEGER_RANGES, REGISTER_COUNTS, FieldSpec, compile_field, describe
from gateway.errors import CodecError


def _round_half_away(x: float) -> int:
    whole = int(x)  # truncates toward zero; x - whole is exact
    if abs(x - whole) >= 0.5:
        whole += 1 if x > 0 else -1
    return whole


def _to_registers(raw: int, count: int, field: FieldSpec) -> list[int]:
    words = [(raw >> (16 * (count - 1 - k))) & 0xFFFF for k in range(count)]
    if field.word_order == "little":
        words.reverse()
    if field.byte_order == "little":
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    return words


def _scaled(field: FieldSpec, value: Any, where: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CodecError(f"{where}: expected a number, got {value!r}")
    if field.scale == 1.0:
        return value
    return value / field.scale


def encode(field: FieldSpec, value: Any) -> list[int]:
    """Registers to write for `value` (a bit-space bool gives [0|1]); CodecError when it does not fit."""
    compile_field(0, field)
    where = describe(0, field).replace("field 0 ", "field ", 1)
    kind = field.type
    if kind == "bool":
        if field.bit is not None:
            raise CodecError(f"{where}: a bit field needs the current register; use encode_bit()")
        return [_bool(value, where)]
    if kind == "string":
        if not isinstance(value, str):
            raise CodecError(f"{where}: expected a string, got {value!r}")
        data = value.encode()
        if len(data) > 2 * field.length:
            raise CodecError(f"{where}: {len(data)} bytes do not fit in {field.length} registers")
        data = data.ljust(2 * field.length, b"\x00")
        swap = field.byte_order == "little"
        return [int.from_bytes(data[k : k + 2], "little" if swap else "big") for k in range(0, len(data), 2)]
    scaled = _scaled(field, value, where)
    if kind in ("float32", "float64"):
        try:
            packed = struct.pack(">f" if kind == "float32" else ">d", scaled)
        except (OverflowError, struct.error) as exc:
            raise CodecError(f"{where}: {value!r} does not fit in {kind}") from exc
        count = len(packed) // 2
        return _to_registers(int.from_bytes(packed, "big"), count, field)
    if isinstance(scaled, float):
        if not math.isfinite(scaled):
            raise CodecError(f"{where}: {value!r} can not be written as {kind}")
        scaled = _round_half_away(scaled)
    low, high = INTEGER_RANGES[kind]
    if not low <= scaled <= high:
        raise CodecError(f"{where}: {value!r} gives {scaled}, outside {kind} range {low}..{high}")
    count = REGISTER_COUNTS[kind]
    return _to_registers(scaled & ((1 << (16 * count)) - 1), count, field)


def _bool(value: Any, where: str) -> int:
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return int(value)
    raise CodecError(f"{where}: expected a bool (or 0/1), got {value!r}")


def encode_bit(field: FieldSpec, current_register: int, value: Any) -> list[int]:
    """Read-modify-write for a bool bit field: `current_register` with the field's bit set to `value`."""
    compile_field(0, field)
    where = describe(0, field).replace("field 0 ", "field ", 1)
    if field.type != "bool" or field.bit is None:
        raise CodecError(f"{where}: encode_bit is for bool fields with a bit")
    if (
        isinstance(current_register, bool)
        or not isinstance(current_register, int)
        or not (0 <= current_register <= 0xFFFF)
    ):
        raise CodecError(f"{where}: current register {current_register!r} is not in 0..65535")
    swap = field.byte_order == "little"
    register = ((current_register & 0xFF) << 8) | (current_register >> 8) if swap else current_register
    register = register | (1 << field.bit) if _bool(value, where) else register & ~(1 << field.bit)
    return [((register & 0xFF) << 8) | (register >> 8) if swap else register]
