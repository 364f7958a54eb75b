"""End to end: the gateway runtime polls a simulated profile device, writes a setpoint, and the sim CLI runs."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fieldgate_modbus.sim import SimUnit, units_from_profiles
from modbus_helpers import points

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


DEVICE_LOGGERS = ("gateway.pipeline.devices", "gateway.pipeline.poller", "fieldgate_modbus", "pymodbus")


async def test_a_server_that_goes_down_is_logged_once_per_change(tcp_sim: Any, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Devices behind one address share its connection: when the server goes down the connection logs that once
    (with its real backoff), and each device only its own change of state, not every attempt; the same when
    it is back. 100 devices wrote 525 warnings in 20 s before."""
    count = 24
    visitors = {"level": {"register": "HoldingRegister", "offset": 0, "type": "float32"}}
    sim = await tcp_sim([SimUnit(unit, points(visitors, {"level": 1.5})) for unit in range(1, count + 1)])
    port = sim.port
    config = tmp_path / "plant.yaml"
    config.write_text("kind: Gateway\nname: gw\neventbus: {url: none}\n---\nkind: DeviceModel\nname: m\n"
                      "properties:\n  - {name: level, type: float}\n" + "".join(
        f"---\nkind: Device\nname: d{unit}\nmodel: m\nprotocol: {{name: modbus-tcp, config: {{host: 127.0.0.1, "
        f"port: {port}, unit: {unit}, timeout: 1.0}}}}\nproperties:\n  - {{name: level, collect_interval: 100ms, "
        f"visitor: {{register: HoldingRegister, offset: 0, type: float32}}}}\n" for unit in range(1, count + 1)))
    caplog.set_level(logging.INFO)
    async with runtime.Gateway.from_path(config, data_dir=tmp_path / "data") as gw:
        twins = [gw.api.twin(f"default/d{unit}") for unit in range(1, count + 1)]
        await wait_for(lambda: all(twin.state == "online" for twin in twins))

        caplog.clear()
        await sim.stop()
        await wait_for(lambda: all(twin.state == "offline" for twin in twins))
        await asyncio.sleep(3)  # every device and the connection try again, several times
        down = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith(
            DEVICE_LOGGERS)]
        offline = [m for name, m in down if name == "gateway.pipeline.devices" and " is offline: " in m]
        assert sorted(m.split(" is offline")[0] for m in offline) == sorted(twin.device_id for twin in twins)
        link = [m for name, m in down if name == "fieldgate_modbus.link"]
        assert len(link) == 1 and link[0].startswith(f"tcp://127.0.0.1:{port}: cannot connect"), link
        assert len(down) == count + 1, down

        caplog.clear()
        await sim.start_tcp("127.0.0.1", port)
        await wait_for(lambda: all(twin.state == "online" for twin in twins), timeout=20)
        await asyncio.sleep(0.5)
        back = [(r.levelno, r.name, r.getMessage()) for r in caplog.records if r.name.startswith(DEVICE_LOGGERS)]
        online = [m for _, name, m in back if name == "gateway.pipeline.devices" and m.endswith(" is online")]
        assert sorted(m.split(" is online")[0] for m in online) == sorted(twin.device_id for twin in twins)
        again = [m for _, name, m in back if name == "fieldgate_modbus.link"]
        assert len(again) == 1 and "connected again after" in again[0], again
        assert [m for level, _, m in back if level >= logging.WARNING] == []
        assert len(back) == count + 1, back


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


# --- stopping under overload ----------------------------------------------------------------------------------

# Four servers of 15 devices: each connection has its own queue and a device holding it, so one stop meets the race
# four times (with 100 devices on one server it hit in 1 to 2 runs of 3; with these, in every run).
OVERLOAD_SERVERS = 4
OVERLOAD_DEVICES = 15  # a server
OVERLOAD_PROPERTIES = 62  # float32: 124 registers a device, one request a cycle
OVERLOAD_VISITORS = {f"p{i}": {"register": "HoldingRegister", "offset": 2 * i, "type": "float32"}
                     for i in range(OVERLOAD_PROPERTIES)}


