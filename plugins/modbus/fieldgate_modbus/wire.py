"""Register images of values for the simulator, built with `struct` independently of gateway.codec.

The simulator serves what a real device would send; keeping this separate from the codec means a test that
reads a simulated device checks the codec against an independent reference instead of against itself.
"""

from __future__ import annotations

import math
import struct
from typing import Any

from fieldgate_modbus.config import INT_TYPES, WORDS

_FORMATS = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
}


def round_half_away(value: float) -> int:
    """Round to the nearest integer, halves away from zero (what a device expects; never truncate)."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def _swap_bytes(words: list[int]) -> list[int]:
    return [((w & 0xFF) << 8) | (w >> 8) for w in words]


def to_registers(
    wire_type: str,
    value: Any,
    *,
    byte_order: str = "big",
    word_order: str = "big",
    scale: float = 1.0,
    length: int = 1,
) -> list[int]:
    """The registers a device holds for `value` (after scale: raw = value / scale)."""
    if wire_type == "string":
        data = str(value).encode("latin-1")[: length * 2].ljust(length * 2, b"\0")
        words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
        return _swap_bytes(words) if byte_order == "little" else words
    if wire_type == "bool":
        return [1 if value else 0]
    raw: float | int = value / scale if scale != 1 else value
    if wire_type in INT_TYPES:
        raw = round_half_away(raw) if isinstance(raw, float) else int(raw)
    data = struct.pack(">" + _FORMATS[wire_type], raw)
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    if word_order == "little":
        words.reverse()
    return _swap_bytes(words) if byte_order == "little" else words


def from_registers(
    wire_type: str,
    registers: list[int],
    *,
    byte_order: str = "big",
    word_order: str = "big",
    scale: float = 1.0,
) -> Any:
    """The inverse of `to_registers` (strings lose trailing NULs); the reference decoder of the tests."""
    words = _swap_bytes(list(registers)) if byte_order == "little" else list(registers)
    if wire_type == "string":
        return b"".join(w.to_bytes(2, "big") for w in words).rstrip(b"\0").decode("latin-1")
    if wire_type == "bool":
        return bool(words[0])
    if word_order == "little":
        words.reverse()
    raw = struct.unpack(">" + _FORMATS[wire_type], b"".join(w.to_bytes(2, "big") for w in words))[0]
    return raw * scale if scale != 1 else raw


def word_count(wire_type: str, length: int = 1) -> int:
    return length if wire_type == "string" else WORDS.get(wire_type, 1)
