"""Read throughput of bacnet-ip against the @bacnet-js/client device: 200 analog-inputs read with
ReadPropertyMultiple, back to back, for a few seconds; values/s and the gateway's CPU per value."""

from __future__ import annotations

import time
from typing import Any

import pytest
from bacnet_helpers import bind, gateway_config

pytestmark = pytest.mark.benchmark


@pytest.mark.parametrize("max_apdu", [1476, 480])
async def test_read_property_multiple_throughput(bacnet_device: Any, max_apdu: int) -> None:
    device = await bacnet_device(inputs=200, maxApdu=max_apdu)
    visitors = {f"i{i}": {"object_type": "analog-input", "instance": i} for i in range(1, 201)}
    protocol = bind(gateway_config(device, cov=False), visitors)
    await protocol.open()
    try:
        plan = protocol.plan(list(protocol.device.properties.values()))
        values = reads = 0
        cpu, start = time.process_time(), time.perf_counter()
        while time.perf_counter() - start < 3.0:
            result = await protocol.read(plan)
            assert not result.errors
            values += len(result.values)
            reads += 1
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        await protocol.close()
    stats = (await device.dump())["stats"]
    assert stats["oversized"] == 0
    print(f"\nmax APDU {max_apdu}: {len(plan.requests)} requests a read, {reads / elapsed:.1f} reads/s, "
          f"{values / elapsed:,.0f} values/s, gateway CPU {cpu / values * 1e6:.1f} µs a value")
