"""Memory and CPU limits of process instances, enforced by the kernel where the host lets the gateway do it.

`select_backend()` tries, in order:
1. cgroup v2, when a writable v2 hierarchy has the memory controller (a pure v2 host, or a delegated subtree):
   every instance gets a child cgroup with `memory.max` and `cpu.max`; `memory.events` tells an OOM kill.
2. cgroup v1, when the v1 memory hierarchy is mounted and the gateway can make a child of its own cgroup there
   (v1 and hybrid hosts, as root): an instance gets a child cgroup in the memory hierarchy
   (`memory.limit_in_bytes`, and `memory.memsw.limit_in_bytes` at the same value so swap cannot dodge it;
   `memory.oom_control` counts the OOM kills) and, with a CPU limit, one in the cpu hierarchy
   (`cpu.cfs_quota_us` over `cpu.cfs_period_us`).
3. Per process, which needs no privilege: memory is watched (resident size of the instance's processes, sampled)
   and the app stopped above the limit, with an address-space limit (RLIMIT_AS) at twice the limit as a hard stop;
   CPU gets a lower priority (nice 10), not a cap.

Instance cgroups live in `fieldgate-workloads/` below the gateway's own cgroup of each hierarchy, so they nest
under whatever limits the gateway itself runs with. On cgroup v1 a level per gateway process
(`gateway-<pid>`) keeps gateways that share a hierarchy apart; the runtime removes its level when the gateway
stops (`close()`), and a level whose gateway died is removed at the next start.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import resource
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.resources.schema import Limits

log = logging.getLogger(__name__)
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
PROC_MOUNTINFO = Path("/proc/self/mountinfo")
SUBTREE = "fieldgate-workloads"
OWNER_PREFIX = "gateway-"
CPU_PERIOD_US = 100_000
CPU_QUOTA_MIN_US = 1_000  # the kernel refuses a smaller quota
FALLBACK_NICE = 10
AS_HEADROOM = 64 << 20  # address space is larger than what is resident: the hard stop leaves room for that
REMOVE_WITHIN = 1.0  # seconds to wait for the last tasks of a stopped instance to leave its cgroup
REMOVE_POLL = 0.02


@dataclass(frozen=True)
class InstanceCgroup:
    """The cgroup directories of one instance: one for all controllers on v2, one per hierarchy on v1."""

    dirs: tuple[Path, ...]
    memory: Path | None  # the directory holding the memory controller's files
    cpu_capped: bool

    def join(self) -> None:
        """Move the calling process into every directory (run in the child between fork and exec)."""
        for directory in self.dirs:
            with open(directory / "cgroup.procs", "w") as procs:
                procs.write("0")


class CgroupBackend(Protocol):
    """What the process runtime needs from a cgroup version."""

    def create(self, instance: str, limits: Limits) -> InstanceCgroup:
        """Make the instance's cgroup(s) and write the limits; raises OSError."""

    def oom_kills(self, cgroup: InstanceCgroup) -> int:
        """How many of the instance's processes the kernel killed at the memory limit."""

    def memory_used(self, cgroup: InstanceCgroup) -> int | None:
        """The instance's memory as the kernel counts it, or None when it cannot be read."""

    def remove(self, cgroup: InstanceCgroup) -> None:
        """Remove the instance's cgroup(s) once its processes are gone (blocks up to REMOVE_WITHIN seconds)."""

    def describe(self) -> dict[str, str]:
        """How limits are enforced, for the status page."""

    def close(self) -> None:
        """Remove what was made for this gateway alone, once its instances are gone (blocks up to REMOVE_WITHIN
        seconds per directory)."""


def cpu_quota(cores: float) -> int:
    return max(CPU_QUOTA_MIN_US, int(cores * CPU_PERIOD_US))


def read_int(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text())
    return None


def read_key(path: Path, key: str) -> int:
    """The value of `key` in a flat-keyed cgroup file (`memory.events`, `memory.oom_control`), 0 when absent."""
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return 0


def remove_dirs(dirs: Iterable[Path], within: float = REMOVE_WITHIN) -> None:
    """rmdir each cgroup; a cgroup stays busy for a moment after its last process was reaped, so retry EBUSY."""
    deadline = time.monotonic() + within
    for directory in dirs:
        while True:
            try:
                directory.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                    log.warning("cannot remove cgroup %s: %s", directory, exc.strerror or exc)
                    break
                time.sleep(REMOVE_POLL)


