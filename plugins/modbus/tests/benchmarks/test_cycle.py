"""One TCP device with 500 float32 properties: requests per cycle and cycle time (run with -m benchmark)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import pytest
from fieldgate_modbus.protocol import ModbusTcp
from fieldgate_modbus.sim import SimUnit
from modbus_helpers import bind, points

pytestmark = pytest.mark.benchmark


async def test_500_float32_properties(tcp_sim: Any) -> None:
    visitors = {f"p{i}": {"register": "HoldingRegister", "offset": i * 2, "type": "float32"} for i in range(500)}
    values = {f"p{i}": i + 0.5 for i in range(500)}
    sim = await tcp_sim([SimUnit(1, points(visitors, values))])
    protocol = bind(ModbusTcp, {"host": "127.0.0.1", "port": sim.port}, visitors)
    props = list(protocol.device.properties.values())
    started = time.perf_counter()
    plan = protocol.plan(props)
    plan_ms = (time.perf_counter() - started) * 1000
    times = []
    try:
        await protocol.read(plan)  # connect and warm up
        sim.requests.clear()
        for _ in range(50):
            started = time.perf_counter()
            result = await protocol.read(plan)
            times.append(time.perf_counter() - started)
    finally:
        await protocol.close()
    assert result.values == values
    requests = len(sim.requests) / 50
    print(
        f"\n500 float32: plan {plan_ms:.2f} ms, {requests:g} requests/cycle, cycle median "
        f"{statistics.median(times) * 1000:.2f} ms, p95 {sorted(times)[int(len(times) * 0.95)] * 1000:.2f} ms"
    )
    assert requests == 9  # 62 float32 (124 registers) a request: a value never straddles two
