"""Per-instance resource figures of edge apps: CPU, memory, disk and network I/O.

Where the counters come from, by what is real and cheap on the node:
- a **container** instance: the counters of its own cgroup, which the engine made (found through
  `/proc/<pid>/cgroup` of its main process): cgroup v2 `cpu.stat`, `memory.current`, `io.stat`, or on v1 and
  hybrid hosts `cpuacct.usage`, `memory.usage_in_bytes`, `blkio.throttle.io_service_bytes`. A few small file reads
  per instance; `podman stats` would start a process per sample (tens of ms of CPU each) for the same numbers.
- a **process** instance: its process tree through /proc (psutil): CPU time of the live processes plus what their
  reaped children used, resident memory (or the instance's own cgroup's count when its limits made one), and the
  bytes the tree read from and wrote to storage (`/proc/<pid>/io`). A process instance has its own cgroup only
  when it has limits, so the tree is what every process instance has.
- network: the interfaces of the instance's network namespace (`/proc/<pid>/net/dev`, loopback left out) when it
  has one of its own; an app on the host's network shares its counters with everything else there, so it has none.

WorkloadFigures samples every instance of the node every INTERVAL seconds (a supervised task, `workload-figures`),
turns the counters into rates over the interval, and keeps the last hour of each instance in memory for the local
app page. The uplink sends the latest figures with the heartbeat, /metrics shows the counters.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from gateway.workloads.limits import read_int, read_key, v1_hierarchies

if TYPE_CHECKING:
    from gateway.workloads.instance import InstanceRunner

INTERVAL = 10.0  # seconds between two samples of every instance
KEEP = 3600.0  # seconds of figures kept per instance for the local plots
MAX_INSTANCES = 500  # instances sampled on one node (the first ones by id beyond that)
FIGURES: tuple[str, ...] = ("cpu_percent", "memory_bytes", "disk_read_bps", "disk_write_bps", "net_rx_bps",
                            "net_tx_bps")
PROC = Path("/proc")
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Counters:
    """One instance's counters at one moment (`at`: monotonic seconds); None where the node cannot tell."""

    at: float
    cpu_seconds: float
    memory_bytes: int | None
    disk_read: int | None = None
    disk_written: int | None = None
    net_rx: int | None = None
    net_tx: int | None = None


Figures = dict[str, float | None]  # FIGURES by name: CPU in % of one core, memory in bytes, the rest bytes/s


def rates(before: Counters | None, now: Counters) -> Figures:
    """The figures over the time between two counters (None for the rates of a first sample)."""
    elapsed = now.at - before.at if before is not None else 0.0

    def rate(new: float | None, old: float | None) -> float | None:
        if new is None or old is None or elapsed <= 0:
            return None
        return round(max(new - old, 0) / elapsed, 1)  # a counter that went back (a child gone) counts as 0

    cpu = rate(now.cpu_seconds, before.cpu_seconds if before is not None else None)
    return {"cpu_percent": round(cpu * 100, 1) if cpu is not None else None,
            "memory_bytes": float(now.memory_bytes) if now.memory_bytes is not None else None,
            "disk_read_bps": rate(now.disk_read, before.disk_read if before else None),
            "disk_write_bps": rate(now.disk_written, before.disk_written if before else None),
            "net_rx_bps": rate(now.net_rx, before.net_rx if before else None),
            "net_tx_bps": rate(now.net_tx, before.net_tx if before else None)}


# --- reading the counters -----------------------------------------------------------------------------------------


def own_network(pid: int, proc: Path = PROC) -> tuple[int, int] | None:
    """(received, sent) bytes of the interfaces of `pid`'s network namespace, loopback left out; None when it
    shares the gateway's namespace (the host's counters are not the app's) or cannot be read."""
    try:
        if os.readlink(proc / str(pid) / "ns" / "net") == os.readlink(proc / "self" / "ns" / "net"):
            return None
        lines = (proc / str(pid) / "net" / "dev").read_text().splitlines()[2:]
    except OSError:
        return None
    rx = tx = 0
    for line in lines:
        name, _, numbers = line.partition(":")
        fields = numbers.split()
        if name.strip() == "lo" or len(fields) < 9:
            continue
        rx += int(fields[0])
        tx += int(fields[8])
    return rx, tx