@dataclass(frozen=True)
class CgroupV2:
    """The cgroup v2 directory under which instance cgroups are made."""

    base: Path
    controllers: frozenset[str]

    def create(self, instance: str, limits: Limits) -> InstanceCgroup:
        path = self.base / instance
        path.mkdir(exist_ok=True)
        try:
            if limits.memory is not None and "memory" in self.controllers:
                (path / "memory.max").write_text(str(int(limits.memory)))
                with contextlib.suppress(OSError):
                    (path / "memory.swap.max").write_text("0")
            if limits.cpu is not None and "cpu" in self.controllers:
                (path / "cpu.max").write_text(f"{cpu_quota(limits.cpu)} {CPU_PERIOD_US}")
        except OSError:
            remove_dirs([path], within=0)
            raise
        return InstanceCgroup((path,), path if "memory" in self.controllers else None, "cpu" in self.controllers)

    def oom_kills(self, cgroup: InstanceCgroup) -> int:
        return read_key(cgroup.memory / "memory.events", "oom_kill") if cgroup.memory else 0

    def memory_used(self, cgroup: InstanceCgroup) -> int | None:
        return read_int(cgroup.memory / "memory.current") if cgroup.memory else None

    def remove(self, cgroup: InstanceCgroup) -> None:
        remove_dirs(cgroup.dirs)

    def describe(self) -> dict[str, str]:
        return {"limits": f"cgroup v2 under {self.base}", "memory": "memory.max, killed by the kernel above it",
                "cpu": "cpu.max" if "cpu" in self.controllers else f"priority lowered (nice {FALLBACK_NICE})"}

    def close(self) -> None:
        """Nothing: on v2 the instance cgroups sit right in the subtree below the gateway's own cgroup."""


