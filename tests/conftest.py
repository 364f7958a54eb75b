"""Shared fixtures: configuration files, free loopback ports, a gateway runtime on a temp data dir."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pluggy
import pytest

from gateway.plugins import get_plugin_manager
from gateway.testing import GatewayStarter, Mosquitto, free_port, mosquitto, write_config

__all__ = ["FIELDGATE", "REPO", "SHARED", "Mosquitto", "free_port", "mosquitto", "write_config"]

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIELDGATE = [sys.executable, "-m", "gateway"]


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
    """Starts gateways with the test protocols on the test's data dir (`serve_http=True`: served by their web
    app, as `fieldgate run` does); stops them afterwards."""
    starter = GatewayStarter(tmp_path / "data", lambda: plugin_manager)
    yield starter
    await starter.stop_all()


