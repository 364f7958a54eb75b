"""Several Modbus TCP requests outstanding on one connection (`max_inflight`): the same values as one at a time
from libmodbus and from the Python simulator, answers matched out of order, a timeout for one request only, a lost
connection that fails every outstanding request and is made again."""

from __future__ import annotations

import asyncio
import gc
import logging
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from c_simulator import CSimulator
from fieldgate_modbus.pipeline import MbapReader, PipelinedTcpClient, mbap_frame
from fieldgate_modbus.protocol import ModbusTcp
from fieldgate_modbus.sim import ModbusSimulator, units_from_profiles
from modbus_helpers import bind
from pymodbus.exceptions import ModbusIOException

from gateway.errors import DeviceTimeout, ProtocolError
from gateway.resources.profiles import load_profile

SPREAD = 20  # registers between the properties of SPACED: more than max_gap, so each is a block of its own


def spaced(count: int) -> dict[str, dict[str, Any]]:
    return {f"p{i}": {"register": "HoldingRegister", "offset": i * SPREAD, "type": "uint16"} for i in range(count)}


def device(port: int, visitors: dict[str, dict[str, Any]], name: str = "dev", **config: Any) -> ModbusTcp:
    settings = {"host": "127.0.0.1", "port": port, "unit": 1, "timeout": 1.0, **config}
    protocol = bind(ModbusTcp, settings, visitors, name=name)
    assert isinstance(protocol, ModbusTcp)
    return protocol


async def read(protocol: ModbusTcp) -> Any:
    return await protocol.read(protocol.plan(list(protocol.device.properties.values())))


class ScriptedServer:
    """A Modbus TCP server of a few lines whose answers to function 3 are the registers' addresses; it can hold
    a burst of requests and answer it in reverse, answer some addresses late, or hang up on a burst."""

    def __init__(self, *, reverse_burst: int = 0, late: dict[int, float] | None = None, drop_burst: int = 0,
                 delay: float = 0.0, wrong_unit: int | None = None, garbage: int | None = None) -> None:
        self.reverse_burst = reverse_burst
        self.late = late or {}
        self.drop_burst = drop_burst  # the first connection is closed once this many requests are outstanding
        self.delay = delay
        self.wrong_unit = wrong_unit  # the address answered for unit 99
        self.garbage = garbage  # the address answered, on the first connection, with a broken frame
        self.connections = 0
        self.requests = 0
        self.answered: list[int] = []  # transaction ids in the order answered
        self.largest_burst = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @staticmethod
    def answer(tid: int, unit: int, pdu: bytes) -> bytes:
        address, count = struct.unpack(">HH", pdu[1:5])
        registers = struct.pack(f">{count}H", *((address + i) & 0xFFFF for i in range(count)))
        return mbap_frame(tid, unit, bytes((3, len(registers))) + registers)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        first_connection = self.connections == 1
        burst: list[tuple[int, int, bytes]] = []
        try:
            while True:
                try:
                    async with asyncio.timeout(0.05 if burst else None):
                        header = await reader.readexactly(7)
                        tid, _, length, unit = struct.unpack(">HHHB", header)
                        pdu = await reader.readexactly(length - 1)
                except TimeoutError:
                    await self._answer_burst(writer, burst)
                    continue
                self.requests += 1
                burst.append((tid, unit, pdu))
                self.largest_burst = max(self.largest_burst, len(burst))
                if first_connection and self.drop_burst and len(burst) >= self.drop_burst:
                    writer.transport.abort()  # hang up with every request unanswered
                    return
                if len(burst) >= max(self.reverse_burst, self.drop_burst, 1):
                    await self._answer_burst(writer, burst)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    async def _answer_burst(self, writer: asyncio.StreamWriter, burst: list[tuple[int, int, bytes]]) -> None:
        ordered = list(reversed(burst)) if self.reverse_burst else list(burst)
        burst.clear()
        for tid, unit, pdu in ordered:
            address = struct.unpack(">H", pdu[1:3])[0]
            if address == self.garbage and self.connections == 1:
                writer.write(b"\x00\x01\x00\x07\x00\x03\x01\x03\x00")  # protocol id 7: not Modbus
                continue
            if address == self.wrong_unit:
                unit = 99
            wait = self.late.get(address, 0.0) or self.delay
            if wait:
                task = asyncio.create_task(self._answer_later(writer, wait, tid, unit, pdu))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                continue
            self.answered.append(tid)
            writer.write(self.answer(tid, unit, pdu))
        await writer.drain()

    async def _answer_later(self, writer: asyncio.StreamWriter, wait: float, tid: int, unit: int, pdu: bytes) -> None:
        await asyncio.sleep(wait)
        if not writer.is_closing():
            self.answered.append(tid)
            writer.write(self.answer(tid, unit, pdu))


