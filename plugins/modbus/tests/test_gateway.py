"""End to end: the gateway runtime polls a simulated profile device, writes a setpoint, and the sim CLI runs."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fieldgate_modbus.sim import units_from_profiles

runtime = pytest.importorskip("gateway.runtime")


async def wait_for(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_gateway_reads_and_writes_a_profile_device(tcp_sim: Any, tmp_path: Path) -> None:
    (unit,) = units_from_profiles([("generic/xy-md02", 1)], animate=False)
    sim = await tcp_sim([unit])
    config = tmp_path / "plant.yaml"
    config.write_text(
        "kind: Device\nname: climate-1\nprofile: generic/xy-md02\n"
        f"protocol: {{name: modbus-tcp, config: {{host: 127.0.0.1, port: {sim.port}, unit: 1, timeout: 0.5}}}}\n"
    )
    async with runtime.Gateway.from_path(config, data_dir=tmp_path / "data") as gw:
        twin = gw.api.twin("default/climate-1")
        temperature = twin.properties["temperature"]
        await wait_for(lambda: temperature.reported is not None)
        assert temperature.reported == pytest.approx(sim.value(1, "temperature"))
        await gw.api.set_desired("default/climate-1", "temperature_correction", -1.5)
        await wait_for(lambda: sim.value(1, "temperature_correction") == pytest.approx(-1.5))
        correction = twin.properties["temperature_correction"]
        await wait_for(lambda: correction.reported == pytest.approx(-1.5))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_sim_command_serves_a_profile() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "sim",
        "modbus",
        "--listen",
        f"127.0.0.1:{port}",
        "--profile",
        "eastron/sdm630",
        "--unit",
        "4",
        "--duration",
        "20",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), timeout=15)
        assert b"unit 4" in line and str(port).encode() in line
        from pymodbus.client import AsyncModbusTcpClient

        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
        await asyncio.wait_for(client.connect(), timeout=5)
        response = await client.read_input_registers(0, count=2, device_id=4)
        client.close()
        assert not response.isError() and len(response.registers) == 2
    finally:
        proc.terminate()  # the one process this test started
        await asyncio.wait_for(proc.wait(), timeout=10)


def test_sim_command_rejects_an_unknown_profile() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "sim", "modbus", "--profile", "acme/none", "--listen", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "unknown profile 'acme/none'" in done.stderr
