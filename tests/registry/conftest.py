"""A registry (`fieldgate registry serve`) in a subprocess on a free loopback port, with its CLI beside it."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIELDGATE, free_port


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


class Registry:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [*FIELDGATE, "registry", "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data_dir),
             "--heartbeat-interval", "1s"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.process)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*FIELDGATE, "registry", *args, "--data-dir", str(self.data_dir)],
                                capture_output=True, text=True, timeout=30)
        if check and result.returncode != 0:
            raise AssertionError(f"registry {' '.join(args)}: exit {result.returncode}: {result.stderr}")
        return result

    def token(self, *args: str) -> str:
        return self.cli("join-token", "create", *args).stdout.strip()

    def nodes(self) -> dict[str, dict[str, Any]]:
        lines = self.cli("nodes", "--json").stdout.splitlines()
        return {node["name"]: node for node in map(json.loads, lines)}


def join(registry: Registry, token: str, data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FIELDGATE, "join", "--registry", registry.url, "--token", token, "--data-dir",
                           str(data_dir), *extra], capture_output=True, text=True, timeout=30)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    server = Registry(tmp_path / "registry")
    server.start()
    yield server
    if server.process is not None:
        stop(server.process)
