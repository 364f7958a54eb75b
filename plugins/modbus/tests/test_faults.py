"""Misbehaving devices: each leaves the protocol raising a clean ProtocolError, and others on time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fieldgate_modbus.protocol import ModbusTcp
from fieldgate_modbus.sim import SimUnit
from modbus_helpers import bind, points
from pymodbus.constants import ExcCodes

from gateway.errors import DeviceTimeout, ProtocolError

VISITORS = {
    "a": {"register": "HoldingRegister", "offset": 0, "type": "uint16"},
    "b": {"register": "InputRegister", "offset": 0, "type": "float32"},
}
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[int]:
    """A hand-written TCP server on a free loopback port (the misbehaviour pymodbus' server won't do)."""
    tasks: set[asyncio.Task[None]] = set()

    async def track(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            tasks.discard(task)

    server = await asyncio.start_server(track, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.wait_for(server.wait_closed(), timeout=5)


async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    for _ in range(100):  # bounded: read requests, answer none
        if not await reader.read(260):
            return


async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(260)


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    for _ in range(100):
        request = await reader.read(260)
        if not request:
            return
        # right transaction id and length field, then a function code and byte count that make no sense
        writer.write(request[:2] + b"\x00\x00\x00\x05" + request[6:7] + b"\x03\xff\x12\x34")
        writer.write(b"\xde\xad\xbe\xef" * 3)
        await writer.drain()


async def odd_byte_count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    for _ in range(100):
        request = await reader.read(260)
        if not request:
            return
        # a well-framed register answer whose byte count (3) is not a whole number of registers
        writer.write(request[:2] + b"\x00\x00\x00\x06" + request[6:7] + b"\x03\x03\x00\x01\x02")
        await writer.drain()


def device(port: int, timeout: float = 0.3) -> ModbusTcp:
    protocol = bind(
        ModbusTcp, {"host": "127.0.0.1", "port": port, "unit": 1, "timeout": timeout, "retries": 1}, VISITORS
    )
    assert isinstance(protocol, ModbusTcp)
    return protocol


async def read(protocol: ModbusTcp) -> Any:
    return await protocol.read(protocol.plan(list(protocol.device.properties.values())))


@pytest.mark.parametrize("handler", [stall, hang_up, garbage, odd_byte_count],
                         ids=["stall", "hang-up", "garbage", "odd-byte-count"])
async def test_misbehaving_server_raises_protocol_error(handler: Handler) -> None:
    async with raw_server(handler) as port:
        protocol = device(port)
        try:
            for _ in range(3):  # again and again: no crash, no hang, the same clean error
                started = time.monotonic()
                with pytest.raises(ProtocolError) as caught:
                    await read(protocol)
                assert time.monotonic() - started < 0.3 * 2 * 2 + 1.0
                assert "127.0.0.1" in str(caught.value)
            with pytest.raises(ProtocolError):
                await protocol.write(protocol.device.properties["a"], 5)
        finally:
            await protocol.close()
        if handler is stall:
            assert caught.type is DeviceTimeout


async def test_exception_codes_become_protocol_errors(tcp_sim: Any) -> None:
    sim = await tcp_sim([SimUnit(1, points(VISITORS, {"a": 1, "b": 2.5}))])
    protocol = device(sim.port)
    try:
        sim.exception_code = ExcCodes.DEVICE_BUSY
        with pytest.raises(ProtocolError, match=r"exception 6 \(device busy\)"):
            await read(protocol)
        sim.exception_code = None
        assert (await read(protocol)).values == {"a": 1, "b": 2.5}
    finally:
        await protocol.close()


async def test_a_unit_missing_behind_a_tcp_address_answers_like_a_gateway(tcp_sim: Any) -> None:
    sim = await tcp_sim([SimUnit(1, points(VISITORS, {"a": 1, "b": 2.5}))])
    absent = bind(ModbusTcp, {"host": "127.0.0.1", "port": sim.port, "unit": 7, "timeout": 0.5}, VISITORS)
    present = device(sim.port)
    try:
        with pytest.raises(ProtocolError, match=r"exception 11 \(gateway target failed to respond\)"):
            await read(absent)
        assert (await read(present)).values == {"a": 1, "b": 2.5}  # the connection they share is still good
    finally:
        await absent.close()
        await present.close()


async def test_partly_failing_read_reports_errors_per_property(tcp_sim: Any) -> None:
    visitors = dict(VISITORS, missing={"register": "HoldingRegister", "offset": 5000, "type": "uint16"})
    sim = await tcp_sim([SimUnit(1, points(VISITORS, {"a": 7, "b": 2.5}))])
    protocol = bind(ModbusTcp, {"host": "127.0.0.1", "port": sim.port, "timeout": 0.5}, visitors)
    try:
        result = await protocol.read(protocol.plan(list(protocol.device.properties.values())))
    finally:
        await protocol.close()
    assert result.values == {"a": 7, "b": 2.5}
    assert list(result.errors) == ["missing"]
    assert "illegal data address" in result.errors["missing"]


async def test_unreachable_device_backs_off_and_fails_fast() -> None:
    async with raw_server(hang_up) as port:
        pass  # the port is free again: nothing listens there
    protocol = device(port)
    try:
        with pytest.raises(ProtocolError, match="cannot connect"):
            await read(protocol)
        started = time.monotonic()
        with pytest.raises(ProtocolError, match="next attempt in"):
            await read(protocol)
        assert time.monotonic() - started < 0.05
    finally:
        await protocol.close()


async def test_a_dead_device_does_not_delay_others(tcp_sim: Any) -> None:
    sim = await tcp_sim([SimUnit(1, points(VISITORS, {"a": 3, "b": 4.5}))])
    healthy = device(sim.port)
    async with raw_server(stall) as port:
        dead = device(port, timeout=1.0)

        async def healthy_cycles() -> float:
            worst = 0.0
            for _ in range(5):
                started = time.monotonic()
                assert (await read(healthy)).values == {"a": 3, "b": 4.5}
                worst = max(worst, time.monotonic() - started)
            return worst

        try:
            dead_outcome, worst = await asyncio.gather(read(dead), healthy_cycles(), return_exceptions=True)
        finally:
            await dead.close()
            await healthy.close()
    assert isinstance(dead_outcome, DeviceTimeout)
    assert isinstance(worst, float) and worst < 0.25


async def test_reconnects_after_the_server_restarts(tcp_sim: Any) -> None:
    sim = await tcp_sim([SimUnit(1, points(VISITORS, {"a": 3, "b": 4.5}))])
    port = sim.port
    protocol = device(port)
    try:
        assert (await read(protocol)).values["a"] == 3
        await sim.stop()
        with pytest.raises(ProtocolError):
            await read(protocol)
        await sim.start_tcp("127.0.0.1", port)
        deadline = time.monotonic() + 5
        while True:  # bounded: the backoff after one failure is under a second
            try:
                assert (await read(protocol)).values["a"] == 3
                break
            except ProtocolError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
    finally:
        await protocol.close()
