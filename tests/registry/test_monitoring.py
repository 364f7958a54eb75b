"""Node monitoring at the registry: per-minute buckets (SQLite and PostgreSQL) and the metrics API of a real TLS
registry fed by a joined gateway's heartbeats (the node's sampler and dashboard plots: tests/ops/test_sampler.py)."""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.registry.monitoring import MINUTE, WINDOW, node_plots_html, node_samples
from gateway.registry.store import RegistryStore
from gateway.registry.store.samples import sample_statements
from gateway.runtime import Gateway
from gateway.uplink.client import Uplink
from gateway.uplink.join import client_ssl_context, join, load_settings
from gateway.wire import SERIES
from tests.ops.test_sampler import gateway
from tests.registry.conftest import Registry

SVG = "{http://www.w3.org/2000/svg}"
__all__ = ["gateway"]  # the fixture: a running gateway polling a virtual device



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
        plots = ET.fromstring(html)
        svgs = list(plots.iter(f"{SVG}svg"))
        assert len(svgs) == 4 and [s.get("aria-label", "").split(":")[0] for s in svgs] == [
            "CPU", "Memory", "Disk I/O", "Network"]
        # each one in a figure the page's script redraws from the node's samples, over the window chosen
        figures = plots.findall("figure")
        assert [f.get("data-plot-src") for f in figures] == ["/nodes/gw-1/metrics"] * 4
        assert plots.get("data-plot-window") == "24h"
        assert [a.get("href") for a in plots.iter("a")] == ["?window=15m", "?window=1h", "?window=24h"]
        assert len(html) < 10000

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
