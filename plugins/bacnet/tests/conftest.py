"""Fixtures for the BACnet plugin tests: devices of another implementation on free loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from bacnet_helpers import NodeDevice

from gateway.testing import start_gateway, write_config

__all__ = ["start_gateway", "write_config"]


@pytest.fixture
async def bacnet_device() -> AsyncIterator[Callable[..., Any]]:
    """Start BACnet devices (node, @bacnet-js/client) on free loopback ports; all are stopped at the end."""
    started: list[NodeDevice] = []

    async def start(**settings: Any) -> NodeDevice:
        device = NodeDevice(**settings)
        started.append(device)
        return await device.start()

    yield start
    for device in started:
        await device.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Benchmarks run only when asked for (-m benchmark), also when the repo's own config collects them."""
    if "benchmark" in (config.getoption("markexpr", "") or ""):
        return
    kept = [item for item in items if item.get_closest_marker("benchmark") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
