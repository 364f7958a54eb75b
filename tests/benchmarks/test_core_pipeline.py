"""Benchmark: 50 virtual devices x 20 properties at 100 ms in `fieldgate run`.

Run: .venv/bin/pytest -m benchmark tests/benchmarks/test_core_pipeline.py -s
Aims (issue): p99 cycle lateness < 10 ms, CPU < 15 % of one core, RSS < 60 MB.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import FIELDGATE, free_port
from tests.store.test_store import api_get, wait_healthy

DEVICES = int(os.environ.get("FIELDGATE_BENCH_DEVICES", "50"))
PROPERTIES = 20
INTERVAL = "100ms"
MEASURE_S = float(os.environ.get("FIELDGATE_BENCH_SECONDS", "20"))


def bench_config(port: int) -> str:
    props = "\n".join(f"  - {{name: p{i}, type: float}}" for i in range(PROPERTIES))
    parts = [f"kind: Gateway\nname: bench\nhttp: {{listen: \"127.0.0.1:{port}\"}}\neventbus: {{url: none}}\n"
             f"---\nkind: DeviceModel\nname: m\nproperties:\n{props}\n"]
    generators = ["{generator: sine, amplitude: 10, period: 30s, offset: 20}",
                  "{generator: counter, start: 0, step: 0.5}", "{generator: random, minimum: 0, maximum: 100}"]
    for d in range(DEVICES):
        visitors = "\n".join(f"  - {{name: p{i}, collect_interval: {INTERVAL}, visitor: {generators[i % 3]}}}"
                             for i in range(PROPERTIES))
        parts.append(f"---\nkind: Device\nname: dev-{d}\nmodel: m\nprotocol: {{name: virtual}}\n"
                     f"properties:\n{visitors}\n")
    return "".join(parts)


@pytest.mark.benchmark
def test_50_devices_x_20_properties_at_100ms(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "bench.yaml"
    config.write_text(bench_config(port))
    data = tmp_path / "data"
    token = subprocess.run([*FIELDGATE, "token", "create", "--role", "viewer", "--data-dir", str(data)],
                           check=True, capture_output=True, text=True).stdout.strip()
    proc = subprocess.Popen([*FIELDGATE, "run", "-c", str(config), "--data-dir", str(data), "--log-level", "warning"])
    try:
        wait_healthy(port, proc)
        process = psutil.Process(proc.pid)
        time.sleep(3)  # warm-up
        before = api_get(port, "/api/v1/status", token)
        process.cpu_percent()
        cpu_start = process.cpu_times()
        wall_start = time.monotonic()
        rss_max = 0
        while time.monotonic() - wall_start < MEASURE_S:
            time.sleep(0.5)
            rss_max = max(rss_max, process.memory_info().rss)
        cpu_end = process.cpu_times()
        wall = time.monotonic() - wall_start
        status = api_get(port, "/api/v1/status", token)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    cpu_pct = 100 * ((cpu_end.user - cpu_start.user) + (cpu_end.system - cpu_start.system)) / wall
    cycles = status["cycles"] - before["cycles"]
    values = status["store"]["values_written"] - before["store"]["values_written"]
    result = {
        "devices": DEVICES, "properties": PROPERTIES, "interval_ms": 100, "seconds": round(wall, 1),
        "cycles_per_s": round(cycles / wall, 1), "values_per_s": round(values / wall),
        "lateness_mean_ms": status["lateness_ms"]["mean"], "lateness_p99_ms": status["lateness_ms"]["p99"],
        "lateness_max_ms": status["lateness_ms"]["max"], "missed_cycles": status["missed_cycles"],
        "cpu_percent_of_one_core": round(cpu_pct, 1), "rss_mb": round(rss_max / 2**20, 1),
    }
    print("\n" + json.dumps(result))
    assert cycles / wall > DEVICES * 10 * 0.95
    assert status["lateness_ms"]["p99"] < 10
    assert cpu_pct < 15
    assert rss_max < 60 * 2**20
