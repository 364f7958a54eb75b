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
