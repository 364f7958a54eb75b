"""How many values/s MQTT devices bring into their twins, and the gateway's CPU per value.

200 devices x 10 properties, each device publishing one JSON message (its 10 values) every 100 ms from a publisher
process of its own through mosquitto; the devices are read every 100 ms. Run with
`.venv/bin/python -m pytest -m benchmark plugins/mqtt/tests/benchmarks -s`.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fieldgate_mqtt import link as links

from gateway.testing import Mosquitto, wait_until

DEVICES = 200
PROPERTIES = 10
PERIOD = 0.1  # seconds between two messages of one device
SECONDS = 10.0

PUBLISHER = textwrap.dedent("""\
    import asyncio, json, sys, time
    import aiomqtt

    async def main(port, devices, properties, period, seconds):
        async with aiomqtt.Client("127.0.0.1", port, max_queued_outgoing_messages=1_000_000) as client:
            start = time.monotonic()
            n = 0
            while time.monotonic() - start < seconds:
                tick = time.monotonic()
                for d in range(devices):
                    values = {f"v{p}": n + p + d / 1000 for p in range(properties)}
                    await client.publish(f"bench/d{d}/state", json.dumps(values), qos=0)
                n += 1
                await asyncio.sleep(max(0.0, period - (time.monotonic() - tick)))
            print(n * devices)

    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])))
""")


def config() -> str:
    model = "kind: DeviceModel\nname: m\nproperties:\n" + "".join(
        f"  - {{name: v{p}, type: double}}\n" for p in range(PROPERTIES))
    devices = "".join(
        f"---\nkind: Device\nname: d{d}\nmodel: m\ntimeout: 5s\nprotocol: {{name: mqtt, config: {{url: URL}}}}\n"
        "properties:\n" + "".join(
            f"  - {{name: v{p}, collect_interval: 100ms, visitor: {{topic: 'bench/{{device}}/state', "
            f"json_pointer: /v{p}}}}}\n" for p in range(PROPERTIES)) for d in range(DEVICES))
    return ("kind: Gateway\nname: gw\neventbus: {url: none}\nstore: {flush_interval: 200ms}\n---\n" + model
            + devices)


@pytest.mark.benchmark
async def test_values_per_second_and_cpu_per_value(mosquitto: Mosquitto, write_config: Callable[[str], Path],
                                                   start_gateway: Callable[..., Any], tmp_path: Path) -> None:
    gw = await start_gateway(write_config(config().replace("URL", f"'{mosquitto.url}'")))
    await wait_until(lambda: sum(1 for d in gw.api.devices()) == DEVICES)
    values = 0

    def count(topic: str, report: Any) -> None:
        nonlocal values
        values += len(report.values)

    gw.api.subscribe("devices/+/+/telemetry", count)
    await asyncio.sleep(2)  # every link subscribed
    script = tmp_path / "publisher.py"
    script.write_text(PUBLISHER)
    (link,) = [link for link in links.links() if link.login.port == mosquitto.port]
    cpu_before, wall_before, values_before, received_before = (time.process_time(), time.monotonic(), values,
                                                               link.received)
    publisher = await asyncio.create_subprocess_exec(
        sys.executable, str(script), str(mosquitto.port), str(DEVICES), str(PROPERTIES), str(PERIOD), str(SECONDS),
        stdout=asyncio.subprocess.PIPE)
    async with asyncio.timeout(SECONDS + 60):
        out, _ = await publisher.communicate()
    await asyncio.sleep(0.5)
    cpu, wall, taken = time.process_time() - cpu_before, time.monotonic() - wall_before, values - values_before
    messages = int(out.decode().strip())
    sent, received = messages * PROPERTIES, link.received - received_before
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    online = sum(1 for twin in gw.api.twins().values() if twin.state == "online")
    # A device read every 100 ms that sent two messages since its last read gives the latest: the rest coalesce.
    print(f"\n{DEVICES} devices x {PROPERTIES} values every {PERIOD * 1000:g} ms: {messages} messages "
          f"({sent} values) sent, {received} received, {taken} values taken into twins in {wall:.1f} s = "
          f"{taken / wall:,.0f} values/s; gateway CPU {cpu / wall * 100:.0f} % of a core, "
          f"{cpu / max(taken, 1) * 1e6:.1f} us per value; max RSS {rss:.0f} MB; {online} online")
    assert received >= 0.99 * messages and taken >= 0.8 * sent and online == DEVICES