def overload_config(ports: list[int], http_port: int, broker: str = "none", per_server: int = OVERLOAD_DEVICES,
                    units_a_server: bool = False) -> str:
    """Every device polled every 10 ms, many devices a connection: far more than the connections carry, so the
    loop is always busy, every device behind and waiting in its link's queue. Unit ids are numbered across the
    servers (each simulator reads the whole file), or from 1 on each server (`units_a_server`: a file a simulator)."""
    props = "\n".join(f"  - {{name: {name}, type: float}}" for name in OVERLOAD_VISITORS)
    visitors = "\n".join(
        f"  - {{name: {name}, collect_interval: 10ms, visitor: {{register: HoldingRegister, "
        f"offset: {v['offset']}, type: float32}}}}" for name, v in OVERLOAD_VISITORS.items())
    devices = "".join(
        f"---\nkind: Device\nname: dev-{k}-{d}\nmodel: m\nprotocol: {{name: modbus-tcp, config: {{host: 127.0.0.1, "
        f"port: {port}, unit: {d + 1 if units_a_server else k * per_server + d + 1}, timeout: 1.0}}}}\n"
        f"properties:\n{visitors}\n"
        for k, port in enumerate(ports) for d in range(per_server))
    return (f"kind: Gateway\nname: overload\nhttp: {{listen: \"127.0.0.1:{http_port}\"}}\n"
            f"eventbus: {{url: \"{broker}\"}}\n---\nkind: DeviceModel\nname: m\nproperties:\n{props}\n{devices}")


def wait_for_lines(log: Path, text: str, count: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count(text) < count:
        assert proc.poll() is None, f"exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}"
        assert time.monotonic() < deadline, f"fewer than {count} {text!r} lines in {timeout} s"
        time.sleep(0.1)


def stop_with_sigterm(gateway: subprocess.Popen[bytes], within: float = 15.0) -> tuple[int | None, float]:
    """SIGTERM, then its exit code (None: still running after `within` seconds) and the seconds it took."""
    started = time.monotonic()
    gateway.send_signal(signal.SIGTERM)
    try:
        code: int | None = gateway.wait(within)
    except subprocess.TimeoutExpired:
        code = None
    return code, time.monotonic() - started


@pytest.mark.slow
def test_sigterm_stops_a_gateway_under_overload_in_seconds(tmp_path: Path) -> None:
    """A stop cancelled the devices one by one, and pymodbus dropped the cancel of a device whose answer came in
    the same loop iteration (Python 3.11's asyncio.wait_for): the stop waited for that device for good, and a
    second SIGTERM changed nothing. Measured here after the fix: 0.6 s from SIGTERM to exit."""
    ports = [free_port() for _ in range(OVERLOAD_SERVERS)]
    config = tmp_path / "gateway.yaml"
    config.write_text(overload_config(ports, free_port()))
    log = tmp_path / "gateway.log"
    sims = [subprocess.Popen([sys.executable, "-m", "gateway", "sim", "modbus", "--listen", f"127.0.0.1:{port}",
                              "-c", str(config), "--static", "--duration", "120"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for port in ports]
    gateway: subprocess.Popen[bytes] | None = None
    try:
        for sim in sims:
            assert sim.stderr is not None and b"simulating" in sim.stderr.readline()
        with log.open("wb") as sink:
            gateway = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(config), "--data-dir",
                                        str(tmp_path / "data")], stdout=subprocess.DEVNULL, stderr=sink)
        wait_for_lines(log, " is online", OVERLOAD_SERVERS * OVERLOAD_DEVICES, gateway, timeout=60)
        time.sleep(3)  # overloaded: every device behind, every link's queue full
        code, took = stop_with_sigterm(gateway)
        print(f"\nSIGTERM to exit under overload: {took:.2f} s")
        assert code == 0, f"still running {took:.0f} s after SIGTERM" if code is None else f"exit code {code}"
        assert took < 10
        assert "fieldgate stopped" in log.read_text(errors="replace")
    finally:
        for proc in [*sims, gateway]:  # only the processes this test started
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
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
