"""Fixtures for the MQTT device tests: a real mosquitto on a free loopback port, gateways on a temp data dir
(gateway.testing), and mosquitto's own clients (`mosquitto_pub`, `mosquitto_sub`) as the devices."""

from __future__ import annotations

import pytest

from gateway.testing import Mosquitto, free_port, mosquitto, start_gateway, write_config

__all__ = ["Mosquitto", "free_port", "mosquitto", "start_gateway", "write_config"]


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
