"""Supervised background tasks: restarted with backoff after a failure, logged once per state change."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Collection, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)
STOP_TIMEOUT = 5.0  # seconds a task gets to end after it was cancelled
CANCEL_AGAIN_EVERY = 1.0  # a task still running this long after a cancel is cancelled again


@dataclass
class TaskStatus:
    name: str
    state: str = "starting"  # running | restarting | stopped
    restarts: int = 0
    last_error: str = ""
    since: float = field(default_factory=time.time)


class Supervisor:
    """Owns background tasks; `stop()` cancels them all and waits for them."""

    def __init__(self, *, min_backoff: float = 0.5, max_backoff: float = 30.0) -> None:
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.status: dict[str, TaskStatus] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if name in self._tasks:
            raise ValueError(f"task {name!r} is already supervised")
        self.status[name] = TaskStatus(name)
        self._tasks[name] = asyncio.create_task(self._supervise(name, factory), name=name)

    async def _supervise(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        status = self.status[name]
        backoff = self.min_backoff
        while True:
            status.state, status.since = "running", time.time()
            started = time.monotonic()
            try:
                await factory()
                status.state = "stopped"
                return
            except asyncio.CancelledError:
                status.state = "stopped"
                raise
            except Exception as exc:
                status.restarts += 1
                error = f"{type(exc).__name__}: {exc}"
                if error != status.last_error:
                    log.error("task %s failed, restarting: %s", name, error, exc_info=exc)
                status.last_error = error
                status.state, status.since = "restarting", time.time()
            if time.monotonic() - started > 60:
                backoff = self.min_backoff
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, self.max_backoff)

    async def cancel(self, name: str, *, timeout: float = STOP_TIMEOUT) -> None:
        """Cancel one task and wait for it, at most `timeout` seconds."""
        await self.cancel_many([name], timeout=timeout)

    async def cancel_many(self, names: Iterable[str], *, timeout: float = STOP_TIMEOUT) -> None:
        """Cancel these tasks all at once and wait for them, at most `timeout` seconds."""
        names = list(names)
        tasks = [task for name in names if (task := self._tasks.pop(name, None)) is not None]
        for name in names:
            self.status.pop(name, None)
        await cancel_and_wait(tasks, timeout)

    async def stop(self, *, timeout: float = STOP_TIMEOUT) -> None:
        """Cancel every task and wait for them, at most `timeout` seconds."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        await cancel_and_wait(tasks, timeout)


async def cancel_and_wait(tasks: Collection[asyncio.Task[Any]], timeout: float) -> None:
    """Cancel `tasks` and wait at most `timeout` seconds for them to end; what is left is logged and left behind.

    A task still running a while after its cancel is cancelled again: a library may have swallowed the cancel
    (on Python 3.11, asyncio.wait_for returns the answer and drops a cancel that arrives with it, CPython
    gh-86296), and a busy loop makes that likely. Asking again, instead of waiting for good, bounds every stop.
    """
    pending = {task for task in tasks if not task.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(CANCEL_AGAIN_EVERY, left))
    for task in pending:
        log.warning("task %s did not stop within %g s of its cancel", task.get_name(), timeout)
    for task in tasks:  # retrieve what ended badly, so asyncio does not report it as never retrieved
        if task.done() and not task.cancelled():
            task.exception()
