"""Benchmark: telemetry from virtual devices through the bus to mosquitto and the history.

Run: .venv/bin/pytest -m benchmark tests/benchmarks/test_eventbus_throughput.py -s
Sizes: FIELDGATE_BENCH_DEVICES (50), FIELDGATE_BENCH_PROPERTIES (100), FIELDGATE_BENCH_INTERVAL (100ms).
Reports points/s delivered to the broker (and written to history), read-to-broker latency p50/p99, CPU, RSS.
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

from tests.conftest import FIELDGATE, Mosquitto, free_port
from tests.store.test_store import api_get, wait_healthy

DEVICES = int(os.environ.get("FIELDGATE_BENCH_DEVICES", "50"))
PROPERTIES = int(os.environ.get("FIELDGATE_BENCH_PROPERTIES", "100"))
INTERVAL = os.environ.get("FIELDGATE_BENCH_INTERVAL", "100ms")
MEASURE_S = float(os.environ.get("FIELDGATE_BENCH_SECONDS", "20"))


def config(port: int, broker: str) -> str:
    props = "\n".join(f"  - {{name: p{i}, type: float}}" for i in range(PROPERTIES))
    parts = [f"kind: Gateway\nname: bench\nhttp: {{listen: \"127.0.0.1:{port}\"}}\neventbus: {{url: \"{broker}\"}}\n"
             f"---\nkind: DeviceModel\nname: m\nproperties:\n{props}\n"]
    visitors = "\n".join(f"  - {{name: p{i}, collect_interval: {INTERVAL}, visitor: {{generator: random, "
                         f"minimum: 0, maximum: 100}}}}" for i in range(PROPERTIES))
    for d in range(DEVICES):
        parts.append(f"---\nkind: Device\nname: dev-{d}\nmodel: m\nprotocol: {{name: virtual}}\n"
                     f"properties:\n{visitors}\n")
    return "".join(parts)


@pytest.mark.benchmark
def test_telemetry_throughput_to_mosquitto(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    broker.start()
    port = free_port()
    (tmp_path / "bench.yaml").write_text(config(port, broker.url))
    data = tmp_path / "data"
    token = subprocess.run([*FIELDGATE, "token", "create", "--role", "viewer", "--data-dir", str(data)],
                           check=True, capture_output=True, text=True).stdout.strip()
    # an independent subscriber counts what reaches the broker
    sub = subprocess.Popen(["mosquitto_sub", "-p", str(broker.port), "-t", "fieldgate/#", "-q", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    proc = subprocess.Popen([*FIELDGATE, "run", "-c", str(tmp_path / "bench.yaml"), "--data-dir", str(data),
                             "--log-level", "warning"])
    try:
        wait_healthy(port, proc, timeout=60)
        process = psutil.Process(proc.pid)
        time.sleep(5)
        before = api_get(port, "/api/v1/status", token)
        cpu_start, wall_start, rss = process.cpu_times(), time.monotonic(), 0
        while time.monotonic() - wall_start < MEASURE_S:
            time.sleep(0.5)
            rss = max(rss, process.memory_info().rss)
        cpu_end, wall = process.cpu_times(), time.monotonic() - wall_start
        after = api_get(port, "/api/v1/status", token)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        sub.terminate()
        sub.wait(10)
        broker.stop()
    delivered = after["sinks"]["eventbus"]["delivered"] - before["sinks"]["eventbus"]["delivered"]
    values = after["store"]["values_written"] - before["store"]["values_written"]
    result = {
        "devices": DEVICES, "properties": PROPERTIES, "interval": INTERVAL,
        "offered_points_per_s": round(DEVICES * PROPERTIES / _seconds(INTERVAL)),
        "messages_per_s": round(delivered / wall), "points_per_s_to_broker": round(delivered * PROPERTIES / wall),
        "points_per_s_to_history": round(values / wall),
        "latency_read_to_broker_ms": after["sinks"]["eventbus"]["latency_ms"],
        "outbox_depth_end": after["sinks"]["eventbus"]["outbox_depth"],
        "lateness_p99_ms": after["lateness_ms"]["p99"],
        "cpu_percent": round(100 * (sum(cpu_end[:2]) - sum(cpu_start[:2])) / wall, 1),
        "rss_mb": round(rss / 2**20, 1),
    }
    print("\n" + json.dumps(result))
    assert result["points_per_s_to_broker"] >= 0.95 * result["offered_points_per_s"]
    assert result["outbox_depth_end"] < delivered / wall * 2  # keeping up: at most ~2 s behind


def _seconds(interval: str) -> float:
    return float(interval[:-2]) / 1000 if interval.endswith("ms") else float(interval.rstrip("s"))
