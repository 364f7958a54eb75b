"""Start-up to first poll (issue 21, point 5): `fieldgate run` with one Modbus TCP device, from the process being
spawned to the first Modbus request arriving at the device.

Run: .venv/bin/python -m pytest -m benchmark tests/benchmarks/test_startup.py -s

The device is a small Modbus TCP responder in this process (a thread answering every read with zeros), so the
first request's arrival is timed where it lands. The gateway runs as it would be installed: byte code cached (the
children run without PYTHONDONTWRITEBYTECODE, after one warm-up start that writes it). Printed, one JSON line:
wall time to the first request (each run, median, max), the gateway's CPU time by then (user + system, read when the
request arrives: the figure least disturbed by a busy box), its RSS then, and the modules of other protocols that
were imported (none expected: a configuration is meant to import what it uses and nothing else).

Asserted: the median CPU time to the first poll ≤ 0.5 s (the issue's bar, in the figure a busy box does not
inflate: start-up is one thread's work, so on an idle box the wall time is the CPU time plus a few milliseconds;
on a busy one the wall time is printed, not asserted) and no other protocol stack imported.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

pytestmark = pytest.mark.benchmark

RUNS = int(os.environ.get("FIELDGATE_BENCH_RUNS", "7"))
FOREIGN = ("bacpypes3", "asyncua", "grpc", "snap7", "fieldgate_bacnet.protocol", "fieldgate_opcua.protocol",
           "fieldgate_s7.protocol", "fieldgate_dmi.protocol", "fieldgate_mqtt.protocol", "gateway.registry.app",
           "gateway.importers.kubernetes")


class Responder:
    """A Modbus TCP device that answers every read of holding registers with zeros and notes when the first
    request arrived (and what the gateway's process had used by then)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.first: float | None = None
        self.watched: psutil.Process | None = None
        self.cpu_at_first: float | None = None
        self.rss_at_first: int | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def arm(self, process: psutil.Process) -> None:
        self.first = self.cpu_at_first = self.rss_at_first = None
        self.watched = process

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(0.5)
        buffer = b""
        with conn:
            for _ in range(10_000):  # bounded: a start-up run sends a few dozen requests
                if self.stopping.is_set():
                    return
                try:
                    chunk = conn.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                if self.first is None:
                    self.first = time.monotonic()
                    if self.watched is not None:
                        with_cpu = self.watched.cpu_times()
                        self.cpu_at_first = with_cpu.user + with_cpu.system
                        self.rss_at_first = self.watched.memory_info().rss
                buffer += chunk
                while len(buffer) >= 12:
                    transaction, _, _, unit, function, _, count = struct.unpack(">HHHBBHH", buffer[:12])
                    buffer = buffer[12:]
                    body = bytes([function, 2 * count]) + bytes(2 * count)
                    conn.sendall(struct.pack(">HHHB", transaction, 0, len(body) + 1, unit) + body)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(2)
        self.sock.close()


def config(port: int, http_port: int) -> str:
    return (f"kind: Gateway\nname: startup\nhttp: {{listen: \"127.0.0.1:{http_port}\"}}\neventbus: {{url: none}}\n"
            "---\nkind: DeviceModel\nname: m\nproperties:\n  - {name: p0, type: float}\n"
            "---\nkind: Device\nname: d0\nmodel: m\n"
            f"protocol: {{name: modbus-tcp, config: {{host: 127.0.0.1, port: {port}, unit: 1, timeout: 1.0}}}}\n"
            "properties:\n  - {name: p0, collect_interval: 100ms, "
            "visitor: {register: HoldingRegister, offset: 0, type: float32}}\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_once(responder: Responder, cfg: Path, data: Path, env: dict[str, str]) -> dict[str, Any]:
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(cfg), "--data-dir", str(data),
                             "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        responder.arm(psutil.Process(proc.pid))
        deadline = t0 + 20
        while responder.first is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.002)
        assert responder.first is not None, f"no Modbus request within 20 s (exit {proc.poll()})"
        modules = subprocess.run(  # what this configuration imports, asked of a process reading the same config
            [sys.executable, "-c", "import sys; from gateway.cli import build_parser; build_parser(['run']); "
             "import gateway.web.server; from gateway.runtime import Gateway; "
             f"Gateway.from_path({str(cfg)!r}, {str(data) + '-probe'!r}); "
             f"print(','.join(m for m in {FOREIGN!r} if m in sys.modules))"],
            env=env, capture_output=True, text=True, timeout=60)
        return {"wall_s": responder.first - t0, "cpu_s": responder.cpu_at_first, "rss": responder.rss_at_first,
                "foreign": modules.stdout.strip(), "probe_error": modules.stderr[-300:] if modules.returncode else ""}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_first_poll_within_half_a_second_of_cpu(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    responder = Responder()
    try:
        cfg = tmp_path / "gateway.yaml"
        cfg.write_text(config(responder.port, free_port()))
        start_once(responder, cfg, tmp_path / "warm", env)  # writes the byte code, as an installed gateway has it
        runs = [start_once(responder, cfg, tmp_path / f"data-{i}", env) for i in range(RUNS)]
    finally:
        responder.close()
    walls = [run["wall_s"] for run in runs]
    cpus = [run["cpu_s"] for run in runs]
    result = {
        "runs": RUNS, "wall_s": [round(w, 3) for w in walls], "wall_median_s": round(statistics.median(walls), 3),
        "wall_max_s": round(max(walls), 3), "cpu_median_s": round(statistics.median(cpus), 3),
        "rss_at_first_poll_mb": round(statistics.median(run["rss"] for run in runs) / 2**20, 1),
        "foreign_modules": runs[0]["foreign"], "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    print("\n" + json.dumps(result), flush=True)
    assert not runs[0]["probe_error"], runs[0]["probe_error"]
    assert runs[0]["foreign"] == "", f"imported what the configuration does not use: {runs[0]['foreign']}"
    assert result["cpu_median_s"] <= 0.5, result
