"""A joined gateway (`fieldgate run`) heartbeats, shows healthy then offline, and runs the registry's devices."""

from __future__ import annotations

import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.errors import ConfigError
from gateway.resources.loader import parse_yaml
from gateway.uplink.client import Uplink
from gateway.uplink.join import RegistrySettings
from tests.conftest import FIELDGATE, free_port
from tests.registry.conftest import Registry, join, stop, wait_for_port, wait_until

REMOTE = """\
kind: DeviceModel
name: remote-model
properties:
  - {name: level, type: int, access: ReadOnly}
---
kind: Device
name: remote-1
model: remote-model
node: gw-1
protocol: {name: virtual, config: {}}
properties:
  - name: level
    collect_interval: 100ms
    visitor: {generator: constant, value: 7}
"""


def test_gateway_heartbeats_runs_registry_devices_and_goes_offline(registry: Registry, tmp_path: Path) -> None:
    data_dir = tmp_path / "gw"
    assert join(registry, registry.token(), data_dir, "--name", "gw-1").returncode == 0
    port = free_port()
    config = tmp_path / "gw.yaml"
    config.write_text(textwrap.dedent(f"""\
        kind: Gateway
        name: gw-1
        http: {{listen: "127.0.0.1:{port}"}}
        eventbus: {{url: none}}
        ---
        kind: DeviceModel
        name: local-model
        properties:
          - {{name: value, type: int, access: ReadOnly}}
        ---
        kind: Device
        name: local-1
        model: local-model
        protocol: {{name: virtual, config: {{}}}}
        properties:
          - {{name: value, collect_interval: 100ms, visitor: {{generator: counter}}}}
        """))
    viewer = subprocess.run([*FIELDGATE, "token", "create", "--role", "viewer", "--data-dir", str(data_dir)],
                            capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    gateway = subprocess.Popen([*FIELDGATE, "run", "-c", str(config), "--data-dir", str(data_dir)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, gateway)
        node = wait_until(lambda: registry.nodes()["gw-1"]["status"] == "healthy" and registry.nodes()["gw-1"],
                          what="a heartbeat")
        info = node["info"]
        assert info["devices"]["total"] == 1 and "gateway.uplink.plugin" in info["plugins"]
        assert info["architecture"] and info["os"] and info["memory_percent"] > 0

        registry_file = tmp_path / "remote.yaml"
        registry_file.write_text(REMOTE)
        assert "Device default/remote-1 → node gw-1" in registry.cli("apply", "-f", str(registry_file)).stdout
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {viewer}"},
                           timeout=10)

        def remote_device() -> dict[str, Any] | None:
            response = api.get("/api/v1/devices/default/remote-1")
            return response.json() if response.status_code == 200 else None

        device = wait_until(remote_device, what="the registry's device on the node")
        assert device["model"] == "remote-model"
        local = api.get("/api/v1/devices/default/local-1")
        assert local.status_code == 200
        api.close()
    finally:
        stop(gateway)
    # the node keeps the registry's resources and refuses local edits of them (owner registry)
    rows = _resources(data_dir)
    assert rows[("Device", "remote-1")] == "registry" and rows[("DeviceModel", "remote-model")] == "registry"
    wait_until(lambda: registry.nodes()["gw-1"]["status"] == "offline", timeout=15, what="offline")
    assert "no heartbeat" in registry.nodes()["gw-1"]["reason"]


def _resources(data_dir: Path) -> dict[tuple[str, str], str]:
    import sqlite3

    with sqlite3.connect(data_dir / "fieldgate.db") as db:
        return {(kind, name): source for kind, name, source in db.execute("SELECT kind, name, source FROM resources")}


async def test_registry_resources_are_refused_for_local_edits_and_an_unreachable_registry_is_survived(
        start_gateway: Callable[..., Any], write_config: Callable[[str], Path], tmp_path: Path) -> None:
    config = write_config("""\
        kind: Gateway
        name: gw-1
        eventbus: {url: none}
        """)
    gateway = await start_gateway(config)
    uplink = Uplink(gateway.api, RegistrySettings(url=f"https://127.0.0.1:{free_port()}", node="gw-1"))
    await uplink.apply("v1", _documents(REMOTE))
    assert uplink.resource_version == "v1"
    assert gateway.configuration.resource_owner("Device", "default", "remote-1") == "registry"
    with pytest.raises(ConfigError, match="owned by the registry"):
        await gateway.configuration.apply_documents(REMOTE.split("---")[1], actor="test")

    async with httpx.AsyncClient(base_url=uplink.settings.url, timeout=2) as client:
        await uplink.beat(client)
    assert uplink.state == "unreachable"
    assert gateway.configuration.resource_owner("Device", "default", "remote-1") == "registry"  # edge autonomy


def _documents(text: str) -> list[dict[str, Any]]:
    return [raw for _, raw in parse_yaml(text, "remote.yaml")]
