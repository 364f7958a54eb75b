"""Supervised background tasks: restarted with backoff after a failure, logged once per state change."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


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

    async def cancel(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.status.pop(name, None)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
