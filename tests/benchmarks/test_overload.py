"""Benchmark (issue 21, point 6): a gateway asked far more than it can do.

Run: .venv/bin/pytest -m benchmark tests/benchmarks/test_overload.py -s

400 Modbus TCP devices on eight `fieldgate sim modbus` servers, each asking a read of 62 float32 values every 10
ms (40,000 requests and 2,480,000 points a second), their telemetry to a real mosquitto, stamped on arrival by
mosquitto_sub. Over WINDOW seconds, in two halves, printed on one line: what was asked against what was delivered,
the messages of each half, the p99 latency read -> broker of each half, each device's share, the gateway's RSS at the
window's start and end, and the time from SIGTERM to its exit.

Asserted, the bars of point 6: asked at least 10x what it delivers (overloaded indeed); as much delivered in the
second half as in the first (at capacity, no collapse); the p99 latency at most 2 s and not growing (the lateness
belongs in the polls, per device on /metrics, not in a queue behind them); every device its share (the least at
least half the median); the RSS not growing (at most 20 % + 10 MiB over the window); exit within 10 s of SIGTERM.
Not all met yet (the note of the stop has the figures); the suite keeps the SIGTERM part
(plugins/modbus/tests/test_gateway.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from gateway.testing import Mosquitto, free_port
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "plugins" / "modbus" / "tests"))
from test_gateway import OVERLOAD_PROPERTIES, overload_config, stop_with_sigterm, wait_for_lines

pytestmark = [pytest.mark.benchmark, pytest.mark.timeout(300)]

SERVERS = 8
DEVICES = 50  # a server
WINDOW = 12.0  # seconds measured, in two halves


def overload_figures(arrivals: Path, start: float, end: float) -> dict[str, Any]:
    """From mosquitto_sub's lines (`<arrival, unix s> <topic> <payload>`): per half of the window the messages
    and the latency read → broker (arrival minus the payload's `ts`, the time the read completed), and the messages
    of each device over the whole window."""
    middle = (start + end) / 2
    halves: list[list[float]] = [[], []]
    per_device: dict[str, int] = {}
    for line in arrivals.read_bytes().splitlines():
        arrived_text, topic, payload = line.split(b" ", 2)
        arrived = float(arrived_text)
        if not start <= arrived < end:
            continue
        latency = arrived - json.loads(payload)["ts"] / 1000
        halves[arrived >= middle].append(latency)
        device = topic.decode().split("/")[3]
        per_device[device] = per_device.get(device, 0) + 1
    for half in halves:
        half.sort()

    def p99(values: list[float]) -> float:
        return values[min(int(len(values) * 0.99), len(values) - 1)] if values else float("inf")

    return {"messages": [len(half) for half in halves], "p99_s": [round(p99(half), 3) for half in halves],
            "per_device": per_device}


def test_an_overloaded_gateway_delivers_at_capacity_bounded_fair_and_stops_on_sigterm(tmp_path: Path) -> None:
    """Issue 21, point 6: 100 devices asking a read every 10 ms of four Modbus TCP servers (10,000 requests a second,
    620,000 points, many times what the links and the box carry), their telemetry to a real mosquitto. Over a
    window of WINDOW seconds, measured by mosquitto_sub: it delivers as much in the second half as in the
    first (at capacity, no collapse), the latency read → broker stays bounded and does not grow (the lateness is in
    the polls, per device on /metrics, not in a queue after them), every device gets its share, the memory does not
    grow, and SIGTERM stops it within seconds.

    The SIGTERM part guards a fault found before: a stop cancelled the devices one by one, and pymodbus dropped the
    cancel of a device whose answer came in the same loop iteration (Python 3.11's asyncio.wait_for): the stop waited
    for that device for good, and a second SIGTERM changed nothing."""
    ports = [free_port() for _ in range(SERVERS)]
    broker = Mosquitto(tmp_path)
    config = tmp_path / "gateway.yaml"
    config.write_text(overload_config(ports, free_port(), broker.url, DEVICES, units_a_server=True))
    for k, port in enumerate(ports):  # each simulator serves its own server's units, 1 to DEVICES
        (tmp_path / f"sim-{k}.yaml").write_text(overload_config([port], 0, per_server=DEVICES))
    log = tmp_path / "gateway.log"
    arrivals = tmp_path / "arrivals.txt"
    sims = [subprocess.Popen([sys.executable, "-m", "gateway", "sim", "modbus", "--listen", f"127.0.0.1:{port}",
                              "-c", str(tmp_path / f"sim-{k}.yaml"), "--static", "--duration", "180"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for k, port in enumerate(ports)]
    gateway: subprocess.Popen[bytes] | None = None
    subscriber: subprocess.Popen[bytes] | None = None
    try:
        broker.start()
        for sim in sims:
            assert sim.stderr is not None and b"simulating" in sim.stderr.readline()
        with arrivals.open("wb") as out:
            subscriber = subprocess.Popen(["mosquitto_sub", "-p", str(broker.port), "-q", "1", "-t",
                                           "fieldgate/+/+/+/telemetry", "-F", "%U %t %p"], stdout=out,
                                          stderr=subprocess.DEVNULL)
        with log.open("wb") as sink:
            gateway = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(config), "--data-dir",
                                        str(tmp_path / "data")], stdout=subprocess.DEVNULL, stderr=sink)
        wait_for_lines(log, " is online", SERVERS * DEVICES, gateway, timeout=90)
        time.sleep(3)  # overloaded: every device behind, every link's queue full
        process = psutil.Process(gateway.pid)
        rss_start, start = process.memory_info().rss, time.time()
        time.sleep(WINDOW)
        rss_end, end = process.memory_info().rss, time.time()
        time.sleep(2)  # the window's last messages arrive

        code, took = stop_with_sigterm(gateway)
    finally:
        for proc in [*sims, gateway, subscriber]:  # only the processes this test started
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        broker.stop()
    figures = overload_figures(arrivals, start, end)
    first, second = figures["messages"]
    shares = sorted(figures["per_device"].values()) or [0]
    asked = SERVERS * DEVICES * 100 * WINDOW  # a report a device every 10 ms
    rate = (first + second) / WINDOW
    print(f"\noverload: asked {asked / max(first + second, 1):.0f}x what was delivered ({rate:.0f} reports/s, "
          f"{rate * OVERLOAD_PROPERTIES:.0f} points/s); halves {first}/{second}; p99 read -> broker "
          f"{figures['p99_s']} s; a device's share {shares[0]}..{shares[-1]} (median {shares[len(shares) // 2]}); "
          f"RSS {rss_start >> 20} -> {rss_end >> 20} MiB; SIGTERM to exit {took:.2f} s")
    assert code == 0, f"still running {took:.0f} s after SIGTERM" if code is None else f"exit code {code}"
    assert took < 10
    assert "fieldgate stopped" in log.read_text(errors="replace")
    assert asked >= 10 * (first + second), figures["messages"]  # overloaded indeed
    assert first > 0 and second >= 0.7 * first, figures["messages"]  # at capacity all along
    assert max(figures["p99_s"]) <= 2.0 and figures["p99_s"][1] <= 2 * figures["p99_s"][0] + 0.25, figures["p99_s"]
    assert len(figures["per_device"]) == SERVERS * DEVICES, sorted(figures["per_device"])  # all
    assert shares[0] >= 0.5 * shares[len(shares) // 2], shares  # and each its share
    assert rss_end <= rss_start * 1.2 + (10 << 20), (rss_start, rss_end)  # the backlog is not in memory


