"""cgroup v1 limits with real processes, on a v1 or hybrid host where the gateway can make child cgroups: the
kernel kills an app at its memory limit, caps its CPU, the instance cgroups go when the instance does, and the
gateway's own level goes when the gateway stops."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from gateway.resources.schema import Limits, Workload
from gateway.testing import wait_until
from gateway.workloads import limits
from gateway.workloads.model import InstanceSpec
from gateway.workloads.process import ProcessInstance, ProcessRuntime
from tests.conftest import FIELDGATE, free_port
from tests.workloads.conftest import PYTHON, Node, gateway_doc

ALLOCATE_200_MB = 'chunks = [b"x" * (8 << 20) for _ in range(25)]; print("survived 200 MB", flush=True)'
BUSY_LOOP = "while True: pass"


@pytest.fixture
async def v1_runtime(tmp_path: Path) -> AsyncIterator[ProcessRuntime]:
    runtime = ProcessRuntime(tmp_path / "data")
    if not isinstance(runtime.cgroups, limits.CgroupV1):  # test_limits asserts when this host must have it
        pytest.skip(f"cgroup v1 is not what this host uses: {runtime.describe()}")
    yield runtime
    await runtime.close()


def instance_spec(work_dir: Path, name: str, code: str, limits_: Limits) -> InstanceSpec:
    workload = Workload(name=name, command=[PYTHON, "-c", code], limits=limits_, restart="never")
    work_dir.mkdir(parents=True)
    return InstanceSpec(workload, f"{name}-1-0", 1, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, {}, {},
                        work_dir, lambda stream, line: None)


def cgroups_of(pid: int) -> dict[str, str]:
    """Controller -> the process's cgroup in that v1 hierarchy, as the kernel lists it."""
    return limits.v1_own_paths(Path(f"/proc/{pid}/cgroup"))


def test_this_host_uses_cgroup_v1_when_it_can(v1_runtime: ProcessRuntime) -> None:
    described = v1_runtime.describe()
    assert described["limits"].startswith("cgroup v1 under ")
    assert "memory.limit_in_bytes" in described["memory"]


async def test_a_busy_loop_is_capped_at_its_cpu_limit(v1_runtime: ProcessRuntime, tmp_path: Path) -> None:
    handle = await v1_runtime.start(instance_spec(tmp_path / "busy", "busy", BUSY_LOOP, Limits(cpu=0.2)))
    assert isinstance(handle, ProcessInstance) and handle.cgroup is not None
    memory_dir, cpu_dir = handle.cgroup.dirs
    try:
        assert (cpu_dir / "cpu.cfs_quota_us").read_text().strip() == "20000"
        assert (cpu_dir / "cpu.cfs_period_us").read_text().strip() == "100000"
        process = psutil.Process(handle.pid)
        joined = cgroups_of(handle.pid)
        assert cpu_dir.as_posix().endswith(joined["cpu"]) and memory_dir.as_posix().endswith(joined["memory"])
        assert process.nice() == os.getpriority(os.PRIO_PROCESS, 0), "a capped app keeps its priority"
        await asyncio.sleep(0.2)  # past the interpreter's start
        times, started = process.cpu_times(), time.monotonic()
        await asyncio.sleep(1.5)
        used = process.cpu_times()
        cores = (used.user + used.system - times.user - times.system) / (time.monotonic() - started)
        assert 0.02 < cores <= 0.3, f"{cores:.2f} cores"
        throttled = limits.read_key(cpu_dir / "cpu.stat", "nr_throttled")
        assert throttled > 0
    finally:
        await handle.stop(grace=2)
    assert not memory_dir.exists() and not cpu_dir.exists(), "the instance's cgroups are removed after it stops"


async def test_an_app_allocating_past_its_memory_limit_is_killed_by_the_kernel_and_reported(
        start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(f"""\
kind: Workload
name: grow
command: [{PYTHON}, -c, '{ALLOCATE_200_MB}']
limits: {{memory: 64Mi}}
restart: never
""")
    runtime = node.gateway.workloads.registry.runtimes["process"]
    assert isinstance(runtime, ProcessRuntime) and isinstance(runtime.cgroups, limits.CgroupV1)
    status = (await node.api.get("/api/v1/status")).json()
    assert status["workloads"]["runtimes"]["process"]["limits"].startswith("cgroup v1 under ")

    async def failed() -> dict[str, Any] | None:
        workload = await node.workload("grow")
        return workload if workload["status"] == "failed" else None

    workload = await wait_until(failed, 20)
    (instance,) = workload["instances"]
    assert instance["state"] == "oom"
    assert instance["reason"] == "out of memory: killed by the kernel at its limit of 64 MiB"
    assert "killed by signal 9" not in workload["reason"] and "64 MiB" in workload["reason"]
    logs = (await node.api.get("/api/v1/workloads/default/grow/logs")).json()
    assert "survived 200 MB" not in [line["line"] for line in logs["lines"]]
    instance_dir = runtime.cgroups.bases["memory"] / instance["id"]
    await wait_until(lambda: not instance_dir.exists(), 5)


async def test_a_gateway_stopped_with_sigterm_removes_its_cgroup_level(v1_runtime: ProcessRuntime,
                                                                       tmp_path: Path) -> None:
    assert isinstance(v1_runtime.cgroups, limits.CgroupV1)
    config = tmp_path / "gateway.yaml"
    config.write_text(gateway_doc(free_port()) + f"""\
---
kind: Workload
name: sleeper
command: [{PYTHON}, -c, 'import time; time.sleep(600)']
limits: {{memory: 64Mi}}
""")
    gateway = await asyncio.create_subprocess_exec(
        *FIELDGATE, "run", "-c", str(config), "--data-dir", str(tmp_path / "gw"), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    # the gateway is in this process's cgroups: its level sits beside this process's in each hierarchy
    levels = [base.parent / f"{limits.OWNER_PREFIX}{gateway.pid}" for base in v1_runtime.cgroups.bases.values()]
    try:
        def app_pids() -> list[int]:
            """The pids in the instance cgroups below the gateway's level of the memory hierarchy."""
            assert gateway.returncode is None, f"the gateway exited with {gateway.returncode}"
            instances = [d for d in levels[0].iterdir() if d.is_dir()] if levels[0].is_dir() else []
            return [int(pid) for d in instances for pid in (d / "cgroup.procs").read_text().split()]

        [app] = await wait_until(app_pids, 30)
        assert all(level.is_dir() for level in levels)
        gateway.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await gateway.wait() == 0
        assert not any(level.exists() for level in levels), "the gateway's level is removed when it stops"
        assert not psutil.pid_exists(app)
    finally:
        if gateway.returncode is None:
            gateway.kill()
            await gateway.wait()
