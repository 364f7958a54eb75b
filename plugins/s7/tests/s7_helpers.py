"""Helpers for the S7 tests: the native Snap7 server as a child process, a proxy that counts S7 requests, devices
bound by hand.

The PLC the tests talk to is the snap7 C++ server (python-snap7 2.x carries it as libsnap7.so), written by nobody on
the team and independent of the pure-Python python-snap7 3.x the gateway uses. python-snap7 2.x cannot share a venv
with 3.x, so the tests install it once into a cache outside the repository and run the server with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import selectors
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

import msgspec
from fieldgate_s7.config import S7Config, S7Visitor
from fieldgate_s7.protocol import S7Protocol

from gateway.protocols.base import BoundDevice, BoundProperty
from gateway.resources.schema import Device, DeviceProperty, PropertyModel, ProtocolRef
from gateway.testing import free_port

NATIVE_VERSION = "2.0.2"
CACHE = Path(os.environ.get("FIELDGATE_TEST_CACHE", Path.home() / ".cache" / "fieldgate-tests"))
SERVER_SCRIPT = Path(__file__).with_name("s7_server.py")


def native_snap7() -> Path:
    """A folder holding python-snap7 2.x with its native library, installed from PyPI on first use."""
    target = CACHE / f"python-snap7-{NATIVE_VERSION}"
    if (target / "snap7" / "lib" / "libsnap7.so").exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".python-snap7.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # test processes started together install it once
        if not (target / "snap7" / "lib" / "libsnap7.so").exists():
            partial = target.with_name(target.name + ".partial")
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                            "--target", str(partial), f"python-snap7=={NATIVE_VERSION}"], check=True, timeout=300)
            partial.rename(target)
    return target


class PlcServer:
    """The snap7 server in a child process on a loopback port, with its memory areas; stopped by PID."""

    def __init__(self, areas: dict[str, int], port: int | None = None) -> None:
        self.areas = areas
        self.port = port or free_port()
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> PlcServer:
        env = {**os.environ, "PYTHONPATH": str(native_snap7())}
        self.process = subprocess.Popen(
            [sys.executable, str(SERVER_SCRIPT), str(self.port), *(f"{k}={v}" for k, v in self.areas.items())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        line = self._line(10.0)
        if line != "ready":
            self.stop()
            raise RuntimeError(f"the snap7 server did not start: {line!r}")
        return self

    def _line(self, timeout: float) -> str:
        assert self.process is not None and self.process.stdout is not None
        stdout: IO[str] = self.process.stdout
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if selector.select(timeout=max(deadline - time.monotonic(), 0.01)):
                    return stdout.readline().strip()
        raise TimeoutError("the snap7 server did not answer in time")

    def _command(self, **command: Any) -> dict[str, Any]:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        answer: dict[str, Any] = json.loads(self._line(10.0))
        return answer

    def get(self, area: str, start: int, size: int) -> bytes:
        """Bytes of the server's memory, as the PLC holds them now."""
        return bytes.fromhex(self._command(op="get", area=area, start=start, size=size)["hex"])

    def set(self, area: str, start: int, data: bytes) -> None:
        self._command(op="set", area=area, start=start, hex=data.hex())

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(OSError):
            assert process.stdin is not None
            process.stdin.close()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def kill(self) -> None:
        """The PLC goes away at once (power off): its connections drop."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(5)


class CountingProxy:
    """Forwards TCP between the gateway and a PLC, counting the S7 requests by function and the items of each read,
    and noting the longest answer; `stall` holds every byte (a PLC that stops answering)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.functions: Counter[int] = Counter()
        self.read_items: list[int] = []
        self.longest_answer = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def stall(self) -> bool:
        return not self._flowing.is_set()

    @stall.setter
    def stall(self, held: bool) -> None:
        if held:
            self._flowing.clear()
        else:
            self._flowing.set()

    def reset(self) -> None:
        self.functions.clear()
        self.read_items.clear()
        self.longest_answer = 0

    @property
    def reads(self) -> int:
        return self.functions[0x04]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers += [writer, up_writer]
        await asyncio.gather(self._pump(reader, up_writer, True), self._pump(up_reader, writer, False),
                             return_exceptions=True)
        for w in (writer, up_writer):
            w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, requests: bool) -> None:
        while True:
            header = await reader.readexactly(4)  # TPKT: version, reserved, length
            frame = header + await reader.readexactly(int.from_bytes(header[2:4], "big") - 4)
            payload = frame[7:]  # after TPKT (4) and COTP DT (3)
            if frame[5] == 0xF0 and len(payload) >= 12 and payload[0] == 0x32:
                if requests and payload[1] == 0x01:
                    function = payload[10]
                    self.functions[function] += 1
                    if function == 0x04:
                        self.read_items.append(payload[11])
                elif not requests:
                    self.longest_answer = max(self.longest_answer, len(payload))
            await self._flowing.wait()
            writer.write(frame)
            await writer.drain()

    def drop(self) -> None:
        """Close every connection through the proxy (a cable pulled and put back)."""
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    async def stop(self) -> None:
        self._flowing.set()
        if self._server is not None:
            self._server.close()
        self.drop()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()


def model_type(visitor: S7Visitor) -> str:
    if visitor.type == "BOOL":
        return "boolean"
    if visitor.type in ("STRING", "DATE", "TIME_OF_DAY", "DATE_AND_TIME", "DTL"):
        return "string"
    if visitor.type in ("REAL", "LREAL"):
        return "double"
    return "int"


def bind(config: dict[str, Any], visitors: dict[str, dict[str, Any]], *, name: str = "plc") -> S7Protocol:
    """A protocol instance for a device with these visitors, bound the way the core binds one."""
    cfg = msgspec.convert(config, S7Config)
    props = {}
    for prop_name, raw in visitors.items():
        visitor = msgspec.convert(raw, S7Visitor)
        model = PropertyModel(name=prop_name, type=model_type(visitor), access="ReadWrite")  # type: ignore[arg-type]
        props[prop_name] = BoundProperty(prop_name, model, DeviceProperty(name=prop_name, visitor=raw), visitor,
                                         1.0, 1.0)
    resource = Device(name=name, protocol=ProtocolRef(name="s7", config=config))
    return S7Protocol(BoundDevice(resource, cfg, props))
