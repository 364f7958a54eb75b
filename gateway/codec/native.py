"""The C codec backend: FieldTable over the compiled table in gateway.native (one C call per block)."""

from __future__ import annotations

from collections.abc import Sequence

from gateway import native
from gateway.codec.fields import FieldSpec, compile_fields


class FieldTable:
    """Decodes register blocks for a fixed list of fields; the change filter's state lives in C."""

    __slots__ = ("decode", "decode_changes", "decode_wire", "reset_changes")

    def __init__(self, fields: Sequence[FieldSpec], *, bits: bool = False) -> None:
        specs = list(fields)
        table = native.CodecTable(specs, compile_fields(specs, bits=bits), bits=bits)
        # Bound straight to the C-backed methods: no extra Python frame per block.
        self.decode = table.decode
        self.decode_changes = table.decode_changes
        self.decode_wire = table.decode_wire
        self.reset_changes = table.reset_changes
