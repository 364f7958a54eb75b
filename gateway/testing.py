"""Test helpers for fieldgate and its plugins: free loopback ports, a real mosquitto started and stopped by PID,
and pytest fixtures for a gateway on a temporary data dir. Needs pytest (a test dependency, not a runtime one).

A plugin's conftest.py imports the fixtures it uses: `from gateway.testing import mosquitto, start_gateway`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import socket
import subprocess
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.plugins import get_plugin_manager
from gateway.runtime import Gateway
from gateway.store.inspect import stored_history as stored_history  # re-exported for tests
from gateway.store.inspect import stored_reported as stored_reported
from gateway.web.server import WebServer


def store_sql(db_file: Path, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement of a test on a store's file beside the gateway that has it open (to look at or age what it
    keeps); its rows. Tests keep their SQL in helper functions that call this, never in the store's API."""
    import contextlib
    import sqlite3

    with contextlib.closing(sqlite3.connect(db_file, timeout=10)) as db, db:
        return [tuple(row) for row in db.execute(statement, params).fetchall()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until(condition: Callable[[], Any], timeout: float = 15.0, every: float = 0.05) -> Any:
    """Poll a condition (plain or async) until it gives something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(every)


class Mosquitto:
    """A real mosquitto broker on a free loopback port, started and stopped by PID."""

    def __init__(self, directory: Path, *, persistence: bool = False) -> None:
        self.directory = directory
        self.persistence = persistence
        self.port = free_port()
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        conf = self.directory / "mosquitto.conf"
        persistence = (f"persistence true\npersistence_location {self.directory}/\n" if self.persistence
                       else "persistence false\n")
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{persistence}"
                        "max_queued_messages 1000000\nmax_inflight_messages 1000\n")
        self.process = subprocess.Popen([self.binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Writes YAML text (dedented) to a file in the test's directory; returns its path."""

    def write(text: str, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


class GatewayStarter:
    """Starts gateways on a data dir and stops them all at the end. With `serve_http=True` a gateway is started as
    `fieldgate run` starts it: by its web app, served on its `http.listen`."""

    def __init__(self, data_dir: Path, pm: Callable[[], Any] = get_plugin_manager) -> None:
        self.data_dir = data_dir
        self.pm = pm
        self.started: list[Gateway | WebServer] = []

    async def __call__(self, config: Path, data_dir: Path | None = None, *, serve_http: bool = False) -> Gateway:
        gateway = Gateway.from_path(config, data_dir or self.data_dir, pm=self.pm())
        if serve_http:
            server = WebServer(gateway)
            await server.start()
            self.started.append(server)
        else:
            await gateway.start()
            self.started.append(gateway)
        return gateway

    async def stop_all(self) -> None:
        for running in reversed(self.started):
            await running.stop()


@pytest.fixture
async def start_gateway(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Starts gateways (every installed plugin loaded) on the test's data dir; stops them afterwards."""
    starter = GatewayStarter(tmp_path / "data")
    yield starter
    await starter.stop_all()


async def committed_rows(gateway: Gateway) -> tuple[set[tuple[str, str, float]], set[tuple[str, int]]]:
    """What a gateway has committed, flushed first: (device, property, ts) of its history, (sink, id) of its outboxes;
    a later call holding less than an earlier one lost data."""
    await gateway.store.flush()
    history = {(device, prop, ts) for device, twin in gateway.api.twins().items() for prop in twin.properties
               for ts, _ in await gateway.store.history.values(device, prop, 0, time.time() + 60, 1_000_000)}
    outboxes = {(sink, row[0]) for sink in await gateway.store.outboxes.stats()
                for row in await gateway.store.outboxes.batch(sink, 0, 1_000_000)}
    return history, outboxes


def polling_cycles(gateway: Gateway) -> int:
    """Poll cycles of every device so far: growing while the gateway polls."""
    return sum(stats.cycles for device in gateway.api.devices() if (stats := gateway.api.poll_stats(device)))


def generated_examples(strategy: Any, count: int) -> list[Any]:
    """`count` values a hypothesis strategy draws, the same ones on every run (derandomized, no example database),
    for fuzzing a gateway that runs on the test's event loop, where a `@given` test cannot await it."""
    from hypothesis import HealthCheck, Phase, given, settings

    found: list[Any] = []

    @settings(max_examples=count, derandomize=True, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def draw(value: Any) -> None:
        found.append(value)

    draw()
    return found


CAP_SYS_ADMIN = 21


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


@contextlib.contextmanager
def without_capability(capability: int = CAP_SYS_ADMIN) -> Iterator[None]:
    """The calling thread without `capability` in its effective set (threads it starts meanwhile inherit that); still
    permitted, so it comes back at the end. A program it runs as root has it again (root's execve)."""
    libc = ctypes.CDLL(None, use_errno=True)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, the calling thread
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    before = data[0].effective
    data[0].effective = before & ~(1 << capability)
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    try:
        yield
    finally:
        data[0].effective = before
        libc.capset(ctypes.byref(header), data)
