"""modbus-rtu over a socat pty pair: a shared bus, one lock, frame gaps, a dead unit costing one timeout."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fieldgate_modbus.config import RtuConfig
from fieldgate_modbus.protocol import ModbusRtu
from fieldgate_modbus.sim import ModbusSimulator, SimUnit
from modbus_helpers import bind, points

from gateway.errors import DeviceTimeout
from gateway.pipeline.poller import DevicePoller
from gateway.pipeline.twin import Twin

pytestmark = pytest.mark.skipif(shutil.which("socat") is None, reason="needs socat (apt-get install socat)")
BAUD = 19200
VISITORS = {
    "temperature": {"register": "InputRegister", "offset": 1, "type": "int16", "scale": 0.1},
    "energy": {"register": "InputRegister", "offset": 4, "type": "float32", "word_order": "little"},
    "setpoint": {"register": "HoldingRegister", "offset": 2, "type": "uint16"},
    "relay": {"register": "Coil", "offset": 0},
}


@pytest.fixture
async def serial_pair(tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """Two linked pseudo-terminals, like the two ends of an RS-485 line."""
    a, b = tmp_path / "a", tmp_path / "b"
    proc = await asyncio.create_subprocess_exec(
        "socat",
        f"pty,raw,echo=0,link={a}",
        f"pty,raw,echo=0,link={b}",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while not (a.exists() and b.exists()):
            assert time.monotonic() < deadline, "socat did not create the ptys"
            await asyncio.sleep(0.02)
        yield str(a), str(b)
    finally:
        proc.terminate()  # by its PID: only the socat this fixture started
        try:
            await asyncio.wait_for(proc.wait(), timeout=5)
        except TimeoutError:
            proc.kill()
            await asyncio.wait_for(proc.wait(), timeout=5)


def rtu(port: str, unit: int, timeout: float = 0.5) -> dict[str, object]:
    return {"port": port, "baudrate": BAUD, "unit": unit, "timeout": timeout, "retries": 1}


async def test_shared_bus_reads_writes_and_survives_a_dead_unit(serial_pair: tuple[str, str]) -> None:
    server_end, client_end = serial_pair
    units = [
        SimUnit(1, points(VISITORS, {"temperature": 21.5, "energy": 1234.5, "setpoint": 7, "relay": True})),
        SimUnit(2, points(VISITORS, {"temperature": -3.2, "energy": 0.25, "setpoint": 9, "relay": False})),
    ]
    sim = ModbusSimulator(units)
    await sim.start_serial(RtuConfig(port=server_end, baudrate=BAUD))
    first = bind(ModbusRtu, rtu(client_end, 1), VISITORS, name="first")
    second = bind(ModbusRtu, rtu(client_end, 2), VISITORS, name="second")
    dead = bind(ModbusRtu, rtu(client_end, 9, timeout=0.4), VISITORS, name="dead")
    try:
        for protocol in (first, second, dead):
            await protocol.open()
        assert first._link is second._link is dead._link  # one port, one connection, one lock

        async def cycle(protocol: ModbusRtu) -> tuple[object, float]:
            started = time.monotonic()
            try:
                outcome: object = await protocol.read(protocol.plan(list(protocol.device.properties.values())))
            except DeviceTimeout as exc:
                outcome = exc
            return outcome, time.monotonic() - started

        results = await asyncio.gather(cycle(first), cycle(dead), cycle(second))
        (one, _), (gone, dead_time), (two, total) = results
        assert one.values == {
            "temperature": pytest.approx(21.5),
            "energy": 1234.5,
            "setpoint": 7,  # type: ignore[attr-defined]
            "relay": True,
        }
        assert two.values["temperature"] == pytest.approx(-3.2)  # type: ignore[attr-defined]
        assert isinstance(gone, DeviceTimeout)
        assert dead_time < 0.4 + 0.9  # its one timeout (plus its wait for the bus), not one per block
        assert total < 0.4 + 1.5

        await second.write(second.device.properties["setpoint"], 1234)
        await second.write(second.device.properties["relay"], True)
        assert sim.value(2, "setpoint") == 1234 and sim.value(2, "relay") is True
        assert sim.value(1, "setpoint") == 7
    finally:
        for protocol in (first, second, dead):
            await protocol.close()
        await sim.stop()


def test_frame_gap_is_three_and_a_half_characters() -> None:
    assert RtuConfig(port="/dev/x", baudrate=9600).frame_gap() == pytest.approx(3.5 * 10 / 9600)
    assert RtuConfig(port="/dev/x", baudrate=115200).frame_gap() == pytest.approx(0.00175)
    assert RtuConfig(port="/dev/x", baudrate=9600, parity="E").frame_gap() == pytest.approx(3.5 * 11 / 9600)


async def test_devices_of_one_line_open_it_once_and_a_silent_unit_leaves_it_open(
        serial_pair: tuple[str, str]) -> None:
    """Six devices start together on one port: one opens it, the others share that. A unit that never answers
    times out without closing the port under the live ones."""
    server_end, client_end = serial_pair
    sim = ModbusSimulator([SimUnit(u, points(VISITORS, {"temperature": u, "energy": 0.5, "setpoint": u,
                                                         "relay": False})) for u in range(1, 6)])
    await sim.start_serial(RtuConfig(port=server_end, baudrate=BAUD))
    devices = [bind(ModbusRtu, rtu(client_end, u), VISITORS, name=f"d{u}") for u in range(1, 6)]
    dead = bind(ModbusRtu, rtu(client_end, 9, timeout=0.3), VISITORS, name="dead")
    try:
        await asyncio.gather(*(protocol.open() for protocol in [*devices, dead]))  # none refused by the lock
        link = dead._link
        assert link is not None and link.connected and link._failures == 0
        client = link._client
        with pytest.raises(DeviceTimeout):
            await dead.read(dead.plan(list(dead.device.properties.values())))
        assert link.connected and link._client is client  # the port stayed open
        for u, protocol in enumerate(devices, start=1):
            result = await protocol.read(protocol.plan(list(protocol.device.properties.values())))
            assert result.values["setpoint"] == u and not result.errors
    finally:
        for protocol in [*devices, dead]:
            await protocol.close()
        await sim.stop()


async def test_a_unit_that_never_answers_is_tried_less_and_less_often(serial_pair: tuple[str, str]) -> None:
    """Opening a shared serial line succeeds for any unit: the poller's backoff grows until a read brings values,
    so a silent unit does not take a timeout of the bus every half second."""
    server_end, client_end = serial_pair
    sim = ModbusSimulator([SimUnit(1, points(VISITORS, {"temperature": 1, "energy": 0.5, "setpoint": 1,
                                                         "relay": False}))])
    await sim.start_serial(RtuConfig(port=server_end, baudrate=BAUD))
    dead = bind(ModbusRtu, rtu(client_end, 9, timeout=0.2), VISITORS, name="dead")
    poller = DevicePoller(dead.device, ModbusRtu, Twin("default/dead", {}), on_report=lambda *_: None,
                    on_state=lambda *_: None)
    task = asyncio.create_task(poller.run())
    try:
        await asyncio.sleep(3.5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await sim.stop()
    # a fixed 0.5 s backoff would try 5 or more times in 3.5 s (0.2 s timeout + 0.375..0.625 s); growing: at most 4
    assert 2 <= poller.stats.read_errors <= 4, poller.stats.read_errors
