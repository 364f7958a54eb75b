"""Endpoints and routes with real parts: mosquitto, a local HTTP service, the gateway's REST API."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.errors import ResourceError
from gateway.runtime import Gateway
from gateway.web.app import create_app
from gateway.web.auth import create_token
from tests.conftest import Mosquitto, free_port
from tests.eventbus.test_eventbus import mqtt_client, next_on, wait_connected
from tests.resources.test_loader import PROTOCOLS
from tests.test_runtime import MODEL, virtual_device, wait_for


class Service:
    """A local HTTP service (what a servicebus endpoint points at) that records what it is sent."""

    def __init__(self, status: int = 200, port: int | None = None) -> None:
        self.port = port or free_port()
        self.status = status
        self.received: list[tuple[str, bytes]] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if service.status < 400:
                    service.received.append((self.path, body))
                self.send_response(service.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Service:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def service() -> Iterator[Service]:
    with Service() as running:
        yield running


def with_eventbus(url: str, extra: str) -> str:
    return MODEL.replace("eventbus: {url: none}", f"eventbus: {{url: \"{url}\"}}") + extra


async def test_bus_telemetry_to_an_mqtt_sink_with_a_topic_template(
        mosquitto: Mosquitto, write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> None:
    routes = f"""\
---
kind: Endpoint
name: bus
type: bus
---
kind: Endpoint
name: plant-broker
type: mqtt
properties: {{url: "{mosquitto.url}", qos: "1"}}
---
kind: Route
name: telemetry-out
source: bus
source_resource: {{topic: "devices/+/+/telemetry"}}
target: plant-broker
target_resource: {{topic: "plant/{{node}}/{{device}}/data"}}
"""
    async with mqtt_client(mosquitto, "plant/#") as (_, queue):
        gw: Gateway = await start_gateway(write_config(MODEL + virtual_device("d1", "50ms") + routes))
        first = await next_on(queue, "plant/test-gw/d1/data")
        second = await next_on(queue, "plant/test-gw/d1/data")
    assert first["device"] == "default/d1" and "count" in first["values"]
    assert second["values"]["count"] == first["values"]["count"] + 1
    await wait_for(lambda: gw.routes.describe()[0]["successes"] >= 2)
    route = gw.routes.describe()[0]
    assert route["name"] == "telemetry-out" and route["failures"] == 0 and route["accepted"] >= 2
    assert gw.sinks.runners["route:default/telemetry-out"].describe()["rate_per_s"] > 0


async def test_eventbus_to_servicebus_and_rest(mosquitto: Mosquitto, service: Service,
                                               write_config: Callable[[str], Path],
                                               start_gateway: Callable[..., Any]) -> None:
    routes = f"""\
---
kind: Endpoint
name: local-mqtt
type: eventbus
---
kind: Endpoint
name: app
type: servicebus
properties: {{service_port: "{service.port}"}}
---
kind: Endpoint
name: cloud
type: rest
---
kind: Route
name: commands
source: local-mqtt
source_resource: {{topic: "apps/+/command"}}
target: app
target_resource: {{path: "/commands"}}
---
kind: Route
name: upload
source: local-mqtt
source_resource: {{topic: "upload/#"}}
target: cloud
target_resource: {{resource: "http://127.0.0.1:{service.port}/cloud/ingest"}}
"""
    gw: Gateway = await start_gateway(write_config(with_eventbus(mosquitto.url, virtual_device("d1") + routes)))
    await wait_connected(gw)
    await asyncio.sleep(0.2)
    async with mqtt_client(mosquitto) as (client, _):
        for i in range(5):
            await client.publish("apps/pump/command", json.dumps({"n": i}), qos=1)
        await client.publish("upload/a/b", b"raw bytes", qos=1)
    await wait_for(lambda: len(service.received) == 6)
    commands = [json.loads(body)["n"] for path, body in service.received if path == "/commands"]
    assert commands == [0, 1, 2, 3, 4]  # in order
    assert ("/cloud/ingest", b"raw bytes") in service.received

    def counters() -> dict[str, Any]:
        return {r["name"]: r for r in gw.routes.describe()}

    # a sink counts a batch once its send returned and its outbox let it go: just after the service got it
    await wait_for(lambda: counters()["commands"]["successes"] == 5 and counters()["upload"]["successes"] == 1)


async def test_rest_to_eventbus_through_the_api(mosquitto: Mosquitto, write_config: Callable[[str], Path],
                                                start_gateway: Callable[..., Any]) -> None:
    routes = """\
