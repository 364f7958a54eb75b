"""Reloading the configuration files while running (SIGHUP): only changed devices restart; bad files are refused."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ResourceError
from gateway.runtime import Gateway
from tests.conftest import FIELDGATE, free_port
from tests.test_runtime import MODEL, virtual_device, wait_for


async def test_reload_restarts_only_what_changed(write_config: Callable[[str], Path],
                                                 start_gateway: Callable[..., Any]) -> None:
    path = write_config(MODEL + virtual_device("same") + virtual_device("changed"))
    gw: Gateway = await start_gateway(path)
    await gw.configuration.apply_documents(virtual_device("from-api").removeprefix("---\n"), actor="test")
    await wait_for(lambda: all(p.stats.cycles >= 2 for p in gw.devices.pollers.values()))
    same, changed = gw.devices.pollers["default/same"], gw.devices.pollers["default/changed"]

    path.write_text(MODEL + virtual_device("same") + virtual_device("changed", interval="200ms")
                    + virtual_device("new"))
    await gw.configuration.reload_files()

    assert gw.devices.pollers["default/same"] is same
    assert gw.devices.pollers["default/changed"] is not changed
    assert set(gw.devices.pollers) == {"default/same", "default/changed", "default/new", "default/from-api"}
    assert gw.configuration.resource_owner("Device", "default", "from-api") == "local"
    assert gw.configuration.resource_owner("Device", "default", "new") == "file"
    await wait_for(lambda: gw.devices.pollers["default/new"].stats.cycles >= 2)
    stored = {r.name for r in await gw.store.resources.stored("file") if r.kind == "Device"}
    assert stored == {"same", "changed", "new"}

    path.write_text(MODEL + virtual_device("same"))  # devices removed from the file stop
    await gw.configuration.reload_files()
    assert set(gw.devices.pollers) == {"default/same", "default/from-api"}
    assert gw.devices.pollers["default/same"] is same


async def test_an_invalid_file_is_refused_and_everything_keeps_running(
        write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> None:
    path = write_config(MODEL + virtual_device("d1"))
    gw: Gateway = await start_gateway(path)
    poller = gw.devices.pollers["default/d1"]
    config = gw.config
    path.write_text(MODEL + virtual_device("d1").replace("model: m", "model: missing") + virtual_device("d2"))
    with pytest.raises(ResourceError, match="missing"):
        await gw.configuration.reload_files()
    path.write_text("kind: [unclosed\n")
    with pytest.raises(ResourceError, match="invalid YAML"):
        await gw.configuration.reload_files()
    assert gw.config is config and gw.devices.pollers == {"default/d1": poller}
    cycles = poller.stats.cycles
    await wait_for(lambda: poller.stats.cycles > cycles + 2)


def test_sighup_reloads_the_files(tmp_path: Path) -> None:
    port = free_port()
    model = MODEL.replace("eventbus: {url: none}", f"eventbus: {{url: none}}\nhttp: {{listen: \"127.0.0.1:{port}\"}}")
    config = tmp_path / "gw.yaml"
    config.write_text(model + virtual_device("d1"))
    log = tmp_path / "log.txt"
    with log.open("wb") as out:
        process = subprocess.Popen([*FIELDGATE, "run", "-c", str(config), "--data-dir", str(tmp_path / "data")],
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_text(log, "started")
        config.write_text(model + virtual_device("d1") + virtual_device("d2"))
        process.send_signal(signal.SIGHUP)
        wait_for_text(log, "configuration reloaded")
        text = log.read_text()
        assert "default/d2 added" in text and "default/d1 restarted" not in text
        config.write_text("kind: [unclosed\n")
        process.send_signal(signal.SIGHUP)
        wait_for_text(log, "refused")
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def wait_for_text(path: Path, text: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the log:\n{path.read_text()}")