def process_tree(pid: int, memory_bytes: int | None = None) -> Counters | None:
    """The counters of the process `pid` and its descendants; `memory_bytes` instead of their resident size when
    the caller has the kernel's count (the instance's cgroup). None once the process is gone."""
    try:
        main = psutil.Process(pid)
        processes = [main, *main.children(recursive=True)]
    except psutil.Error:
        return None
    cpu = 0.0
    resident = 0
    read: int | None = 0
    written: int | None = 0
    for i, process in enumerate(processes):
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            cpu += times.user + times.system
            if i == 0:  # the children the app reaped are in its own counts; deeper ones in their parents'
                cpu += times.children_user + times.children_system
            if memory_bytes is None:
                resident += process.memory_info().rss
            if read is not None and written is not None:
                try:
                    io = process.io_counters()
                    read += io.read_bytes
                    written += io.write_bytes
                except (psutil.AccessDenied, AttributeError, NotImplementedError):
                    read = written = None
    network = own_network(pid)
    return Counters(time.monotonic(), cpu, memory_bytes if memory_bytes is not None else resident, read, written,
                    network[0] if network else None, network[1] if network else None)


def cgroup_dirs(pid: int, proc: Path = PROC, root: Path = CGROUP_ROOT) -> dict[str, Path]:
    """Controller -> the directory of `pid`'s cgroup for it: `""` names the cgroup v2 one."""
    found: dict[str, Path] = {}
    try:
        lines = (proc / str(pid) / "cgroup").read_text().splitlines()
    except OSError:
        return found
    mounts = v1_hierarchies(proc / "self" / "mountinfo")
    unified = root if (root / "cgroup.controllers").exists() else root / "unified"
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        path = parts[2].strip().lstrip("/")
        if parts[0] == "0" and not parts[1]:
            found[""] = unified / path
            continue
        for controller in parts[1].split(","):
            if controller in mounts:
                mount, mounted = mounts[controller]
                relative = os.path.relpath("/" + path, mounted) if mounted != "/" else path
                found[controller] = mount / relative if relative not in ("", ".") else mount
    return found


def _io_bytes(lines: Iterator[str]) -> tuple[int, int]:
    """(read, written) bytes from cgroup v2 `io.stat` (`8:0 rbytes=… wbytes=…`) or v1
    `blkio.throttle.io_service_bytes` (`8:0 Read 123`)."""
    read = written = 0
    for line in lines:
        fields = line.split()
        for field in fields[1:]:
            key, _, value = field.partition("=")
            if key == "rbytes" and value.isdigit():
                read += int(value)
            elif key == "wbytes" and value.isdigit():
                written += int(value)
        if len(fields) == 3 and fields[2].isdigit() and ":" in fields[0]:
            if fields[1] == "Read":
                read += int(fields[2])
            elif fields[1] == "Write":
                written += int(fields[2])
    return read, written


def _lines(path: Path) -> Iterator[str]:
    with contextlib.suppress(OSError):
        yield from path.read_text().splitlines()


def cgroup_counters(dirs: Mapping[str, Path], pid: int) -> Counters | None:
    """The counters of a cgroup (v2, or the v1 cpuacct, memory and blkio directories of one); None when its CPU
    cannot be read (not a cgroup of its own)."""
    v2 = dirs.get("")
    network = own_network(pid)
    rx, tx = network if network else (None, None)
    # v2 when it holds the memory controller: on a hybrid host its cgroups have cpu.stat but v1 holds the rest
    if v2 is not None and (v2 / "memory.current").exists():
        usage = read_key(v2 / "cpu.stat", "usage_usec")
        current = read_int(v2 / "memory.current")
        memory = None if current is None else max(current - read_key(v2 / "memory.stat", "inactive_file"), 0)
        read, written = _io_bytes(_lines(v2 / "io.stat"))
        return Counters(time.monotonic(), usage / 1e6, memory, read, written, rx, tx)
    cpuacct = dirs.get("cpuacct")
    usage_ns = read_int(cpuacct / "cpuacct.usage") if cpuacct is not None else None
    if usage_ns is None:
        return None
    memory_dir = dirs.get("memory")
    memory = None
    if memory_dir is not None:
        used = read_int(memory_dir / "memory.usage_in_bytes")
        if used is not None:  # the working set, as engines count it: the page cache the kernel may drop is not
            memory = max(used - read_key(memory_dir / "memory.stat", "total_inactive_file"), 0)
    blkio = dirs.get("blkio")
    read, written = _io_bytes(_lines(blkio / "blkio.throttle.io_service_bytes")) if blkio else (0, 0)
    return Counters(time.monotonic(), usage_ns / 1e9, memory, read if blkio else None, written if blkio else None,
                    rx, tx)


