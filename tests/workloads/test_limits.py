"""Limits: which backend this host gets, cgroup v2 and v1 on trees laid out like the kernel's, the per-process
fallback in real children."""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.resources.schema import ByteSize, Limits
from gateway.workloads import limits
from gateway.workloads.process import ProcessRuntime
from tests.workloads.conftest import APPS
from tests.workloads.test_cgroup_v1 import instance_spec


def test_detection_matches_this_host() -> None:
    cgroup, reason = limits.detect_cgroup_v2()
    pure_v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    unified = Path("/sys/fs/cgroup/unified/cgroup.controllers")
    if not pure_v2 and (not unified.exists() or "memory" not in unified.read_text().split()):
        assert cgroup is None
        assert "cgroup v2" in reason
    else:  # a v2 host: either usable, or a reason naming the cgroup that could not be used
        assert cgroup is not None or reason


def own_v1_memory_cgroup() -> Path | None:
    """This process's directory in the v1 memory hierarchy, when /proc/self/cgroup has a v1 memory line."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.strip().lstrip("/")
    return None


def test_selection_on_this_host_is_v2_then_v1_then_per_process() -> None:
    backend, reason = limits.select_backend()
    v2, why_not_v2 = limits.detect_cgroup_v2()
    v1_memory = own_v1_memory_cgroup()
    described = limits.describe(backend, reason)
    if v2 is not None:
        assert isinstance(backend, limits.CgroupV2)
        assert described["limits"].startswith("cgroup v2 under ")
    elif v1_memory is not None and v1_memory.is_dir() and os.access(v1_memory, os.W_OK):
        assert isinstance(backend, limits.CgroupV1), reason
        assert reason == why_not_v2
        assert backend.bases["memory"].parent == v1_memory / limits.SUBTREE, "nested under our own cgroup"
        assert backend.bases["memory"].name == f"gateway-{os.getpid()}"
        assert described["limits"].startswith("cgroup v1 under ") and described["why"] == why_not_v2
    else:
        assert backend is None
        assert why_not_v2 in reason and "cgroup v1: " in reason
        assert described["limits"] == f"per process ({reason})"


def test_a_v2_tree_gets_a_child_cgroup_with_the_limits(tmp_path: Path) -> None:
    """A directory laid out as a delegated cgroup v2 subtree: the files written are the kernel's interface."""
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "gw").mkdir()
    (tmp_path / "gw" / "cgroup.controllers").write_text("cpu memory pids\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("0::/gw\n")
    base = tmp_path / "gw" / limits.SUBTREE
    base.mkdir()
    (base / "cgroup.controllers").write_text("cpu memory\n")
    cgroup, reason = limits.detect_cgroup_v2(tmp_path, proc)
    assert cgroup is not None, reason
    assert (tmp_path / "gw" / "cgroup.subtree_control").read_text() == "+memory +cpu"
    instance = cgroup.create("app-1-0", Limits(memory=ByteSize.parse("64Mi"), cpu=0.5))
    (path,) = instance.dirs
    assert instance.memory == path and instance.cpu_capped
    assert (path / "memory.max").read_text() == str(64 << 20)
    assert (path / "cpu.max").read_text() == "50000 100000"
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cgroup.oom_kills(instance) == 1
    (path / "memory.current").write_text("1234\n")
    assert cgroup.memory_used(instance) == 1234
    for name in ("memory.max", "memory.swap.max", "cpu.max", "memory.events", "memory.current"):
        (path / name).unlink()
    cgroup.remove(instance)
    assert not path.exists()


def test_a_tree_without_the_memory_controller_is_refused_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("4:memory:/x\n0::/\n")
    cgroup, reason = limits.detect_cgroup_v2(tmp_path, proc)
    assert cgroup is None and "hybrid host" in reason


def v1_tree(tmp_path: Path, memory_root: str = "/") -> tuple[Path, Path]:
    """A hybrid host's /proc/self/mountinfo and /proc/self/cgroup, with its hierarchies as directories."""
    for name in ("memory", "cpu,cpuacct", "pids"):
        (tmp_path / name).mkdir(parents=True)
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        f"31 23 0:28 / {tmp_path} rw,relatime - tmpfs tmpfs rw,mode=755\n"
        f"32 31 0:29 / {tmp_path}/cpu,cpuacct rw,relatime shared:5 - cgroup cgroup rw,cpu,cpuacct\n"
        f"35 31 0:32 {memory_root} {tmp_path}/memory rw,relatime - cgroup cgroup rw,memory\n"
        f"39 31 0:36 / {tmp_path}/pids rw,relatime - cgroup cgroup rw,pids\n"
        f"40 31 0:37 / {tmp_path}/unified rw,relatime - cgroup2 cgroup2 rw\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("8:pids:/\n4:memory:/gw/app\n2:cpu,cpuacct:/\n0::/\n")
    return mountinfo, proc


def unmount(mountinfo: Path, controllers: str) -> None:
    lines = mountinfo.read_text().splitlines()
    mountinfo.write_text("".join(f"{line}\n" for line in lines if not line.endswith(f" rw,{controllers}")))


def test_a_v1_tree_gets_child_cgroups_under_our_own_with_the_limits(tmp_path: Path) -> None:
    """A directory laid out as a hybrid host's v1 hierarchies: the files written are the kernel's interface."""
    mountinfo, proc = v1_tree(tmp_path)
    gone = tmp_path / "memory" / "gw" / "app" / limits.SUBTREE / "gateway-4194305"  # above any pid_max
    (gone / "web-1-0").mkdir(parents=True)
    cgroup, reason = limits.detect_cgroup_v1(mountinfo, proc, owner="gateway-7")
    assert cgroup is not None, reason
    memory_base = tmp_path / "memory" / "gw" / "app" / limits.SUBTREE / "gateway-7"
    cpu_base = tmp_path / "cpu,cpuacct" / limits.SUBTREE / "gateway-7"
    assert dict(cgroup.bases) == {"memory": memory_base, "cpu": cpu_base}
    assert not gone.exists(), "the level of a gateway that is gone is removed"

    (memory_base / "app-1-0").mkdir()  # the kernel makes these files with the directory
    (memory_base / "app-1-0" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (memory_base / "app-1-0" / "memory.memsw.limit_in_bytes").write_text("9223372036854771712\n")
    instance = cgroup.create("app-1-0", Limits(memory=ByteSize.parse("64Mi"), cpu=0.5))
    memory, cpu = memory_base / "app-1-0", cpu_base / "app-1-0"
    assert instance.dirs == (memory, cpu) and instance.memory == memory and instance.cpu_capped
    assert (memory / "memory.limit_in_bytes").read_text() == str(64 << 20)
    assert (memory / "memory.memsw.limit_in_bytes").read_text() == str(64 << 20)
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "50000"
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert cgroup.oom_kills(instance) == 2
    (memory / "memory.usage_in_bytes").write_text("5678\n")
    assert cgroup.memory_used(instance) == 5678
    for file in [*memory.iterdir(), *cpu.iterdir()]:
        file.unlink()
    cgroup.remove(instance)
    assert not memory.exists() and not cpu.exists()

    memory_only = cgroup.create("mem-1-0", Limits(memory=ByteSize.parse("16Mi")))
    assert memory_only.dirs == (memory_base / "mem-1-0",) and not memory_only.cpu_capped
    assert not (memory_base / "mem-1-0" / "memory.memsw.limit_in_bytes").exists(), "only when the kernel has it"


@pytest.mark.parametrize(("current", "limit", "order"), [
    (64 << 20, 32 << 20, ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]),
    (32 << 20, 64 << 20, ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]),
])
def test_v1_memory_and_swap_limits_are_written_in_the_order_the_kernel_accepts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, current: int, limit: int, order: list[str]) -> None:
    """memory.memsw.limit_in_bytes must never be below memory.limit_in_bytes, also between the two writes."""
    mountinfo, proc = v1_tree(tmp_path)
    cgroup, reason = limits.detect_cgroup_v1(mountinfo, proc, owner="gateway-7")
    assert cgroup is not None, reason
    directory = cgroup.bases["memory"] / "app-1-0"
    directory.mkdir()
    for name in order:
        (directory / name).write_text(f"{current}\n")
    written: list[str] = []
    write_text = Path.write_text

    def record(path: Path, data: str, *args: Any, **kwargs: Any) -> int:
        written.append(path.name)
        return write_text(path, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", record)
    cgroup.create("app-1-0", Limits(memory=ByteSize(limit)))
    assert written == order


def test_v1_follows_the_mount_root_and_refuses_with_the_reason(tmp_path: Path) -> None:
    """In a container the memory hierarchy is often mounted from our own cgroup, not from its root."""
    mountinfo, proc = v1_tree(tmp_path, memory_root="/gw")
    cgroup, reason = limits.detect_cgroup_v1(mountinfo, proc, owner="gateway-7")
    assert cgroup is not None, reason
    assert cgroup.bases["memory"] == tmp_path / "memory" / "app" / limits.SUBTREE / "gateway-7"

    mountinfo, proc = v1_tree(tmp_path / "other", memory_root="/elsewhere")
    cgroup, reason = limits.detect_cgroup_v1(mountinfo, proc, owner="gateway-7")
    assert cgroup is None and "memory cgroup /gw/app is outside the mount" in reason

    unmount(mountinfo, "memory")
    cgroup, reason = limits.detect_cgroup_v1(mountinfo, proc)
    assert cgroup is None and reason == "cgroup v1: no cgroup v1 memory hierarchy is mounted"


def test_v1_without_a_cpu_hierarchy_caps_memory_and_lowers_the_priority(tmp_path: Path) -> None:
    mountinfo, proc = v1_tree(tmp_path)
    unmount(mountinfo, "cpu,cpuacct")
    cgroup, reason = limits.detect_cgroup_v1(mountinfo, proc, owner="gateway-7")
    assert cgroup is not None, reason
    assert list(cgroup.bases) == ["memory"] and cgroup.cpu_reason == "no cgroup v1 cpu hierarchy is mounted"
    assert cgroup.describe()["cpu"].endswith("not capped: no cgroup v1 cpu hierarchy is mounted")
    instance = cgroup.create("app-1-0", Limits(cpu=0.5))
    assert not instance.cpu_capped
    not_joined = limits.InstanceCgroup((), instance.memory, cpu_capped=False)  # no kernel cgroup to join here
    child = subprocess.run(
        [sys.executable, "-c", "import os, resource; print(resource.getrlimit(resource.RLIMIT_AS)[0], "
                               "os.getpriority(os.PRIO_PROCESS, 0))"],
        preexec_fn=limits.preexec(Limits(memory=ByteSize.parse("64Mi"), cpu=0.001), not_joined),
        capture_output=True, text=True, timeout=30, check=True)
    address_space, nice = map(int, child.stdout.split())
    assert address_space == resource.getrlimit(resource.RLIMIT_AS)[0], "the cgroup limits memory, not RLIMIT_AS"
    assert nice >= limits.FALLBACK_NICE


def test_the_fallback_sets_the_address_space_limit_and_priority_in_the_child() -> None:
    memory = 256 << 20
    child = subprocess.run(
        [sys.executable, "-c", "import os, resource; print(resource.getrlimit(resource.RLIMIT_AS)[0], "
                               "os.getpriority(os.PRIO_PROCESS, 0))"],
        preexec_fn=limits.preexec(Limits(memory=ByteSize(memory), cpu=0.001), None),
        capture_output=True, text=True, timeout=30, check=True)
    address_space, nice = map(int, child.stdout.split())
    assert address_space == memory * 2 + limits.AS_HEADROOM
    assert nice >= limits.FALLBACK_NICE
    assert resource.getrlimit(resource.RLIMIT_AS)[0] != address_space, "only the child is limited"


async def test_without_cgroups_an_app_past_its_memory_limit_is_stopped_by_the_runtime(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a host without usable cgroups (no root, no delegation) gets: the resident size watched."""
    monkeypatch.setattr(limits, "select_backend", lambda: (None, "no cgroup here"))
    runtime = ProcessRuntime(tmp_path / "data")
    assert runtime.describe()["limits"] == "per process (no cgroup here)"
    code = (APPS / "hog.py").read_text()
    handle = await runtime.start(instance_spec(tmp_path / "hog", "hog", code, Limits(memory=ByteSize.parse("64Mi"))))
    async with asyncio.timeout(20):
        exit_ = await handle.wait()
    assert exit_.oom and "64 MiB" in exit_.reason, exit_
