"""The S7 answers the protocol reads (pure bytes in, values out) and the one module that talks to python-snap7.

python-snap7 (3.x, pure Python) builds the requests and carries them over ISO-on-TCP with asyncio streams, so no
call blocks the event loop and a cancelled call ends at once. The answers are taken apart here, item by item, so
one refused variable is that variable's error and not the whole request's.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Sequence

from snap7.async_client import AsyncISOTCPConnection
from snap7.datatypes import S7Area, S7WordLen
from snap7.error import S7Error, S7TimeoutError
from snap7.s7protocol import S7Protocol

from gateway.errors import DeviceTimeout, ProtocolError

READ, WRITE, SETUP = 0x04, 0x05, 0xF0
ACK, ACK_DATA = 0x02, 0x03
OK = 0xFF
OUT_OF_RANGE = 0x05
_HEADER = struct.Struct(">BBHHHHBB")

# What the PLC answers for one variable (S7 return codes), worded for a person reading a device's error.
RETURN_CODES = {
    0x01: "hardware fault",
    0x03: "access to the object not allowed",
    0x05: "address out of range",
    0x06: "data type not supported",
    0x07: "data type inconsistent",
    0x0A: "object does not exist",
}
# Errors of a whole request (header error class and code).
HEADER_ERRORS = {
    0x8104: "function not supported or context not allowed",
    0x8500: "the request does not fit the negotiated PDU",
    0xD602: "wrong password (protected PLC)",
    0x8404: "fatal error in the request",
}


class Refused(ProtocolError):
    """The PLC answered but refused one variable (`code` is its S7 return code)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def describe_code(code: int) -> str:
    return f"{RETURN_CODES.get(code, 'refused')} (return code 0x{code:02x})"


def parse_answer(pdu: bytes, function: int, sequence: int) -> tuple[int, bytes, bytes]:
    """(item count, parameters, data) of an answer to `function`; ProtocolError for an error or a garbled one."""
    if len(pdu) < _HEADER.size:
        raise ProtocolError(f"answer of {len(pdu)} bytes is shorter than an S7 header")
    protocol, kind, _, seq, param_len, data_len, error_class, error_code = _HEADER.unpack_from(pdu)
    if protocol != 0x32 or kind not in (ACK, ACK_DATA):
        raise ProtocolError(f"not an S7 answer (protocol 0x{protocol:02x}, type 0x{kind:02x})")
    if seq != sequence:
        raise ProtocolError(f"answer to request {seq} while waiting for {sequence}")
    if error_class or error_code:
        code = error_class << 8 | error_code
        raise Refused(f"the PLC refused the request: {HEADER_ERRORS.get(code, 'error')} (0x{code:04x})", code)
    end = _HEADER.size + param_len
    if end + data_len != len(pdu) or param_len < 2:
        raise ProtocolError(f"garbled answer: {param_len}+{data_len} bytes announced, {len(pdu) - 12} carried")
    params, data = pdu[_HEADER.size : end], pdu[end:]
    if params[0] != function:
        raise ProtocolError(f"answer for function 0x{params[0]:02x} to a request for 0x{function:02x}")
    return params[1], params, data


def read_items(data: bytes, count: int) -> list[bytes | int]:
    """The data of each item of a read answer, or its return code when the PLC refused it."""
    out: list[bytes | int] = []
    at = 0
    for index in range(count):
        if at + 4 > len(data):
            raise ProtocolError(f"garbled answer: item {index + 1} of {count} missing")
        code, transport, length = data[at], data[at + 1], int.from_bytes(data[at + 2 : at + 4], "big")
        at += 4
        if code != OK:
            out.append(code)  # a refused item carries no data (whatever length it announces)
            continue
        size = length if transport in (0x03, 0x07, 0x09) else (length + 7) // 8  # octets, else a count of bits
        if at + size > len(data):
            raise ProtocolError(f"garbled answer: item {index + 1} announces {size} bytes, {len(data) - at} left")
        out.append(data[at : at + size])
        at += size + (size & 1 if index < count - 1 else 0)
    return out


