"""The `s7` protocol: planned multi-variable reads within the negotiated PDU, encoded writes, one connection."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from fieldgate_s7.codec import encode
from fieldgate_s7.config import S7Config, S7Visitor, model_types
from fieldgate_s7.planner import HEADER, ITEM_HEADER, Range, ReadPlan
from fieldgate_s7.wire import OUT_OF_RANGE, Connection, describe_code
from gateway.errors import CodecError, ProtocolError
from gateway.protocols.base import BoundDevice, BoundProperty, Protocol, ReadResult

log = logging.getLogger(__name__)
WRITE_PARAMS = 14  # function, item count and one variable's address


class S7Protocol(Protocol):
    """Siemens S7 PLCs over ISO-on-TCP (PUT/GET): data blocks, flags, inputs and outputs."""

    names: ClassVar[tuple[str, ...]] = ("s7",)
    config_type = S7Config
    visitor_type = S7Visitor
    config: S7Config

    def __init__(self, device: BoundDevice) -> None:
        super().__init__(device)
        self.config = device.config
        self._connection: Connection | None = None
        self.pdu = 0  # what the PLC granted at the last connect

    @classmethod
    def visitor_types(cls, visitor: Any) -> frozenset[str]:
        return model_types(visitor)

    @property
    def requests(self) -> int:
        """Requests answered on the current connection."""
        return self._connection.requests if self._connection is not None else 0

    def plan(self, properties: Sequence[BoundProperty]) -> ReadPlan:
        return ReadPlan(tuple((p.name, p.visitor) for p in properties), self.pdu or self.config.pdu_size,
                        self.config.max_gap)

    async def open(self) -> None:
        await self.close()
        local, remote = self.config.tsaps()
        connection = Connection(self.config.host, self.config.port, local, remote, self.config.timeout)
        await connection.open(self.config.pdu_size)
        self._connection, self.pdu = connection, connection.pdu
        log.debug("%s: connected to %s (TSAP %04x→%04x), PDU %d bytes", self.device.id, connection.where, local,
                  remote, connection.pdu)

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    def _link(self) -> Connection:
        if self._connection is None or not self._connection.connected:
            raise ProtocolError(f"{self.device.id}: not connected to {self.config.host}:{self.config.port}")
        return self._connection

    async def read(self, plan: ReadPlan) -> ReadResult:
        """Read a plan; the PLC refusing variables makes those properties' errors (the connection is fine), a
        failed request raises ProtocolError (DeviceTimeout when the PLC does not answer)."""
        if not isinstance(plan, ReadPlan):
            plan = self.plan(plan)
        if self.pdu and plan.pdu > self.pdu:  # planned before the PLC granted a smaller PDU
            plan = ReadPlan(plan.properties, self.pdu, plan.max_gap, plan.isolated)
        result = ReadResult()
        refused = await self._read_ranges(plan.ranges, plan.requests, result)
        # A variable past the end of its DB takes the range it was merged into down with it: read that range's
        # properties on their own, now and from now on, so the error lands on the property that causes it.
        split = {name for span, code in refused if code == OUT_OF_RANGE and len(span.fields) > 1
                 for name in span.names}
        if split:
            plan.isolate(split)
            alone = ReadPlan(tuple(p for p in plan.properties if p[0] in split), plan.pdu, plan.max_gap,
                             frozenset(split))
            refused = [(span, code) for span, code in refused if not split.issuperset(span.names)]
            refused += await self._read_ranges(alone.ranges, alone.requests, result)
        for span, code in refused:
            for name, visitor, _ in span.fields:
                result.errors.setdefault(name, f"{visitor.address()}: the PLC refused it: {describe_code(code)}")
        return result

    async def _read_ranges(self, ranges: list[Range], requests: list[list[Any]], result: ReadResult
                           ) -> list[tuple[Range, int]]:
        link = self._link()
        pieces: dict[int, list[bytes]] = {}
        refused: dict[int, int] = {}
        for number, items in enumerate(requests, 1):
            what = f"read request {number} of {len(requests)} ({len(items)} variable{'s' if len(items) > 1 else ''})"
            answers = await link.read([(ranges[i.index].area, ranges[i.index].db, ranges[i.index].start + i.at,
                                        i.size) for i in items], what)
            for item, answer in zip(items, answers, strict=True):
                if isinstance(answer, int):
                    refused.setdefault(item.index, answer)
                elif len(answer) != item.size:
                    raise ProtocolError(f"{self.device.id}: {what}: {len(answer)} bytes for a variable of "
                                        f"{item.size}")
                else:
                    pieces.setdefault(item.index, []).append(answer)
        values, errors = result.values, result.errors
        for index, span in enumerate(ranges):
            if index in refused:
                continue
            parts = pieces.get(index, [])
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            span.decoder.decode(data, values, errors)
        return [(ranges[index], code) for index, code in refused.items()]

    async def write(self, prop: BoundProperty, value: Any) -> None:
        visitor: S7Visitor = prop.visitor
        what = f"writing {prop.name} to {visitor.address()}"
        if visitor.area == "I":
            raise ProtocolError(f"{self.device.id}: {what}: inputs (area I) are read only")
        link = self._link()
        if visitor.type == "BOOL":
            # the PLC sets the one bit: the other bits of the byte stay as the PLC program left them
            await link.write(visitor.area_code, visitor.block, visitor.offset * 8 + (visitor.bit or 0),
                             encode(visitor, value), bit=True, what=what)
            return
        try:
            data = encode(visitor, value)
        except CodecError as exc:
            raise ProtocolError(f"{self.device.id}: {what}: {exc}") from None
        start = visitor.offset + (1 if visitor.type == "STRING" else 0)  # keep the PLC's maximum-length byte
        room = link.pdu - HEADER - WRITE_PARAMS - ITEM_HEADER
        for at in range(0, len(data), room):  # only a STRING longer than one PDU takes more than one request
            await link.write(visitor.area_code, visitor.block, start + at, data[at : at + room], bit=False, what=what)
