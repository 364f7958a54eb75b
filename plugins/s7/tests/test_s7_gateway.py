"""End to end: the gateway polls a snap7 server, writes desired values, follows the PLC going away and coming back,
stops while a PLC hangs, and `fieldgate check` refuses a bad S7 device."""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from s7_helpers import PlcServer

from gateway.runtime import Gateway
from gateway.testing import wait_until

CONFIG = """\
kind: Gateway
name: gw
eventbus: {{url: none}}
---
kind: DeviceModel
name: press
properties:
  - {{name: temperature, type: double}}
  - {{name: setpoint, type: double, access: ReadWrite}}
  - {{name: running, type: boolean, access: ReadWrite}}
  - {{name: recipe, type: string, access: ReadWrite}}
---
kind: Device
name: press-1
model: press
timeout: 1s
protocol: {{name: s7, config: {{host: 127.0.0.1, port: {port}, rack: 0, slot: 1, timeout: 0.5}}}}
properties:
  - {{name: temperature, collect_interval: 100ms, visitor: {{db: 1, offset: 0, type: REAL}}}}
  - {{name: setpoint, collect_interval: 100ms, visitor: {{db: 1, offset: 4, type: REAL}}}}
  - {{name: running, collect_interval: 100ms, visitor: {{db: 1, offset: 8, bit: 0, type: BOOL}}}}
  - {{name: recipe, collect_interval: 100ms, visitor: {{db: 1, offset: 10, type: STRING, length: 16}}}}
"""


async def test_gateway_reads_writes_and_follows_the_plc_going_away(plc: Callable[..., PlcServer],
                                                                   tmp_path: Path) -> None:
    server = plc({"DB1": 64})
    server.set("DB1", 0, struct.pack(">ff", 81.5, 20.0) + bytes([0b1000_0000, 0, 16, 2]) + b"A7")
    config = tmp_path / "plant.yaml"
    config.write_text(CONFIG.format(port=server.port))
    async with Gateway.from_path(config, data_dir=tmp_path / "data") as gw:
        twin = gw.api.twin("default/press-1")
        await wait_until(lambda: twin.state == "online" and twin.properties["recipe"].reported == "A7")
        assert twin.properties["temperature"].reported == 81.5
        assert twin.properties["running"].reported is False

        await gw.api.set_desired("default/press-1", "setpoint", 22.75)
        await gw.api.set_desired("default/press-1", "running", True)
        await gw.api.set_desired("default/press-1", "recipe", "B12")
        await wait_until(lambda: twin.properties["recipe"].reported == "B12"
                         and twin.properties["running"].reported is True
                         and twin.properties["setpoint"].reported == 22.75)
        assert server.get("DB1", 4, 5) == struct.pack(">f", 22.75) + bytes([0b1000_0001])
        assert server.get("DB1", 10, 5) == bytes([16, 3]) + b"B12"

        server.kill()
        await wait_until(lambda: twin.state == "offline", timeout=10)
        assert "127.0.0.1" in (twin.state_reason or "")
        server = plc({"DB1": 64}, port=server.port)
        server.set("DB1", 0, struct.pack(">f", -4.0) + bytes(6) + bytes([16, 0]))
        await wait_until(lambda: twin.state == "online" and twin.properties["temperature"].reported == -4.0,
                         timeout=20)


async def test_gateway_stops_while_a_plc_hangs(plc: Callable[..., PlcServer], proxy: Callable[..., Any],
                                               tmp_path: Path) -> None:
    server = plc({"DB1": 64})
    server.set("DB1", 10, bytes([16, 0]))
    counting = await proxy(server.port)
    config = tmp_path / "plant.yaml"
    config.write_text(CONFIG.format(port=counting.port).replace("timeout: 1s", "timeout: 30s")
                      .replace("timeout: 0.5", "timeout: 20"))
    gw = Gateway.from_path(config, data_dir=tmp_path / "data")
    await gw.start()
    try:
        twin = gw.api.twin("default/press-1")
        await wait_until(lambda: twin.state == "online")
        counting.stall = True  # the PLC accepts requests and never answers
        reads = counting.reads
        await wait_until(lambda: counting.reads > reads)
    finally:
        started = time.monotonic()
        await asyncio.wait_for(gw.stop(), 10)
    assert time.monotonic() - started < 5  # not the 20 s request timeout


def test_check_refuses_a_bad_s7_device(tmp_path: Path) -> None:
    config = tmp_path / "plant.yaml"
    config.write_text(CONFIG.format(port=102).replace("{db: 1, offset: 8, bit: 0, type: BOOL}",
                                                      "{db: 1, offset: 8, type: BOOL}"))
    done = subprocess.run([sys.executable, "-m", "gateway", "check", str(config)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "document 3 (Device press-1): $.properties[2].visitor: type BOOL needs bit (0-7)" in done.stderr
