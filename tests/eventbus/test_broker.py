"""The embedded broker as real processes: it ends with the gateway, even after `kill -9`, and a stale one left by
an earlier gateway is stopped at start, while a process that is not ours is never touched."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import psutil

from gateway.eventbus.broker import find_mosquitto
from gateway.runtime import Gateway
from gateway.testing import wait_until
from tests.conftest import FIELDGATE, Mosquitto, free_port
from tests.test_runtime import MODEL, virtual_device

TELEMETRY = "fieldgate/test-gw/default/d1/telemetry"


def embedded_config(tmp_path: Path, port: int, http_port: int | None = None) -> Path:
    http = f"http: {{listen: \"127.0.0.1:{http_port}\"}}\n" if http_port else ""
    text = MODEL.replace("eventbus: {url: none}\n",
                         f"eventbus: {{url: embedded, embedded_listen: \"127.0.0.1:{port}\"}}\n{http}")
    path = tmp_path / "config.yaml"
    path.write_text(text + virtual_device("d1"), encoding="utf-8")
    return path


def gone(pid: int) -> bool:
    """No such process, or only its zombie (a process that has exited but was not reaped yet)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait(condition: object, timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition() if callable(condition) else condition
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout}s")


def broker_child(gateway_pid: int) -> int | None:
    """The pid of the mosquitto the gateway process started, if it runs."""
    try:
        children = psutil.Process(gateway_pid).children()
    except psutil.NoSuchProcess:
        return None
    return next((c.pid for c in children if c.name() == "mosquitto" and c.status() != psutil.STATUS_ZOMBIE), None)


@contextmanager
def killed_at_exit(pids: list[int]) -> Iterator[None]:
    """Whatever the test started (gateways, brokers) is killed by PID when it ends, passed or not."""
    try:
        yield
    finally:
        for pid in pids:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


async def telemetry_arrives(port: int) -> None:
    """A reading of d1 arrives at an app on the broker's port (which the broker may still be opening)."""
    async with asyncio.timeout(30):
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", port, timeout=5) as client:
                    await client.subscribe(TELEMETRY)
                    async for message in client.messages:
                        assert str(message.topic) == TELEMETRY
                        return
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)


def test_broker_ends_with_a_killed_gateway_and_the_next_start_runs_its_own(tmp_path: Path) -> None:
    port = free_port()
    config = embedded_config(tmp_path, port, free_port())
    command = [*FIELDGATE, "run", "-c", str(config), "--data-dir", str(tmp_path / "data")]
    pids: list[int] = []
    with killed_at_exit(pids), open(tmp_path / "gateway.log", "wb") as log:
        first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        pids.append(first.pid)
        old_broker = int(wait(lambda: broker_child(first.pid), 30, "the first gateway's broker"))  # type: ignore[arg-type]
        pids.append(old_broker)
        asyncio.run(telemetry_arrives(port))
        first.kill()
        first.wait(10)
        wait(lambda: gone(old_broker), 10, "the broker of the killed gateway ending")

        second = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        pids.append(second.pid)
        new_broker = int(wait(lambda: broker_child(second.pid), 30, "the second gateway's broker"))  # type: ignore[arg-type]
        pids.append(new_broker)
        assert new_broker != old_broker
        asyncio.run(telemetry_arrives(port))
        listeners = {c.pid for c in psutil.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        assert listeners == {new_broker}
        second.terminate()
        assert second.wait(30) == 0
        wait(lambda: gone(new_broker), 10, "the broker ending with its gateway")
    assert b"Address already in use" not in (tmp_path / "gateway.log").read_bytes()


def test_a_stale_broker_of_ours_is_stopped_and_a_stranger_is_left_alone(tmp_path: Path) -> None:
    port = free_port()
    config = embedded_config(tmp_path, port, free_port())
    data = tmp_path / "data"
    broker_dir = data / "broker"
    broker_dir.mkdir(parents=True)
    conf = broker_dir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n", encoding="utf-8")
    binary = find_mosquitto()
    assert binary is not None
    pids: list[int] = []
    with killed_at_exit(pids):
        # What a gateway killed before its broker could follow leaves: the broker, and its pid file.
        stale = subprocess.Popen([binary, "-c", str(conf.resolve())], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        pids.append(stale.pid)
        (broker_dir / "mosquitto.pid").write_text(f"{stale.pid}\n")
        gateway = subprocess.Popen([*FIELDGATE, "run", "-c", str(config), "--data-dir", str(data)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pids.append(gateway.pid)
        assert stale.wait(30) is not None
        own = int(wait(lambda: broker_child(gateway.pid), 30, "the gateway's own broker"))  # type: ignore[arg-type]
        pids.append(own)
        asyncio.run(telemetry_arrives(port))
        gateway.terminate()
        assert gateway.wait(30) == 0

        # A pid file naming a process that is not a broker of this data dir: it is left alone.
        stranger = subprocess.Popen(["sleep", "60"])
        pids.append(stranger.pid)
        (broker_dir / "mosquitto.pid").write_text(f"{stranger.pid}\n")
        gateway = subprocess.Popen([*FIELDGATE, "run", "-c", str(config), "--data-dir", str(data)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pids.append(gateway.pid)
        own = int(wait(lambda: broker_child(gateway.pid), 30, "the gateway's own broker"))  # type: ignore[arg-type]
        pids.append(own)
        asyncio.run(telemetry_arrives(port))
        assert stranger.poll() is None
        gateway.terminate()
        assert gateway.wait(30) == 0
        stranger.kill()
        stranger.wait()


async def test_a_port_taken_by_another_broker_is_an_error_not_a_broker_to_use(
        tmp_path: Path, mosquitto: Mosquitto, start_gateway: Callable[..., Any]) -> None:
    gw: Gateway = await start_gateway(embedded_config(tmp_path, mosquitto.port))
    status = gw.supervisor.status["embedded-broker"]
    await wait_until(lambda: "is taken by another program" in status.last_error)
    assert gw.eventbus is not None and gw.eventbus.client is None
    assert not (tmp_path / "data" / "broker" / "mosquitto.pid").exists()
