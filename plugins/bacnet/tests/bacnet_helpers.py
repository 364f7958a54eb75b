"""Helpers for the BACnet plugin tests: a BACnet device of another implementation (@bacnet-js/client, run with
node) on a free loopback port, and devices bound by hand."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest
from fieldgate_bacnet.config import BacnetConfig, BacnetVisitor
from fieldgate_bacnet.protocol import BacnetIp

from gateway.protocols.base import BoundDevice, BoundProperty
from gateway.resources.schema import Device, DeviceProperty, PropertyModel, ProtocolRef

HERE = Path(__file__).resolve().parent
DEVICE_SCRIPT = HERE / "bacnet_device.js"
BACNET_JS = "@bacnet-js/client@3.3.2"
CACHE = Path(os.environ.get("FIELDGATE_TEST_CACHE", Path.home() / ".cache" / "fieldgate-tests")) / "bacnet-js"


def node_modules() -> Path:
    """The npm package's folder, installed on first use into a cache outside the repository."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the BACnet device of these tests")
    modules = CACHE / "node_modules"
    if not (modules / "@bacnet-js" / "client" / "package.json").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["npm", "install", "--prefix", str(CACHE), "--no-audit", "--no-fund", BACNET_JS],
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"npm install {BACNET_JS} failed: {done.stderr[-2000:]}")
    return modules


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NodeDevice:
    """tests/bacnet_device.js in a node process: started, told what to do over stdin, stopped by its PID."""

    def __init__(self, **settings: Any) -> None:
        self.settings = {"address": "127.0.0.1", "port": free_udp_port(), "instance": 1234, **settings}
        self.process: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        return f"{self.settings['address']}:{self.settings['port']}"

    @property
    def instance(self) -> int:
        return int(self.settings["instance"])

    async def start(self) -> NodeDevice:
        env = {**os.environ, "NODE_PATH": str(node_modules())}
        self.process = await asyncio.create_subprocess_exec(
            "node", str(DEVICE_SCRIPT), json.dumps(self.settings), env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        ready = await self._line(timeout=15)
        assert ready.get("ready"), ready
        return self

    async def _line(self, timeout: float = 5) -> dict[str, Any]:
        assert self.process is not None and self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            err = await self.process.stderr.read() if self.process.stderr else b""
            raise AssertionError(f"the BACnet device ended: {err.decode(errors='replace')[-2000:]}")
        result: dict[str, Any] = json.loads(line)
        return result

    async def command(self, **message: Any) -> dict[str, Any]:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write((json.dumps(message) + "\n").encode())
        await self.process.stdin.drain()
        return await self._line()

    async def dump(self) -> dict[str, Any]:
        return await self.command(cmd="dump")

    async def set_input(self, object_id: str, value: float) -> None:
        await self.command(cmd="set", object=object_id, value=value)

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()


def bind(config: dict[str, Any], visitors: dict[str, dict[str, Any]],
         types: dict[str, str] | None = None, *, name: str = "dev", access: str = "ReadWrite") -> BacnetIp:
    """A protocol instance for a device with these visitors, bound the way the core binds one."""
    cfg = msgspec.convert(config, BacnetConfig)
    props = {}
    for prop_name, raw in visitors.items():
        visitor = msgspec.convert(raw, BacnetVisitor)
        kind = (types or {}).get(prop_name, "double")
        model = PropertyModel(name=prop_name, type=kind, access=access)  # type: ignore[arg-type]
        spec = DeviceProperty(name=prop_name, visitor=raw)
        props[prop_name] = BoundProperty(prop_name, model, spec, visitor, 1.0, 1.0)
    resource = Device(name=name, protocol=ProtocolRef(name="bacnet-ip", config=config))
    return BacnetIp(BoundDevice(resource, cfg, props))


def gateway_config(device: NodeDevice, **extra: Any) -> dict[str, Any]:
    """The protocol config of a device, with the gateway's endpoint on its own free loopback port."""
    return {"address": device.address, "device_instance": device.instance,
            "local_address": f"127.0.0.1:{free_udp_port()}", "timeout": 1.0, **extra}
