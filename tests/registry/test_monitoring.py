"""Node monitoring: the node's sampler, per-minute buckets at the registry (SQLite and PostgreSQL), the metrics API
of a real TLS registry fed by a joined gateway's heartbeats, and the same plots on the local dashboard."""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.registry.monitoring import (
    MINUTE,
    SERIES,
    WINDOW,
    NodeSampler,
    local_monitor,
    node_plots_html,
    node_samples,
    sample_statements,
)
from gateway.registry.store import RegistryStore
from gateway.runtime import Gateway
from gateway.uplink.client import Uplink
from gateway.uplink.join import client_ssl_context, join, load_settings
from gateway.web.app import create_app
from gateway.web.auth import create_token
from tests.registry.conftest import Registry
from tests.test_runtime import MODEL, virtual_device, wait_for

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("pg_database")
    return url


@pytest.fixture
async def gateway(write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> Gateway:
    gw: Gateway = await start_gateway(write_config(MODEL + virtual_device("d1", interval="50ms")))
    await wait_for(lambda: gw.devices.pollers["default/d1"].stats.cycles >= 3)
    return gw


async def test_the_sampler_measures_the_node_and_the_points_polled(gateway: Gateway) -> None:
    sampler = NodeSampler(gateway.data_dir, gateway.api)
    cycles_before = gateway.devices.pollers["default/d1"].stats.cycles
    started = time.monotonic()
    assert sampler.sample()["points_per_s"] is None  # no rate over a few ms: it would be one cycle more or less
    await asyncio.sleep(1.1)
    sample = sampler.sample()
    elapsed = time.monotonic() - started
    cycles = gateway.devices.pollers["default/d1"].stats.cycles - cycles_before
    assert set(sample) == set(SERIES)
    # d1 reads its 4 properties every 50 ms: the points rate is the cycles seen times 4, over the same time
    assert sample["points_per_s"] == pytest.approx(cycles * 4 / elapsed, rel=0.25)
    assert 0 < (sample["points_per_s"] or 0) <= 90  # at most 80/s, fewer when a loaded machine falls behind
    assert 0 <= (sample["cpu_percent"] or 0) <= 100
    assert (sample["memory_used"] or 0) > 1 << 20 and 0 < (sample["memory_percent"] or 0) < 100
    assert (sample["process_rss"] or 0) > 1 << 20
    assert 0 < (sample["disk_percent"] or 0) <= 100
    assert sample["outbox_depth"] == 0
    for name in ("net_rx_bps", "net_tx_bps"):
        assert (sample[name] or 0) >= 0
    # the dashboard's own sampler runs beside it (a supervised task) and keeps what it measures
    monitor = local_monitor(gateway.api)
    assert monitor is not None and gateway.supervisor.status["node-monitor"].state == "running"


async def test_beats_are_kept_as_per_minute_means_for_24_hours(db_url: str | None, tmp_path: Path) -> None:
    async with RegistryStore(tmp_path, db_url) as store:
        await store.add_node("gw-1", "ab", {}, 1.0)
        await store.add_node("gw-2", "cd", {}, 1.0)
        old = time.time() - WINDOW - 5 * MINUTE
        await store.database.transaction(sample_statements("gw-1", {"cpu_percent": 99.0}, old))
        for cpu, rss in ((10.0, 100.0), (30.0, 300.0)):
            await store.heartbeat("gw-1", {"version": "x", "metrics": {
                "cpu_percent": cpu, "process_rss": rss, "memory_percent": "lots", "disk_percent": float("nan"),
                "net_rx_bps": True, "unknown": 5}})
        await store.heartbeat("gw-2", {"metrics": {"cpu_percent": 70.0}})
        await store.heartbeat("gw-2", {"version": "old node, no metrics"})

        samples = await node_samples(store, "gw-1", 0.0)
        # the day-old bucket is gone; the beats of this minute are one mean (a beat at a minute's end may
        # land in the next one, hence the sum over the buckets)
        assert samples["step"] == MINUTE and 1 <= len(samples["times"]) <= 2
        assert samples["times"][-1] == int(time.time() // MINUTE) * MINUTE
        cpu = [v for v in samples["series"]["cpu_percent"] if v is not None]
        assert cpu == [20.0] or sorted(cpu) == [10.0, 30.0]
        assert samples["series"]["memory_percent"] == [None] * len(samples["times"])  # junk is not kept
        assert samples["series"]["net_rx_bps"] == [None] * len(samples["times"])
        rows = await store.database.rows("SELECT COUNT(*) FROM node_metrics WHERE node=?", "gw-1")
        assert rows[0][0] == len(samples["times"])
        assert (await node_samples(store, "gw-2", 0.0))["series"]["cpu_percent"] == [70.0]
        beats = await store.database.rows("SELECT SUM(beats) FROM node_metrics WHERE node=?", "gw-2")
        assert beats[0][0] == 1  # a heartbeat without metrics adds nothing

        html = await node_plots_html(store, "gw-1")
        svgs = ET.fromstring(html).findall(f"{SVG}svg")
        assert len(svgs) == 4 and [s.get("aria-label", "").split(":")[0] for s in svgs] == [
            "CPU", "Memory", "Disk I/O", "Network"]
        assert len(html) < 8000

        await store.remove_node("gw-1")
        assert await store.database.rows("SELECT COUNT(*) FROM node_metrics WHERE node=?", "gw-1") == [(0,)]


@pytest.fixture
async def joined(registry: Registry, tmp_path: Path, gateway: Gateway) -> AsyncIterator[tuple[Uplink,
                                                                                               httpx.AsyncClient]]:
    """The gateway joined as gw-1 (its certificate in a directory of its own, so no uplink task starts by
    itself: the test sends each heartbeat) with an mTLS client to the registry."""
    node_dir = tmp_path / "node"
    settings = await join(registry.url, registry.token(), node_dir, name="gw-1")
    assert load_settings(node_dir) == settings
    uplink = Uplink(gateway.api, settings)
    async with httpx.AsyncClient(base_url=registry.url, verify=client_ssl_context(node_dir), timeout=10) as client:
        yield uplink, client


async def test_the_registry_keeps_and_serves_the_samples_of_a_joined_gateway(
        registry: Registry, joined: tuple[Uplink, httpx.AsyncClient]) -> None:
    uplink, client = joined
    for _ in range(3):  # over more than MIN_RATE_WINDOW: the last beat carries rates
        await uplink.beat(client)
        assert uplink.state == "connected"
        await asyncio.sleep(0.6)
    viewer = registry.cli("token", "create", "--role", "viewer").stdout.strip()
    async with httpx.AsyncClient(base_url=registry.url, verify=False, timeout=10,
                                 headers={"Authorization": f"Bearer {viewer}"}) as api:
        answer = (await api.get("/api/v1/nodes/gw-1/metrics")).json()
        assert answer["node"] == "gw-1" and answer["step"] == 60 and set(answer["series"]) == set(SERIES)
        assert 1 <= len(answer["times"]) <= 2
        points = [v for v in answer["series"]["points_per_s"] if v is not None]
        assert points and 0 < points[-1] <= 90  # d1: 4 properties every 50 ms, at most 80/s
        assert all(v > 1 << 20 for v in answer["series"]["process_rss"] if v is not None)

        some = (await api.get("/api/v1/nodes/gw-1/metrics", params={"series": "cpu_percent,net_rx_bps",
                                                                     "since": "10m"})).json()
        assert set(some["series"]) == {"cpu_percent", "net_rx_bps"} and some["times"] == answer["times"]
        future = await api.get("/api/v1/nodes/gw-1/metrics", params={"since": str(time.time() + 120)})
        assert future.json()["times"] == []

        bad = await api.get("/api/v1/nodes/gw-1/metrics", params={"series": "cpu_percent,temperature"})
        assert bad.status_code == 400 and "temperature" in bad.json()["detail"]
        assert (await api.get("/api/v1/nodes/gw-1/metrics", params={"since": "yesterday"})).status_code == 400
        assert (await api.get("/api/v1/nodes/gw-9/metrics")).status_code == 404
        assert (await api.get("/api/v1/nodes/gw-1/metrics", headers={"Authorization": ""})).status_code == 401

    async with RegistryStore(registry.data_dir) as store:  # the registry's own database, as its pages read it
        html = await node_plots_html(store, "gw-1")
    paths = [p for p in ET.fromstring(html).iter(f"{SVG}path") if p.get("stroke-width") == "1.5"]
    assert len(paths) >= 3  # cpu (from the second beat on), memory, and at least one rate line


async def test_the_dashboard_shows_the_plots_of_its_own_node(gateway: Gateway) -> None:
    monitor = local_monitor(gateway.api)
    assert monitor is not None
    for _ in range(3):
        monitor.sample_now()
        await asyncio.sleep(0.05)
    token = await create_token(gateway.store, "viewer")
    transport = httpx.ASGITransport(app=create_app(gateway.api))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local",
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        for window in ("10m", "1h", "24h"):
            page = await client.get("/", params={"plots": window})
            assert page.status_code == 200
            start = page.text.index('<section class="card wide" id="node-plots">')
            section = page.text[start:page.text.index("</section>", start)]
            assert section.count("<svg") == 4 and f"<strong>{window}</strong>" in section
            assert len(section) < 12_000, len(section)
            first = section[section.index("<svg"):section.index("</svg>") + 6]
            lines = [p for p in ET.fromstring(first).iter(f"{SVG}path") if p.get("stroke-width") == "1.5"]
            assert len(lines) == 1  # the CPU line, from the samples taken above
