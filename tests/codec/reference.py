"""An independent decoder built on `struct`, to check both backends against."""

from __future__ import annotations

import struct
from typing import Any

from gateway.codec import FieldSpec

FORMATS = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q",
           "float32": "f", "float64": "d"}


def field_bytes(field: FieldSpec, registers: list[int]) -> bytes:
    """Big-endian bytes of the value: each register per byte_order, registers per word_order."""
    chunks = [struct.pack("<H" if field.byte_order == "little" else ">H", r) for r in registers]
    if field.word_order == "little":
        chunks.reverse()
    return b"".join(chunks)


def decode(field: FieldSpec, block: list[int], *, bits: bool = False) -> Any:
    if bits:
        return bool(block[field.offset])
    if field.type == "bool":
        register = struct.unpack(">H", field_bytes(field, [block[field.offset]]))[0]
        return register != 0 if field.bit is None else bool(register >> field.bit & 1)
    if field.type == "string":
        raw = b"".join(
            struct.pack("<H" if field.byte_order == "little" else ">H", r)
            for r in block[field.offset : field.offset + field.length]
        )
        return raw.split(b"\x00", 1)[0].decode("utf-8", "replace").rstrip(" ")
    fmt = FORMATS[field.type]
    count = struct.calcsize(fmt) // 2
    (value,) = struct.unpack(">" + fmt, field_bytes(field, block[field.offset : field.offset + count]))
    if field.scale == 1.0:
        return value
    return float(value * field.scale)


def canonical(value: Any) -> Any:
    """A comparable form: floats by their bits (NaN payloads and -0.0 included), bools apart from ints."""
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    return (type(value).__name__, value)