class Connection:
    """One ISO-on-TCP connection to a PLC: connect with TSAPs, negotiate the PDU, exchange requests."""

    def __init__(self, host: str, port: int, local_tsap: int, remote_tsap: int, timeout: float) -> None:
        self.where = f"{host}:{port}"
        self.timeout = timeout
        self.pdu = 0
        self._link = AsyncISOTCPConnection(host, port, local_tsap=local_tsap, remote_tsap=remote_tsap)
        self._frames = S7Protocol()
        self.requests = 0  # answered requests since connecting (what a test or a benchmark counts)

    async def open(self, pdu_size: int) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self._link.connect(timeout=self.timeout)
        except (TimeoutError, S7TimeoutError):
            await self.close()
            raise DeviceTimeout(f"{self.where}: no connection within {self.timeout:g}s") from None
        except (S7Error, OSError) as exc:
            await self.close()
            raise ProtocolError(f"{self.where}: cannot connect: {exc}") from None
        request = self._frames.build_setup_communication_request(max_amq_caller=1, max_amq_callee=1,
                                                                 pdu_length=pdu_size)
        _, params, _ = await self.exchange(request, SETUP, "negotiating the PDU size")
        if len(params) < 8:
            raise ProtocolError(f"{self.where}: garbled answer to the PDU negotiation")
        granted = int.from_bytes(params[6:8], "big")
        if not 64 <= granted <= pdu_size:
            raise ProtocolError(f"{self.where}: the PLC granted a PDU of {granted} bytes (asked for {pdu_size})")
        self.pdu = granted

    async def exchange(self, request: bytes, function: int, what: str) -> tuple[int, bytes, bytes]:
        """Send one request and take its answer apart; the connection is dropped when it fails."""
        sequence = int.from_bytes(request[4:6], "big")
        try:
            async with asyncio.timeout(self.timeout):
                await self._link.send_data(request)
                answer = await self._link.receive_data()
            result = parse_answer(answer, function, sequence)
        except (TimeoutError, S7TimeoutError):
            await self.close()
            raise DeviceTimeout(f"{self.where}: {what}: no answer within {self.timeout:g}s") from None
        except (S7Error, OSError) as exc:
            await self.close()
            raise ProtocolError(f"{self.where}: {what}: connection lost: {exc}") from None
        except Refused as exc:
            raise Refused(f"{self.where}: {what}: {exc}", exc.code) from None
        except ProtocolError as exc:
            await self.close()  # a garbled or stray answer: the stream cannot be trusted any more
            raise ProtocolError(f"{self.where}: {what}: {exc}") from None
        self.requests += 1
        return result

    async def read(self, items: Sequence[tuple[int, int, int, int]], what: str) -> list[bytes | int]:
        """Read (area, db, start, size) variables in one request: each one's bytes or its return code."""
        request = self._frames.build_multi_read_request(list(items))
        count, _, data = await self.exchange(request, READ, what)
        if count != len(items):
            await self.close()
            raise ProtocolError(f"{self.where}: {what}: {count} items answered for {len(items)} asked")
        try:
            return read_items(data, count)
        except ProtocolError as exc:
            await self.close()
            raise ProtocolError(f"{self.where}: {what}: {exc}") from None

    async def write(self, area: int, db: int, start: int, data: bytes, *, bit: bool, what: str) -> None:
        """Write bytes at byte `start`, or one bit at bit address `start` (byte * 8 + bit) when `bit`."""
        word = S7WordLen.BIT if bit else S7WordLen.BYTE
        request = self._frames.build_write_request(S7Area(area), db, start, word, data)
        count, _, answer = await self.exchange(request, WRITE, what)
        if count != 1 or len(answer) < 1:
            await self.close()
            raise ProtocolError(f"{self.where}: {what}: garbled answer to a write")
        if answer[0] != OK:
            raise Refused(f"{self.where}: {what}: the PLC refused it: {describe_code(answer[0])}", answer[0])

    @property
    def connected(self) -> bool:
        return bool(self._link.connected)

    async def close(self) -> None:
        """Disconnect; must not raise or hang (a PLC that stopped reading cannot hold it)."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(min(self.timeout, 1.0)):
                await self._link.disconnect()
        writer = getattr(self._link, "_writer", None)
        if writer is not None:  # the polite disconnect did not finish: drop the socket
            writer.transport.abort()
        self._link.connected = False
