"""Both web apps in this process: the node's on a running gateway, the registry's on a temp data dir."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient

from gateway.registry.app import create_app as create_registry_app
from gateway.runtime import Gateway
from gateway.web.app import create_app
from tests.test_runtime import MODEL


@pytest.fixture
async def node_client(write_config: Callable[[str], Path], start_gateway: Callable[..., Any]
                      ) -> AsyncIterator[httpx.AsyncClient]:
    """The node's app on the test's own event loop (as it runs on the gateway's loop in production)."""
    gateway: Gateway = await start_gateway(write_config(MODEL))
    transport = httpx.ASGITransport(app=create_app(gateway.api), client=("127.0.0.9", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local", timeout=10) as client:
        yield client


@pytest.fixture
def registry_client(tmp_path: Path) -> Iterator[TestClient[Any]]:
    """The registry's app with its lifespan (store, CA) on a temp data dir, over https as it is served."""
    with TestClient(create_registry_app(tmp_path / "registry"), base_url="https://registry.local") as client:
        yield client
