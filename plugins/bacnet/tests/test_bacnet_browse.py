"""`fieldgate browse bacnet` against a device of another implementation (@bacnet-js/client) on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from bacnet_helpers import DEVICE_SCRIPT, free_udp_port, node_modules

FIELDGATE = [sys.executable, "-m", "gateway"]


async def fieldgate(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, [*FIELDGATE, *args], capture_output=True, text=True,
                                   timeout=timeout)


async def test_browse_finds_the_device_and_writes_documents_check_accepts(bacnet_device: Any,
                                                                          tmp_path: Path) -> None:
    device = await bacnet_device(instance=4321, inputs=2)
    out = tmp_path / "found.yaml"
    done = await fieldgate("browse", "bacnet", "--interface", f"127.0.0.1:{free_udp_port()}", "--address",
                           device.address, "--wait", "1", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert f"{device.address}: device 4321 (test-device-4321), 5 objects" in done.stderr
    model, dev = list(yaml.safe_load_all(out.read_text()))
    assert model["kind"] == "DeviceModel" and model["name"] == "test-device-4321"
    assert {p["name"]: (p["type"], p["access"], p.get("unit")) for p in model["properties"]} == {
        "zone-setpoint": ("double", "ReadWrite", "degrees-celsius"),
        "fan-enable": ("boolean", "ReadWrite", None),
        "operating-mode": ("int", "ReadWrite", None),
        "sensor-1": ("double", "ReadOnly", "percent-relative-humidity"),
        "sensor-2": ("double", "ReadOnly", "percent-relative-humidity"),
    }
    assert dev["protocol"]["config"]["address"] == device.address
    assert dev["protocol"]["config"]["device_instance"] == 4321
    assert dev["properties"][0] == {"name": "zone-setpoint",
                                    "visitor": {"object_type": "analog-value", "instance": 1}}
    assert (await device.dump())["stats"]["whoIs"] == 1
    checked = await fieldgate("check", str(out))
    assert checked.returncode == 0, checked.stderr


async def test_browse_for_another_instance_finds_nothing(bacnet_device: Any) -> None:
    device = await bacnet_device(instance=10)
    done = await fieldgate("browse", "bacnet", "--interface", f"127.0.0.1:{free_udp_port()}", "--address",
                           device.address, "--device", "11", "--wait", "0.5")
    assert done.returncode == 1
    assert f"no device answered at {device.address} within 0.5s" in done.stderr


async def test_browse_refuses_bad_arguments() -> None:
    no_prefix = await fieldgate("browse", "bacnet", "--interface", "127.0.0.1:47808")
    assert no_prefix.returncode == 2
    assert "a broadcast needs the network's prefix" in no_prefix.stderr
    bad = await fieldgate("browse", "bacnet", "--address", "300.1.2.3")
    assert bad.returncode == 2 and "'300.1.2.3' is not an IPv4 address" in bad.stderr


def _can_make_namespaces() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


@pytest.mark.skipif(not _can_make_namespaces(), reason="network namespaces need root and iproute2")
async def test_browse_broadcasts_who_is_on_the_interfaces_network(tmp_path: Path) -> None:
    """Both ends on the standard port 47808, as on a real network: the gateway and the device each in a network
    namespace of the test's own, joined by a veth pair on a documentation network (192.0.2.0/24)."""
    tag = f"{os.getpid() % 100000}{len(str(tmp_path)) % 10}"
    gateway_ns, device_ns = f"fgb-gw-{tag}", f"fgb-dev-{tag}"
    setup = [
        ["ip", "netns", "add", gateway_ns], ["ip", "netns", "add", device_ns],
        ["ip", "link", "add", f"fgbg{tag}", "type", "veth", "peer", "name", f"fgbd{tag}"],
        ["ip", "link", "set", f"fgbg{tag}", "netns", gateway_ns],
        ["ip", "link", "set", f"fgbd{tag}", "netns", device_ns],
        ["ip", "-n", gateway_ns, "addr", "add", "192.0.2.1/24", "dev", f"fgbg{tag}"],
        ["ip", "-n", device_ns, "addr", "add", "192.0.2.2/24", "dev", f"fgbd{tag}"],
        ["ip", "-n", gateway_ns, "link", "set", f"fgbg{tag}", "up"],
        ["ip", "-n", device_ns, "link", "set", f"fgbd{tag}", "up"],
    ]
    device: asyncio.subprocess.Process | None = None
    try:
        for command in setup:
            await asyncio.to_thread(subprocess.run, command, check=True, capture_output=True, timeout=10)
        settings = json.dumps({"address": "0.0.0.0", "port": 47808, "instance": 77, "inputs": 1})
        device = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", device_ns, "node", str(DEVICE_SCRIPT), settings,
            env={**os.environ, "NODE_PATH": str(node_modules())}, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        assert device.stdout is not None
        assert b'"ready":true' in await asyncio.wait_for(device.stdout.readline(), 15)
        out = tmp_path / "found.yaml"
        done = await asyncio.to_thread(
            subprocess.run, ["ip", "netns", "exec", gateway_ns, *FIELDGATE, "browse", "bacnet", "--interface",
                             "192.0.2.1/24", "--wait", "1", "-o", str(out)], capture_output=True, text=True,
            timeout=60)
        assert done.returncode == 0, done.stderr
        assert "192.0.2.2:47808: device 77 (test-device-77), 4 objects" in done.stderr
        model, found = list(yaml.safe_load_all(out.read_text()))
        assert [p["name"] for p in model["properties"]] == ["zone-setpoint", "fan-enable", "operating-mode",
                                                             "sensor-1"]
        assert found["protocol"]["config"] == {"address": "192.0.2.2:47808", "device_instance": 77,
                                               "local_address": "192.0.2.1:47808"}
    finally:
        if device is not None and device.returncode is None:
            device.terminate()
            await asyncio.wait_for(device.wait(), 10)
        for ns in (gateway_ns, device_ns):
            await asyncio.to_thread(subprocess.run, ["ip", "netns", "del", ns], capture_output=True, timeout=10)
