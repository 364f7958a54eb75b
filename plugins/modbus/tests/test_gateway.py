"""End to end: the gateway runtime polls a simulated profile device, writes a setpoint, and the sim CLI runs."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from fieldgate_modbus.sim import SimUnit, units_from_profiles
from modbus_helpers import points

from gateway.testing import Mosquitto

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


def overload_figures(arrivals: Path, start: float, end: float) -> dict[str, Any]:
    """From mosquitto_sub's lines (`<arrival, unix s> <topic> <payload>`): per half of the window the messages
    and the latency read → broker (arrival minus the payload's `ts`, the time the read completed), and the messages
    of each device over the whole window."""
    middle = (start + end) / 2
    halves: list[list[float]] = [[], []]
    per_device: dict[str, int] = {}
    for line in arrivals.read_bytes().splitlines():
        arrived_text, topic, payload = line.split(b" ", 2)
        arrived = float(arrived_text)
        if not start <= arrived < end:
            continue
        latency = arrived - json.loads(payload)["ts"] / 1000
        halves[arrived >= middle].append(latency)
        device = topic.decode().split("/")[3]
        per_device[device] = per_device.get(device, 0) + 1
    for half in halves:
        half.sort()

    def p99(values: list[float]) -> float:
        return values[min(int(len(values) * 0.99), len(values) - 1)] if values else float("inf")

    return {"messages": [len(half) for half in halves], "p99_s": [round(p99(half), 3) for half in halves],
            "per_device": per_device}


def run_overloaded(tmp_path: Path, servers: int, devices: int, window: float) -> dict[str, Any]:
    """`servers` `fieldgate sim modbus` servers of `devices` devices each, every device asking a read of 62 float32
    values every 10 ms (100 reads a second), their telemetry to a real mosquitto, stamped on arrival by
    mosquitto_sub. After the gateway is overloaded (every device online, then 3 s), `window` seconds are measured in
    two halves (`overload_figures`), with the gateway's RSS at the window's start and end; then SIGTERM. The
    figures, with `asked` (reports asked in the window), `rss` (start, end), `code` and `took` (the stop) and
    `stopped` (whether the log says so)."""
    ports = [free_port() for _ in range(servers)]
    broker = Mosquitto(tmp_path)
    config = tmp_path / "gateway.yaml"
    config.write_text(overload_config(ports, free_port(), broker.url, devices, units_a_server=True))
    for k, port in enumerate(ports):  # each simulator serves its own server's units, 1 to `devices`
        (tmp_path / f"sim-{k}.yaml").write_text(overload_config([port], 0, per_server=devices))
    log = tmp_path / "gateway.log"
    arrivals = tmp_path / "arrivals.txt"
    sims = [subprocess.Popen([sys.executable, "-m", "gateway", "sim", "modbus", "--listen", f"127.0.0.1:{port}",
                              "-c", str(tmp_path / f"sim-{k}.yaml"), "--static", "--duration", "180"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for k, port in enumerate(ports)]
    gateway: subprocess.Popen[bytes] | None = None
    subscriber: subprocess.Popen[bytes] | None = None
    try:
        broker.start()
        for sim in sims:
            assert sim.stderr is not None and b"simulating" in sim.stderr.readline()
        with arrivals.open("wb") as out:
            subscriber = subprocess.Popen(["mosquitto_sub", "-p", str(broker.port), "-q", "1", "-t",
                                           "fieldgate/+/+/+/telemetry", "-F", "%U %t %p"], stdout=out,
                                          stderr=subprocess.DEVNULL)
        with log.open("wb") as sink:
            gateway = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(config), "--data-dir",
                                        str(tmp_path / "data")], stdout=subprocess.DEVNULL, stderr=sink)
        wait_for_lines(log, " is online", servers * devices, gateway, timeout=90)
        time.sleep(3)  # overloaded: every device behind, every link's queue full
        process = psutil.Process(gateway.pid)
        rss_start, start = process.memory_info().rss, time.time()
        time.sleep(window)
        rss_end, end = process.memory_info().rss, time.time()
        time.sleep(2)  # the window's last messages arrive
        code, took = stop_with_sigterm(gateway)
    finally:
        for proc in [*sims, gateway, subscriber]:  # only the processes this test started
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        broker.stop()
    figures = overload_figures(arrivals, start, end)
    first, second = figures["messages"]
    shares = sorted(figures["per_device"].values()) or [0]
    figures.update(asked=servers * devices * 100 * window, rss=(rss_start, rss_end), code=code, took=took,
                   stopped="fieldgate stopped" in log.read_text(errors="replace"), shares=shares,
                   median_share=shares[len(shares) // 2], devices=servers * devices)
    rate = (first + second) / window
    print(f"\noverload: asked {figures['asked'] / max(first + second, 1):.0f}x what was delivered ({rate:.0f} "
          f"reports/s, {rate * OVERLOAD_PROPERTIES:.0f} points/s); halves {first}/{second}; p99 read -> broker "
          f"{figures['p99_s']} s; a device's share {shares[0]}..{shares[-1]} (median {figures['median_share']}); "
          f"RSS {rss_start >> 20} -> {rss_end >> 20} MiB; SIGTERM to exit {took:.2f} s")
    return figures


def assert_overload_bars(figures: dict[str, Any], *, factor: float, p99_s: float, fairness: float,
                         collapse: float = 0.7) -> None:
    """The four bars of an overloaded gateway (issue 21, point 6), with the room the caller gives them: asked at
    least `factor` times what it delivers (overloaded indeed); at capacity all along (the second half at least
    `collapse` times the first); the latency read → broker bounded (p99 at most `p99_s`) and not growing; every
    device its share (the least at least `fairness` times the median); memory not growing with the backlog (at
    most 20 % + 10 MiB over the window); and exit within 10 s of SIGTERM."""
    first, second = figures["messages"]
    code, took = figures["code"], figures["took"]
    assert code == 0, f"still running {took:.0f} s after SIGTERM" if code is None else f"exit code {code}"
    assert took < 10 and figures["stopped"]
    assert figures["asked"] >= factor * (first + second), figures["messages"]  # overloaded indeed
    assert first > 0 and second >= collapse * first, figures["messages"]  # at capacity all along
    early, late = figures["p99_s"]
    assert max(early, late) <= p99_s and late <= 2 * early + 0.25, figures["p99_s"]  # bounded, not growing
    assert len(figures["per_device"]) == figures["devices"], sorted(figures["per_device"])  # every device
    assert figures["shares"][0] >= fairness * figures["median_share"], figures["shares"]  # and each its share
    rss_start, rss_end = figures["rss"]
    assert rss_end <= rss_start * 1.2 + (10 << 20), (rss_start, rss_end)  # the backlog is not in memory


@pytest.mark.slow
def test_an_overloaded_gateway_delivers_at_capacity_bounded_fair_and_stops_on_sigterm(tmp_path: Path) -> None:
    """Issue 21, point 6, in the suite: 60 devices on four Modbus TCP servers each asking 62 values every 10 ms
    (6,000 reads and 372,000 points a second, several times what this box delivers), telemetry to mosquitto. Over
    6 s it delivers at capacity, the latency read → broker stays bounded, every device gets its share, the memory
    does not grow, and SIGTERM stops it within seconds (tests/benchmarks/test_overload.py asks it 400 devices with
    tighter bars).

    The SIGTERM part guards a fault found before: a stop cancelled the devices one by one, and pymodbus dropped the
    cancel of a device whose answer came in the same loop iteration (Python 3.11's asyncio.wait_for): the stop waited
    for that device for good, and a second SIGTERM changed nothing. Four servers of 15 devices: each connection has
    its own queue and a device holding it, so one stop meets that race four times."""
    figures = run_overloaded(tmp_path, OVERLOAD_SERVERS, OVERLOAD_DEVICES, window=6.0)
    # room for a shared 2-core box: the suite's other process runs beside this one
    assert_overload_bars(figures, factor=2, p99_s=3.0, fairness=0.3, collapse=0.5)


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
