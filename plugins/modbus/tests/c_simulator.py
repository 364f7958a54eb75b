"""The C Modbus TCP simulator (plugins/modbus/sim/modbus_sim.c, on libmodbus) for tests and benchmarks: built
once per source into a cache outside the repository, started on a free loopback port, stopped by PID.

libmodbus is installed with apt-get when missing, as scripts/bootstrap.sh installs the suite's other system parts.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import queue
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from fieldgate_modbus.sim import SimUnit, register_layout

SOURCE = Path(__file__).parents[1] / "sim" / "modbus_sim.c"
CACHE = Path(os.environ.get("FIELDGATE_TEST_CACHE", Path.home() / ".cache" / "fieldgate-tests")) / "modbus-sim"


def _libmodbus_flags() -> list[str] | None:
    if shutil.which("pkg-config") is None:
        return None
    found = subprocess.run(["pkg-config", "--cflags", "--libs", "libmodbus"], capture_output=True, text=True,
                           timeout=30)
    return found.stdout.split() if found.returncode == 0 else None


def _install_libmodbus() -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail("libmodbus is needed for the C simulator: apt-get install -y libmodbus-dev pkg-config")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "libmodbus-dev", "pkg-config"],
                   check=True, env=env, timeout=600, stdout=subprocess.DEVNULL)


def simulator_binary() -> Path:
    """The built simulator; built again only when its source or libmodbus' flags change."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".build-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test runs build it once
        flags = _libmodbus_flags()
        if flags is None:
            _install_libmodbus()
            flags = _libmodbus_flags()
            assert flags is not None, "libmodbus-dev is installed but pkg-config does not find libmodbus"
        digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(flags).encode()).hexdigest()[:16]
        binary = CACHE / f"modbus_sim-{digest}"
        if not binary.exists():
            partial = binary.with_suffix(".partial")
            subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(partial), str(SOURCE), *flags],
                           check=True, timeout=120)
            partial.rename(binary)
    return binary


class CSimulator:
    """One C simulator process serving `units` (their start values, held still)."""

    def __init__(self, directory: Path, units: list[SimUnit], *, delay_ms: float = 0.0) -> None:
        self.layout = directory / "layout.txt"
        self.layout.write_text(register_layout(units))
        self.delay_ms = delay_ms
        self.process: subprocess.Popen[str] | None = None
        self.port = 0
        self._lines: queue.Queue[str] = queue.Queue()

    def start(self, port: int = 0) -> int:
        """Start it (on `port`, or a free one); returns the port it listens on."""
        command = [str(simulator_binary()), "--layout", str(self.layout), "--port", str(port)]
        if self.delay_ms:
            command += ["--delay-ms", str(self.delay_ms)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        first = self._line(10)
        assert first.startswith("listening on "), first
        self.port = int(first.rsplit(" ", 1)[1])
        return self.port

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self._lines.put(line.strip())

    def _line(self, timeout: float) -> str:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the C simulator said nothing in {timeout} s") from None

    def requests(self) -> int:
        """The requests it has received so far (it prints them when sent SIGUSR1)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGUSR1)
        line = self._line(10)
        assert line.startswith("requests "), line
        return int(line.split()[1])

    def stop(self) -> int:
        """Stop it (SIGTERM); returns the requests it received."""
        process, self.process = self.process, None
        if process is None:
            return 0
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        line = self._line(5)
        return int(line.split()[1])
