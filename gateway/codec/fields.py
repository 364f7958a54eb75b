"""Field specs and the rules both codec backends share: validation, block checks and error messages."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgspec

from gateway.errors import CodecError

# Type codes are the C enum in native/fieldgate_native.h.
TYPE_CODES = {
    "int16": 0,
    "uint16": 1,
    "int32": 2,
    "uint32": 3,
    "int64": 4,
    "uint64": 5,
    "float32": 6,
    "float64": 7,
    "string": 8,
    "bool": 9,
}
REGISTER_COUNTS = {
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "int64": 4,
    "uint64": 4,
    "float32": 2,
    "float64": 4,
    "bool": 1,
}
INTEGER_RANGES = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
ORDERS = ("big", "little")
MAX_OFFSET = 2**32
MAX_STRING_REGISTERS = 65536


class FieldSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Where a value sits in a register block and how its registers turn into the value."""

    offset: int  # index of the first register (or bit) of the field within the block
    type: str  # int16 uint16 int32 uint32 int64 uint64 float32 float64 string bool
    byte_order: str = "big"  # bytes within each 16-bit register
    word_order: str = "big"  # order of registers within a multi-register value
    scale: float = 1.0
    bit: int | None = None  # 0-15: a bool taken from one bit of a register
    length: int = 1  # registers, for string
    deadband: float = 0.0
    deadband_percent: bool = False


class CompiledField(NamedTuple):
    """A validated field in the shape the C table takes (fg_field)."""

    type_code: int
    byte_swap: bool
    word_swap: bool
    bit: int  # -1: the whole register
    offset: int
    length: int
    scale: float
    deadband: float
    deadband_percent: bool


def describe(index: int, field: FieldSpec) -> str:
    return f"field {index} (offset {field.offset}, {field.type})"


def register_count(field: FieldSpec) -> int:
    """Registers a field spans: 1, 2 or 4 by type, `length` for a string."""
    if field.type == "string":
        return field.length
    try:
        return REGISTER_COUNTS[field.type]
    except (KeyError, TypeError):
        expected = ", ".join(TYPE_CODES)
        raise CodecError(f"unknown field type {field.type!r}; expected one of {expected}") from None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def compile_field(index: int, field: FieldSpec, *, bits: bool = False) -> CompiledField:
    """Check one field and return its compiled form; a CodecError names the field."""
    where = describe(index, field)
    if not isinstance(field.type, str) or field.type not in TYPE_CODES:
        raise CodecError(f"{where}: unknown type {field.type!r}; expected one of {', '.join(TYPE_CODES)}")
    for name in ("byte_order", "word_order"):
        if not isinstance(getattr(field, name), str) or getattr(field, name) not in ORDERS:
            raise CodecError(f"{where}: {name} must be 'big' or 'little', got {getattr(field, name)!r}")
    if not _is_int(field.offset) or not 0 <= field.offset <= MAX_OFFSET:
        raise CodecError(f"{where}: offset must be an integer in 0..{MAX_OFFSET}")
    length_ok = _is_int(field.length) and 1 <= field.length <= MAX_STRING_REGISTERS
    if field.type == "string" and not length_ok:
        raise CodecError(
            f"{where}: length must be an integer in 1..{MAX_STRING_REGISTERS}, got {field.length!r}"
        )
    if field.bit is not None:
        if field.type != "bool":
            raise CodecError(f"{where}: bit is only allowed on a bool field")
        if not _is_int(field.bit) or not 0 <= field.bit <= 15:
            raise CodecError(f"{where}: bit must be in 0..15, got {field.bit!r}")
    if bits and (field.type != "bool" or field.bit is not None):
        raise CodecError(f"{where}: a coil/discrete-input block holds only bool fields without bit")
    if not _is_number(field.scale) or not math.isfinite(field.scale) or field.scale == 0:
        raise CodecError(f"{where}: scale must be a finite non-zero number, got {field.scale!r}")
    if not _is_number(field.deadband) or not math.isfinite(field.deadband) or field.deadband < 0:
        raise CodecError(f"{where}: deadband must be a finite number >= 0, got {field.deadband!r}")
    return CompiledField(
        type_code=TYPE_CODES[field.type],
        byte_swap=field.byte_order == "little",
        word_swap=field.word_order == "little",
        bit=-1 if field.bit is None else field.bit,
        offset=field.offset,
        length=field.length if field.type == "string" else register_count(field),
        scale=float(field.scale),
        deadband=float(field.deadband),
        deadband_percent=bool(field.deadband_percent),
    )


def compile_fields(fields: Sequence[FieldSpec], *, bits: bool = False) -> list[CompiledField]:
    if isinstance(fields, FieldSpec):
        raise CodecError("FieldTable takes a sequence of FieldSpec, not one FieldSpec")
    compiled = []
    for index, field in enumerate(fields):
        if not isinstance(field, FieldSpec):
            raise CodecError(f"field {index}: expected a FieldSpec, got {type(field).__name__}")
        compiled.append(compile_field(index, field, bits=bits))
    return compiled


def bad_block_value(index: int, value: object, *, bits: bool) -> CodecError:
    expected = "a bit (0 or 1)" if bits else "a register (0..65535)"
    return CodecError(f"block[{index}] = {value!r} is not {expected}")


def check_block(block: Sequence[Any], *, bits: bool) -> None:
    """Every value must be an int in 0..65535 (a bits block: 0 or 1); the whole block is checked."""
    limit = 1 if bits else 0xFFFF
    for index, value in enumerate(block):
        if not isinstance(value, int) or not 0 <= value <= limit:
            raise bad_block_value(index, value, bits=bits)


def block_too_short(index: int, field: FieldSpec, size: int, *, bits: bool) -> CodecError:
    span = 1 if bits else register_count(field)
    unit = "bits" if bits else "registers"
    return CodecError(
        f"{describe(index, field)} needs {unit} {field.offset}..{field.offset + span - 1} "
        f"but the block has {size}"
    )
