"""The shared link: a cancel that arrives together with an answer still cancels the request."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from fieldgate_modbus.protocol import ModbusTcp
from fieldgate_modbus.sim import SimUnit
from modbus_helpers import bind, points

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
        assert not link.lock.locked()  # the next request is not stuck behind the cancelled one
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
        assert first._link is second._link and first._link is not None and first._link.lock.locked()
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
