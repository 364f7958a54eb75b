"""S7 throughput against the native snap7 server (run with -m benchmark): values/s and the gateway's CPU per value,
for one connection read back to back and for a fleet of PLCs polled by the gateway."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from layout import memory, variables
from s7_helpers import PlcServer, bind

from gateway.runtime import Gateway
from gateway.testing import wait_until

pytestmark = pytest.mark.benchmark


async def test_one_connection_back_to_back(plc: Callable[..., PlcServer]) -> None:
    layout = variables(200)
    server = plc({"DB1": 1024, "DB2": 1024, "DB3": 1024})
    for db, data in memory(layout).items():
        server.set(f"DB{db}", 0, bytes(data))
    protocol = bind({"host": "127.0.0.1", "port": server.port}, {v.name: v.visitor() for v in layout})
    await protocol.open()
    plan = protocol.plan(list(protocol.device.properties.values()))
    times = []
    try:
        await protocol.read(plan)
        cpu = time.process_time()
        started = time.perf_counter()
        for _ in range(500):
            begun = time.perf_counter()
            result = await protocol.read(plan)
            times.append(time.perf_counter() - begun)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await protocol.close()
    assert len(result.values) == 200
    values = 500 * 200
    print(f"\none connection, 200 variables in {len(plan.requests)} requests (PDU {protocol.pdu}): "
          f"{values / elapsed:,.0f} values/s, cycle median {statistics.median(times) * 1000:.2f} ms, "
          f"gateway CPU {cpu / values * 1e6:.2f} µs/value")


FLEET = """\
kind: Gateway
name: gw
eventbus: {{url: none}}
---
kind: DeviceModel
name: plc
properties:
{model}
"""


@pytest.mark.parametrize("devices", [20, 100])
async def test_fleet_polled_by_the_gateway(plc: Callable[..., PlcServer], tmp_path: Path, devices: int) -> None:
    layout = variables(200)
    server = plc({"DB1": 1024, "DB2": 1024, "DB3": 1024})
    for db, data in memory(layout).items():
        server.set(f"DB{db}", 0, bytes(data))
    kinds = {"BOOL": "boolean", "STRING": "string", "REAL": "double", "LREAL": "double"}
    text = FLEET.format(model="\n".join(f"  - {{name: {v.name}, type: {kinds.get(v.type, 'int')}}}" for v in layout))
    for n in range(devices):
        text += (f"---\nkind: Device\nname: plc-{n}\nmodel: plc\nprotocol: {{name: s7, config: {{host: 127.0.0.1, "
                 f"port: {server.port}}}}}\nproperties:\n" + "\n".join(
                     f"  - {{name: {v.name}, collect_interval: 100ms, report_interval: 1s, visitor: "
                     f"{_flow(v.visitor())}}}" for v in layout) + "\n")
    config = tmp_path / "fleet.yaml"
    config.write_text(text)
    me = psutil.Process(os.getpid())
    async with Gateway.from_path(config, data_dir=tmp_path / "data") as gw:
        ids = [f"default/plc-{n}" for n in range(devices)]
        await wait_until(lambda: all(gw.api.twin(i).state == "online" for i in ids), timeout=30)

        def cycles() -> int:
            return sum(stats.cycles for i in ids if (stats := gw.api.poll_stats(i)) is not None)

        before, cpu, started = cycles(), me.cpu_times(), time.perf_counter()
        await wait_until(lambda: time.perf_counter() - started > 10, timeout=20, every=0.5)
        done, after, elapsed = cycles() - before, me.cpu_times(), time.perf_counter() - started
        missed = sum(stats.missed for i in ids if (stats := gw.api.poll_stats(i)) is not None)
        lateness = sorted(x for i in ids if (stats := gw.api.poll_stats(i)) is not None for x in stats.lateness)
    used = after.user + after.system - cpu.user - cpu.system
    values = done * 200
    print(f"\n{devices} PLCs x 200 variables at 100 ms: {values / elapsed:,.0f} values/s "
          f"(target {devices * 2000:,}), missed cycles {missed}, p99 lateness "
          f"{lateness[int(len(lateness) * 0.99)] * 1000:.1f} ms, gateway CPU {used / elapsed * 100:.0f} % of a core, "
          f"{used / values * 1e6:.2f} µs/value, RSS {me.memory_info().rss / 2**20:.0f} MiB")


def _flow(raw: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in raw.items()) + "}"
