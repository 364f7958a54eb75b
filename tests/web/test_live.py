"""Live twin values over SSE from the gateway's own HTTP server on loopback."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from gateway.runtime import Gateway
from gateway.web.auth import add_user
from tests.conftest import free_port
from tests.test_runtime import MODEL, virtual_device, wait_for
from tests.web.conftest import PASSWORD


async def _events(response: httpx.Response, count: int) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    name = ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
            if len(events) == count:
                break
    return events


async def test_twin_values_stream_over_sse(write_config: Callable[..., Path], start_gateway: Callable[..., Any]
                                           ) -> None:
    port = free_port()
    config = MODEL.replace("name: test-gw", f"name: test-gw\nhttp: {{listen: \"127.0.0.1:{port}\"}}")
    gateway: Gateway = await start_gateway(write_config(config + virtual_device("d1", interval="100ms")),
                                           serve_http=True)
    await add_user(gateway.store, "viewer", "viewer", PASSWORD)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        anonymous = await client.get("/devices/default/d1/events")
        assert anonymous.status_code == 303
        await client.get("/login")
        login = await client.post("/login", data={"username": "viewer", "password": PASSWORD,
                                                  "_csrf": client.cookies["fieldgate_login_csrf"]})
        assert login.status_code == 303
        subscribers = len(gateway.bus._handlers)
        async with client.stream("GET", "/devices/default/d1/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = await _events(response, 4)
        assert [name for name, _ in events] == ["twin"] * 4
        counts = [data["twin"]["count"]["reported"] for _, data in events]
        assert counts == sorted(counts) and counts[-1] > counts[0]
        assert events[0][1]["state"] == "online"
        assert set(events[0][1]["twin"]["setpoint"]) >= {"desired", "reported", "reported_at", "quality"}
        await wait_for(lambda: len(gateway.bus._handlers) == subscribers)  # the stream unsubscribed
