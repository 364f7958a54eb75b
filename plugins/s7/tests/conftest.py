"""Fixtures for the S7 plugin tests: snap7 servers and counting proxies on free loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from s7_helpers import CountingProxy, PlcServer


@pytest.fixture
def plc() -> Iterator[Callable[..., PlcServer]]:
    """Start snap7 servers with the given areas (`{"DB1": 1024, "M": 256}`); all are stopped at the end."""
    started: list[PlcServer] = []

    def start(areas: dict[str, int], port: int | None = None) -> PlcServer:
        server = PlcServer(areas, port).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
async def proxy() -> AsyncIterator[Callable[..., Any]]:
    """Counting proxies in front of servers; all are closed at the end."""
    started: list[CountingProxy] = []

    async def start(target_port: int) -> CountingProxy:
        counting = await CountingProxy(target_port).start()
        started.append(counting)
        return counting

    yield start
    for counting in started:
        await counting.stop()


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
