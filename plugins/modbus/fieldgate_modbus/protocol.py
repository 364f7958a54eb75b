"""The `modbus-tcp` and `modbus-rtu` protocols: planned block reads, encoded writes, shared links."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, ClassVar

from fieldgate_modbus import link as links
from fieldgate_modbus.config import WRITABLE_KINDS, ModbusVisitor, RtuConfig, TcpConfig, model_types
from fieldgate_modbus.link import ExceptionAnswer, Link
from fieldgate_modbus.planner import Block, ReadPlan, field_spec, plan_reads
from gateway.codec import encode, encode_bit
from gateway.errors import CodecError, DeviceTimeout, ProtocolError
from gateway.protocols.base import BoundDevice, BoundProperty, Protocol, ReadResult

_READERS = {
    "HoldingRegister": "read_holding_registers",
    "InputRegister": "read_input_registers",
    "Coil": "read_coils",
    "DiscreteInput": "read_discrete_inputs",
}


class ModbusProtocol(Protocol):
    """What Modbus TCP and RTU share: everything but the transport key."""

    visitor_type = ModbusVisitor
    config: TcpConfig | RtuConfig

    def __init__(self, device: BoundDevice) -> None:
        super().__init__(device)
        self.config = device.config
        self._link: Link | None = None

    @classmethod
    def visitor_types(cls, visitor: Any) -> frozenset[str]:
        return model_types(visitor)

    def link_key(self) -> str:
        raise NotImplementedError

    def plan(self, properties: Sequence[BoundProperty]) -> ReadPlan:
        return plan_reads(
            [(p.name, p.visitor) for p in properties],
            max_gap=self.config.max_gap,
            max_registers=self.config.max_registers,
        )

    async def open(self) -> None:
        if self._link is None:
            self._link = links.acquire(self.link_key(), self.config)
        await self._link.connect(self.config.timeout)

    async def close(self) -> None:
        if self._link is not None:
            link, self._link = self._link, None
            links.release(link)

    def _where(self) -> str:
        return f"{self.device.id} (unit {self.config.unit} at {self.link_key()})"

    async def _request(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._link is None:
            self._link = links.acquire(self.link_key(), self.config)
        unit = self.config.unit

        async def call(client: Any) -> Any:
            return await getattr(client, method)(*args, device_id=unit, **kwargs)

        return await self._link.request(
            f"{self._where()}: {what}", call, timeout=self.config.timeout, retries=self.config.retries
        )

    @property
    def max_inflight(self) -> int:
        """Requests of this device that may be outstanding at once (Modbus TCP's `max_inflight`; RTU: 1)."""
        return getattr(self.config, "max_inflight", 1)

    async def read(self, plan: ReadPlan) -> ReadResult:
        if not isinstance(plan, ReadPlan):
            plan = self.plan(plan)
        blocks = plan.blocks
        outcomes: list[list[Any] | ProtocolError | None] = [None] * len(blocks)  # None: not asked
        width = min(self.max_inflight, len(blocks))
        if width <= 1:
            for index, block in enumerate(blocks):
                outcomes[index] = outcome = await self._read_decoded(block)
                if isinstance(outcome, ProtocolError) and self._gives_up(outcome):
                    break
        else:
            await self._read_together(blocks, outcomes, width)
        result = ReadResult()
        failure: ProtocolError | None = None
        for block, answer in zip(blocks, outcomes, strict=True):
            if isinstance(answer, list):
                result.values.update(zip(block.names, answer, strict=True))
                continue
            if isinstance(answer, ProtocolError):
                failure = answer
                text = str(answer)
            else:
                text = f"skipped: {failure}"
            for name in block.names:
                result.errors[name] = text
        if not result.values and failure is not None:
            raise failure
        return result

    async def _read_together(
        self, blocks: Sequence[Block], outcomes: list[list[Any] | ProtocolError | None], width: int
    ) -> None:
        """Read the blocks with up to `width` requests outstanding; after a timeout or a lost link, the blocks
        not asked yet stay unasked (as one at a time, the device is gone: more requests only spend timeouts)."""
        queue = iter(range(len(blocks)))
        stop = False

        async def worker() -> None:
            nonlocal stop
            for index in queue:
                if stop:
                    return
                outcomes[index] = outcome = await self._read_decoded(blocks[index])
                if isinstance(outcome, ProtocolError) and self._gives_up(outcome):
                    stop = True

        async with asyncio.TaskGroup() as group:
            for _ in range(width):
                group.create_task(worker())

    def _gives_up(self, failure: ProtocolError) -> bool:
        """After this failure the device is gone: asking its other blocks would only spend more timeouts."""
        return isinstance(failure, DeviceTimeout) or not self._link_up()

    async def _read_decoded(self, block: Block) -> list[Any] | ProtocolError:
        """One block's values, or why it has none."""
        try:
            raw = await self._read_block(block)
            return block.table.decode_wire(raw) if isinstance(raw, bytes) else block.table.decode(raw)
        except ProtocolError as exc:
            return exc
        except CodecError as exc:
            return ProtocolError(str(exc))

    def _link_up(self) -> bool:
        return self._link is not None and self._link.connected

    async def _read_block(self, block: Block) -> bytes | list[int] | list[bool]:
        what = f"reading {block.describe()}"
        response = await self._request(what, _READERS[block.kind], block.start, count=block.count)
        if block.kind in ("Coil", "DiscreteInput"):
            bits = list(response.bits)
            if len(bits) < block.count:
                raise ProtocolError(f"{self._where()}: {what}: answer holds {len(bits)} bits")
            return bits[: block.count]
        wire = getattr(response, "wire", None)  # fieldgate_modbus.frames: the frame's bytes, decoded in one call
        registers: bytes | list[int] = wire if isinstance(wire, bytes) else list(response.registers)
        held = len(registers) >> 1 if isinstance(registers, bytes) else len(registers)
        if held != block.count:
            raise ProtocolError(f"{self._where()}: {what}: answer holds {held} registers, expected {block.count}")
        return registers

    async def write(self, prop: BoundProperty, value: Any) -> None:
        visitor: ModbusVisitor = prop.visitor
        if visitor.kind not in WRITABLE_KINDS:
            raise ProtocolError(f"{self._where()}: {prop.name}: a {visitor.kind} cannot be written")
        what = f"writing {prop.name} to {visitor.kind} {visitor.offset}"
        if visitor.bits:
            await self._request(what, "write_coil", visitor.offset, bool(value))
        elif visitor.bit is not None:
            # a bit inside a holding register: read the register, change the bit, write it back
            response = await self._request(
                f"{what} (reading it first)", "read_holding_registers", visitor.offset, count=1
            )
            (updated,) = encode_bit(field_spec(visitor), int(response.registers[0]), value)
            await self._request(what, "write_register", visitor.offset, updated)
        else:
            registers = encode(field_spec(visitor), value)
            if len(registers) == 1:
                await self._request(what, "write_register", visitor.offset, registers[0])
            else:
                await self._request(what, "write_registers", visitor.offset, registers)


class ModbusTcp(ModbusProtocol):
    names: ClassVar[tuple[str, ...]] = ("modbus-tcp",)
    config_type = TcpConfig
    config: TcpConfig

    def link_key(self) -> str:
        return f"tcp://{self.config.host}:{self.config.port}"


class ModbusRtu(ModbusProtocol):
    names: ClassVar[tuple[str, ...]] = ("modbus-rtu",)
    config_type = RtuConfig
    config: RtuConfig

    def link_key(self) -> str:
        return f"rtu://{self.config.port}"


__all__ = ["ExceptionAnswer", "ModbusProtocol", "ModbusRtu", "ModbusTcp"]
