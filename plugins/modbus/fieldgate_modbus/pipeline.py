"""A Modbus TCP client that keeps several requests outstanding on one connection.

pymodbus' client sends one request and waits for its answer before the next (its transaction manager holds a
lock). Over a link with a round trip of a millisecond or more, most of that time the wire is idle. This client
writes a request as soon as the caller has one, gives each a transaction id, and matches the answers by that id:
they may come in any order, each request times out on its own (a late answer for a request given up on is
dropped, not taken for another's), and a lost connection fails every outstanding request at once.

It speaks the same calls as pymodbus' clients (`read_holding_registers(…, device_id=…)`, …) through pymodbus'
`ModbusClientMixin`, and decodes the answers with pymodbus' PDU classes (and `frames`' register answers), so
the link and the protocol use it as they use pymodbus' own. `MbapReader` is the framing alone: bytes in,
frames out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable

from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.pdu import DecodePDU, ModbusPDU

from fieldgate_modbus.frames import register_answers

log = logging.getLogger(__name__)

MBAP_HEADER = 7  # transaction id, protocol id, length (2 bytes each), unit id
MAX_ADU = 260  # the longest Modbus TCP frame
TID_LIMIT = 0x10000


class MbapReader:
    """Splits a byte stream into Modbus TCP frames: (transaction id, unit id, PDU)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """The whole frames `data` completes; a broken header raises ModbusIOException."""
        buffer = self._buffer
        buffer += data
        frames = []
        start = 0
        while len(buffer) - start >= MBAP_HEADER:
            protocol = (buffer[start + 2] << 8) | buffer[start + 3]
            length = (buffer[start + 4] << 8) | buffer[start + 5]
            if protocol != 0 or length < 2 or length + 6 > MAX_ADU:
                raise ModbusIOException(f"not a Modbus TCP frame (protocol id {protocol}, length {length})")
            end = start + 6 + length
            if end > len(buffer):
                break
            tid = (buffer[start] << 8) | buffer[start + 1]
            frames.append((tid, buffer[start + 6], bytes(buffer[start + MBAP_HEADER : end])))
            start = end
        if start:
            del buffer[:start]
        return frames


def mbap_frame(tid: int, unit: int, pdu: bytes) -> bytes:
    """A Modbus TCP frame: the MBAP header, then the PDU."""
    return tid.to_bytes(2, "big") + b"\0\0" + (len(pdu) + 1).to_bytes(2, "big") + bytes((unit,)) + pdu


class _Connection(asyncio.Protocol):
    """The socket's side: frames in, outstanding requests answered or failed."""

    def __init__(self, client: PipelinedTcpClient) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lost(exc)


