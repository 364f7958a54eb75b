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


async def test_nan_and_infinite_float_registers_are_bad_readings_kept_out_of_the_store(tmp_path: Path) -> None:
    """A plain pymodbus server whose float32 registers hold NaN, +inf and -inf (a sensor fault, as real meters
    report one) beside a good value: before, NaN became the reported value with good quality and, folded into a
    minute's rollup, failed every later write of the store."""
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    registers = [0x7FC0, 0, 0x7F80, 0, 0xFF80, 0, 0x4148, 0]  # NaN, +inf, -inf, 12.5 (float32, big-endian)
    empty = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
    device = SimDevice(1, simdata=(empty, empty, [SimData(0, values=[0] * 16, datatype=DataType.REGISTERS)],
                                   [SimData(0, values=registers + [0] * 8, datatype=DataType.REGISTERS)]))
    server = ModbusTcpServer([device], address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    try:
        port = int(server.transport.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        config = tmp_path / "plant.yaml"
        config.write_text(
            "kind: Gateway\nname: gw\neventbus: {url: none}\nstore: {flush_interval: 50ms}\n---\n"
            "kind: DeviceModel\nname: meter\nproperties:\n"
            + "".join(f"  - {{name: {name}, type: float}}\n" for name in ("nan", "inf", "minus_inf", "good"))
            + f"---\nkind: Device\nname: m1\nmodel: meter\nprotocol: {{name: modbus-tcp, config: {{host: 127.0.0.1, "
            f"port: {port}, unit: 1, timeout: 0.5}}}}\nproperties:\n"
            + "".join(f"  - {{name: {name}, collect_interval: 50ms, visitor: {{register: InputRegister, offset: "
                      f"{2 * i}, type: float32}}}}\n" for i, name in enumerate(("nan", "inf", "minus_inf", "good")))
        )
        async with runtime.Gateway.from_path(config, data_dir=tmp_path / "data") as gw:
            twin = gw.api.twin("default/m1")
            await wait_for(lambda: twin.properties["good"].reported == 12.5)
            await asyncio.sleep(0.3)  # a few more cycles, committed
            await gw.store.flush()
            for name in ("nan", "inf", "minus_inf"):
                prop = twin.properties[name]
                assert (prop.quality, prop.reported) == ("bad", None), name
                assert prop.error is not None and "not a finite number" in prop.error
                assert await gw.store.history.values("default/m1", name, 0, time.time() + 1) == []
            assert len(await gw.store.history.values("default/m1", "good", 0, time.time() + 1)) >= 3
            assert twin.state == "unhealthy" and "not a finite number" in twin.state_reason
            assert gw.store.health.ok
    finally:
        await server.shutdown()
