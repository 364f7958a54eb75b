"""Supervised tasks: a cancel ends a task in bounded time, also one whose first cancel a library swallowed."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from gateway.pipeline.supervisor import Supervisor


async def swallows_first_cancels(count: int) -> None:
    """Drops `count` cancels, as asyncio.wait_for on Python 3.11 does when the answer comes with the cancel."""
    for _ in range(count):
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            pass
    await asyncio.sleep(5)


async def test_cancel_asks_again_when_a_cancel_was_swallowed() -> None:
    supervisor = Supervisor()
    supervisor.start("stubborn", lambda: swallows_first_cancels(2))
    await asyncio.sleep(0.01)
    task = supervisor._tasks["stubborn"]
    started = time.monotonic()
    async with asyncio.timeout(10):
        await supervisor.cancel("stubborn")
    assert task.cancelled()
    assert time.monotonic() - started < 4  # asked three times, a second apart; not its own end after 5 s
    assert "stubborn" not in supervisor.status


async def test_stop_cancels_every_task_at_once_and_gives_up_after_its_timeout(
        caplog: pytest.LogCaptureFixture) -> None:
    supervisor = Supervisor()
    release = asyncio.Event()

    async def deaf() -> None:
        while not release.is_set():  # bounded by the test: it sets `release` at the end
            try:
                await release.wait()
            except asyncio.CancelledError:
                pass

    for n in range(20):
        supervisor.start(f"quick {n}", lambda: asyncio.sleep(30))
    supervisor.start("deaf", deaf)
    tasks = dict(supervisor._tasks)
    try:
        await asyncio.sleep(0.01)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="gateway.supervisor"):
            await supervisor.stop(timeout=0.5)
        took = time.monotonic() - started
        assert 0.5 <= took < 3
        assert all(task.cancelled() for name, task in tasks.items() if name != "deaf")
        assert not tasks["deaf"].done()
        assert [r.getMessage() for r in caplog.records] == ["task deaf did not stop within 0.5 s of its cancel"]
    finally:
        release.set()
        for task in tasks.values():
            task.cancel()
        await asyncio.wait_for(asyncio.gather(*tasks.values(), return_exceptions=True), timeout=5)
