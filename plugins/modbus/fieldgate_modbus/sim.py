"""A Modbus device simulator: firmware profiles or device documents served over TCP or a serial line.

Tests start one in-process (`async with ModbusSimulator(units) as sim: await sim.start_tcp()`); the
`fieldgate sim modbus` command runs the same thing from the shell. Values are computed when a request reads
them (counters, sines) or stay as written; every request is logged in `requests` so tests can count them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import yaml
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from fieldgate_modbus.config import INT_TYPES, ModbusVisitor, RtuConfig, TcpConfig
from fieldgate_modbus.wire import from_registers, round_half_away, to_registers
from gateway.errors import ConfigError
from gateway.resources.schema import Device, DeviceModel, PropertyModel, dec_hook

log = logging.getLogger(__name__)

_KIND_OF_FUNCTION = {1: "Coil", 5: "Coil", 15: "Coil", 2: "DiscreteInput", 4: "InputRegister"}
_KIND_OF_FUNCTION.update({fc: "HoldingRegister" for fc in (3, 6, 16, 22, 23)})
_WRITE_FUNCTIONS = frozenset({5, 6, 15, 16})
_COUNTER_HINTS = ("energy", "total", "counter", "hours", "kwh", "import", "export")


@dataclass
class SimPoint:
    """One property of a simulated device: where it lives, its current value and how that value moves."""

    name: str
    visitor: ModbusVisitor
    model: PropertyModel
    value: Any
    wave: Callable[[float], Any] | None = None
    dirty: bool = True

    def image(self) -> list[int]:
        v = self.visitor
        return to_registers(
            v.wire_type,
            self.value,
            byte_order=v.byte_order,
            word_order=v.word_order,
            scale=v.scale,
            length=v.length,
        )

    def decode(self, registers: list[int]) -> Any:
        v = self.visitor
        if v.bit is not None:
            return bool((registers[0] >> v.bit) & 1)
        return from_registers(
            v.wire_type, registers, byte_order=v.byte_order, word_order=v.word_order, scale=v.scale
        )


@dataclass(frozen=True)
class Request:
    unit: int
    function: int
    address: int
    count: int


@dataclass
class SimUnit:
    """One simulated device (a unit id) with its points."""

    unit: int
    points: list[SimPoint]

    @classmethod
    def from_model(
        cls, unit: int, model: DeviceModel, visitors: dict[str, dict[str, Any]], *, animate: bool = True
    ) -> SimUnit:
        """A unit serving every property of `model` that has a visitor, with deterministic start values."""
        points = []
        for index, prop in enumerate(model.properties):
            if prop.name not in visitors:
                continue
            try:
                visitor = msgspec.convert(visitors[prop.name], ModbusVisitor)
            except msgspec.ValidationError as exc:
                raise ConfigError(f"{model.name}: property {prop.name}: visitor: {exc}") from exc
            value = start_value(prop, visitor, index)
            points.append(
                SimPoint(prop.name, visitor, prop, value, _wave(prop, visitor, value) if animate else None)
            )
        return cls(unit, points)

    def point(self, name: str) -> SimPoint:
        for point in self.points:
            if point.name == name:
                return point
        raise KeyError(name)


def start_value(prop: PropertyModel, visitor: ModbusVisitor, index: int) -> Any:
    """A deterministic value that fits the wire type, the model's range and the scale, exact on the wire."""
    wire = visitor.wire_type
    if wire == "bool":
        return index % 2 == 0
    if wire == "string":
        text = f"FG-{prop.name}".upper()
        return text[: visitor.length * 2]
    low = prop.minimum if prop.minimum is not None else 0.0
    high = prop.maximum if prop.maximum is not None else low + 1000.0
    target = low + (high - low) * ((index * 37) % 89 + 5) / 100.0
    if wire in INT_TYPES:
        raw = round_half_away(target / visitor.scale)
        if wire.startswith("u"):
            raw = max(raw, 0)
        raw = max(min(raw, 32767), -32768)
        return raw if visitor.scale == 1 else raw * visitor.scale
    # float32: a quarter step survives single precision for every value a register map holds
    return round(target * 4) / 4


def _wave(prop: PropertyModel, visitor: ModbusVisitor, start: Any) -> Callable[[float], Any] | None:
    """How the value moves when animated: counters climb, measurements swing, setpoints and text stay."""
    if prop.access == "ReadWrite" or visitor.wire_type in ("bool", "string"):
        return None
    counter = any(hint in f"{prop.name} {prop.unit}".lower() for hint in _COUNTER_HINTS)
    integer = visitor.wire_type in INT_TYPES and visitor.scale == 1
    low = prop.minimum if prop.minimum is not None else -math.inf
    high = prop.maximum if prop.maximum is not None else math.inf
    origin = time.monotonic()

    def value_at(now: float) -> Any:
        elapsed = now - origin
        if counter:
            moved = start + elapsed * 0.5
        else:
            amplitude = max(abs(start) * 0.05, 1.0)
            moved = start + amplitude * math.sin(2 * math.pi * elapsed / 60.0)
        moved = min(max(moved, low), high)
        if integer:
            return round_half_away(moved)
        if visitor.wire_type in INT_TYPES:
            return round_half_away(moved / visitor.scale) * visitor.scale
        return moved

    return value_at


