"""Register codec: raw register blocks to typed values in one call per block, and values back to registers.

`backend` says which implementation FieldTable is ("c" or "python", see gateway.native); both give identical
results. FieldSpec and the validation rules are in gateway.codec.fields, encode in gateway.codec.encode.
"""

from __future__ import annotations

from gateway.codec.encode import encode, encode_bit
from gateway.codec.fields import FieldSpec, register_count
from gateway.native import selected_backend

backend: str = selected_backend()

if backend == "c":
    from gateway.codec.native import FieldTable
else:
    from gateway.codec.python import FieldTable  # type: ignore[assignment]

__all__ = ["FieldSpec", "FieldTable", "backend", "encode", "encode_bit", "register_count"]
