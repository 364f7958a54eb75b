"""The node's own resource figures: the sampler measures the node and the points polled, and the dashboard shows
the plots of its own node."""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.ops.sampler import NodeSampler, local_monitor
from gateway.runtime import Gateway
from gateway.web.app import create_app
from gateway.web.auth import create_token
from gateway.wire import SERIES
from tests.test_runtime import MODEL, virtual_device, wait_for

SVG = "{http://www.w3.org/2000/svg}"


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
        for window in ("15m", "1h", "24h"):
            page = await client.get("/", params={"plots": window})
            assert page.status_code == 200
            start = page.text.index('<section class="card wide" id="node-plots">')
            section = page.text[start:page.text.index("</section>", start)]
            assert section.count("<svg") == 4 and f'data-window="{window}" class="active">{window}</a>' in section
            assert f'data-plot-window="{window}"' in section  # the script redraws that window
            assert len(section) < 12_000, len(section)
            first = section[section.index("<svg"):section.index("</svg>") + 6]
            lines = [p for p in ET.fromstring(first).iter(f"{SVG}path") if p.get("stroke-width") == "1.5"]
            assert len(lines) == 1  # the CPU line, from the samples taken above
