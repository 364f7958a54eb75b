"""Protocol configs and the property visitor of Modbus devices (checked when a file loads)."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from msgspec import Meta

from gateway.codec.fields import REGISTER_COUNTS
from gateway.resources.schema import Base

RegisterKind = Literal["HoldingRegister", "InputRegister", "Coil", "DiscreteInput"]
WireType = Literal[
    "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string", "bool"
]
Order = Literal["big", "little"]

# KubeEdge spells two register kinds differently; both spellings are accepted and mean the same.
REGISTER_ALIASES: dict[str, RegisterKind] = {
    "HoldingRegister": "HoldingRegister",
    "InputRegister": "InputRegister",
    "Coil": "Coil",
    "CoilRegister": "Coil",
    "DiscreteInput": "DiscreteInput",
    "DiscreteInputRegister": "DiscreteInput",
}
BIT_KINDS = frozenset({"Coil", "DiscreteInput"})
WRITABLE_KINDS = frozenset({"HoldingRegister", "Coil"})
INT_TYPES = frozenset({"int16", "uint16", "int32", "uint32", "int64", "uint64"})
WORDS = REGISTER_COUNTS  # registers a value of each wire type spans (the codec's table)

Unit = Annotated[int, Meta(ge=0, le=255, description="Modbus unit (slave) id")]
Timeout = Annotated[float, Meta(gt=0, le=60, description="seconds to wait for one answer")]
Retries = Annotated[int, Meta(ge=0, le=10, description="extra attempts after a garbled or refused answer")]
MaxGap = Annotated[int, Meta(ge=0, le=124, description="unused registers a merged read may span")]
MaxRegisters = Annotated[int, Meta(ge=1, le=125, description="registers one read request may ask for")]
MAX_INFLIGHT = 64
MaxInflight = Annotated[
    int,
    Meta(
        ge=1,
        le=MAX_INFLIGHT,
        description="requests this device may have outstanding at once on its connection, matched by transaction "
        "id (1: one at a time, as many devices need); the connection carries as many as its widest device allows",
    ),
]


class TcpConfig(Base, kw_only=True):
    """`protocol.config` of a `modbus-tcp` device."""

    host: Annotated[str, Meta(min_length=1)]
    port: Annotated[int, Meta(ge=1, le=65535)] = 502
    unit: Unit = 1
    timeout: Timeout = 1.0
    retries: Retries = 1
    max_gap: MaxGap = 8
    max_registers: MaxRegisters = 125
    max_inflight: MaxInflight = 1


class RtuConfig(Base, kw_only=True):
    """`protocol.config` of a `modbus-rtu` device; devices naming the same `port` share one bus."""

    port: Annotated[str, Meta(min_length=1, description="serial device, e.g. /dev/ttyUSB0")]
    baudrate: Annotated[int, Meta(ge=300, le=4_000_000)] = 9600
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    unit: Unit = 1
    timeout: Timeout = 1.0
    retries: Retries = 1
    max_gap: MaxGap = 8
    max_registers: MaxRegisters = 125
    inter_frame_gap: (
        Annotated[float, Meta(ge=0, le=1, description="seconds of silence between frames; default 3.5 chars")]
        | None
    ) = None

    def frame_gap(self) -> float:
        """Silence between two frames: 3.5 character times, at least 1.75 ms (the spec, above 19200)."""
        if self.inter_frame_gap is not None:
            return self.inter_frame_gap
        bits_per_char = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return max(3.5 * bits_per_char / self.baudrate, 0.00175)


class ModbusVisitor(Base, kw_only=True):
    """Where and how one property lives in a Modbus device."""

    register: Literal[
        "HoldingRegister", "InputRegister", "Coil", "DiscreteInput", "CoilRegister", "DiscreteInputRegister"
    ]
    offset: Annotated[int, Meta(ge=0, le=65535, description="0-based register or bit address")]
    type: WireType | None = None
    byte_order: Order = "big"
    word_order: Order = "big"
    scale: Annotated[float, Meta(description="wire value = raw * scale")] = 1.0
    bit: Annotated[int, Meta(ge=0, le=15)] | None = None
    length: Annotated[int, Meta(ge=1, le=125, description="registers of a string")] = 1

    def __post_init__(self) -> None:
        if self.scale == 0 or not math.isfinite(self.scale):
            raise ValueError(f"scale must be a finite non-zero number, got {self.scale!r}")
        if self.kind in BIT_KINDS:
            if self.type not in (None, "bool"):
                raise ValueError(f"a {self.kind} is a single bit: type must be bool, got {self.type}")
            if self.bit is not None:
                raise ValueError(f"bit applies to registers, not to a {self.kind}")
        elif self.bit is not None and self.type not in (None, "bool"):
            raise ValueError(f"a bit of a register is read as bool, got type {self.type}")
        elif self.type == "bool" and self.bit is None:
            raise ValueError("type bool in a register needs `bit` (0-15)")
        if self.length != 1 and self.wire_type != "string":
            raise ValueError("length applies to strings only")
        if self.offset + self.register_count > 65536:
            raise ValueError(f"offset {self.offset} + {self.register_count} registers passes address 65535")

    @property
    def kind(self) -> RegisterKind:
        return REGISTER_ALIASES[self.register]

    @property
    def bits(self) -> bool:
        """True when the property is read with the bit functions (coils, discrete inputs)."""
        return self.kind in BIT_KINDS

    @property
    def wire_type(self) -> str:
        if self.bits or self.bit is not None:
            return "bool"
        return self.type or "uint16"

    @property
    def register_count(self) -> int:
        """Registers (or bits, for coils and discrete inputs) the value occupies."""
        if self.bits or self.bit is not None:
            return 1
        if self.wire_type == "string":
            return self.length
        return WORDS[self.wire_type]


def model_types(visitor: ModbusVisitor) -> frozenset[str]:
    """Model types a property read through this visitor may declare."""
    wire = visitor.wire_type
    if wire == "bool":
        return frozenset({"boolean", "int"})
    if wire == "string":
        return frozenset({"string"})
    if wire in INT_TYPES:
        return frozenset({"int", "float", "double"})
    return frozenset({"float", "double"})
