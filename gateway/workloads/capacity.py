"""What the node offers its apps (`allocatable`, sent with the heartbeat): the CPU cores and memory the gateway may
use — the machine's, or less when the gateway runs in a cgroup with a CPU quota, a CPU set or a memory limit — and
the accelerators it declares (none yet: the Gateway document will name them)."""

from __future__ import annotations

import contextlib
import os

import psutil

from gateway.wire import Allocatable
from gateway.workloads.figures import cgroup_dirs
from gateway.workloads.limits import read_int

UNLIMITED = 1 << 60  # cgroup v1 writes a number this large or larger for "no limit"


def cpu_cores() -> float:
    """The cores the gateway may use: its CPU set, capped by its cgroup's CPU quota."""
    try:
        cores = float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        cores = float(os.cpu_count() or 1)
    dirs = cgroup_dirs(os.getpid())
    quota = period = None
    if "" in dirs:
        with contextlib.suppress(OSError, ValueError):
            text = (dirs[""] / "cpu.max").read_text().split()
            if text and text[0] != "max":
                quota, period = int(text[0]), int(text[1])
    elif "cpu" in dirs:
        quota, period = read_int(dirs["cpu"] / "cpu.cfs_quota_us"), read_int(dirs["cpu"] / "cpu.cfs_period_us")
    if quota is not None and period and quota > 0:
        cores = min(cores, round(quota / period, 2))
    return cores


def memory_bytes() -> int:
    """The memory the gateway may use: the machine's, capped by its cgroup's memory limit."""
    total = psutil.virtual_memory().total
    dirs = cgroup_dirs(os.getpid())
    limit = None
    if "" in dirs:
        limit = read_int(dirs[""] / "memory.max")
    elif "memory" in dirs:
        limit = read_int(dirs["memory"] / "memory.limit_in_bytes")
    return min(total, limit) if limit is not None and 0 < limit < UNLIMITED else total


def allocatable() -> Allocatable:
    return Allocatable(cpu=cpu_cores(), memory=float(memory_bytes()))
