"""Shared fixtures: configuration files, free loopback ports, a gateway runtime on a temp data dir."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pluggy
import pytest

from gateway.plugins import get_plugin_manager
from gateway.runtime import Gateway

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIELDGATE = [sys.executable, "-m", "gateway"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str, str], Path]:
    def write(text: str, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


@pytest.fixture
def plugin_manager() -> pluggy.PluginManager:
    """The plugin manager with the test protocols (tests/protocols.py) registered beside the real ones."""
    from tests import protocols

    pm = get_plugin_manager()
    pm.register(protocols, name="tests.protocols")
    return pm


@pytest.fixture
async def start_gateway(tmp_path: Path, plugin_manager: pluggy.PluginManager
                        ) -> AsyncIterator[Callable[..., object]]:
    started: list[Gateway] = []

    async def start(config: Path, data_dir: Path | None = None, **kwargs: object) -> Gateway:
        gateway = Gateway.from_path(config, data_dir or tmp_path / "data", pm=plugin_manager, **kwargs)  # type: ignore[arg-type]
        await gateway.start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in reversed(started):
        await gateway.stop()


class Mosquitto:
    """A real mosquitto broker on a free loopback port, started and stopped by PID."""

    def __init__(self, directory: Path, *, persistence: bool = False) -> None:
        import shutil

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
