"""A PLC's worth of variables for the tests: 200 of mixed types across 3 DBs, with their values and bytes."""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from typing import Any

CYCLE = ("REAL", "DINT", "BOOL", "INT", "STRING", "BOOL", "WORD", "LREAL", "BYTE", "BOOL", "DWORD")
STRING_LENGTH = 10


@dataclass(frozen=True)
class Variable:
    name: str
    db: int
    offset: int
    type: str
    bit: int | None
    value: Any

    def visitor(self) -> dict[str, Any]:
        raw: dict[str, Any] = {"db": self.db, "offset": self.offset, "type": self.type}
        if self.bit is not None:
            raw["bit"] = self.bit
        if self.type == "STRING":
            raw["length"] = STRING_LENGTH
        return raw


def float32(value: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", value))[0])


def variables(count: int = 200, dbs: tuple[int, ...] = (1, 2, 3), seed: int = 7) -> list[Variable]:
    """`count` variables laid out as a PLC program declares them: each DB's variables one after the other, BOOLs
    sharing bytes, words on even bytes."""
    rng = random.Random(seed)
    out: list[Variable] = []
    per_db = -(-count // len(dbs))
    for db in dbs:
        offset, bit = 0, None
        for i in range(min(per_db, count - len(out))):
            kind = CYCLE[i % len(CYCLE)]
            if kind == "BOOL":
                if bit is None or bit == 7:
                    bit = 0
                else:
                    offset -= 1
                    bit += 1
                value: Any = rng.random() < 0.5
            else:
                bit = None
                if kind not in ("BYTE",) and offset % 2:
                    offset += 1
                value = {
                    "REAL": lambda: float32(rng.uniform(-1e4, 1e4)),
                    "LREAL": lambda: rng.uniform(-1e12, 1e12),
                    "DINT": lambda: rng.randint(-(2**31), 2**31 - 1),
                    "INT": lambda: rng.randint(-(2**15), 2**15 - 1),
                    "WORD": lambda: rng.randint(0, 0xFFFF),
                    "DWORD": lambda: rng.randint(0, 0xFFFFFFFF),
                    "BYTE": lambda: rng.randint(0, 255),
                    "STRING": lambda: "".join(rng.choice("abcXYZ 019äé") for _ in range(rng.randint(0, STRING_LENGTH))),
                }[kind]()
            out.append(Variable(f"db{db}_{i}_{kind.lower()}", db, offset, kind, bit if kind == "BOOL" else None,
                                value))
            offset += {"REAL": 4, "DINT": 4, "BOOL": 1, "INT": 2, "STRING": STRING_LENGTH + 2, "WORD": 2,
                       "LREAL": 8, "BYTE": 1, "DWORD": 4}[kind]
    return out


def memory(variables: list[Variable]) -> dict[int, bytearray]:
    """Each DB's bytes holding the variables' values (encoded here with struct, not by the gateway's codec)."""
    dbs: dict[int, bytearray] = {}
    for var in variables:
        block = dbs.setdefault(var.db, bytearray(1024))
        if var.type == "BOOL":
            if var.value:
                block[var.offset] |= 1 << (var.bit or 0)
        elif var.type == "STRING":
            raw = var.value.encode("latin-1")
            block[var.offset : var.offset + 2 + len(raw)] = bytes([STRING_LENGTH, len(raw)]) + raw
        else:
            code = {"REAL": ">f", "LREAL": ">d", "DINT": ">i", "INT": ">h", "WORD": ">H", "DWORD": ">I",
                    "BYTE": ">B"}[var.type]
            struct.pack_into(code, block, var.offset, var.value)
    return dbs


def used_bytes(variables: list[Variable]) -> int:
    """Bytes from each DB's first variable to the end of its last."""
    total = 0
    for db in {v.db for v in variables}:
        mine = [v for v in variables if v.db == db]
        size = {"REAL": 4, "DINT": 4, "BOOL": 1, "INT": 2, "STRING": STRING_LENGTH + 2, "WORD": 2, "LREAL": 8,
                "BYTE": 1, "DWORD": 4}
        total += max(v.offset + size[v.type] for v in mine) - min(v.offset for v in mine)
    return total
