"""A gateway killed with SIGKILL leaves its apps running; the next start stops them before starting anew."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from gateway.testing import free_port, wait_until
from tests.conftest import FIELDGATE
from tests.workloads.conftest import gateway_doc
from tests.workloads.test_supervisor import ready_instances, web_workload


def alive(pid: int) -> bool:
    return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


async def test_apps_left_by_a_killed_gateway_are_stopped_at_the_next_start(
        tmp_path: Path, write_config: Callable[..., Path], start_node: Callable[..., Any]) -> None:
    config = write_config(gateway_doc(free_port()) + "---\n" + web_workload(), "crash.yaml")
    data_dir = tmp_path / "data"
    gateway = await asyncio.create_subprocess_exec(*FIELDGATE, "run", "-c", str(config), "--data-dir",
                                                   str(data_dir), stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.DEVNULL)
    try:
        pid_files = await wait_until(lambda: list(data_dir.glob("workloads/default/web/instances/*/pid")), 20)
        app_pid = int(pid_files[0].read_text().split()[0])
        assert alive(app_pid)
    finally:
        gateway.send_signal(signal.SIGKILL)
        async with asyncio.timeout(10):
            await gateway.wait()
    assert alive(app_pid), "the app outlives a gateway killed with SIGKILL (its own session)"
    try:
        node = await start_node(web_workload())
        assert node.gateway.data_dir == data_dir
        assert not alive(app_pid), "the next start stopped the app the dead gateway left"
        (instance,) = await ready_instances(node, "web")
        assert instance["pid"] != app_pid
    finally:
        if alive(app_pid):  # only if the test failed: never leave it running
            os.killpg(app_pid, signal.SIGKILL)
