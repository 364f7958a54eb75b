"""The protocol config and the property visitor of S7 devices (checked when a file loads)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from msgspec import Meta

from gateway.resources.schema import Base

AreaName = Literal["DB", "M", "I", "Q"]
S7Type = Literal[
    "BOOL", "BYTE", "WORD", "DWORD", "LWORD", "SINT", "USINT", "INT", "UINT", "DINT", "UDINT", "LINT", "ULINT",
    "REAL", "LREAL", "STRING", "DATE", "TIME", "TIME_OF_DAY", "DATE_AND_TIME", "DTL",
]

# Area codes of the S7 "any" address: inputs (process image), outputs, flags (merker) and data blocks.
AREA_CODES: dict[str, int] = {"I": 0x81, "Q": 0x82, "M": 0x83, "DB": 0x84}
# Bytes a value of each type occupies (STRING: its two header bytes plus `length` characters).
SIZES: dict[str, int] = {
    "BOOL": 1, "BYTE": 1, "SINT": 1, "USINT": 1, "WORD": 2, "INT": 2, "UINT": 2, "DATE": 2,
    "DWORD": 4, "DINT": 4, "UDINT": 4, "REAL": 4, "TIME": 4, "TIME_OF_DAY": 4,
    "LWORD": 8, "LINT": 8, "ULINT": 8, "LREAL": 8, "DATE_AND_TIME": 8, "DTL": 12,
}
INT_TYPES = frozenset({"BYTE", "WORD", "DWORD", "LWORD", "SINT", "USINT", "INT", "UINT", "DINT", "UDINT", "LINT",
                       "ULINT", "TIME"})
TEXT_TYPES = frozenset({"STRING", "DATE", "TIME_OF_DAY", "DATE_AND_TIME", "DTL"})
MAX_OFFSET = 65535  # a DB (or the M, I, Q area) holds at most 64 KiB for PUT/GET access
STRING_MAX = 254

_TSAP = re.compile(r"^([0-9A-Fa-f]{1,2})\.([0-9A-Fa-f]{1,2})$")
Tsap = Annotated[int, Meta(ge=0, le=0xFFFF)] | str


def tsap_value(raw: int | str) -> int:
    """A TSAP as the number the connection request carries."""
    if isinstance(raw, int):
        return raw
    match = _TSAP.match(raw)
    if match is None:
        raise ValueError(f"TSAP {raw!r}: expected two hex bytes as PLC tools show them, e.g. \"03.01\"")
    return int(match.group(1), 16) << 8 | int(match.group(2), 16)


class S7Config(Base, kw_only=True):
    """`protocol.config` of an `s7` device: rack and slot, or TSAPs (LOGO!, CPs, configured connections)."""

    host: Annotated[str, Meta(min_length=1, description="the PLC's (or its CP's) address")]
    port: Annotated[int, Meta(ge=1, le=65535, description="ISO-on-TCP port")] = 102
    rack: Annotated[Annotated[int, Meta(ge=0, le=7)] | None, Meta(description="default 0")] = None
    slot: Annotated[Annotated[int, Meta(ge=0, le=31)] | None, Meta(
        description="default 1 (S7-1200/1500; an S7-300 CPU is in slot 2)")] = None
    connection_type: Annotated[Literal["PG", "OP", "S7"], Meta(
        description="the remote TSAP's resource with rack/slot: PG (programming device), OP (panel), S7 (basic)",
    )] = "PG"
    local_tsap: Annotated[Tsap | None, Meta(description='with remote_tsap: two hex bytes as PLC tools show them, '
                                            'e.g. "10.00", or a number; default 01.00')] = None
    remote_tsap: Annotated[Tsap | None, Meta(description='instead of rack/slot, e.g. "20.00" (LOGO!)')] = None
    pdu_size: Annotated[int, Meta(ge=240, le=960, description="PDU length asked for; the PLC may grant less")] = 480
    timeout: Annotated[float, Meta(gt=0, le=60, description="seconds to wait for one answer")] = 2.0
    max_gap: Annotated[int, Meta(ge=0, le=256, description="unused bytes a merged read may span")] = 8

    def __post_init__(self) -> None:
        if self.remote_tsap is not None and (self.rack is not None or self.slot is not None):
            raise ValueError("give rack/slot or remote_tsap, not both")
        if self.local_tsap is not None and self.remote_tsap is None:
            raise ValueError("local_tsap needs remote_tsap (rack/slot connections use local TSAP 01.00)")
        for tsap in (self.local_tsap, self.remote_tsap):
            if tsap is not None:
                tsap_value(tsap)

    def tsaps(self) -> tuple[int, int]:
        """(local, remote) TSAP of the connection request."""
        if self.remote_tsap is not None:
            local = tsap_value(self.local_tsap) if self.local_tsap is not None else 0x0100
            return local, tsap_value(self.remote_tsap)
        resource = {"PG": 1, "OP": 2, "S7": 3}[self.connection_type]
        rack = self.rack if self.rack is not None else 0
        slot = self.slot if self.slot is not None else 1
        return 0x0100, resource << 8 | rack << 5 | slot


class S7Visitor(Base, kw_only=True):
    """Where and how one property lives in an S7 PLC: `{area: DB, db: 1, offset: 4, type: REAL}` is DB1.DBD4."""

    type: S7Type
    offset: Annotated[int, Meta(ge=0, le=MAX_OFFSET, description="byte offset in the area or DB")]
    area: Annotated[AreaName, Meta(description="DB (data block), M (flags), I (inputs), Q (outputs)")] = "DB"
    db: Annotated[Annotated[int, Meta(ge=1, le=65535)] | None, Meta(
        description="data block number (area DB only)")] = None
    bit: Annotated[Annotated[int, Meta(ge=0, le=7)] | None, Meta(description="bit of the byte (BOOL only)")] = None
    length: Annotated[Annotated[int, Meta(ge=1, le=STRING_MAX)] | None, Meta(
        description="declared maximum length of a STRING (STRING[n]; default 254); the PLC's header must say the "
                    "same")] = None

    def __post_init__(self) -> None:
        if self.area == "DB" and self.db is None:
            raise ValueError("area DB needs `db` (the data block number)")
        if self.area != "DB" and self.db is not None:
            raise ValueError(f"`db` applies to area DB, not {self.area}")
        if self.type == "BOOL" and self.bit is None:
            raise ValueError("type BOOL needs `bit` (0-7)")
        if self.type != "BOOL" and self.bit is not None:
            raise ValueError(f"`bit` applies to BOOL, not {self.type}")
        if self.type != "STRING" and self.length is not None:
            raise ValueError(f"`length` applies to STRING, not {self.type}")
        if self.offset + self.size > MAX_OFFSET + 1:
            raise ValueError(f"offset {self.offset} + {self.size} bytes of {self.type} passes byte {MAX_OFFSET}")

    @property
    def size(self) -> int:
        """Bytes the value occupies."""
        if self.type == "STRING":
            return 2 + (self.length or STRING_MAX)
        return SIZES[self.type]

    @property
    def area_code(self) -> int:
        return AREA_CODES[self.area]

    @property
    def block(self) -> int:
        """The DB number, 0 outside area DB (as the address carries it)."""
        return self.db or 0

    def address(self) -> str:
        """The address in the PLC's notation: DB1.DBD4, DB2.DBX0.3, MW10, I0.1, DB1.DBB20 (STRING[20])."""
        if self.type == "BOOL":
            prefix = f"DB{self.db}.DBX" if self.area == "DB" else self.area
            return f"{prefix}{self.offset}.{self.bit}"
        letter = {1: "B", 2: "W", 4: "D"}.get(self.size, "B")
        prefix = f"DB{self.db}.DB" if self.area == "DB" else self.area
        kind = self.type if self.type != "STRING" else f"STRING[{self.length or STRING_MAX}]"
        return f"{prefix}{letter}{self.offset} ({kind})"


def model_types(visitor: S7Visitor) -> frozenset[str]:
    """Model types a property read through this visitor may declare."""
    if visitor.type == "BOOL":
        return frozenset({"boolean", "int"})
    if visitor.type in TEXT_TYPES:
        return frozenset({"string"})
    if visitor.type in INT_TYPES:
        return frozenset({"int", "float", "double"})
    return frozenset({"float", "double"})
