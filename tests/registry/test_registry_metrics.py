"""GET /metrics of a real TLS registry: parsed with the Prometheus client's parser, its counts checked against what
this test did (joins, heartbeats of a joined gateway, messages), behind an API token."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from gateway.errors import AuthError, ConfigError
from gateway.uplink.client import Uplink
from gateway.uplink.join import join
from tests.registry.conftest import Registry
from tests.registry.test_monitoring import gateway, joined
from tests.test_metrics import scrape, value

__all__ = ["gateway", "joined"]  # fixtures shared with the monitoring tests

HEARTBEATS = 5


async def test_registry_metrics_count_what_happened(registry: Registry, tmp_path: Path,
                                                    joined: tuple[Uplink, httpx.AsyncClient]) -> None:
    uplink, node = joined  # one join so far
    # the CLI first: each call takes seconds on a busy box, which must not pass between the heartbeats and the
    # scrape (a node without a heartbeat for 3 intervals is offline)
    operator = registry.cli("token", "create", "--role", "operator").stdout.strip()
    viewer = registry.cli("token", "create", "--role", "viewer").stdout.strip()
    token = registry.token("--max-uses", "2")
    with pytest.raises(ConfigError, match="409"):  # the name is taken
        await join(registry.url, token, tmp_path / "other", name="gw-1")
    with pytest.raises(AuthError, match="token refused"):
        await join(registry.url, "abcd.wrong." + token.split(".")[2], tmp_path / "third")
    await join(registry.url, token, tmp_path / "idle", name="gw-idle")  # joined, never beats

    for _ in range(HEARTBEATS):
        await uplink.beat(node)
        assert uplink.state == "connected"
    async with httpx.AsyncClient(base_url=registry.url, verify=False, timeout=10) as anonymous:
        assert (await anonymous.post("/api/v1/heartbeat", json={})).status_code == 401  # no client certificate
        assert (await anonymous.get("/metrics")).status_code == 401

    async with httpx.AsyncClient(base_url=registry.url, verify=False, timeout=10,
                                 headers={"Authorization": f"Bearer {operator}"}) as api:
        for ttl in ("1h", "1h", "0s"):
            response = await api.post("/api/v1/messages/gw-1/default/alarms", content=b"{}", params={"ttl": ttl})
            assert response.status_code == 202, response.text
    await asyncio.sleep(0.05)  # the 0 s message has expired
    assert await uplink.poll_messages(node, 0) == 2  # delivered and acknowledged

    async with httpx.AsyncClient(base_url=registry.url, verify=False, timeout=10,
                                 headers={"Authorization": f"Bearer {viewer}"}) as api:
        samples = await scrape(api)

    assert value(samples, "fieldgate_registry_heartbeats_total", outcome="accepted") == HEARTBEATS
    assert value(samples, "fieldgate_registry_heartbeats_total", outcome="refused") == 1
    count = value(samples, "fieldgate_registry_heartbeat_duration_seconds_count")
    assert count == HEARTBEATS + 1
    buckets = samples["fieldgate_registry_heartbeat_duration_seconds_bucket"]
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == count
    assert [b.value for b in buckets] == sorted(b.value for b in buckets)
    assert 0 < value(samples, "fieldgate_registry_heartbeat_duration_seconds_sum") < count * 2.5

    assert value(samples, "fieldgate_registry_join_attempts_total", method="token",
                 outcome="joined") == 2
    assert value(samples, "fieldgate_registry_join_attempts_total", method="token",
                 outcome="conflict") == 1
    assert value(samples, "fieldgate_registry_join_attempts_total", method="token",
                 outcome="refused") == 1
    assert value(samples, "fieldgate_registry_join_attempts_total", method="batch", outcome="joined") == 0

    assert value(samples, "fieldgate_registry_messages_queued_total") == 3
    assert value(samples, "fieldgate_registry_messages_delivered_total") == 2
    assert value(samples, "fieldgate_registry_messages_expired_total") == 1
    assert value(samples, "fieldgate_registry_messages_pending") == 0

    assert value(samples, "fieldgate_registry_nodes", status="healthy") == 1
    assert value(samples, "fieldgate_registry_nodes", status="joined") == 1
    assert value(samples, "fieldgate_registry_nodes", status="offline") == 0
    assert 0 <= value(samples, "fieldgate_registry_node_last_heartbeat_age_seconds", node="gw-1") < 30
    assert not [s for s in samples["fieldgate_registry_node_last_heartbeat_age_seconds"]
                if s.labels["node"] == "gw-idle"]
    # the node reports the round trip of its previous heartbeat with the next one
    assert 0 < value(samples, "fieldgate_registry_node_uplink_latency_seconds", node="gw-1") < 5
    assert uplink.latency_ms is not None

    assert value(samples, "fieldgate_registry_build_info", backend="sqlite") == 1
    assert value(samples, "fieldgate_registry_process_resident_memory_bytes") > 1 << 20
    assert value(samples, "fieldgate_registry_process_cpu_seconds_total") > 0
    assert value(samples, "fieldgate_registry_process_open_fds") > 3
    assert 0 < time.time() - value(samples, "fieldgate_registry_start_time_seconds") < 120


async def test_registry_metrics_on_postgresql(pg_database: str, tmp_path: Path) -> None:
    registry = Registry(tmp_path / "pg-registry", pg_database)
    registry.start()
    try:
        viewer = registry.cli("token", "create", "--role", "viewer").stdout.strip()
        async with httpx.AsyncClient(base_url=registry.url, verify=False, timeout=10,
                                     headers={"Authorization": f"Bearer {viewer}"}) as api:
            samples = await scrape(api)
            assert value(samples, "fieldgate_registry_build_info", backend="postgresql") == 1
            assert value(samples, "fieldgate_registry_heartbeats_total", outcome="accepted") == 0
            response = await api.get("/metrics", headers={"Authorization": "Bearer nope.nope"})
            assert response.status_code == 401
    finally:
        from tests.registry.conftest import stop

        assert registry.process is not None
        stop(registry.process)