---
kind: Endpoint
name: cloud
type: rest
---
kind: Endpoint
name: local-mqtt
type: eventbus
---
kind: Route
name: alarms-down
source: cloud
source_resource: {path: "/alarms"}
target: local-mqtt
target_resource: {topic: "alarms/in"}
"""
    gw: Gateway = await start_gateway(write_config(with_eventbus(mosquitto.url, virtual_device("d1") + routes)))
    await wait_connected(gw)
    token = await create_token(gw.store, "operator")
    viewer = await create_token(gw.store, "viewer")
    transport = httpx.ASGITransport(app=create_app(gw.api))
    async with mqtt_client(mosquitto, "alarms/#") as (_, queue), httpx.AsyncClient(
            transport=transport, base_url="http://testserver.local") as http:
        headers = {"Authorization": f"Bearer {token}"}
        response = await http.post("/api/v1/messages/alarms", content=b'{"level": "high"}', headers=headers)
        assert response.status_code == 202, response.text
        assert response.json() == {"routes": ["default/alarms-down"]}
        assert await next_on(queue, "alarms/in") == {"level": "high"}
        missing = await http.post("/api/v1/messages/nowhere", content=b"{}", headers=headers)
        assert missing.status_code == 404 and "no route" in missing.text
        denied = await http.post("/api/v1/messages/alarms", content=b"{}",
                                 headers={"Authorization": f"Bearer {viewer}"})
        assert denied.status_code == 403
        listed = (await http.get("/api/v1/routes", headers=headers)).json()
    assert listed[0]["name"] == "alarms-down" and listed[0]["accepted"] == 1


async def test_a_failing_target_counts_failures_then_delivers_in_order(
        write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> None:
    port = free_port()
    routes = f"""\
---
kind: Endpoint
name: bus
type: bus
---
kind: Endpoint
name: collector
type: http
properties: {{url: "http://127.0.0.1:{port}/ingest"}}
---
kind: Route
name: to-collector
source: bus
source_resource: {{topic: "devices/default/d1/telemetry"}}
target: collector
"""
    gw: Gateway = await start_gateway(write_config(MODEL + virtual_device("d1", "50ms") + routes))
    await wait_for(lambda: gw.routes.describe()[0]["failures"] >= 2, timeout=10)
    route = gw.routes.describe()[0]
    assert route["state"] == "failing" and "ingest" in route["last_error"] and route["outbox_depth"] > 0
    with Service(port=port) as service:  # the target comes up
        await wait_for(lambda: gw.routes.describe()[0]["outbox_depth"] == 0 and service.received, timeout=15)
    batches = [json.loads(body) for _, body in service.received]
    counts = [item["payload"]["values"]["count"] for batch in batches for item in batch]
    assert counts == list(range(counts[0], counts[0] + len(counts)))
    assert counts[0] == 0  # what waited while the target was down came first


async def test_a_target_refusing_for_good_drops_and_counts(service: Service, write_config: Callable[[str], Path],
                                                           start_gateway: Callable[..., Any]) -> None:
    service.status = 400
    routes = f"""\
---
kind: Endpoint
name: bus
type: bus
---
kind: Endpoint
name: collector
type: http
properties: {{url: "http://127.0.0.1:{service.port}/ingest"}}
---
kind: Route
name: to-collector
source: bus
source_resource: {{topic: "devices/#"}}
target: collector
"""
    gw: Gateway = await start_gateway(write_config(MODEL + virtual_device("d1", "50ms") + routes))
    await wait_for(lambda: gw.routes.describe()[0]["dropped"] >= 3, timeout=10)
    assert gw.routes.describe()[0]["outbox_depth"] <= 20  # nothing piles up behind refused messages


@pytest.mark.parametrize(("extra", "expected"), [
    ("kind: Route\nname: r\nsource: nope\ntarget: cloud\ntarget_resource: {resource: x}", "$.source: no Endpoint"),
    ("kind: Route\nname: r\nsource: cloud\ntarget: cloud\n", "$.source_resource.path: a rest source needs `path`"),
    ("kind: Route\nname: r\nsource: local\nsource_resource: {topic: 'a/#/b'}\ntarget: cloud\n"
     "target_resource: {resource: x}", "'#' must be alone in the last level"),
    ("kind: Route\nname: r\nsource: app\ntarget: cloud\ntarget_resource: {resource: x}",
     "a servicebus endpoint cannot be a route source"),
    ("kind: Endpoint\nname: svc\ntype: servicebus\n", "$.properties.service_port: a servicebus endpoint needs"),
])
def test_route_checks(write_config: Callable[[str, str], Path], extra: str, expected: str) -> None:
    from gateway.resources.loader import load_path

    base = ("kind: Endpoint\nname: cloud\ntype: rest\n---\nkind: Endpoint\nname: local\ntype: eventbus\n---\n"
            "kind: Endpoint\nname: app\ntype: servicebus\nproperties: {service_port: '80'}\n---\n")
    with pytest.raises(ResourceError) as info:
        load_path(write_config(base + extra, "r.yaml"), PROTOCOLS)
    assert any(expected in line for line in info.value.problems), info.value.problems


async def test_rest_to_servicebus(service: Service, write_config: Callable[[str], Path],
                                  start_gateway: Callable[..., Any]) -> None:
    routes = f"""\
---
kind: Endpoint
name: cloud
type: rest
---
kind: Endpoint
name: app
type: servicebus
properties: {{service_port: "{service.port}"}}
---
kind: Route
name: to-app
source: cloud
source_resource: {{path: "/source"}}
target: app
target_resource: {{path: "/target"}}
"""
    gw: Gateway = await start_gateway(write_config(MODEL + virtual_device("d1") + routes))
    token = await create_token(gw.store, "operator")
    # in this loop, not the test client's own thread: the store belongs to the gateway's loop
    transport = httpx.ASGITransport(app=create_app(gw.api))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as http:
        response = await http.post("/api/v1/messages/source", content=b'{"open": true}',
                                   headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 202, response.text
    await wait_for(lambda: service.received == [("/target", b'{"open": true}')])
