"""Fixtures for workloads: a gateway serving real HTTP on a free loopback port, with an admin token."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.runtime import Gateway
from gateway.testing import free_port
from gateway.web.auth import create_token

APPS = Path(__file__).resolve().parent / "apps"
PYTHON = sys.executable


def gateway_doc(port: int, labels: str = "{}") -> str:
    return f"""\
kind: Gateway
name: edge-1
labels: {labels}
http: {{listen: "127.0.0.1:{port}"}}
eventbus: {{url: none}}
store: {{flush_interval: 50ms}}
"""


class Node:
    """A running gateway and HTTP clients for its REST API (one per role)."""

    def __init__(self, gateway: Gateway, base: str, tokens: dict[str, str]) -> None:
        self.gateway = gateway
        self.base = base
        self.clients = {role: httpx.AsyncClient(base_url=base, timeout=10,
                                                headers={"Authorization": f"Bearer {token}"})
                        for role, token in tokens.items()}
        self.api = self.clients["admin"]

    async def workload(self, name: str, namespace: str = "default") -> dict[str, Any]:
        response = await self.api.get(f"/api/v1/workloads/{namespace}/{name}")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def events(self, name: str) -> list[str]:
        response = await self.api.get(f"/api/v1/workloads/default/{name}/events")
        return [e["event"] for e in response.json()]

    async def close(self) -> None:
        for client in self.clients.values():
            await client.aclose()


@pytest.fixture
async def start_node(tmp_path: Path, write_config: Callable[..., Path], start_gateway: Callable[..., Any]
                     ) -> AsyncIterator[Callable[..., Any]]:
    nodes: list[Node] = []

    async def start(documents: str = "", labels: str = "{}", settings: str = "") -> Node:
        port = free_port()
        config = write_config(gateway_doc(port, labels) + settings + ("---\n" + documents if documents else ""))
        gateway: Gateway = await start_gateway(config, serve_http=True)
        tokens = {role: await create_token(gateway.store, role) for role in ("viewer", "operator", "admin")}
        node = Node(gateway, f"http://127.0.0.1:{port}", tokens)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        await node.close()