class _InOrderHandler(ServerRequestHandler):
    """One client connection that may send several requests before it waits for their answers.

    pymodbus' handler takes one request from what the socket delivered and keeps the rest for the next delivery,
    which never comes when the client sent its requests back to back and now waits: this one takes every whole
    request at once and answers them one after the other, in order, as a device answers a pipelining client."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)  # type: ignore[no-untyped-call]
        self._pending: deque[tuple[ModbusPDU, Any]] = deque()
        self._answering: asyncio.Task[None] | None = None

    def callback_data(self, data: bytes, addr: tuple[Any, ...] | None = None) -> int:
        used = 0
        while used < len(data):
            try:
                cut = int(super(ServerRequestHandler, self).callback_data(data[used:], addr))
            except ModbusIOException as exc:  # as pymodbus: an undecodable request gets "illegal function"
                code = 0 if exc.fcode is None else exc.fcode
                answer = ExceptionResponse(code, exception_code=ExcCodes.ILLEGAL_FUNCTION, device_id=exc.dev_id,
                                           transaction=exc.transaction_id)
                self.server_send(answer, addr)  # type: ignore[no-untyped-call]
                return len(data)
            if not cut:
                break
            used += cut
            if self.last_pdu:
                self._pending.append((self.last_pdu, self.last_addr))
        if self._pending and (self._answering is None or self._answering.done()):
            self._answering = asyncio.get_running_loop().create_task(self._answer_pending())
        return used

    async def _answer_pending(self) -> None:
        while self._pending:
            self.last_pdu, self.last_addr = self._pending.popleft()
            await self.handle_request()  # type: ignore[no-untyped-call]


class _TcpServer(ModbusTcpServer):
    """pymodbus' Modbus TCP server with connections that take requests sent back to back."""

    def callback_new_connection(self) -> _InOrderHandler:
        return _InOrderHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


