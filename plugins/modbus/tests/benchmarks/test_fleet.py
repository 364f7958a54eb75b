"""Fleet benchmark (issue 3): many Modbus TCP devices polled at 100 ms by `fieldgate run` on loopback.

Run: cd /work/main && .venv/bin/python -m pytest -m benchmark plugins/modbus/tests/benchmarks -s

For scale: ThingsBoard IoT Gateway 3.8.5 on a 2-core box delivered at most ~10,000 points/s at 100 % CPU and
120-145 MB RSS (one Modbus request per point). The aim is 20x that throughput at a fraction of the CPU.

- case A: 100 devices x 50 float32 properties at 100 ms = 50,000 points/s offered (asserted: it keeps up)
- case B: 400 devices x 50 float32 properties at 100 ms = 200,000 points/s offered (asserted: 90 % of it, at
  under 5 us of gateway CPU a point; the simulators need most of the other core, so the box must be otherwise idle)

The simulators run as separate `fieldgate sim modbus --static` processes (the simulator is not what is measured;
static values keep its CPU down, and the gateway does the same work for a value that did not change: every
reading is decoded, reported and stored). Devices behind one host:port share one connection and one lock
(fieldgate_modbus.link), so the devices are spread round-robin over several simulator ports, many units a port.

Printed per case, one JSON line: offered and achieved points/s (cycles x properties, and the store's
values_written), Modbus requests/s (cycles x requests in the read plan), cycle lateness from /api/v1/status
(mean/p99/max: the last 4096 cycles of each device, so the warm-up is included), missed cycles, device states,
gateway CPU % of one core (user+system over wall), peak gateway RSS, and the simulators' CPU % (the box is
shared) and the box's total CPU %. Knobs: FIELDGATE_BENCH_SECONDS (20), FIELDGATE_BENCH_SIMS (8),
FIELDGATE_BENCH_B_DEVICES (400), FIELDGATE_BENCH_B_PROPERTIES (50), FIELDGATE_BENCH_PROFILE=/tmp/fleet.prof (run
the gateway and simulator 0 under cProfile, written to /tmp/fleet.prof.A / .B and .A.sim0 / .B.sim0).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest
from fieldgate_modbus.config import ModbusVisitor
from fieldgate_modbus.planner import plan_reads

pytestmark = pytest.mark.benchmark

FIELDGATE = [sys.executable, "-m", "gateway"]
MEASURE_S = float(os.environ.get("FIELDGATE_BENCH_SECONDS", "20"))
WARMUP_S = 5.0
SIMS = int(os.environ.get("FIELDGATE_BENCH_SIMS", "8"))
INTERVAL_MS = 100
PROFILED = """import cProfile, signal, sys
from gateway.cli import main
profiler = cProfile.Profile()
def dump(*_):
    profiler.disable()
    profiler.dump_stats({out!r})