def own_cgroup_counters(pid: int) -> Counters | None:
    """The counters of the cgroup `pid` runs in, unless that is the gateway's own (then None: not the app's)."""
    dirs = cgroup_dirs(pid)
    if not dirs or dirs == cgroup_dirs(os.getpid()):
        return None
    return cgroup_counters(dirs, pid)


# --- sampling every instance --------------------------------------------------------------------------------------


@dataclass
class InstanceFigures:
    """What the node knows of one instance's resources: its latest counters and figures, and the last hour."""

    workload: str  # <namespace>/<name>
    instance: str
    counters: Counters | None = None
    latest: Figures | None = None
    history: collections.deque[tuple[float, Figures]] | None = None

    def __post_init__(self) -> None:
        self.history = collections.deque(maxlen=int(KEEP / INTERVAL) + 1)


class WorkloadFigures:
    """The figures of the node's instances, sampled every `interval` seconds."""

    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        self.instances: dict[str, InstanceFigures] = {}  # by instance id
        self.generation = 0  # grows with every sample

    def sample(self, running: list[tuple[str, InstanceRunner]]) -> None:
        """Read the counters of the running instances (blocking: run it in a thread) and keep their figures.

        The instances' table is replaced whole, never changed in place: the event loop reads it meanwhile."""
        now = time.time()
        fresh: dict[str, InstanceFigures] = {}
        for workload, runner in sorted(running, key=lambda item: item[1].id)[:MAX_INSTANCES]:
            handle = runner.handle
            counters = handle.counters() if handle is not None else None
            if counters is None:
                continue
            kept = self.instances.get(runner.id) or InstanceFigures(workload, runner.id)
            kept.latest = rates(kept.counters, counters)
            kept.counters = counters
            if kept.history is not None and kept.latest["cpu_percent"] is not None:
                kept.history.append((now, kept.latest))
            fresh[runner.id] = kept
        self.instances = fresh
        self.generation += 1

    def of(self, instance: str) -> InstanceFigures | None:
        return self.instances.get(instance)

    def of_workload(self, workload: str) -> list[InstanceFigures]:
        """The instances of one workload (`<namespace>/<name>`), by id."""
        return sorted((f for f in self.instances.values() if f.workload == workload), key=lambda f: f.instance)

    def series(self, workload: str, since: float) -> dict[str, Any]:
        """The figures of a workload's instances since `since` as the plots' JSON: times (every sample of any of
        them) and a list per figure and instance, named `<figure>@<instance>` (gateway.webkit.plots)."""
        instances = self.of_workload(workload)
        rows = {f.instance: [(ts, figures) for ts, figures in list(f.history or ()) if ts >= since]
                for f in instances}
        times = sorted({ts for points in rows.values() for ts, _ in points})
        column = {ts: i for i, ts in enumerate(times)}
        series: dict[str, list[float | None]] = {}
        for instance, points in rows.items():
            for name in FIGURES:
                values: list[float | None] = [None] * len(times)
                for ts, figures in points:
                    values[column[ts]] = figures.get(name)
                series[f"{name}@{instance}"] = values
        return {"step": self.interval, "times": times, "series": series,
                "instances": [f.instance for f in instances]}

    async def run(self, running: collections.abc.Callable[[], list[tuple[str, InstanceRunner]]]) -> None:
        while True:
            await asyncio.to_thread(self.sample, running())
            await asyncio.sleep(self.interval)
