"""The shared link: a cancel that arrives with an answer still cancels; a link that is down keeps its backoff."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import pytest
from fieldgate_modbus import link as links
from fieldgate_modbus.protocol import ModbusTcp
from fieldgate_modbus.sim import SimUnit
from modbus_helpers import bind, points

from gateway.errors import ProtocolError

VISITORS = {"a": {"register": "HoldingRegister", "offset": 0, "type": "uint16"}}


def device(port: int, name: str = "dev") -> ModbusTcp:
    protocol = bind(ModbusTcp, {"host": "127.0.0.1", "port": port, "unit": 1, "timeout": 1.0}, VISITORS, name=name)
    assert isinstance(protocol, ModbusTcp)
    return protocol


async def read(protocol: ModbusTcp) -> Any:
    return await protocol.read(protocol.plan(list(protocol.device.properties.values())))


async def test_a_cancel_that_arrives_with_the_answer_is_not_lost(tcp_sim: Any) -> None:
    """Under load a device task is often cancelled (the gateway stops) in the loop iteration that brings its answer.
    pymodbus waits with asyncio.wait_for, which on Python 3.11 then returns the answer and drops the cancel
    (CPython gh-86296): the task went on polling and the stop waited for it forever."""
    sim = await tcp_sim([SimUnit(1, points(VISITORS, {"a": 7}))])
    protocol = device(sim.port)
    try:
        await protocol.open()
        assert (await read(protocol)).values == {"a": 7}
        link = protocol._link
        assert link is not None and link._client is not None
        transactions = link._client.ctx
        before = transactions.response_future
        task = asyncio.create_task(read(protocol))
        for _ in range(1000):  # bounded: until the request is on the wire and waits for its answer
            if transactions.response_future is not before:
                break
            await asyncio.sleep(0)
        assert transactions.response_future is not before, "the request was not sent"
        # run just after the answer completes the request: the same iteration as the answer, as under load
        transactions.response_future.add_done_callback(lambda _: task.cancel())
        async with asyncio.timeout(5):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert not link.slots.locked()  # the next request is not stuck behind the cancelled one
        assert (await read(protocol)).values == {"a": 7}
    finally:
        await protocol.close()


async def test_a_cancelled_wait_for_the_bus_leaves_the_lock_free(tcp_sim: Any) -> None:
    sim = await tcp_sim([SimUnit(1, points(VISITORS, {"a": 3}))])
    sim.delay = 0.3
    first, second = device(sim.port, "first"), device(sim.port, "second")
    try:
        await first.open()
        await second.open()
        holder = asyncio.create_task(read(first))
        await asyncio.sleep(0.05)
        waiter = asyncio.create_task(read(second))
        await asyncio.sleep(0.05)
        assert first._link is second._link and first._link is not None and first._link.slots.locked()
        started = time.monotonic()
        waiter.cancel()
        async with asyncio.timeout(5):
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert time.monotonic() - started < 0.2
            assert (await holder).values == {"a": 3}
        sim.delay = 0.0
        assert (await read(second)).values == {"a": 3}
    finally:
        await first.close()
        await second.close()


async def test_a_link_that_is_down_keeps_its_backoff_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    """Devices let go of their link between attempts; a link forgotten then started its backoff, and its warning,
    over again on each attempt of each device ("next attempt in 0.3 s" forever, a line every time)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there
    devices = [device(port, f"d{n}") for n in range(3)]
    caplog.set_level(logging.DEBUG, logger="fieldgate_modbus.link")
    delays = []
    deadline = time.monotonic() + 10
    while len(delays) < 3:  # bounded: three connect attempts take under 4 s of backoff
        assert time.monotonic() < deadline
        for protocol in devices:  # each device tries, fails and lets go, as a poller does
            with pytest.raises(ProtocolError, match=r"cannot connect|not connected"):
                await protocol.open()
            await protocol.close()
        link = links._links[f"tcp://127.0.0.1:{port}"][1]
        if link._failures > len(delays):
            delays.append(link._next_attempt - time.monotonic())
        await asyncio.sleep(0.05)
    assert link.users == 0 and link.down
    assert delays[1] > 0.4 and delays[2] > 0.9  # it grows: 0.25-0.5 s, then 0.5-1 s, then 1-2 s
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"tcp://127.0.0.1:{port}: cannot connect"), warnings
    links.release(links.acquire(link.key, devices[0].config))  # still down: still kept
    assert links._links[link.key][1] is link
