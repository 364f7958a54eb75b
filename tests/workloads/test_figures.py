"""Per-instance figures on the node: a real process tree's CPU, memory and disk counters move when it works; a
cgroup of its own (made here in the v1 or v2 hierarchy the host has) is read as engines make them; the network of
a process in a namespace of its own is its own; rates over two samples; the sampler keeps only running instances."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.workloads import figures
from gateway.workloads.figures import Counters, WorkloadFigures, cgroup_counters, cgroup_dirs, process_tree, rates

# idles until it reads a line on stdin, then allocates 50 MB, writes 4 MB to a file and burns CPU until killed
WORKER = """
import os, sys, time
sys.stdin.readline()
block = bytearray(50 << 20)
for i in range(0, len(block), 4096):
    block[i] = 1
with open(sys.argv[1], "wb") as out:
    out.write(os.urandom(4 << 20))
    out.flush()
    os.fsync(out.fileno())
print("busy", flush=True)
while True:
    sum(range(10000))
"""


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "out")], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    yield process
    process.kill()
    process.wait(10)


def busy(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write("go\n")
    process.stdin.flush()
    assert process.stdout.readline().strip() == "busy"


def test_a_process_tree_counts_what_its_app_burns_allocates_and_writes(worker: subprocess.Popen[str]) -> None:
    idle = process_tree(worker.pid)
    assert idle is not None
    busy(worker)
    time.sleep(1.0)
    working = process_tree(worker.pid)
    assert working is not None
    assert working.cpu_seconds - idle.cpu_seconds > 0.3, (idle, working)
    assert idle.memory_bytes is not None and working.memory_bytes is not None
    assert working.memory_bytes - idle.memory_bytes > 45 << 20
    assert idle.disk_written is not None and working.disk_written is not None
    assert working.disk_written - idle.disk_written >= 4 << 20
    assert working.net_rx is None and working.net_tx is None, "on the host's network: no figures of its own"
    figures_now = rates(idle, working)
    assert figures_now["cpu_percent"] is not None and figures_now["cpu_percent"] > 20
    assert figures_now["memory_bytes"] == working.memory_bytes


def test_a_process_gone_has_no_counters() -> None:
    done = subprocess.run([sys.executable, "-c", "pass"], check=True)
    assert done.returncode == 0
    assert process_tree(2 ** 22 + 12345) is None


def test_rates_clamp_counters_that_went_back_and_leave_first_samples_empty() -> None:
    first = Counters(100.0, 5.0, 10 << 20, 1000, 2000, None, None)
    assert rates(None, first) == {"cpu_percent": None, "memory_bytes": float(10 << 20), "disk_read_bps": None,
                                  "disk_write_bps": None, "net_rx_bps": None, "net_tx_bps": None}
    later = Counters(110.0, 4.0, 20 << 20, 11000, 2000, 500, 700)
    assert rates(first, later) == {"cpu_percent": 0.0, "memory_bytes": float(20 << 20), "disk_read_bps": 1000.0,
                                   "disk_write_bps": 0.0, "net_rx_bps": None, "net_tx_bps": None}


def test_cgroup_files_read_as_v1_and_v2_write_them(tmp_path: Path) -> None:
    v1 = {"cpuacct": tmp_path / "cpuacct", "memory": tmp_path / "memory", "blkio": tmp_path / "blkio"}
    for directory in v1.values():
        directory.mkdir()
    (v1["cpuacct"] / "cpuacct.usage").write_text("2500000000\n")
    (v1["memory"] / "memory.usage_in_bytes").write_text(f"{60 << 20}\n")
    (v1["memory"] / "memory.stat").write_text(f"cache 100\ntotal_inactive_file {10 << 20}\n")
    (v1["blkio"] / "blkio.throttle.io_service_bytes").write_text(
        "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 1\n8:0 Total 12288\n8:16 Read 4\nTotal 12292\n")
    counters = cgroup_counters(v1, os.getpid())
    assert counters is not None
    assert (counters.cpu_seconds, counters.memory_bytes, counters.disk_read, counters.disk_written) == (
        2.5, 50 << 20, 4100, 8192)
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n")
    (v2 / "memory.current").write_text(f"{30 << 20}\n")
    (v2 / "memory.stat").write_text(f"anon 1\ninactive_file {5 << 20}\n")
    (v2 / "io.stat").write_text("8:0 rbytes=100 wbytes=200 rios=1 wios=2\n8:16 rbytes=1 wbytes=2 rios=1 wios=1\n")
    counters = cgroup_counters({"": v2}, os.getpid())
    assert counters is not None
    assert (counters.cpu_seconds, counters.memory_bytes, counters.disk_read, counters.disk_written) == (
        1.5, 25 << 20, 101, 202)
    assert cgroup_counters({"memory": v1["memory"]}, os.getpid()) is None, "no CPU account: not a cgroup to read"
    hybrid = tmp_path / "unified"  # a hybrid host's v2 cgroup: cpu.stat, but v1 holds the memory controller
    hybrid.mkdir()
    (hybrid / "cpu.stat").write_text("usage_usec 7\n")
    counters = cgroup_counters({"": hybrid, **v1}, os.getpid())
    assert counters is not None and (counters.cpu_seconds, counters.memory_bytes) == (2.5, 50 << 20)


def test_this_process_cgroups_are_found_and_are_not_an_apps_own() -> None:
    dirs = cgroup_dirs(os.getpid())
    assert dirs, "every Linux process is in some cgroup"
    assert all(path.is_dir() for path in dirs.values()), dirs
    assert figures.own_cgroup_counters(os.getpid()) is None


def test_the_network_of_a_process_in_its_own_namespace_is_its_own() -> None:
    if subprocess.run(["unshare", "-n", "true"], check=False).returncode != 0:
        pytest.fail("unshare -n does not work here (root and util-linux are needed)")
    process = subprocess.Popen(["unshare", "-n", "sh", "-c", "ip link set lo up; exec sleep 30"])
    try:
        deadline = time.monotonic() + 5
        found = None
        while time.monotonic() < deadline:
            found = figures.own_network(process.pid)
            if found is not None:
                break
            time.sleep(0.05)
        assert found == (0, 0), "a fresh namespace has only loopback, which is left out"
    finally:
        process.kill()
        process.wait(10)


def test_the_sampler_keeps_running_instances_only(worker: subprocess.Popen[str]) -> None:
    handle = SimpleNamespace(counters=lambda: process_tree(worker.pid))
    runner: Any = SimpleNamespace(id="app-1-0", handle=handle)
    stopped: Any = SimpleNamespace(id="app-2-0", handle=None)
    sampler = WorkloadFigures(interval=1.0)
    sampler.sample([("default/app", runner), ("default/app", stopped)])
    first = sampler.of("app-1-0")
    assert first is not None and first.latest is not None and first.latest["cpu_percent"] is None
    busy(worker)
    time.sleep(0.5)
    sampler.sample([("default/app", runner)])
    second = sampler.of("app-1-0")
    assert second is not None and second.latest is not None
    assert second.latest["cpu_percent"] is not None and second.latest["cpu_percent"] > 20
    assert sampler.of("app-2-0") is None and sampler.generation == 2
    series = sampler.series("default/app", 0)
    assert series["instances"] == ["app-1-0"] and len(series["times"]) == 1
    assert series["series"]["cpu_percent@app-1-0"][0] == second.latest["cpu_percent"]
    sampler.sample([])
    assert sampler.of("app-1-0") is None
