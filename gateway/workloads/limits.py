"""Memory and CPU limits of process instances.

With a writable cgroup v2 hierarchy that has the memory and cpu controllers (a pure v2 host, or a delegated
subtree), every instance gets a child cgroup: `memory.max` (the kernel stops the app; `memory.events` tells it was
an OOM kill) and `cpu.max`. Otherwise (cgroup v1 or hybrid hosts, no delegation) the fallback is per process:
memory is watched (resident size of the instance's processes, sampled) and stopped above the limit, with an
address-space limit (RLIMIT_AS) at twice the limit as a hard stop; CPU gets a lower priority (nice 10), not a cap.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.resources.schema import Limits

log = logging.getLogger(__name__)
CGROUP_ROOT = Path("/sys/fs/cgroup")
SUBTREE = "fieldgate-workloads"
CPU_PERIOD_US = 100_000
FALLBACK_NICE = 10
AS_HEADROOM = 64 << 20  # address space is larger than what is resident: the hard stop leaves room for that


@dataclass(frozen=True)
class CgroupV2:
    """The cgroup under which instance cgroups are made."""

    base: Path
    controllers: frozenset[str]

    def create(self, instance: str, limits: Limits) -> Path:
        path = self.base / instance
        path.mkdir(exist_ok=True)
        if limits.memory is not None and "memory" in self.controllers:
            (path / "memory.max").write_text(str(int(limits.memory)))
            with contextlib.suppress(OSError):
                (path / "memory.swap.max").write_text("0")
        if limits.cpu is not None and "cpu" in self.controllers:
            (path / "cpu.max").write_text(f"{int(limits.cpu * CPU_PERIOD_US)} {CPU_PERIOD_US}")
        return path

    @staticmethod
    def oom_kills(path: Path) -> int:
        with contextlib.suppress(OSError, ValueError):
            for line in (path / "memory.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    @staticmethod
    def remove(path: Path) -> None:
        with contextlib.suppress(OSError):
            path.rmdir()


def detect_cgroup_v2(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")
                     ) -> tuple[CgroupV2 | None, str]:
    """The cgroup v2 subtree for instances, or None with the reason it cannot be used on this host."""
    mount = root if (root / "cgroup.controllers").exists() else root / "unified"
    if not (mount / "cgroup.controllers").exists():
        return None, "no cgroup v2 hierarchy"
    own = ""
    with contextlib.suppress(OSError):
        for line in proc_cgroup.read_text().splitlines():
            if line.startswith("0::"):
                own = line[3:].strip().lstrip("/")
    parent = mount / own if own else mount
    available = set((parent / "cgroup.controllers").read_text().split()) if (
        parent / "cgroup.controllers").exists() else set()
    if "memory" not in available:
        where = "a hybrid host: cgroup v1 holds the controllers" if mount.name == "unified" else str(parent)
        return None, f"cgroup v2 has no memory controller here ({where})"
    base = parent / SUBTREE
    try:
        base.mkdir(exist_ok=True)
        wanted = [c for c in ("memory", "cpu") if c in available]
        (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
        (base / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
        enabled = frozenset((base / "cgroup.controllers").read_text().split())
    except OSError as exc:
        return None, f"cannot make a child cgroup in {parent}: {exc.strerror or exc}"
    if "memory" not in enabled:
        return None, f"the memory controller is not enabled in {base}"
    return CgroupV2(base, enabled), ""


def preexec(limits: Limits, cgroup: Path | None) -> Callable[[], None]:
    """What the child runs between fork and exec: join its cgroup, or set the fallback limits on itself."""
    memory = int(limits.memory) if limits.memory is not None else None
    cpu = limits.cpu
    cores = os.cpu_count() or 1

    def apply() -> None:
        if cgroup is not None:
            with open(cgroup / "cgroup.procs", "w") as procs:
                procs.write("0")
            return
        if memory is not None:
            hard = memory * 2 + AS_HEADROOM
            resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
        if cpu is not None and cpu < cores:
            os.nice(FALLBACK_NICE)

    return apply


def describe(cgroup: CgroupV2 | None, reason: str) -> dict[str, str]:
    if cgroup is not None:
        return {"limits": f"cgroup v2 under {cgroup.base}", "memory": "memory.max", "cpu": "cpu.max"}
    return {"limits": f"per process ({reason})",
            "memory": "resident size watched, stopped above the limit; RLIMIT_AS at twice the limit",
            "cpu": f"priority lowered (nice {FALLBACK_NICE}), not capped"}
