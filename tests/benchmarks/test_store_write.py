"""The store's write path: what one flush a cycle of 100 devices x 50 values costs in CPU.

Run: .venv/bin/pytest -m benchmark tests/benchmarks/test_store_write.py -s

CPU time of this process (the event loop and aiosqlite's thread together) over 500,000 values, so a busy box
changes the wall time, not the figure. Schema 1 (one history row per value under a (series, time) index) wrote
about 140,000 values per CPU-second here; one row per report is the change this figure guards.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from gateway.store import Store

pytestmark = pytest.mark.benchmark

DEVICES, PROPERTIES, CYCLES = 100, 50, 100


def files_size(data_dir: Path) -> int:
    return sum(f.stat().st_size for f in data_dir.glob("fieldgate.db*"))


async def test_the_store_writes_300k_values_per_cpu_second(tmp_path: Path) -> None:
    store = Store(tmp_path)
    await store.open()
    try:
        devices = [f"default/d{i}" for i in range(DEVICES)]
        written = 0
        wall, cpu = time.perf_counter(), time.process_time()
        for cycle in range(CYCLES):
            now = time.time()
            for device in devices:
                store.history.add_report(device, now, {f"p{j}": 20.0 + j + cycle / 100 for j in range(PROPERTIES)})
            written += await store.flush()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        size = files_size(tmp_path)  # before close: the WAL holds what was written
    finally:
        await store.close()
    assert written == DEVICES * PROPERTIES * CYCLES
    result = {"values": written, "values_per_cpu_s": round(written / cpu), "values_per_s": round(written / wall),
              "bytes_per_value_on_disk": round(size / written, 1)}
    print(json.dumps(result))
    assert result["values_per_cpu_s"] >= 300_000, result  # twice schema 1, with room for a busy box


async def commit_times(data_dir: Path, sync: str, commits: int) -> list[float]:
    """Seconds each commit of one report and one outbox message took, sorted."""
    store = Store(data_dir, sync=sync)
    await store.open()
    times = []
    try:
        for i in range(commits):
            store.history.add_report("default/d", 1000.0 + i, {"a": i})
            store.outboxes.add("sink", "t", b"x" * 100)
            started = time.perf_counter()
            await store.flush()
            times.append(time.perf_counter() - started)
    finally:
        await store.close()
    return sorted(times)


async def test_what_a_commit_that_survives_a_power_cut_costs(tmp_path: Path) -> None:
    """`store.sync: full` (the default) fsyncs the write-ahead log at every commit, `normal` only at checkpoints:
    the time of a small commit (one report, one outbox message) each way, on the disk under the test's temporary
    folder (run it on the disk a gateway would use). Under load the writer commits at most once every 10 ms, so
    this is also the most a second of fsyncs costs in a hundredth of that."""
    commits = 1000
    result: dict[str, dict[str, float]] = {}
    for sync in ("normal", "full"):
        times = await commit_times(tmp_path / sync, sync, commits)
        result[sync] = {"p50_ms": round(times[commits // 2] * 1000, 3),
                        "p99_ms": round(times[int(commits * 0.99)] * 1000, 3),
                        "mean_ms": round(sum(times) / commits * 1000, 3)}
    print(json.dumps(result))
    assert result["full"]["p50_ms"] < 10, result  # a disk whose flush takes longer wants `sync: normal`
