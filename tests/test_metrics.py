"""GET /metrics: Prometheus text that agrees with the runtime's own counters, behind a bearer token."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gateway.runtime import Gateway
from gateway.web.app import create_app
from gateway.web.auth import create_token
from tests.test_runtime import MODEL, misbehaving_device, virtual_device, wait_for

ROUTES = """\
---
kind: Endpoint
name: bus
type: bus
---
kind: Endpoint
name: nowhere
type: http
properties: {url: "http://127.0.0.1:9/ingest"}
---
kind: Route
name: to-nowhere
source: bus
source_resource: {topic: "devices/+/+/telemetry"}
target: nowhere
"""


@pytest.fixture
async def gateway(write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> Gateway:
    config = MODEL + virtual_device("d1", interval="50ms") + virtual_device("d2") + misbehaving_device(
        "broken", "test-fail") + ROUTES
    gw: Gateway = await start_gateway(write_config(config))
    pollers = gw.devices.pollers
    await wait_for(lambda: pollers["default/d1"].stats.cycles >= 5 and pollers["default/broken"].stats.read_errors >= 2)
    return gw


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(gateway.api))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as client:
        yield client


async def scrape(client: httpx.AsyncClient, headers: dict[str, str] | None = None) -> dict[str, list[Sample]]:
    """Every sample of a /metrics answer by name, parsed with the Prometheus client's own parser."""
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            families.setdefault(sample.name, []).append(sample)
    return families


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    found = [s.value for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, f"{name} {labels}: {found}"
    return found[0]


async def test_metrics_agree_with_the_runtime(gateway: Gateway, client: httpx.AsyncClient) -> None:
    headers = {"Authorization": f"Bearer {await create_token(gateway.store, 'viewer')}"}
    stats = gateway.devices.pollers["default/d1"].stats
    before = stats.cycles
    samples = await scrape(client, headers)
    after = stats.cycles

    assert before <= value(samples, "fieldgate_device_poll_cycles_total", device="default/d1") <= after
    assert value(samples, "fieldgate_device_read_errors_total", device="default/d1") == 0
    broken = gateway.devices.pollers["default/broken"].stats
    assert 2 <= value(samples, "fieldgate_device_read_errors_total", device="default/broken") <= broken.read_errors
    assert value(samples, "fieldgate_device_poll_cycles_total", device="default/broken") == 0
    assert value(samples, "fieldgate_device_state", device="default/d1", state="online") == 1
    assert value(samples, "fieldgate_device_state", device="default/d1", state="offline") == 0
    assert value(samples, "fieldgate_device_state", device="default/broken", state="offline") == 1

    # The histogram counts every cycle once: its count is the cycles read (a cycle is counted just before its read).
    count = value(samples, "fieldgate_device_cycle_lateness_seconds_count", device="default/d1")
    assert before <= count <= after + 1
    buckets = [s for s in samples["fieldgate_device_cycle_lateness_seconds_bucket"]
               if s.labels["device"] == "default/d1"]
    assert [b.labels["le"] for b in buckets][-1] == "+Inf" and len(buckets) == 10
    assert [b.value for b in buckets] == sorted(b.value for b in buckets)
    assert buckets[-1].value == count

    outbox = "route:default/to-nowhere"
    assert value(samples, "fieldgate_sink_delivered_messages_total", outbox=outbox) == 0
    assert value(samples, "fieldgate_outbox_messages", outbox=outbox) >= 0
    assert value(samples, "fieldgate_route_accepted_messages_total", route="default/to-nowhere") >= 1
    assert value(samples, "fieldgate_process_resident_memory_bytes") > 1 << 20
    assert value(samples, "fieldgate_process_cpu_seconds_total") > 0
    assert value(samples, "fieldgate_data_dir_disk_total_bytes") > 0
    assert value(samples, "fieldgate_plugin_load_failures") == 0
    assert value(samples, "fieldgate_task_running", task="store-writer") == 1
    assert "fieldgate_node_network_received_bytes_total" in samples


async def test_outbox_age_grows_while_the_target_is_down(gateway: Gateway, client: httpx.AsyncClient) -> None:
    headers = {"Authorization": f"Bearer {await create_token(gateway.store, 'viewer')}"}
    outbox = "route:default/to-nowhere"
    await gateway.store.flush()
    await wait_for(lambda: gateway.sinks.runners[outbox].stats.failures >= 1)
    samples = await scrape(client, headers)
    assert value(samples, "fieldgate_outbox_messages", outbox=outbox) >= 1
    assert value(samples, "fieldgate_outbox_oldest_age_seconds", outbox=outbox) > 0
    assert value(samples, "fieldgate_sink_failures_total", outbox=outbox) >= 1


async def test_metrics_need_a_token(gateway: Gateway, client: httpx.AsyncClient) -> None:
    assert (await client.get("/metrics")).status_code == 401
    assert (await client.get("/metrics", headers={"Authorization": "Bearer nope"})).status_code == 401
