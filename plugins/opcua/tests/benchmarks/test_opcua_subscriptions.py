"""Values per second through subscriptions, 1,000 monitored items sampled every 100 ms, and the gateway's CPU per
value (run with -m benchmark). The server (node-opcua, another process) changes every item every 100 ms."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opcua_helpers import OpcuaServer

from gateway.messages import Report
from gateway.runtime import Gateway
from gateway.testing import wait_until

pytestmark = pytest.mark.benchmark
ITEMS = 1000
SECONDS = 20.0


async def test_1000_monitored_items_at_100ms(opcua_server: Callable[..., OpcuaServer],
                                             write_config: Callable[[str], Path],
                                             start_gateway: Callable[..., Any]) -> None:
    server = opcua_server(items=ITEMS, tick=100)
    model = "".join(f"  - {{name: item{i}, type: double}}\n" for i in range(ITEMS))
    props = "".join(f'  - {{name: item{i}, collect_interval: 100ms, visitor: {{node_id: "ns=1;s=Bench.Item{i}", '
                    f"sampling_interval: 100ms}}}}\n" for i in range(ITEMS))
    gw: Gateway = await start_gateway(write_config(f"""\
kind: Gateway
name: gw
eventbus: {{url: none}}
---
kind: DeviceModel
name: bench
properties:
{model}---
kind: Device
name: bench-1
model: bench
timeout: 30s
protocol: {{name: opcua, config: {{endpoint: "{server.url}"}}}}
properties:
{props}"""))
    counted = [0]

    def on_report(topic: str, report: Report) -> None:
        counted[0] += len(report.values)

    gw.api.subscribe("devices/+/+/telemetry", on_report)
    twin = gw.api.twin("default/bench-1")
    started = time.monotonic()
    await wait_until(lambda: twin.state == "online" and counted[0] >= ITEMS, timeout=60)
    ready = time.monotonic() - started
    await asyncio.sleep(2)  # past the first burst
    values0, cpu0, wall0 = counted[0], time.process_time(), time.monotonic()
    await asyncio.sleep(SECONDS)
    values, cpu, wall = counted[0] - values0, time.process_time() - cpu0, time.monotonic() - wall0
    rate = values / wall
    print(f"\nopcua: {ITEMS} monitored items at 100 ms: {rate:,.0f} values/s, gateway CPU {cpu / wall * 100:.0f}% "
          f"of a core, {cpu / values * 1e6:.1f} µs per value; subscribed and first values in {ready:.1f} s")
    assert twin.state == "online", twin.state_reason
    assert rate >= 0.8 * ITEMS * 10  # the server's 100 ms timer drifts a little; a lost notification would show
