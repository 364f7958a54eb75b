"""A node-opcua server (an OPC UA implementation nobody on the team wrote) for the tests: installed with npm into a
cache outside the repository on first use, started on a free loopback port, stopped by PID."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

NODE_OPCUA = "node-opcua@2.182.2"
CACHE = Path(os.environ.get("FIELDGATE_TEST_CACHE", Path.home() / ".cache" / "fieldgate-tests")) / "node-opcua"
SERVER_SCRIPT = Path(__file__).with_name("opcua_server.js")


def node_modules() -> Path:
    """node-opcua under the cache, installed once (a lock keeps parallel test runs from installing it twice)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed for the OPC UA tests (apt-get install nodejs npm)")
    modules = CACHE / "node_modules"
    version = NODE_OPCUA.rsplit("@", 1)[1]
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".install-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _installed(modules, version):
            subprocess.run([npm, "install", "--prefix", str(CACHE), "--no-audit", "--no-fund", "--loglevel=error",
                            NODE_OPCUA], check=True, timeout=600, stdout=subprocess.DEVNULL)
    return modules


def _installed(modules: Path, version: str) -> bool:
    try:
        return bool(json.loads((modules / "node-opcua" / "package.json").read_text())["version"] == version)
    except (OSError, ValueError, KeyError):
        return False


class OpcuaServer:
    """One node-opcua server process; started again after `stop()`, it listens on the same port with the same
    certificate."""

    def __init__(self, directory: Path, **options: Any) -> None:
        self.directory = directory
        self.options = {"port": 0, "pki": str(directory / "pki"), **options}
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.certificate = Path()
        self.namespace = ""  # the URI of the server's own namespace (index 1)

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/fieldgate/test"

    def start(self, timeout: float = 60.0) -> None:
        modules = node_modules()
        self.directory.mkdir(parents=True, exist_ok=True)
        out = self.directory / "server.out"
        options = {**self.options, "port": self.port or self.options["port"]}
        with open(out, "wb") as stdout:
            self.process = subprocess.Popen(["node", str(SERVER_SCRIPT), json.dumps(options)], stdout=stdout,
                                            stderr=subprocess.STDOUT, env={**os.environ, "NODE_PATH": str(modules)})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in out.read_text(errors="replace").splitlines():
                if line.startswith("READY "):
                    ready = json.loads(line[6:])
                    self.port, self.certificate = int(ready["port"]), Path(ready["certificate"])
                    self.namespace = str(ready["namespace"])
                    return
            if self.process.poll() is not None:
                raise RuntimeError(f"the OPC UA server exited: {out.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("the OPC UA server did not start in time")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def plant(url: str, properties: list[tuple[str, str, str, str]], *, interval: str = "100ms", name: str = "line-1",
          config: str = "", gateway: bool = True) -> str:
    """A model and a device (after a Gateway document unless `gateway` is False): each property as (name, model
    type, access, visitor in flow YAML)."""
    model = "".join(f"  - {{name: {p}, type: {kind}, access: {access}}}\n" for p, kind, access, _ in properties)
    props = "".join(f"  - {{name: {p}, collect_interval: {interval}, visitor: {visitor}}}\n"
                    for p, _, _, visitor in properties)
    head = "kind: Gateway\nname: gw\neventbus: {url: none}\n" if gateway else ""
    return f"""\
{head}---
kind: DeviceModel
name: {name}
properties:
{model}---
kind: Device
name: {name}
model: {name}
protocol: {{name: opcua, config: {{endpoint: "{url}"{config}}}}}
properties:
{props}"""
