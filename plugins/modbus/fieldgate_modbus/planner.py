"""Read planning: the properties due together merged into the fewest Modbus requests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fieldgate_modbus.config import BIT_KINDS, ModbusVisitor, RegisterKind
from gateway.codec import FieldSpec, FieldTable

MAX_BITS = 2000  # the protocol's limit for one read of coils or discrete inputs
_KIND_ORDER: dict[str, int] = {"HoldingRegister": 0, "InputRegister": 1, "Coil": 2, "DiscreteInput": 3}


@dataclass(frozen=True, eq=False)
class Block:
    """One read request: `count` registers (or bits) of one kind from `start`, decoded by one FieldTable."""

    kind: RegisterKind
    start: int
    count: int
    names: tuple[str, ...]
    table: FieldTable

    def describe(self) -> str:
        noun = "bits" if self.kind in BIT_KINDS else "registers"
        return f"{self.kind} {self.start}..{self.start + self.count - 1} ({self.count} {noun})"


@dataclass(frozen=True, eq=False)
class ReadPlan:
    blocks: tuple[Block, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for block in self.blocks for name in block.names)


def field_spec(visitor: ModbusVisitor, offset: int = 0) -> FieldSpec:
    """The codec's description of one property, `offset` counted from the start of its block."""
    return FieldSpec(
        offset=offset,
        type=visitor.wire_type,
        byte_order=visitor.byte_order,
        word_order=visitor.word_order,
        scale=visitor.scale,
        bit=visitor.bit,
        length=visitor.length,
    )


def plan_reads(
    properties: Sequence[tuple[str, ModbusVisitor]], *, max_gap: int = 8, max_registers: int = 125
) -> ReadPlan:
    """Merge properties into blocks per register kind: at most `max_registers` registers (2000 bits) a block,
    reading through holes of up to `max_gap` registers (16 times as many bits) rather than asking twice."""
    ordered = sorted(properties, key=lambda p: (_KIND_ORDER[p[1].kind], p[1].offset, -p[1].register_count))
    blocks: list[Block] = []
    group: list[tuple[str, ModbusVisitor]] = []
    start = end = 0
    for name, visitor in ordered:
        bits = visitor.bits
        limit, gap = (MAX_BITS, max_gap * 16) if bits else (max_registers, max_gap)
        first, last = visitor.offset, visitor.offset + visitor.register_count
        if (
            group
            and group[0][1].kind == visitor.kind
            and first - end <= gap
            and max(end, last) - start <= limit
        ):
            group.append((name, visitor))
            end = max(end, last)
            continue
        if group:
            blocks.append(_block(group, start, end))
        group, start, end = [(name, visitor)], first, last
    if group:
        blocks.append(_block(group, start, end))
    return ReadPlan(tuple(blocks))


def _block(group: list[tuple[str, ModbusVisitor]], start: int, end: int) -> Block:
    kind = group[0][1].kind
    table = FieldTable([field_spec(v, v.offset - start) for _, v in group], bits=kind in BIT_KINDS)
    return Block(kind, start, end - start, tuple(name for name, _ in group), table)
