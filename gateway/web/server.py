"""Serving the local web app: uvicorn on the Gateway document's `http.listen`, the app's lifespan starting and
stopping the gateway (or, for `fieldgate run`, serving a gateway already started: its devices poll while the web
layer is still loading), so the runtime knows nothing of HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import uvicorn
from litestar import Litestar

from gateway.errors import ConfigError
from gateway.runtime import Gateway
from gateway.web.app import create_app
from gateway.web.listen import bind

log = logging.getLogger(__name__)
START_TIMEOUT = 300.0  # seconds the gateway may take to start (a store migration of a big history included)
GRACEFUL = 3  # seconds open connections (live pages) get when the server stops


class _QuietServer(uvicorn.Server):
    """uvicorn's server without its own signal handling: the CLI owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


class WebServer:
    """`async with WebServer(gateway):` binds the listen address, starts the gateway through the app's lifespan
    and serves until the block ends; then the server stops and the lifespan stops the gateway. Given a bound
    `sock` and `owns_gateway=False`, it serves a gateway its caller started and stops."""

    def __init__(self, gateway: Gateway, *, sock: socket.socket | None = None, owns_gateway: bool = True) -> None:
        self.gateway = gateway
        self.listen = gateway.config.gateway.http.listen
        self.sock = sock
        self.owns_gateway = owns_gateway
        self.server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Litestar) -> AsyncIterator[None]:
        if self.owns_gateway:
            try:
                await self.gateway.start()
            except BaseException as exc:
                self._failure = exc  # uvicorn only logs a failed startup: keep the reason for start()
                raise
        if not await self.gateway.store.users.has_any():
            # No default password ships: the first user is made on the box itself.
            log.warning("no users yet: the web UI has nobody to let in; add an admin with "
                        "`fieldgate user add NAME --role admin --password-stdin --data-dir %s`",
                        self.gateway.data_dir)
        try:
            yield
        finally:
            if self.owns_gateway:
                await self.gateway.stop()

    async def start(self) -> None:
        sock = self.sock if self.sock is not None else bind(self.listen)
        app = create_app(self.gateway.api, lifespan=[self._lifespan])
        server = self.server = _QuietServer(uvicorn.Config(app, log_level="warning", access_log=False,
                                                           lifespan="on", timeout_graceful_shutdown=GRACEFUL))
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name="http")
        async with asyncio.timeout(START_TIMEOUT):
            while not server.started and not self._task.done():  # noqa: ASYNC110  (uvicorn has no started event)
                await asyncio.sleep(0.01)
        if not server.started:
            sock.close()
            with contextlib.suppress(BaseException):
                await self._task
            if self._failure is not None:
                raise self._failure
            raise ConfigError(f"http.listen {self.listen}: the web server did not start")

    async def stop(self) -> None:
        server, task = self.server, self._task
        self.server = self._task = None
        if server is None or task is None:
            return
        server.should_exit = True
        await task

    async def __aenter__(self) -> WebServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()