def detect_cgroup_v2(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> tuple[CgroupV2 | None, str]:
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


@dataclass(frozen=True)
class CgroupV1:
    """Per cgroup v1 hierarchy, the directory under which instance cgroups are made: always `memory`, and `cpu`
    when that hierarchy could be used too."""

    bases: Mapping[str, Path]
    cpu_reason: str = ""  # why CPU limits are not caps, when there is no `cpu` base

    def create(self, instance: str, limits: Limits) -> InstanceCgroup:
        memory = self.bases["memory"] / instance
        cpu = self.bases["cpu"] / instance if limits.cpu is not None and "cpu" in self.bases else None
        made: list[Path] = []
        try:
            for directory in (memory, cpu):
                if directory is not None:  # parents too: the gateway's level is gone once the runtime closed
                    directory.mkdir(parents=True, exist_ok=True)
                    made.append(directory)
            if limits.memory is not None:
                self._limit_memory(memory, int(limits.memory))
            if cpu is not None and limits.cpu is not None:
                (cpu / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
                (cpu / "cpu.cfs_quota_us").write_text(str(cpu_quota(limits.cpu)))
        except OSError:
            remove_dirs(made, within=0)
            raise
        return InstanceCgroup(tuple(made), memory, cpu is not None)

    @staticmethod
    def _limit_memory(directory: Path, limit: int) -> None:
        # memory.memsw.limit_in_bytes (memory + swap) must stay >= memory.limit_in_bytes at every step: when the
        # limit goes down (a new cgroup starts unlimited) set the memory limit first, when it goes up memsw first.
        files = [directory / "memory.limit_in_bytes"]
        if (directory / "memory.memsw.limit_in_bytes").exists():
            files.append(directory / "memory.memsw.limit_in_bytes")
        current = read_int(files[0])
        if current is not None and limit > current:
            files.reverse()
        for file in files:
            file.write_text(str(limit))

    def oom_kills(self, cgroup: InstanceCgroup) -> int:
        return read_key(cgroup.memory / "memory.oom_control", "oom_kill") if cgroup.memory else 0

    def memory_used(self, cgroup: InstanceCgroup) -> int | None:
        return read_int(cgroup.memory / "memory.usage_in_bytes") if cgroup.memory else None

    def remove(self, cgroup: InstanceCgroup) -> None:
        remove_dirs(cgroup.dirs)

    def close(self) -> None:
        """Remove this gateway's level of each hierarchy, with any instance cgroup an instance left behind."""
        for base in self.bases.values():
            with contextlib.suppress(OSError):
                remove_dirs([child for child in base.iterdir() if child.is_dir()])
            remove_dirs([base])

    def describe(self) -> dict[str, str]:
        where = ", ".join(f"{path} ({controller})" for controller, path in self.bases.items())
        cpu = ("cpu.cfs_quota_us per cpu.cfs_period_us" if "cpu" in self.bases
               else f"priority lowered (nice {FALLBACK_NICE}), not capped: {self.cpu_reason}")
        return {"limits": f"cgroup v1 under {where}",
                "memory": "memory.limit_in_bytes and memory.memsw.limit_in_bytes, killed by the kernel above it",
                "cpu": cpu}


def _unescape(field: str) -> str:
    """Mount points in /proc/self/mountinfo escape space, tab, newline and backslash as octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def v1_hierarchies(mountinfo: Path = PROC_MOUNTINFO) -> dict[str, tuple[Path, str]]:
    """Controller -> (mount point, the hierarchy path mounted there) for every mounted cgroup v1 hierarchy."""
    found: dict[str, tuple[Path, str]] = {}
    with contextlib.suppress(OSError):
        for line in mountinfo.read_text().splitlines():
            before, _, after = line.partition(" - ")
            fields, tail = before.split(), after.split()
            if len(fields) < 5 or len(tail) < 3 or tail[0] != "cgroup":
                continue
            for option in tail[2].split(","):
                found.setdefault(option, (Path(_unescape(fields[4])), _unescape(fields[3])))
    return found


def v1_own_paths(proc_cgroup: Path = PROC_CGROUP) -> dict[str, str]:
    """Controller -> this process's cgroup in that v1 hierarchy, from /proc/self/cgroup (`4:memory:/a/b`)."""
    own: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in proc_cgroup.read_text().splitlines():
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            for controller in parts[1].split(","):
                if controller:
                    own[controller] = parts[2].strip()
    return own


def _sweep(subtree: Path, ours: str) -> None:
    """Remove the per-gateway levels (and their empty instance cgroups) of gateways that are gone."""
    with contextlib.suppress(OSError):
        for level in subtree.iterdir():
            pid = level.name.removeprefix(OWNER_PREFIX)
            if level.name == ours or not level.name.startswith(OWNER_PREFIX) or not pid.isdigit() or (
                    Path("/proc") / pid).exists():
                continue
            for directory in [*(child for child in level.iterdir() if child.is_dir()), level]:
                with contextlib.suppress(OSError):  # still busy: its apps live on; the next start tries again
                    directory.rmdir()


def _v1_base(controller: str, hierarchies: Mapping[str, tuple[Path, str]], own: Mapping[str, str],
             owner: str) -> Path | str:
    """This gateway's directory for instance cgroups in one v1 hierarchy, made now, or why there is none."""
    if controller not in hierarchies:
        return f"no cgroup v1 {controller} hierarchy is mounted"
    mount, mounted = hierarchies[controller]
    path = own.get(controller, "/")
    relative = os.path.relpath(path, mounted) if mounted != "/" else path.lstrip("/")
    if relative.startswith(".."):
        return f"this process's {controller} cgroup {path} is outside the mount at {mount}"
    parent = mount / relative if relative not in ("", ".") else mount
    try:
        (parent / SUBTREE / owner).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot make a child cgroup in {parent}: {exc.strerror or exc}"
    _sweep(parent / SUBTREE, owner)
    return parent / SUBTREE / owner


def detect_cgroup_v1(mountinfo: Path = PROC_MOUNTINFO, proc_cgroup: Path = PROC_CGROUP,
                     owner: str = "") -> tuple[CgroupV1 | None, str]:
    """The cgroup v1 directories for instances, or None with the reason they cannot be used on this host."""
    owner = owner or f"{OWNER_PREFIX}{os.getpid()}"
    hierarchies, own = v1_hierarchies(mountinfo), v1_own_paths(proc_cgroup)
    memory = _v1_base("memory", hierarchies, own, owner)
    if isinstance(memory, str):
        return None, f"cgroup v1: {memory}"
    cpu = _v1_base("cpu", hierarchies, own, owner)
    if isinstance(cpu, str):
        return CgroupV1({"memory": memory}, cpu_reason=cpu), ""
    return CgroupV1({"memory": memory, "cpu": cpu}), ""


def select_backend() -> tuple[CgroupBackend | None, str]:
    """The first usable of cgroup v2 and cgroup v1; None means per-process limits, and the reason says why."""
    v2, why_not_v2 = detect_cgroup_v2()
    if v2 is not None:
        return v2, ""
    v1, why_not_v1 = detect_cgroup_v1()
    if v1 is not None:
        return v1, why_not_v2
    return None, f"{why_not_v2}; {why_not_v1}"


def preexec(limits: Limits, cgroup: InstanceCgroup | None) -> Callable[[], None]:
    """What the child runs between fork and exec: join its cgroups, and set the per-process limits that no
    cgroup enforces on itself."""
    memory = int(limits.memory) if limits.memory is not None else None
    cpu = limits.cpu
    cores = os.cpu_count() or 1

    def apply() -> None:
        if cgroup is not None:
            cgroup.join()
        elif memory is not None:
            hard = memory * 2 + AS_HEADROOM
            resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
        if cpu is not None and cpu < cores and (cgroup is None or not cgroup.cpu_capped):
            os.nice(FALLBACK_NICE)

    return apply


def describe(backend: CgroupBackend | None, reason: str) -> dict[str, str]:
    """For the status page: which limits are in use and, when not the first choice, why."""
    if backend is not None:
        return {**backend.describe(), **({"why": reason} if reason else {})}
    return {"limits": f"per process ({reason})",
            "memory": "resident size watched, stopped above the limit; RLIMIT_AS at twice the limit",
            "cpu": f"priority lowered (nice {FALLBACK_NICE}), not capped"}