signal.signal(signal.SIGUSR1, dump)
profiler.enable()
raise SystemExit(main(sys.argv[1:]))
"""


# --- helpers (the same as tests/store/test_store.py and tests/conftest.py, kept here so the plugin stands alone) -----


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def api_get(port: int, path: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("gateway did not become healthy")


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"simulator exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"simulator on port {port} did not start listening")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# --- documents ---------------------------------------------------------------------------------------------------


def model_doc(properties: int) -> str:
    props = "\n".join(f"  - {{name: p{i}, type: float}}" for i in range(properties))
    return f"---\nkind: DeviceModel\nname: m\nproperties:\n{props}\n"


def device_doc(name: str, port: int, unit: int, properties: int, interval_ms: int = INTERVAL_MS) -> str:
    visitors = "\n".join(
        f"  - {{name: p{i}, collect_interval: {interval_ms}ms, "
        f"visitor: {{register: HoldingRegister, offset: {2 * i}, type: float32}}}}"
        for i in range(properties)
    )
    return (
        f"---\nkind: Device\nname: {name}\nmodel: m\n"
        f"protocol: {{name: modbus-tcp, config: {{host: 127.0.0.1, port: {port}, unit: {unit}, timeout: 1.0}}}}\n"
        f"properties:\n{visitors}\n"
    )


def requests_per_cycle(properties: int) -> int:
    visitor = msgspec.convert({"register": "HoldingRegister", "offset": 0, "type": "float32"}, ModbusVisitor)
    props = [(f"p{i}", msgspec.convert({**msgspec.to_builtins(visitor), "offset": 2 * i}, ModbusVisitor))
             for i in range(properties)]
    return len(plan_reads(props).blocks)


# --- one case ----------------------------------------------------------------------------------------------------


def run_case(tmp_path: Path, case: str, devices: int, properties: int, sims: int) -> dict[str, Any]:
    sims = min(sims, devices)
    assert -(-devices // sims) <= 247, "too many units a simulator port"
    sim_ports = [free_port() for _ in range(sims)]
    http_port = free_port()
    gateway_docs = [f"kind: Gateway\nname: fleet-bench\nhttp: {{listen: \"127.0.0.1:{http_port}\"}}\n"
                    f"eventbus: {{url: none}}\n", model_doc(properties)]
    sim_docs: list[list[str]] = [[model_doc(properties)] for _ in range(sims)]
    for d in range(devices):
        k, unit = d % sims, d // sims + 1
        doc = device_doc(f"dev-{d}", sim_ports[k], unit, properties)
        gateway_docs.append(doc)
        sim_docs[k].append(doc)
    config = tmp_path / f"{case}-gateway.yaml"
    config.write_text("".join(gateway_docs))
    data = tmp_path / f"{case}-data"
    token = subprocess.run([*FIELDGATE, "token", "create", "--role", "viewer", "--data-dir", str(data)],
                           check=True, capture_output=True, text=True).stdout.strip()
    procs: list[subprocess.Popen[bytes]] = []
    log_start = log_end = 0
    log_file = None
    gateway: subprocess.Popen[bytes] | None = None
    try:
        profile = os.environ.get("FIELDGATE_BENCH_PROFILE")  # cProfile the gateway and simulator 0 into files
        for k in range(sims):
            sim_config = tmp_path / f"{case}-sim{k}.yaml"
            sim_config.write_text("".join(sim_docs[k]))
            sim_prefix = [sys.executable, "-c", PROFILED.format(out=f"{profile}.{case}.sim0")] if (
                profile and k == 0) else FIELDGATE
            procs.append(subprocess.Popen(
                [*sim_prefix, "sim", "modbus", "--listen", f"127.0.0.1:{sim_ports[k]}", "-c", str(sim_config),
                 "--static"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for k in range(sims):
            wait_listening(sim_ports[k], procs[k])
        log_file = (tmp_path / f"{case}-gateway.log").open("wb")
        prefix = [sys.executable, "-c", PROFILED.format(out=f"{profile}.{case}")] if profile else FIELDGATE
        gateway = subprocess.Popen([*prefix, "run", "-c", str(config), "--data-dir", str(data),
                                    "--log-level", "warning"], stderr=log_file)
        wait_healthy(http_port, gateway)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # bounded: every device online (or give up and measure anyway)
            if api_get(http_port, "/api/v1/status", token)["devices"].get("online", 0) == devices:
                break
            time.sleep(0.5)
        time.sleep(WARMUP_S)
        gw = psutil.Process(gateway.pid)
        sim_ps = [psutil.Process(p.pid) for p in procs]
        log_start = (tmp_path / f"{case}-gateway.log").stat().st_size
        api0 = time.monotonic()
        before = api_get(http_port, "/api/v1/status", token)
        api0 = (api0 + time.monotonic()) / 2  # the snapshot's time: /api/v1/status is slow under load
        gw_cpu0 = gw.cpu_times()
        sim_cpu0 = [p.cpu_times() for p in sim_ps]
        box_cpu0 = psutil.cpu_times()
        wall0 = time.monotonic()
        rss_max = 0
        while time.monotonic() - wall0 < MEASURE_S:
            time.sleep(0.5)
            rss_max = max(rss_max, gw.memory_info().rss)
        gw_cpu1 = gw.cpu_times()
        sim_cpu1 = [p.cpu_times() for p in sim_ps]
        box_cpu1 = psutil.cpu_times()
        wall = time.monotonic() - wall0
        api1 = time.monotonic()
        after = api_get(http_port, "/api/v1/status", token)
        api1 = (api1 + time.monotonic()) / 2
        log_end = (tmp_path / f"{case}-gateway.log").stat().st_size
        if profile:  # the profile covers start-up, warm-up and the measured window
            gateway.send_signal(signal.SIGUSR1)
            procs[0].send_signal(signal.SIGUSR1)
            for _ in range(100):
                if Path(f"{profile}.{case}").exists() and Path(f"{profile}.{case}.sim0").exists():
                    break
                time.sleep(0.1)
            time.sleep(1)
    finally:
        if gateway is not None:
            stop(gateway)
        for proc in procs:
            stop(proc)
        if log_file is not None:
            log_file.close()

    with (tmp_path / f"{case}-gateway.log").open("rb") as f:
        f.seek(log_start)
        window_log = f.read(log_end - log_start).decode(errors="replace").splitlines()
    warnings = [line for line in window_log if " WARNING " in line or " ERROR " in line]

    def busy(t0: Any, t1: Any) -> float:
        return (t1.user - t0.user) + (t1.system - t0.system)

    box_total = sum(box_cpu1) - sum(box_cpu0)
    box_idle = (box_cpu1.idle + getattr(box_cpu1, "iowait", 0)) - (box_cpu0.idle + getattr(box_cpu0, "iowait", 0))
    cycles = after["cycles"] - before["cycles"]
    span = api1 - api0  # between the two status snapshots: the rates' denominator
    written = after["store"]["values_written"] - before["store"]["values_written"]
    per_cycle = requests_per_cycle(properties)
    offered = devices * properties * 1000 / INTERVAL_MS
    result = {
        "case": case, "devices": devices, "properties": properties, "interval_ms": INTERVAL_MS,
        "simulators": sims, "seconds": round(wall, 1),
        "points_per_s_offered": round(offered),
        "points_per_s": round(cycles * properties / span),
        "achieved_percent": round(100 * cycles * properties / span / offered, 1),
        "values_written_per_s": round(written / span),
        "cycles_per_s": round(cycles / span, 1), "requests_per_cycle": per_cycle,
        "modbus_requests_per_s": round(cycles * per_cycle / span),
        "lateness_mean_ms": after["lateness_ms"]["mean"], "lateness_p99_ms": after["lateness_ms"]["p99"],
        "lateness_max_ms": after["lateness_ms"]["max"],
        "missed_cycles": after["missed_cycles"] - before["missed_cycles"],
        "device_states": after["devices"],
        "store_queued_at_end": after["store"]["queued"],
        "gateway_warnings_in_window": len(warnings),
        "first_warning": warnings[0][:200] if warnings else None,
        "gateway_cpu_percent_of_one_core": round(100 * busy(gw_cpu0, gw_cpu1) / wall, 1),
        "gateway_cpu_us_per_point": round(1e6 * busy(gw_cpu0, gw_cpu1) / max(cycles * properties, 1), 2),
        "gateway_rss_mb": round(rss_max / 2**20, 1),
        "simulators_cpu_percent_of_one_core": round(
            100 * sum(busy(a, b) for a, b in zip(sim_cpu0, sim_cpu1, strict=True)) / wall, 1),
        "box_cpu_percent_of_all_cores": round(100 * (box_total - box_idle) / box_total, 1) if box_total else None,
        "cores": psutil.cpu_count(),
    }
    print("\n" + json.dumps(result), flush=True)
    return result


def test_case_a_100_devices_x_50_properties_at_100ms(tmp_path: Path) -> None:
    result = run_case(tmp_path, "A", 100, 50, SIMS)
    assert result["achieved_percent"] >= 95
    assert result["lateness_p99_ms"] is not None and result["lateness_p99_ms"] < 50


def test_case_b_200k_points_offered(tmp_path: Path) -> None:
    devices = int(os.environ.get("FIELDGATE_BENCH_B_DEVICES", "400"))
    properties = int(os.environ.get("FIELDGATE_BENCH_B_PROPERTIES", "50"))
    result = run_case(tmp_path, "B", devices, properties, SIMS)
    # the aim of issue 3: 20x ThingsBoard's 10,000 points/s on this 2-core box, under one core of gateway CPU. The
    # simulators need most of the other core, so the two compete: run by a busy box, the gateway reaches 94-100 %
    # of the offer. The gateway's own cost a point is the steadier figure: under 5 us, 200,000 fit in one core.
    assert result["achieved_percent"] >= 90
    assert result["gateway_cpu_us_per_point"] < 5.0
