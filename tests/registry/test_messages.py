"""REST → edge messages: posted to the registry, queued while the node is offline (with a TTL), long-polled by
the node over mutual TLS and delivered along its rest → eventbus route to mosquitto."""

from __future__ import annotations

import ssl
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import FIELDGATE, Mosquitto, free_port
from tests.registry.conftest import Registry, join, stop, wait_for_port, wait_until

ROUTE = """\
---
kind: Endpoint
name: cloud
namespace: plant
type: rest
---
kind: Endpoint
name: local-mqtt
namespace: plant
type: eventbus
---
kind: Route
name: alarms-down
namespace: plant
source: cloud
source_resource: {path: "/alarms"}
target: local-mqtt
target_resource: {topic: "alarms/in"}
"""


class Subscriber:
    """mosquitto_sub on a topic filter, collecting `topic payload` lines."""

    def __init__(self, broker: Mosquitto, topic: str) -> None:
        self.process = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", topic,
                                         "-v"], stdout=subprocess.PIPE, text=True)
        self.lines: list[str] = []

    def next_line(self, timeout: float = 15.0) -> str:
        import selectors

        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise AssertionError("no MQTT message in time")
        return self.process.stdout.readline().strip()


@pytest.fixture
def subscriber(mosquitto: Mosquitto) -> Iterator[Subscriber]:
    sub = Subscriber(mosquitto, "alarms/#")
    time.sleep(0.3)  # mosquitto_sub subscribes
    yield sub
    stop(sub.process)  # type: ignore[arg-type]


def start_gateway(tmp_path: Path, data_dir: Path, broker: Mosquitto) -> subprocess.Popen[bytes]:
    port = free_port()
    config = tmp_path / "gw.yaml"
    config.write_text(textwrap.dedent(f"""\
        kind: Gateway
        name: gw-1
        http: {{listen: "127.0.0.1:{port}"}}
        eventbus: {{url: "{broker.url}"}}
        """) + ROUTE)
    gateway = subprocess.Popen([*FIELDGATE, "run", "-c", str(config), "--data-dir", str(data_dir)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, gateway)
    return gateway


def api(registry: Registry, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    verify = ssl.create_default_context(cafile=str(registry.data_dir / "ca.pem"))
    return httpx.Client(base_url=registry.url, verify=verify, headers=headers, timeout=10)


def test_a_message_posted_to_the_registry_reaches_the_nodes_mqtt_topic(
        registry: Registry, mosquitto: Mosquitto, subscriber: Subscriber, tmp_path: Path) -> None:
    data_dir = tmp_path / "gw"
    assert join(registry, registry.token(), data_dir, "--name", "gw-1").returncode == 0
    operator = registry.cli("token", "create", "--role", "operator").stdout.strip()
    viewer = registry.cli("token", "create", "--role", "viewer").stdout.strip()
    with api(registry, operator) as client, api(registry, None) as anonymous, api(registry, viewer) as reader:
        assert anonymous.post("/api/v1/messages/gw-1/plant/alarms", content=b"{}").status_code == 401
        assert reader.post("/api/v1/messages/gw-1/plant/alarms", content=b"{}").status_code == 403
        assert client.post("/api/v1/messages/gw-9/plant/alarms", content=b"{}").status_code == 404
        # the node has not come online yet: refused on request, else queued with a TTL
        rejected = client.post("/api/v1/messages/gw-1/plant/alarms?offline=reject", content=b"{}")
        assert rejected.status_code == 503 and "offline" in rejected.text
        queued = client.post("/api/v1/messages/gw-1/plant/alarms", content=b'{"level": "queued"}')
        assert queued.status_code == 202 and queued.json()["status"] == "queued"
        short = client.post("/api/v1/messages/gw-1/plant/alarms?ttl=100ms", content=b'{"level": "expired"}')
        assert short.status_code == 202
        assert client.post("/api/v1/messages/gw-1/plant/alarms?ttl=soon", content=b"{}").status_code == 400
        time.sleep(0.3)
        node = registry.nodes()["gw-1"]
        assert node["messages_expired"] == 1 and node["messages_pending"] == 1

        gateway = start_gateway(tmp_path, data_dir, mosquitto)
        try:
            assert subscriber.next_line() == 'alarms/in {"level": "queued"}'
            wait_until(lambda: registry.nodes()["gw-1"]["status"] == "healthy", what="a heartbeat")
            started = time.monotonic()
            sent = client.post("/api/v1/messages/gw-1/plant/alarms?offline=reject", content=b'{"level": "now"}')
            assert sent.status_code == 202 and sent.json()["status"] == "sent"
            assert subscriber.next_line() == 'alarms/in {"level": "now"}'
            assert time.monotonic() - started < 2.0  # the long-poll answers at once, not at the next heartbeat
            wait_until(lambda: registry.nodes()["gw-1"]["messages_pending"] == 0, what="acknowledged messages")
        finally:
            stop(gateway)
