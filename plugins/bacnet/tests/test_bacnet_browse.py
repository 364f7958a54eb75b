"""`fieldgate browse bacnet` against a device of another implementation (@bacnet-js/client) on loopback."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from bacnet_helpers import free_udp_port

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
