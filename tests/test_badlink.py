"""The bad-link proxy the channel and file tests run through: each condition does what it says, against an echo
server on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from gateway.badlink import BadLink, LinkConditions


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def roundtrip(port: int, payload: bytes, timeout: float = 20) -> tuple[bytes, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(payload)
    await writer.drain()
    received = await asyncio.wait_for(reader.readexactly(len(payload)), timeout)
    elapsed = time.monotonic() - started
    writer.close()
    return received, elapsed


async def test_latency_bandwidth_and_a_stall(echo_port: int) -> None:
    link = BadLink(echo_port, conditions=LinkConditions(latency=0.1))
    await link.start()
    try:
        data, elapsed = await roundtrip(link.port, b"ping")
        assert data == b"ping" and 0.2 <= elapsed < 1.5  # 0.1 s each way
        link.conditions.latency = 0.0
        link.conditions.bandwidth = 200_000  # 200 kB/s each way: 100 kB takes about half a second
        data, elapsed = await roundtrip(link.port, bytes(100_000))
        assert len(data) == 100_000 and 0.4 <= elapsed < 5
        link.conditions.bandwidth = None
        link.conditions.shared_bandwidth = 200_000  # shared: two connections at once take twice as long as one
        results = await asyncio.gather(*(roundtrip(link.port, bytes(100_000)) for _ in range(2)))
        assert [len(data) for data, _ in results] == [100_000, 100_000]
        assert max(elapsed for _, elapsed in results) >= 0.9
        link.conditions.shared_bandwidth = None
        link.conditions.stalled = True
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        writer.write(b"held")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readexactly(4), 0.5)
        link.conditions.stalled = False
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"held"
        writer.close()
    finally:
        await link.stop()


async def test_a_corrupted_byte_resets_and_refused_upgrades(echo_port: int) -> None:
    link = BadLink(echo_port, seed=4)
    await link.start()
    try:
        link.conditions.corrupt = {"up": 5}
        data, _ = await roundtrip(link.port, b"0123456789")
        assert data == b"01234" + bytes([ord("5") ^ 0xFF]) + b"6789" and link.stats.corrupted == 1
        data, _ = await roundtrip(link.port, b"0123456789")  # the next connection is left alone
        assert data == b"0123456789"

        link.conditions.cut = {"down": 6}  # the bytes before the cut arrive, then the connection is reset
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        writer.write(b"0123456789")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(6), 5) == b"012345"
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 5)
        assert link.stats.cuts == 1 and link.stats.resets == 1 and not link.conditions.cut
        writer.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        writer.write(b"x")
        await reader.readexactly(1)
        assert link.reset_all() == 1
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            writer.write(b"y")
            await writer.drain()
            await asyncio.wait_for(reader.readexactly(1), 5)

        link.conditions.reset_rate = 5.0  # about every 0.2 s
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            for _ in range(50):
                writer.write(b"z")
                await writer.drain()
                await asyncio.wait_for(reader.readexactly(1), 5)
                await asyncio.sleep(0.1)
        assert link.stats.resets == 3
        link.conditions.reset_rate = 0.0

        link.conditions.refuse_upgrades = True
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        writer.write(b"GET /api/v1/channel HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 403 Forbidden") and link.stats.refused_upgrades == 1
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"  # anything else goes through
        data, _ = await roundtrip(link.port, request)
        assert data == request
    finally:
        await link.stop()