class PipelinedTcpClient(ModbusClientMixin[Awaitable[ModbusPDU]]):
    """Modbus TCP with up to `max_outstanding` requests in flight, answers matched by transaction id."""

    def __init__(self, host: str, *, port: int, timeout: float, max_outstanding: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.host, self.port, self.timeout = host, port, timeout
        self.max_outstanding = max_outstanding
        self._transport: asyncio.Transport | None = None
        self._reader = MbapReader()
        self._decoder = DecodePDU(False)
        register_answers(self._decoder)
        self._outstanding: dict[int, tuple[asyncio.Future[ModbusPDU], int, int]] = {}  # tid: (answer, unit, fc)
        self._next_tid = 0
        self.late_answers = 0  # answers whose request had timed out (or never was): dropped
        self.last_frame = 0.0  # when the last frame came (time.monotonic())
        self._unsent: list[bytes] = []  # requests made in this turn of the loop: written together, one send

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    async def connect(self) -> bool:
        """Open the connection within `timeout`; False when refused or unreachable."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                transport, _ = await loop.create_connection(lambda: _Connection(self), self.host, self.port)
        except (OSError, TimeoutError) as exc:
            log.debug("tcp://%s:%d: cannot connect: %s", self.host, self.port, exc)
            return False
        self._transport = transport
        self._reader = MbapReader()
        return True

    def close(self, failure: Exception | None = None) -> None:
        """Close the connection; every outstanding request fails with `failure` (default ConnectionException)."""
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()
        self._fail_all(failure or ConnectionException(f"tcp://{self.host}:{self.port}: connection closed"))

    async def execute(self, no_response_expected: bool, request: ModbusPDU) -> ModbusPDU:
        """Send `request` and wait, up to `timeout`, for the answer with its transaction id."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionException(f"tcp://{self.host}:{self.port}: not connected")
        if len(self._outstanding) >= self.max_outstanding:
            raise ModbusIOException(f"more than {self.max_outstanding} requests outstanding")
        tid = self._take_tid()
        answer: asyncio.Future[ModbusPDU] = asyncio.get_running_loop().create_future()
        self._outstanding[tid] = (answer, request.dev_id, request.function_code)
        try:
            pdu = request.function_code.to_bytes(1, "big") + request.encode()
            if not self._unsent:
                asyncio.get_running_loop().call_soon(self._send, transport)
            self._unsent.append(mbap_frame(tid, request.dev_id, pdu))
            if no_response_expected:
                return request
            async with asyncio.timeout(self.timeout):
                return await answer
        finally:
            # answered, timed out or cancelled: the id is free again, and an answer arriving later is dropped
            self._outstanding.pop(tid, None)
            if answer.done() and not answer.cancelled():
                answer.exception()  # failed as its waiter gave up: retrieved, so nothing logs it
            else:
                answer.cancel()

    def _send(self, transport: asyncio.Transport) -> None:
        frames, self._unsent = self._unsent, []
        if transport is self._transport:  # else closed since: its requests have failed already
            transport.write(b"".join(frames))

    def _take_tid(self) -> int:
        for _ in range(TID_LIMIT):
            self._next_tid = (self._next_tid + 1) % TID_LIMIT
            if self._next_tid not in self._outstanding:
                return self._next_tid
        raise ModbusIOException("no free transaction id")  # pragma: no cover - at most 64 are outstanding

    def heard_since(self, since: float) -> bool:
        """A frame came after `since` (time.monotonic()): the connection is alive, whoever is silent."""
        return self.last_frame > since

    def _received(self, data: bytes) -> None:
        self.last_frame = time.monotonic()
        try:
            frames = self._reader.feed(data)
        except ModbusIOException as exc:
            self._broken(exc)
            return
        for tid, unit, pdu in frames:
            waiting = self._outstanding.get(tid)
            if waiting is None or waiting[0].done():
                self.late_answers += 1
                continue
            answer, asked_unit, function = waiting
            if unit != asked_unit or pdu[0] & 0x7F != function:
                # the frame is whole and carries this request's id, so the stream is in step: only this one fails
                answer.set_exception(ModbusIOException(
                    f"answer for unit {unit} function {pdu[0]} to a request for unit {asked_unit} function {function}"
                ))
                continue
            decoded = self._decoder.decode(pdu)
            if decoded is None:
                answer.set_exception(ModbusIOException(f"transaction {tid}: undecodable answer {pdu[:16].hex()}"))
                continue
            decoded.transaction_id, decoded.dev_id = tid, unit
            answer.set_result(decoded)

    def _broken(self, exc: Exception) -> None:
        """The stream cannot be trusted any more: hang up, failing everything outstanding as a lost connection."""
        self.close(ConnectionException(f"tcp://{self.host}:{self.port}: {exc}"))

    def _lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail_all(ConnectionException(f"tcp://{self.host}:{self.port}: connection lost ({exc or 'closed'})"))

    def _fail_all(self, exc: Exception) -> None:
        for answer, _, _ in self._outstanding.values():
            if not answer.done():
                answer.set_exception(exc)
        # the ids are freed by their requests as they wake up (execute's finally)


__all__ = ["MbapReader", "PipelinedTcpClient", "mbap_frame"]
