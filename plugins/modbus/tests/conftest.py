"""Fixtures for the Modbus plugin tests: simulators on free loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from fieldgate_modbus.sim import ModbusSimulator, SimUnit


@pytest.fixture
async def tcp_sim() -> AsyncIterator[Callable[..., Any]]:
    """Start simulators on free loopback ports; all are stopped at the end."""
    started: list[ModbusSimulator] = []

    async def start(units: list[SimUnit]) -> ModbusSimulator:
        sim = ModbusSimulator(units)
        await sim.start_tcp("127.0.0.1", 0)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        await sim.stop()


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
