"""Test helpers for fieldgate and its plugins: free loopback ports, a real mosquitto started and stopped by PID,
and pytest fixtures for a gateway on a temporary data dir. Needs pytest (a test dependency, not a runtime one).

A plugin's conftest.py imports the fixtures it uses: `from gateway.testing import mosquitto, start_gateway`.
"""

from __future__ import annotations

import asyncio
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
from gateway.web.server import WebServer


def stored_history(db_file: Path, prop: str) -> list[tuple[str, int, Any]]:
    """(device, ts in ms, value) of every stored reading of a property, read straight from a store's file."""
    import sqlite3

    import msgspec

    with sqlite3.connect(db_file) as db:
        series = {int(sid): str(device) for sid, device in
                  db.execute("SELECT id, device FROM series WHERE property = ?", (prop,))}
        rows = db.execute("SELECT ts, vals FROM reports ORDER BY rowid").fetchall()
    found = []
    for ts, vals in rows:
        for sid, value in msgspec.msgpack.decode(vals).items():
            if sid in series:
                found.append((series[sid], int(ts), value))
    return found


def stored_reported(data_dir: Path, prop: str) -> dict[str, Any]:
    """The reported value of a property per device, as a store opened on `data_dir` restores them."""
    import asyncio

    from gateway.store import Store

    async def read() -> dict[str, dict[str, dict[str, Any]]]:
        store = Store(data_dir)
        await store.open()
        try:
            return await store.load_twins()
        finally:
            await store.close()

    return {device: props[prop]["reported"] for device, props in asyncio.run(read()).items() if prop in props}


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
