"""Changing resources while the gateway runs: local resources, owners, and restarts of changed devices only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError, NotFound, ResourceError
from gateway.runtime import Gateway
from tests.test_runtime import MODEL, virtual_device, wait_for

LOCAL_DEVICE = """\
kind: Device
name: local-1
model: m
protocol: {name: virtual}
properties:
  - {name: count, collect_interval: 50ms, visitor: {generator: counter, start: 100, step: 1}}
"""


async def test_apply_adds_updates_and_deletes_local_devices(write_config: Callable[[str], Path], tmp_path: Path,
                                                            start_gateway: Callable[..., Any]) -> None:
    config = write_config(MODEL + virtual_device("d1", interval="50ms"))
    gw: Gateway = await start_gateway(config)
    d1_poller = gw.devices.pollers["default/d1"]
    changed = await gw.configuration.apply_documents(LOCAL_DEVICE, actor="admin", address="127.0.0.1")
    assert changed == ["Device default/local-1"]
    assert gw.configuration.resource_owner("Device", "default", "local-1") == "local"
    assert gw.configuration.resource_owner("Device", "default", "d1") == "file"
    await wait_for(lambda: (gw.api.twin("default/local-1").properties["count"].reported or 0) >= 101)
    assert gw.devices.pollers["default/d1"] is d1_poller  # untouched devices keep running

    # an update restarts that device only
    await gw.configuration.apply_documents(LOCAL_DEVICE.replace("start: 100", "start: 500"), actor="admin")
    await wait_for(lambda: (gw.api.twin("default/local-1").properties["count"].reported or 0) >= 500)
    assert gw.devices.pollers["default/d1"] is d1_poller
    # applying the same document again changes nothing
    local_poller = gw.devices.pollers["default/local-1"]
    await gw.configuration.apply_documents(LOCAL_DEVICE.replace("start: 100", "start: 500"), actor="admin")
    assert gw.devices.pollers["default/local-1"] is local_poller

    # local resources survive a restart
    await gw.stop()
    gw2: Gateway = await start_gateway(config, tmp_path / "data")
    assert "default/local-1" in gw2.devices.pollers
    await gw2.configuration.delete_resource("Device", "default", "local-1", actor="admin")
    assert "default/local-1" not in gw2.devices.pollers
    with pytest.raises(NotFound):
        gw2.api.twin("default/local-1")
    actions = [(e["action"], e["target"]) for e in await gw2.store.audit.recent()]
    assert ("delete", "Device default/local-1") in actions and ("apply", "Device default/local-1") in actions


async def test_file_owned_resources_are_refused(write_config: Callable[[str], Path],
                                                start_gateway: Callable[..., Any]) -> None:
    gw: Gateway = await start_gateway(write_config(MODEL + virtual_device("d1")))
    with pytest.raises(ConfigError, match=r"is owned by .*config\.yaml; change it there"):
        await gw.configuration.apply_documents(LOCAL_DEVICE.replace("local-1", "d1"), actor="admin")
    with pytest.raises(ConfigError, match="owned by file"):
        await gw.configuration.delete_resource("DeviceModel", "default", "m", actor="admin")
    with pytest.raises(ConfigError, match="Gateway document is set in the local files only"):
        await gw.configuration.apply_documents("kind: Gateway\nname: other\n", actor="admin")


async def test_invalid_documents_give_check_lines_and_change_nothing(write_config: Callable[[str], Path],
                                                                     start_gateway: Callable[..., Any]) -> None:
    gw: Gateway = await start_gateway(write_config(MODEL + virtual_device("d1")))
    with pytest.raises(ResourceError) as info:
        await gw.configuration.apply_documents(LOCAL_DEVICE.replace("model: m", "model: nope"), actor="admin")
    assert info.value.problems == ["editor: document 1 (Device local-1): $.model: no DeviceModel default/nope"]
    assert "default/local-1" not in gw.devices.pollers
    with pytest.raises(ResourceError):
        gw.configuration.validate_yaml("kind: Device\nname: x\n")
    # a local model in use cannot be deleted
    await gw.configuration.apply_documents("kind: DeviceModel\nname: m2\nproperties: [{name: count, type: int}]\n---\n"
                             + LOCAL_DEVICE.replace("model: m", "model: m2"), actor="admin")
    with pytest.raises(ResourceError, match="no DeviceModel default/m2"):
        await gw.configuration.delete_resource("DeviceModel", "default", "m2", actor="admin")
