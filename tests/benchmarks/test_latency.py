"""Benchmark (issue 21, point 4): from the device read to the broker, through the twin, the history and the durable
telemetry outbox.

Run: .venv/bin/pytest -m benchmark tests/benchmarks/test_latency.py -s

A real `fieldgate run` polls 100 Modbus TCP devices x 100 float32 registers, served by the C simulator on libmodbus
(plugins/modbus/sim/modbus_sim.c, several processes, the devices spread over them as in the fleet benchmark), and
publishes their telemetry to mosquitto on loopback. mosquitto_sub (an independent C client) stamps each message's
arrival with the wall clock in nanoseconds; the latency of a message is that minus the payload's `ts`, which the
poller takes with `time.time()` when the read has completed (`gateway/pipeline/poller.py`). `ts` is whole
milliseconds (the telemetry contract), cut, not rounded: a latency here is 0 to 1 ms longer than the true one
(0.5 ms on average).

- 10,000 points/s: every device read once a second
- 100,000 points/s: every device read every 100 ms

Printed per case, one JSON line: latency p50/p99/max (messages stamped inside the measured window), delivered %
(messages received of the reads offered in the window), gateway CPU % of one core and per point delivered, the box's
CPU %. The bars (read → broker p50 ≤ 5 ms and p99 ≤ 20 ms) are asserted, with room for a box shared with other work,
where they are met (the median at 10,000 points/s); elsewhere loose bounds, and the CPU a point at 100,000 points/s.
Knobs: FIELDGATE_BENCH_SECONDS (20), FIELDGATE_BENCH_SIMS (10), FIELDGATE_BENCH_FLUSH (the store's
flush_interval, e.g. 100ms as before; unset: the default), FIELDGATE_BENCH_NICE (0; as root, -10 runs the
gateway, mosquitto, the subscriber and the simulators ahead of the box's other work),
FIELDGATE_BENCH_PROFILE=/tmp/latency.prof (run the gateway under cProfile, written to /tmp/latency.prof.<case>).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from gateway.testing import Mosquitto, free_port
from tests.conftest import FIELDGATE, REPO

sys.path.insert(0, str(REPO / "plugins" / "modbus" / "tests"))
sys.path.insert(0, str(REPO / "plugins" / "modbus" / "tests" / "benchmarks"))
from c_simulator import CSimulator
from fieldgate_modbus.sim import units_from_documents
from test_fleet import PROFILED, api_get, device_doc, model_doc, stop, wait_healthy

pytestmark = pytest.mark.benchmark

MEASURE_S = float(os.environ.get("FIELDGATE_BENCH_SECONDS", "20"))
SIMS = int(os.environ.get("FIELDGATE_BENCH_SIMS", "10"))
FLUSH = os.environ.get("FIELDGATE_BENCH_FLUSH", "")  # the store's flush_interval ("": its default)
NICE = int(os.environ.get("FIELDGATE_BENCH_NICE", "0"))
WARMUP_S = 5.0
TAIL_S = 2.0  # after the window: time for the window's last messages to arrive
DEVICES = 100
PROPERTIES = 100


def percentile(values: list[float], fraction: float) -> float:
    return values[min(int(len(values) * fraction), len(values) - 1)]


@dataclass
class Plant:
    """A running `fieldgate run` polling `devices` Modbus TCP devices x PROPERTIES float32 registers on C
    simulators, publishing to mosquitto, and mosquitto_sub writing `<arrival ns> <payload>` lines to `arrivals`."""

    gateway: subprocess.Popen[bytes]
    http_port: int
    token: str
    arrivals: Path


@contextlib.contextmanager
def plant(tmp_path: Path, case: str, interval_ms: int, devices: int = DEVICES) -> Iterator[Plant]:
    """The plant of a case, every device online (or 30 s waited), stopped (only what it started) on leaving."""
    broker = Mosquitto(tmp_path)
    http_port = free_port()
    sims: list[CSimulator] = []
    gateway: subprocess.Popen[bytes] | None = None
    subscriber: subprocess.Popen[bytes] | None = None
    arrivals = tmp_path / f"{case}-arrivals.txt"
    try:
        broker.start()
        ports = []
        for k in range(SIMS):
            # each simulator serves its units what their devices read: its layout comes from the same documents
            directory = tmp_path / f"{case}-sim{k}"
            directory.mkdir()
            units_file = directory / "units.yaml"
            units_file.write_text(model_doc(PROPERTIES) + "".join(
                device_doc(f"dev-{d}", 502, d // SIMS + 1, PROPERTIES, interval_ms) for d in range(k, devices, SIMS)))
            sims.append(CSimulator(directory, units_from_documents(units_file, animate=False)))
            ports.append(sims[-1].start())
        docs = [f"kind: Gateway\nname: latency-bench\nhttp: {{listen: \"127.0.0.1:{http_port}\"}}\n"
                f"eventbus: {{url: \"{broker.url}\"}}\n" + (f"store: {{flush_interval: {FLUSH}}}\n" if FLUSH else ""),
                model_doc(PROPERTIES)]
        docs += [device_doc(f"dev-{d}", ports[d % SIMS], d // SIMS + 1, PROPERTIES, interval_ms)
                 for d in range(devices)]
        config = tmp_path / f"{case}-gateway.yaml"
        config.write_text("".join(docs))
        data = tmp_path / f"{case}-data"
        token = subprocess.run([*FIELDGATE, "token", "create", "--role", "viewer", "--data-dir", str(data)],
                               check=True, capture_output=True, text=True).stdout.strip()
        with arrivals.open("wb") as out:
            subscriber = subprocess.Popen(
                ["mosquitto_sub", "-p", str(broker.port), "-q", "1", "-t", "fieldgate/+/+/+/telemetry",
                 "-F", "%U %p"], stdout=out, stderr=subprocess.DEVNULL)
        with (tmp_path / f"{case}-gateway.log").open("wb") as log_file:
            profile = os.environ.get("FIELDGATE_BENCH_PROFILE")  # cProfile the gateway into PROFILE.<case>
            prefix = [sys.executable, "-c", PROFILED.format(out=f"{profile}.{case}")] if profile else FIELDGATE
            gateway = subprocess.Popen([*prefix, "run", "-c", str(config), "--data-dir", str(data),
                                        "--log-level", "warning"], stderr=log_file)
        wait_healthy(http_port, gateway)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # bounded: every device online (or measure anyway)
            if api_get(http_port, "/api/v1/status", token)["devices"].get("online", 0) == devices:
                break
            time.sleep(0.5)
        if NICE:  # ahead of the box's other work (as root), so that its load is not counted as the gateway's latency
            assert broker.process is not None and all(sim.process is not None for sim in sims)
            for pid in [gateway.pid, broker.process.pid, subscriber.pid, *(sim.process.pid for sim in sims
                                                                         if sim.process is not None)]:
                psutil.Process(pid).nice(NICE)
        yield Plant(gateway, http_port, token, arrivals)
        if profile:
            gateway.send_signal(signal.SIGUSR1)
            time.sleep(2)
    finally:
        if subscriber is not None:
            subscriber.terminate()
            subscriber.wait(10)
        if gateway is not None:
            stop(gateway)
        for sim in sims:
            sim.stop()
        broker.stop()


def run_case(tmp_path: Path, case: str, interval_ms: int) -> dict[str, Any]:
    with plant(tmp_path, case, interval_ms) as running:
        time.sleep(WARMUP_S)
        # nothing asks the gateway anything inside the window: its answers would hold up its loop
        process = psutil.Process(running.gateway.pid)
        cpu0, box0, start = process.cpu_times(), psutil.cpu_times(), time.time()
        rss: list[int] = []  # sampled from /proc each second, which does not ask the gateway's loop anything
        while time.time() < start + MEASURE_S:
            rss.append(process.memory_info().rss)
            time.sleep(min(1.0, max(0.0, start + MEASURE_S - time.time())))
        cpu1, box1, end = process.cpu_times(), psutil.cpu_times(), time.time()
        time.sleep(TAIL_S)
        status = api_get(running.http_port, "/api/v1/status", running.token)
    arrivals = running.arrivals

    latencies: list[float] = []
    points = 0
    for line in arrivals.read_bytes().splitlines():
        arrived, _, payload = line.partition(b" ")
        message = json.loads(payload)
        stamped = message["ts"] / 1000
        if start <= stamped < end:
            latencies.append(float(arrived) - stamped)
            points += len(message["values"])
    latencies.sort()
    offered = DEVICES * (end - start) * 1000 / interval_ms
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    box_total = sum(box1) - sum(box0)
    box_idle = (box1.idle + getattr(box1, "iowait", 0)) - (box0.idle + getattr(box0, "iowait", 0))
    result = {
        "case": case, "devices": DEVICES, "properties": PROPERTIES, "interval_ms": interval_ms,
        "simulators": SIMS, "nice": NICE, "flush_interval": FLUSH or "default", "seconds": round(end - start, 1),
        "points_per_s_offered": round(DEVICES * PROPERTIES * 1000 / interval_ms),
        "points_per_s_delivered": round(points / (end - start)),
        "delivered_percent": round(100 * len(latencies) / offered, 1),
        "latency_p50_ms": round(1000 * percentile(latencies, 0.50), 2) if latencies else None,
        "latency_p99_ms": round(1000 * percentile(latencies, 0.99), 2) if latencies else None,
        "latency_max_ms": round(1000 * latencies[-1], 2) if latencies else None,
        "gateway_cpu_percent_of_one_core": round(100 * cpu / (end - start), 1),
        "gateway_cpu_us_per_point": round(1e6 * cpu / max(points, 1), 2),
        "box_cpu_percent_of_all_cores": round(100 * (box_total - box_idle) / box_total, 1) if box_total else None,
        "rss_mb_first": round(rss[0] / 2**20, 1), "rss_mb_max": round(max(rss) / 2**20, 1),
        "lateness_p99_ms": status["lateness_ms"]["p99"],
        "outbox_depth_end": status["sinks"]["eventbus"]["outbox_depth"],
        "cores": psutil.cpu_count(),
    }
    print("\n" + json.dumps(result), flush=True)
    return result


def check(result: dict[str, Any], *, delivered: float, p50_ms: float, p99_ms: float) -> None:
    assert result["delivered_percent"] >= delivered
    assert result["latency_p50_ms"] is not None and result["latency_p99_ms"] is not None
    assert result["latency_p50_ms"] <= p50_ms
    assert result["latency_p99_ms"] <= p99_ms


def test_read_to_broker_at_10k_points_per_s(tmp_path: Path) -> None:
    # the median's bar (5 ms) with room for a busy box; the 99th percentile's (20 ms) is not met on a shared box yet
    check(run_case(tmp_path, "10k", 1000), delivered=95, p50_ms=10, p99_ms=200)


def test_read_to_broker_at_100k_points_per_s(tmp_path: Path) -> None:
    # loose until the bars are met (see the README); the CPU a point must stay where the 100 ms flush timer had it
    # (4.2 us here), with room for a busy box
    result = run_case(tmp_path, "100k", 100)
    check(result, delivered=90, p50_ms=100, p99_ms=500)
    assert result["gateway_cpu_us_per_point"] < 6.0
