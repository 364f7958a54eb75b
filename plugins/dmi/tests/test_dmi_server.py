"""The DMI server's socket (owner-only, removed on stop, a stale one replaced, a live one or another file left alone)
and device states from a mapper's silence."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from dmi_mapper import Mapper

from gateway.runtime import Gateway
from gateway.testing import free_port, wait_until

DEVICE = """\
kind: DeviceModel
name: meter
properties:
  - {name: power, type: float, unit: W}
---
kind: Device
name: meter-1
model: meter
timeout: 300ms
protocol: {name: dmi, config: {mapper: modbus}}
properties:
  - {name: power, collect_interval: 100ms, visitor: {config_data: {register: InputRegister, offset: 0}}}
"""


def config(socket_path: Path, port: int | None = None) -> str:
    http = f'\nhttp: {{listen: "127.0.0.1:{port}"}}' if port else ""
    return f"""\
kind: Gateway
name: edge-1{http}
eventbus: {{url: none}}
store: {{flush_interval: 50ms}}
---
kind: Endpoint
name: dmi
type: dmi
properties: {{socket: {socket_path}}}
---
{DEVICE}"""


async def test_the_socket_is_owner_only_and_removed_on_stop(short_dir: Path, write_config: Callable[..., Path],
                                                           start_gateway: Callable[..., Any]) -> None:
    path = short_dir / "kubeedge" / "dmi.sock"  # its directory is made when missing, as edgecore's is
    gateway: Gateway = await start_gateway(write_config(config(path)))
    await wait_until(path.exists, timeout=10)
    mode = os.lstat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert list(path.parent.iterdir()) == [path]  # the directory it was bound in first is gone
    await gateway.stop()
    assert not path.exists()


async def test_a_stale_socket_of_a_killed_gateway_is_replaced(kubeedge: SimpleNamespace, short_dir: Path,
                                                             tmp_path: Path, write_config: Callable[..., Path],
                                                             start_gateway: Callable[..., Any]) -> None:
    path = short_dir / "dmi.sock"
    file = write_config(config(path, free_port()))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "run", "-c", str(file), "--data-dir", str(tmp_path / "killed"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await wait_until(path.exists, timeout=30)
    finally:
        process.send_signal(signal.SIGKILL)
        async with asyncio.timeout(10):
            await process.wait()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)  # left behind, nobody listening
    with pytest.raises(ConnectionRefusedError), socket.socket(socket.AF_UNIX) as probe:
        probe.connect(str(path))

    gateway: Gateway = await start_gateway(write_config(config(path)))
    mapper = Mapper(kubeedge, path, short_dir / "modbus.sock")
    try:
        response = await wait_until(lambda: _register(mapper), timeout=10)
        assert [d.name for d in response.deviceList] == ["meter-1"]
        assert gateway.api.tasks()["dmi server"].restarts == 0
    finally:
        await mapper.stop()


async def _register(mapper: Mapper) -> Any:
    try:
        return await mapper.register()
    except Exception:
        return None


@pytest.mark.parametrize("occupant", ["a file", "a live socket"])
async def test_what_is_not_a_stale_socket_is_left_alone(occupant: str, short_dir: Path,
                                                        write_config: Callable[..., Path],
                                                        start_gateway: Callable[..., Any]) -> None:
    path = short_dir / "dmi.sock"
    listener: socket.socket | None = None
    if occupant == "a file":
        path.write_text("not a socket")
    else:
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(path))
        listener.listen()
    try:
        gateway: Gateway = await start_gateway(write_config(config(path)))
        status = await wait_until(lambda: (task := gateway.api.tasks().get("dmi server")) and task.last_error and task,
                                  timeout=10)
        expected = "is not a socket" if occupant == "a file" else "another process serves this socket"
        assert expected in status.last_error
        if occupant == "a file":
            assert path.read_text() == "not a socket"
        else:
            assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert os.listdir(short_dir) == ["dmi.sock"]
    finally:
        if listener is not None:
            listener.close()


async def test_devices_go_offline_while_their_mapper_is_silent(kubeedge: SimpleNamespace, short_dir: Path,
                                                             write_config: Callable[..., Path],
                                                             start_gateway: Callable[..., Any]) -> None:
    path = short_dir / "dmi.sock"
    gateway: Gateway = await start_gateway(write_config(config(path)))
    twin = gateway.api.twin("default/meter-1")
    await wait_until(lambda: twin.state == "offline", timeout=10)
    assert twin.state_reason == "no mapper has registered for protocol 'modbus'"

    mapper = Mapper(kubeedge, path, short_dir / "modbus.sock")
    reporting = asyncio.Event()

    async def report_every_100ms() -> None:  # as a mapper reports each property every collect cycle
        while True:
            await reporting.wait()
            await mapper.report("meter-1", {"power": "1500"})
            await asyncio.sleep(0.1)

    reporter = asyncio.get_running_loop().create_task(report_every_100ms())
    try:
        await wait_until(lambda: _register(mapper), timeout=10)
        reporting.set()
        await wait_until(lambda: twin.state == "online", timeout=10)
        assert twin.properties["power"].reported == 1500.0 and twin.properties["power"].quality == "good"

        reporting.clear()
        silent_since = time.monotonic()
        await wait_until(lambda: twin.state == "offline", timeout=10)
        assert time.monotonic() - silent_since >= 0.3  # the timeout plus a collect interval passed first
        assert twin.state_reason.startswith("no report from mapper 'test-mapper' (protocol modbus, at ")
        assert twin.properties["power"].quality == "bad"

        reporting.set()
        back_since = time.monotonic()
        await wait_until(lambda: twin.state == "online", timeout=10)
        assert time.monotonic() - back_since < 5  # the protocol's short backoff, not the poller's 30 s
    finally:
        reporter.cancel()
        await mapper.stop()