@pytest.fixture
async def never_retrieved(caplog: pytest.LogCaptureFixture) -> AsyncIterator[None]:
    """Fails the test when a future's exception was left for the garbage collector to log (a leaked request)."""
    caplog.set_level(logging.ERROR, logger="asyncio")
    yield
    gc.collect()
    await asyncio.sleep(0)
    leaked = [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
    assert leaked == []


# --- the same values as one at a time -----------------------------------------------------------------------------

UNITS = (1, 2, 3)
PROFILE = "eastron/sdm630"


async def read_units(port: int, max_inflight: int) -> list[dict[str, Any]]:
    """Every unit's properties, read through one connection, all devices at once."""
    visitors = load_profile(PROFILE).visitors
    devices = [device(port, visitors, f"unit-{u}", unit=u, max_inflight=max_inflight, max_registers=8)
               for u in UNITS]
    try:
        results = await asyncio.gather(*(read(d) for d in devices))
    finally:
        for d in devices:
            await d.close()
    for result in results:
        assert result.errors == {}
    return [result.values for result in results]


def requests_per_read() -> int:
    visitors = load_profile(PROFILE).visitors
    protocol = device(1, visitors, max_registers=8)
    return len(protocol.plan(list(protocol.device.properties.values())).blocks) * len(UNITS)


async def test_pipelined_reads_give_what_one_at_a_time_gives_from_libmodbus_and_the_python_simulator(
    tmp_path: Path, never_retrieved: None
) -> None:
    units = units_from_profiles([(PROFILE, u) for u in UNITS], animate=False)
    c_sim = CSimulator(tmp_path, units)
    c_port = c_sim.start()
    python_sim = ModbusSimulator(units)
    try:
        python_port = await python_sim.start_tcp()
        reads = {
            (server, inflight): await read_units(port, inflight)
            for server, port in (("libmodbus", c_port), ("python", python_port))
            for inflight in (1, 8)
        }
        received = c_sim.requests()
    finally:
        await python_sim.stop()
        c_sim.stop()
    reference = reads[("python", 1)]
    assert len(reference) == len(UNITS) and all(len(values) > 40 for values in reference)
    for key, values in reads.items():
        assert values == reference, key
    assert received == 2 * requests_per_read()  # every block asked once, one at a time and pipelined
    assert requests_per_read() > 3 * 8  # enough blocks that eight were outstanding at once


async def test_the_c_simulator_serves_several_connections_and_answers_absent_units_as_a_gateway(
    tmp_path: Path,
) -> None:
    c_sim = CSimulator(tmp_path, units_from_profiles([(PROFILE, 7)], animate=False))
    port = c_sim.start()
    try:
        visitors = load_profile(PROFILE).visitors
        present = device(port, visitors, "present", unit=7, max_inflight=4)
        absent = device(port, {"p": {"register": "HoldingRegister", "offset": 0}}, "absent", unit=9, retries=0)
        # a second connection of its own: another host:port spelling
        other = bind(ModbusTcp, {"host": "localhost", "port": port, "unit": 7, "max_inflight": 4}, visitors)
        first, second = await asyncio.gather(read(present), read(other))
        assert first.values == second.values and first.errors == {}
        with pytest.raises(ProtocolError, match="exception 11"):
            await read(absent)
        assert present._link is not other._link  # type: ignore[attr-defined]
        for d in (present, absent, other):
            await d.close()
    finally:
        total = c_sim.stop()
    assert total >= 2


async def wait_for(check: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_the_gateway_polls_pipelined_devices_from_the_layout_the_sim_command_writes(tmp_path: Path) -> None:
    """`fieldgate sim modbus --write-layout` and the C simulator serve what the Python simulator serves; the gateway
    reads it pipelined, goes offline when the simulator stops and polls again when it is back."""
    from gateway.runtime import Gateway

    layout = tmp_path / "written.txt"
    command = [sys.executable, "-m", "gateway", "sim", "modbus", "--write-layout", str(layout)]
    for unit in UNITS:
        command += ["--profile", PROFILE, "--unit", str(unit)]
    await asyncio.to_thread(subprocess.run, command, check=True, timeout=60)
    units = units_from_profiles([(PROFILE, u) for u in UNITS], animate=False)
    reference = ModbusSimulator(units)  # not started: its values are what it would serve
    c_sim = CSimulator(tmp_path, units)
    assert c_sim.layout.read_text() == layout.read_text()
    port = c_sim.start()
    config = tmp_path / "plant.yaml"
    config.write_text("kind: Gateway\nname: gw\neventbus: {url: none}\n" + "".join(
        f"---\nkind: Device\nname: meter-{u}\nprofile: {PROFILE}\nprotocol: {{name: modbus-tcp, config: {{host: "
        f"127.0.0.1, port: {port}, unit: {u}, timeout: 1.0, max_inflight: 8, max_registers: 8}}}}\n" for u in UNITS))
    try:
        async with Gateway.from_path(config, data_dir=tmp_path / "data") as gw:
            twins = {u: gw.api.twin(f"default/meter-{u}") for u in UNITS}

            def all_reported() -> bool:
                return all(p.reported is not None for t in twins.values() for p in t.properties.values())

            await wait_for(all_reported)
            for unit, twin in twins.items():
                for name, prop in twin.properties.items():
                    assert prop.reported == pytest.approx(reference.value(unit, name)), (unit, name)
            c_sim.stop()
            await wait_for(lambda: all(t.state == "offline" for t in twins.values()))
            c_sim.start(port)
            before = c_sim.requests()
            await wait_for(lambda: all(t.state == "online" for t in twins.values()), timeout=40)
            await wait_for(lambda: c_sim.requests() > before + 2 * requests_per_read())  # polling again
    finally:
        c_sim.stop()


# --- matching, timeouts, hang-ups against a scripted server ------------------------------------------------------


async def test_answers_in_reverse_order_are_matched_by_transaction_id(never_retrieved: None) -> None:
    async with ScriptedServer(reverse_burst=8) as server:
        protocol = device(server.port, spaced(8), max_inflight=8)
        try:
            result = await read(protocol)
        finally:
            await protocol.close()
    assert result.values == {f"p{i}": i * SPREAD for i in range(8)} and result.errors == {}
    assert server.largest_burst == 8  # all eight were outstanding together
    assert server.answered == sorted(server.answered, reverse=True)  # and answered last first


async def test_one_request_times_out_on_its_own_and_its_late_answer_is_dropped(never_retrieved: None) -> None:
    late_address = 3 * SPREAD
    async with ScriptedServer(late={late_address: 0.6}) as server:
        protocol = device(server.port, spaced(8), max_inflight=8, timeout=0.25)
        try:
            started = time.monotonic()
            result = await read(protocol)
            elapsed = time.monotonic() - started
            assert result.values == {f"p{i}": i * SPREAD for i in range(8) if i != 3}
            assert list(result.errors) == ["p3"] and "no answer within 0.25s" in result.errors["p3"]
            assert elapsed < 0.55  # the others did not wait for the late one to time out one after another
            link = protocol._link
            assert link is not None and link.connected
            client = link._client
            assert isinstance(client, PipelinedTcpClient) and client.outstanding == 0
            await asyncio.sleep(0.6)  # the late answer arrives: for a request given up on
            assert client.late_answers == 1
            again = await read(protocol)
            assert again.values == {f"p{i}": i * SPREAD for i in range(8) if i != 3}
            assert link._client is client and server.connections == 1  # the connection was kept
        finally:
            await protocol.close()


async def test_an_answer_for_another_unit_fails_its_request_only(never_retrieved: None) -> None:
    async with ScriptedServer(wrong_unit=2 * SPREAD) as server:
        protocol = device(server.port, spaced(8), max_inflight=8, retries=0)
        try:
            result = await read(protocol)
            assert result.values == {f"p{i}": i * SPREAD for i in range(8) if i != 2}
            assert "answer for unit 99 function 3 to a request for unit 1" in result.errors["p2"]
            assert server.connections == 1
        finally:
            await protocol.close()


async def test_a_broken_frame_hangs_up_and_the_requests_are_asked_again(never_retrieved: None) -> None:
    async with ScriptedServer(garbage=5 * SPREAD, reverse_burst=8) as server:
        protocol = device(server.port, spaced(8), max_inflight=8, retries=1)
        try:
            result = await read(protocol)  # what was not answered before the broken frame is asked again
            assert result.values == {f"p{i}": i * SPREAD for i in range(8)} and result.errors == {}
            assert server.connections == 2 and 8 < server.requests <= 16
        finally:
            await protocol.close()


async def test_a_connection_silent_for_every_request_is_made_again(never_retrieved: None) -> None:
    """A hung server, or a peer gone without a word (a pulled cable): nothing comes on the connection at all."""
    async with ScriptedServer(late={i * SPREAD: 30.0 for i in range(8)}) as server:
        protocol = device(server.port, spaced(8), max_inflight=8, timeout=0.25)
        try:
            with pytest.raises(DeviceTimeout):
                await read(protocol)
            with pytest.raises(DeviceTimeout):
                await read(protocol)
            assert server.connections == 2 and server.requests == 16
        finally:
            await protocol.close()


async def test_a_lost_connection_fails_every_outstanding_request_and_the_link_connects_again(
    never_retrieved: None,
) -> None:
    async with ScriptedServer(drop_burst=8) as server:
        protocol = device(server.port, spaced(8), max_inflight=8, retries=0)
        try:
            await protocol.open()
            link = protocol._link
            assert link is not None
            client = link._client
            assert isinstance(client, PipelinedTcpClient)
            async with asyncio.timeout(3):  # failed at once, not after a timeout each
                with pytest.raises(ProtocolError, match="connection lost"):
                    await read(protocol)
            assert client.outstanding == 0 and not client.connected
            assert not link.slots.locked()  # every slot came back
            result = await read(protocol)  # the next poll connects again
            assert result.values == {f"p{i}": i * SPREAD for i in range(8)} and result.errors == {}
            assert server.connections == 2 and link._client is not client
        finally:
            await protocol.close()


async def test_a_lost_connection_is_retried_on_the_new_one(never_retrieved: None) -> None:
    async with ScriptedServer(drop_burst=8) as server:
        protocol = device(server.port, spaced(8), max_inflight=8, retries=1)
        try:
            result = await read(protocol)
        finally:
            await protocol.close()
    assert result.values == {f"p{i}": i * SPREAD for i in range(8)} and server.connections == 2


async def test_a_device_with_one_request_is_not_starved_by_a_pipelining_neighbour() -> None:
    async with ScriptedServer(delay=0.02) as server:
        busy = device(server.port, spaced(48), "busy", max_inflight=8)
        quiet = device(server.port, spaced(1), "quiet")
        try:
            await busy.open()
            await quiet.open()
            assert busy._link is quiet._link and busy._link is not None and busy._link.width == 8
            busy_read = asyncio.create_task(read(busy))
            await asyncio.sleep(0.01)  # eight of busy's requests are outstanding, 40 more to come
            started = time.monotonic()
            quiet_result = await read(quiet)
            waited = time.monotonic() - started
            assert not busy_read.done()
            assert quiet_result.values == {"p0": 0}
            assert waited < 0.1  # one slot's turn, not the 0.12 s busy's other requests take
            assert len((await busy_read).values) == 48
        finally:
            await busy.close()
            await quiet.close()


async def test_one_at_a_time_is_the_default() -> None:
    async with ScriptedServer() as server:
        protocol = device(server.port, spaced(8))
        try:
            assert (await read(protocol)).values == {f"p{i}": i * SPREAD for i in range(8)}
            assert protocol._link is not None and not protocol._link.pipelined
        finally:
            await protocol.close()
    assert server.largest_burst == 1


# --- framing and configuration -------------------------------------------------------------------------------------


def test_frames_split_anywhere_are_put_together_and_a_broken_header_is_refused() -> None:
    stream = mbap_frame(1, 5, b"\x03\x02\x00\x07") + mbap_frame(65535, 6, b"\x83\x02")
    reader = MbapReader()
    frames = [frame for i in range(len(stream)) for frame in reader.feed(stream[i : i + 1])]
    assert frames == [(1, 5, b"\x03\x02\x00\x07"), (65535, 6, b"\x83\x02")]
    with pytest.raises(ModbusIOException, match="protocol id 1"):
        MbapReader().feed(b"\x00\x01\x00\x01\x00\x03\x01\x03\x00")


DOCUMENTS = """kind: DeviceModel
name: m
properties:
  - {name: t, type: int}
---
kind: Device
name: d
model: m
protocol:
  name: PROTOCOL
  config: CONFIG
properties:
  - {name: t, visitor: {register: HoldingRegister, offset: 0}}
"""


BAD_MAX_INFLIGHT = [
    ("modbus-tcp", "{host: 127.0.0.1, max_inflight: 0}", "$.protocol.config.max_inflight: Expected int >= 1, got 0"),
    ("modbus-tcp", "{host: 127.0.0.1, max_inflight: 65}", "$.protocol.config.max_inflight: Expected int <= 64, got 65"),
    ("modbus-tcp", "{host: 127.0.0.1, max_inflight: many}", "$.protocol.config.max_inflight: Expected int, got 'many'"),
    # a serial line carries one request at a time
    ("modbus-rtu", "{port: /dev/ttyS0, max_inflight: 8}", "$.protocol.config: Object contains unknown field "
     "max_inflight"),
]


def test_check_names_a_bad_max_inflight(tmp_path: Path) -> None:
    for index, (protocol, config, _) in enumerate(BAD_MAX_INFLIGHT):
        text = DOCUMENTS.replace("PROTOCOL", protocol).replace("CONFIG", config)
        text = text.replace("name: d\n", f"name: d{index}\n").replace(": m\n", f": m{index}\n")
        (tmp_path / f"plant-{index}.yaml").write_text(text)
    result = subprocess.run([sys.executable, "-m", "gateway", "check", str(tmp_path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    said = sorted(result.stderr.strip().splitlines())
    assert said == [f"{tmp_path}/plant-{index}.yaml: document 2 (Device d{index}): {message}"
                    for index, (_, _, message) in enumerate(BAD_MAX_INFLIGHT)]


def test_a_good_max_inflight_passes_the_check(tmp_path: Path) -> None:
    plant = tmp_path / "plant.yaml"
    plant.write_text(DOCUMENTS.replace("PROTOCOL", "modbus-tcp").replace("CONFIG", "{host: h, max_inflight: 64}"))
    result = subprocess.run([sys.executable, "-m", "gateway", "check", str(plant)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
