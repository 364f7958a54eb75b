"""Fixtures for the OPC UA plugin tests: node-opcua servers on free loopback ports, and the gateway fixtures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opcua_helpers import OpcuaServer

from gateway.testing import start_gateway, write_config

__all__ = ["start_gateway", "write_config"]


@pytest.fixture
def opcua_server(tmp_path: Path) -> Iterator[Callable[..., OpcuaServer]]:
    """Start node-opcua servers (options as tests/opcua_server.js takes them); all are stopped at the end."""
    started: list[OpcuaServer] = []

    def start(**options: Any) -> OpcuaServer:
        server = OpcuaServer(tmp_path / f"server-{len(started)}", **options)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def line_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpcuaServer]:
    """One plain server (no security, anonymous) shared by a module's tests: starting one takes a second or two."""
    server = OpcuaServer(tmp_path_factory.mktemp("opcua"), tick=20)
    server.start()
    yield server
    server.stop()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "benchmark: measures performance; deselected unless -m benchmark")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Benchmarks run only when asked for (-m benchmark), also when the repo's own config collects them."""
    if "benchmark" in (config.getoption("markexpr", "") or ""):
        return
    kept = [item for item in items if item.get_closest_marker("benchmark") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
