"""Shared fixtures: configuration files, free loopback ports, a gateway runtime on a temp data dir."""

from __future__ import annotations

import socket
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
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
