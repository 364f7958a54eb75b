"""Live pages over SSE from the gateway's own HTTP server on loopback: a device's twin, the devices list's states
and values (units as people write them), the dashboard's counters; at most four streams a session, all ended at
logout, never compressed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx

from gateway.runtime import Gateway
from gateway.web.auth import add_user
from tests.conftest import free_port
from tests.test_runtime import MODEL, virtual_device, wait_for
from tests.web.conftest import PASSWORD, csrf_of


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


THERMO = """\
kind: Gateway
name: live-gw
http: {{listen: "127.0.0.1:{port}"}}
eventbus: {{url: none}}
store: {{flush_interval: 50ms}}
---
kind: DeviceModel
name: thermo
properties:
  - {{name: temperature, type: float, unit: degC}}
  - {{name: humidity, type: float, unit: Pct}}
  - {{name: count, type: int}}
---
kind: Device
name: t1
model: thermo
protocol: {{name: virtual}}
properties:
  - {{name: temperature, collect_interval: 100ms, visitor: {{generator: sine, amplitude: 5, period: 7s, offset: 20}}}}
  - {{name: humidity, collect_interval: 100ms, visitor: {{generator: memory, initial: 40.5}}}}
  - {{name: count, collect_interval: 100ms, visitor: {{generator: counter}}}}
"""


async def stream_events(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """(event name, data: JSON or the text) of each event of a stream; comments are left out."""
    name, data = "message", ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
        elif line == "" and data:
            try:
                yield name, json.loads(data)
            except ValueError:
                yield name, data
            name, data = "message", ""


@contextlib.asynccontextmanager
async def logged_in(port: int, user: str = "viewer") -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        await client.get("/login")
        login = await client.post("/login", data={"username": user, "password": PASSWORD,
                                                  "_csrf": client.cookies["fieldgate_login_csrf"]})
        assert login.status_code == 303
        yield client


async def live_gateway(write_config: Callable[..., Path], start_gateway: Callable[..., Any]) -> tuple[Gateway, int]:
    port = free_port()
    gateway: Gateway = await start_gateway(write_config(THERMO.format(port=port)), serve_http=True)
    await add_user(gateway.store, "viewer", "viewer", PASSWORD)
    await wait_for(lambda: gateway.api.twin("default/t1").properties["temperature"].reported is not None)
    return gateway, port


async def test_the_devices_list_streams_states_and_values_with_their_units(
        write_config: Callable[..., Path], start_gateway: Callable[..., Any]) -> None:
    _, port = await live_gateway(write_config, start_gateway)
    async with logged_in(port) as client:
        page = await client.get("/devices")
        assert page.status_code == 200
        assert re.search(r'data-live-field="value:temperature"[^>]*>-?[0-9.]+ \u00b0C<', page.text)
        assert re.search(r'data-live-field="value:humidity"[^>]*>40.5 %<', page.text) and "degC" not in page.text
        source = re.search(r'data-live-source="([^"]+)"', page.text)
        assert source and source.group(1) == "/events/devices?ids=default/t1"
        async with client.stream("GET", source.group(1), headers={"Accept-Encoding": "gzip"}) as response:
            assert response.status_code == 200 and "content-encoding" not in response.headers
            events = stream_events(response)
            name, first = await anext(events)
            assert name == "update" and first["counts"] == {"total": 1, "online": 1, "unhealthy": 0, "offline": 0,
                                                            "unknown": 0}
            row = first["devices"]["default/t1"]
            assert row["state"] == "online" and row["value:humidity"] == "40.5 %"
            assert re.fullmatch(r"-?[0-9.]+ \u00b0C", row["value:temperature"]) and row["reported_at"] > 0
            name, second = await anext(events)  # only what changed: the counter and the sine, not the humidity
            assert name == "update" and set(second) == {"devices"}
            changed = second["devices"]["default/t1"]
            assert changed["value:count"] != row["value:count"] and changed["value:humidity"] == "40.5 %"


async def test_the_dashboard_streams_its_counters(write_config: Callable[..., Path],
                                                  start_gateway: Callable[..., Any]) -> None:
    _, port = await live_gateway(write_config, start_gateway)
    async with logged_in(port) as client, client.stream("GET", "/events/status") as response:
        events = stream_events(response)
        _, first = await anext(events)
        assert first["devices"]["online"] == 1 and first["gateway"]["health"] == "ok"
        assert set(first) == {"gateway", "devices", "poll", "store", "errors"}
        _, second = await anext(events)
        assert second["poll"]["cycles"] > first["poll"]["cycles"]


async def test_a_session_holds_four_streams_and_its_logout_ends_them(
        write_config: Callable[..., Path], start_gateway: Callable[..., Any]) -> None:
    gateway, port = await live_gateway(write_config, start_gateway)
    subscribers = len(gateway.bus._handlers)
    async with logged_in(port) as client:
        paths = ["/events/devices", "/events/status", "/devices/default/t1/events", "/events/devices",
                 "/devices/default/t1/events"]
        responses = [await client.send(client.build_request("GET", path), stream=True) for path in paths[:4]]
        streams = [stream_events(response) for response in responses]
        for stream in streams:
            await anext(stream)
        fifth = await client.send(client.build_request("GET", paths[4]), stream=True)
        streams.append(stream_events(fifth))
        await anext(streams[4])

        async def until_closed(stream: AsyncIterator[tuple[str, Any]]) -> Any:
            async with asyncio.timeout(10):
                async for name, data in stream:
                    if name == "closed":
                        return data
            return None

        assert "more than 4 live pages" in await until_closed(streams[0])  # the oldest page stopped
        await client.post("/logout", data={"_csrf": csrf_of((await client.get("/")).text)})
        reasons = await asyncio.gather(*(until_closed(stream) for stream in streams[1:]))
        assert all("session ended" in reason for reason in reasons), reasons
        for response in [*responses, fifth]:
            await response.aclose()
    await wait_for(lambda: len(gateway.bus._handlers) == subscribers)  # the twin streams unsubscribed