class ModbusSimulator:
    """Serves units over TCP or RTU; `requests` logs requests, `exception_code` and `delay` add faults."""

    def __init__(self, units: Sequence[SimUnit]) -> None:
        if not units:
            raise ConfigError("the simulator needs at least one unit")
        ids = [u.unit for u in units]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"unit ids must be distinct, got {ids}")
        self.units = {u.unit: u for u in units}
        # per unit and register kind, the points in store order with their address range: what a request scans
        self._served: dict[tuple[int, str], list[tuple[int, int, SimPoint]]] = {}
        for u in units:
            for point in _in_store_order(u.points):
                v = point.visitor
                self._served.setdefault((u.unit, v.kind), []).append((v.offset, v.offset + v.register_count, point))
        self.requests: list[Request] = []
        self.exception_code: ExcCodes | None = None
        self.delay = 0.0
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self.port: int | None = None

    # --- values --------------------------------------------------------------------------------------------

    def value(self, unit: int, name: str) -> Any:
        """The value the device holds now, decoded from what it serves (overlapping points too)."""
        sim_unit = self.units[unit]
        point = sim_unit.point(name)
        now = time.monotonic()
        v = point.visitor
        if v.bits:
            if point.wave is not None:
                point.value = point.wave(now)
            return bool(point.value)
        window = [0] * v.register_count
        for other in _in_store_order(sim_unit.points):
            o = other.visitor
            if (
                o.kind != v.kind
                or o.offset + o.register_count <= v.offset
                or o.offset >= v.offset + len(window)
            ):
                continue
            if other.wave is not None:
                other.value = other.wave(now)
            if o.bit is not None:
                i = o.offset - v.offset
                window[i] = (window[i] & ~(1 << o.bit)) | (int(bool(other.value)) << o.bit)
                continue
            for i, register in enumerate(other.image()):
                if 0 <= o.offset + i - v.offset < len(window):
                    window[o.offset + i - v.offset] = register
        return point.decode(window)

    def set_value(self, unit: int, name: str, value: Any) -> None:
        point = self.units[unit].point(name)
        point.value, point.wave, point.dirty = value, None, True

    # --- serving -------------------------------------------------------------------------------------------

    def _devices(self) -> list[SimDevice]:
        for unit in self.units.values():  # a fresh server starts with empty blocks: serve every value again
            for point in unit.points:
                point.dirty = True
        return [self._device(unit) for unit in self.units.values()]

    def _device(self, unit: SimUnit) -> SimDevice:
        ends = {"Coil": 16, "DiscreteInput": 16, "HoldingRegister": 1, "InputRegister": 1}
        for point in unit.points:
            kind = point.visitor.kind
            ends[kind] = max(ends[kind], point.visitor.offset + point.visitor.register_count)
        # serve some room past the last point so that reads through gaps and margins work, like real maps
        regs = {k: min(ends[k] + 64, 65536) for k in ("HoldingRegister", "InputRegister")}
        bits = {k: min(-(-(ends[k] + 64) // 16) * 16, 65536) for k in ("Coil", "DiscreteInput")}

        async def action(
            function: int,
            start: int,
            address: int,
            count: int,
            registers: list[int],
            values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            if function in _WRITE_FUNCTIONS and not values:
                return None  # the runtime reads back after a write to build its answer: not a request
            self.requests.append(Request(unit.unit, function, address, count))
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.exception_code is not None:
                return self.exception_code
            kind = _KIND_OF_FUNCTION.get(function)
            if kind is not None:
                self._serve(unit, kind, start, address, count, registers, values)
            return None

        return SimDevice(
            unit.unit,
            simdata=(
                [SimData(0, values=[False] * bits["Coil"], datatype=DataType.BITS)],
                [SimData(0, values=[False] * bits["DiscreteInput"], datatype=DataType.BITS)],
                [SimData(0, values=[0] * regs["HoldingRegister"], datatype=DataType.REGISTERS)],
                [SimData(0, values=[0] * regs["InputRegister"], datatype=DataType.REGISTERS)],
            ),
            action=action,
        )

    def _serve(
        self,
        unit: SimUnit,
        kind: str,
        start: int,
        address: int,
        count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> None:
        """Put current values into the served block before a read; take written values after a write."""
        bits = kind in ("Coil", "DiscreteInput")
        if bits:
            # the runtime passes a bit address and a count of 16-bit words
            first, last = address, address + (len(values) if values else count * 16)
        else:
            first, last = address, address + (len(values) if values else count)
        now = time.monotonic()
        for offset, end, point in self._served.get((unit.unit, kind), ()):
            if end <= first or offset >= last:
                continue
            if point.wave is not None and values is None:
                point.value, point.dirty = point.wave(now), True
            if point.dirty:
                self._store(point, start, registers, bits)
                point.dirty = False
            if values is not None:
                self._take(point, start, address, registers, values, bits)

    @staticmethod
    def _store(point: SimPoint, start: int, registers: list[int], bits: bool) -> None:
        v = point.visitor
        if bits:
            word, bit = v.offset // 16 - start, v.offset % 16
            registers[word] = (registers[word] & ~(1 << bit)) | (int(bool(point.value)) << bit)
        elif v.bit is not None:
            index = v.offset - start
            registers[index] = (registers[index] & ~(1 << v.bit)) | (int(bool(point.value)) << v.bit)
        else:
            image = point.image()
            registers[v.offset - start : v.offset - start + len(image)] = image

    @staticmethod
    def _take(
        point: SimPoint, start: int, address: int, registers: list[int], values: Sequence[Any], bits: bool
    ) -> None:
        v = point.visitor
        point.wave = None
        if bits:
            index = v.offset - address
            if 0 <= index < len(values):
                point.value = bool(values[index])
            return
        image = list(registers[v.offset - start : v.offset - start + v.register_count])
        for i in range(v.register_count):
            if 0 <= v.offset + i - address < len(values):
                image[i] = int(values[v.offset + i - address])
        point.value = point.decode(image)

    def _silence_absent_units(self, sending: bool, frame: bytes) -> bytes:
        """On a real bus nobody answers for an absent unit (pymodbus would answer with exception 4)."""
        if sending and frame and frame[0] not in self.units:
            return b""
        return frame

    def _gateway_answer_for_absent_units(self, sending: bool, frame: bytes) -> bytes:
        """Behind one TCP address, a unit that is not there gets what a Modbus TCP gateway answers: exception 11,
        gateway target device failed to respond (pymodbus would answer 4, device failure)."""
        if sending and len(frame) >= 9 and frame[6] not in self.units and frame[7] & 0x80:
            return frame[:8] + bytes([ExcCodes.GATEWAY_NO_RESPONSE]) + frame[9:]
        return frame

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on host:port (0 picks a free port); returns the port."""
        server = _TcpServer(self._devices(), address=(host, port),
                                 trace_packet=self._gateway_answer_for_absent_units)
        await server.serve_forever(background=True)
        self._server = server
        transport: Any = server.transport
        bound = int(transport.sockets[0].getsockname()[1]) if port == 0 else port
        self.port = bound
        return bound

    async def start_serial(self, config: RtuConfig) -> None:
        """Answer on a serial device (e.g. one end of a socat pty pair)."""
        server = ModbusSerialServer(
            self._devices(),
            port=config.port,
            baudrate=config.baudrate,
            bytesize=config.bytesize,
            parity=config.parity,
            stopbits=config.stopbits,
            trace_packet=self._silence_absent_units,
        )
        await server.serve_forever(background=True)
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.wait_for(server.shutdown(), timeout=5)  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> ModbusSimulator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _in_store_order(points: list[SimPoint]) -> list[SimPoint]:
    """Whole values first, then single bits, so that a bit point sharing a register with a word point wins."""
    return sorted(points, key=lambda p: p.visitor.bit is not None)


# --- the register layout the C simulator serves --------------------------------------------------------------

_LAYOUT_KINDS = {"Coil": "c", "DiscreteInput": "d", "HoldingRegister": "h", "InputRegister": "i"}


def register_layout(units: Sequence[SimUnit]) -> str:
    """The units' start values as `plugins/modbus/sim/modbus_sim.c` reads them: "UNIT KIND ADDRESS VALUE…" lines.

    The same words the Python simulator serves before anything moves (bit points set their bit of a shared
    register; whole values first, as `_in_store_order`)."""
    lines = ["# fieldgate Modbus register layout: UNIT KIND(c|d|h|i) ADDRESS VALUE... (one run of addresses a line)"]
    for unit in units:
        cells: dict[str, dict[int, int]] = {}
        for point in _in_store_order(unit.points):
            v = point.visitor
            served = cells.setdefault(v.kind, {})
            if v.bits:
                served[v.offset] = int(bool(point.value))
            elif v.bit is not None:
                word = served.get(v.offset, 0)
                served[v.offset] = (word & ~(1 << v.bit)) | (int(bool(point.value)) << v.bit)
            else:
                for i, register in enumerate(point.image()):
                    served[v.offset + i] = register
        for kind, served in cells.items():
            run: list[int] = []
            start = 0
            for address in sorted(served):
                if run and address != start + len(run):
                    lines.append(f"{unit.unit} {_LAYOUT_KINDS[kind]} {start} {' '.join(map(str, run))}")
                    run = []
                if not run:
                    start = address
                run.append(served[address])
            if run:
                lines.append(f"{unit.unit} {_LAYOUT_KINDS[kind]} {start} {' '.join(map(str, run))}")
    return "\n".join(lines) + "\n"


# --- building units from profiles and device documents ------------------------------------------------------


def units_from_profiles(pairs: Iterable[tuple[str, int]], *, animate: bool = True) -> list[SimUnit]:
    from gateway.resources.profiles import load_profile

    units = []
    for ref, unit in pairs:
        profile = load_profile(ref)
        units.append(SimUnit.from_model(unit, profile.model, profile.visitors, animate=animate))
    return units


def units_from_documents(path: Path, *, animate: bool = True) -> list[SimUnit]:
    """One unit per Modbus device in a YAML file of fieldgate documents (models from the file or profiles)."""
    try:
        raw_documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    models: dict[str, DeviceModel] = {}
    devices: list[Device] = []
    for index, raw in enumerate(raw_documents, 1):
        kind = raw.get("kind") if isinstance(raw, dict) else None
        target = {"DeviceModel": DeviceModel, "Device": Device}.get(str(kind))
        if target is None:
            continue
        try:
            document = msgspec.convert(raw, target, dec_hook=dec_hook)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{path}: document {index}: {exc}") from exc
        if isinstance(document, DeviceModel):
            models[document.name] = document
        elif isinstance(document, Device) and document.protocol.name.startswith("modbus"):
            devices.append(document)
    units = []
    for device in devices:
        config_type = TcpConfig if device.protocol.name == "modbus-tcp" else RtuConfig
        unit = int(device.protocol.config.get("unit", 1))
        if device.profile:
            from gateway.resources.profiles import load_profile

            profile = load_profile(device.profile)
            units.append(SimUnit.from_model(unit, profile.model, profile.visitors, animate=animate))
            continue
        if device.model not in models:
            raise ConfigError(f"{path}: device {device.name}: model {device.model!r} is not in the file")
        msgspec.convert(device.protocol.config, config_type)  # reject a config the protocol would reject
        visitors = {p.name: p.visitor for p in device.properties if p.visitor}
        units.append(SimUnit.from_model(unit, models[device.model], visitors, animate=animate))
    if not units:
        raise ConfigError(f"{path}: no Modbus devices in the file")
    return units
