"""Limits: cgroup v2 detection on this host and on a v2 tree, the per-process fallback in a real child."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

from gateway.resources.schema import ByteSize, Limits
from gateway.workloads import limits


def test_detection_matches_this_host() -> None:
    cgroup, reason = limits.detect_cgroup_v2()
    pure_v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    unified = Path("/sys/fs/cgroup/unified/cgroup.controllers")
    if not pure_v2 and (not unified.exists() or "memory" not in unified.read_text().split()):
        assert cgroup is None
        assert "cgroup v2" in reason
    else:  # a v2 host: either usable, or a reason naming the cgroup that could not be used
        assert cgroup is not None or reason


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
    path = cgroup.create("app-1-0", Limits(memory=ByteSize.parse("64Mi"), cpu=0.5))
    assert (path / "memory.max").read_text() == str(64 << 20)
    assert (path / "cpu.max").read_text() == "50000 100000"
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert limits.CgroupV2.oom_kills(path) == 1


def test_a_tree_without_the_memory_controller_is_refused_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("4:memory:/x\n0::/\n")
    cgroup, reason = limits.detect_cgroup_v2(tmp_path, proc)
    assert cgroup is None and "hybrid host" in reason


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
