"""`fieldgate upgrade --from-wheels`: real wheel builds, real slot venvs, real gateway processes.

Three builds of the core from a copy of this source tree: 9.0.0 (installed first), 9.1.0 (a good upgrade) and
9.2.0, whose `fieldgate run` dies at import (the rollback case). The plugins are built as wheels too. The slots'
third-party dependencies come from the test venv through a .pth file, so no package index is needed; fieldgate
and its plugins are installed into the slots by pip from the wheels, as on the appliance.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.testing import free_port, store_sql
from tests.conftest import FIELDGATE, REPO

pytestmark = pytest.mark.slow

RESTART_SCRIPT = """\
import os, signal, subprocess, sys, time
from pathlib import Path
root, config, data, pidfile, log = map(Path, sys.argv[1:6])
if pidfile.exists():
    pid = int(pidfile.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(200):
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
with log.open("ab") as out:
    process = subprocess.Popen([str(root / "current" / "bin" / "fieldgate"), "run", "-c", str(config),
                                "--data-dir", str(data)], stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
pidfile.write_text(str(process.pid))
"""

CONFIG = """\
kind: Gateway
name: upgrade-test
http: {{listen: "127.0.0.1:{port}"}}
eventbus: {{url: none}}
---
kind: DeviceModel
name: counter
properties: [{{name: count, type: int}}]
---
kind: Device
name: counter-1
model: counter
protocol: {{name: virtual, config: {{}}}}
properties: [{{name: count, collect_interval: 200ms, visitor: {{generator: counter, start: 0, step: 1}}}}]
"""


def tokens_described(db_file: Path, description: str) -> tuple[object, ...]:
    """How many tokens a node's store has with this description (a 1-tuple)."""
    return store_sql(db_file, "SELECT count(*) FROM tokens WHERE description = ?", (description,))[0]


def build_plugins(out: Path) -> Path:
    """Wheels of the first-party plugins, built once and copied into every wheel directory."""
    plugins = [str(p) for p in sorted((REPO / "plugins").iterdir()) if (p / "pyproject.toml").exists()]
    pip_wheel(out, *plugins)
    return out


def build_wheels(source: Path, out: Path, version: str, plugins: Path, *, broken: bool = False) -> Path:
    """A wheel of the core at `version` built from a copy of this tree, beside the plugins' wheels."""
    tree = source / version
    tree.mkdir(parents=True)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, tree / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.o", "_native.c")
    shutil.copytree(REPO / "native", tree / "native", ignore=ignore)
    shutil.copytree(REPO / "gateway", tree / "gateway", ignore=ignore)
    init = tree / "gateway" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', f'__version__ = "{version}"  # was "', 1))
    if broken:  # this build's gateway cannot start: `fieldgate run` dies importing the runtime
        with (tree / "gateway" / "runtime.py").open("a") as runtime:
            runtime.write('\nraise RuntimeError("this build is broken on purpose")\n')
    wheels = shutil.copytree(plugins, out / version)
    pip_wheel(wheels, str(tree))
    assert any(w.name.startswith(f"fieldgate-{version}-") for w in wheels.iterdir())
    return wheels


def pip_wheel(out: Path, *sources: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
                    "--no-build-isolation", "--no-index", "--wheel-dir", str(out), *sources],
                   check=True, timeout=300, capture_output=True)


def make_slot(slot: Path) -> None:
    """An empty slot venv that sees the test venv's third-party packages, pip included, after its own."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(slot)], check=True, timeout=120)
    site = next((slot / "lib").glob("python3*/site-packages"))
    (site / "fieldgate-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")


def pip_install(slot: Path, wheels: Path, *requirements: str) -> None:
    subprocess.run([str(slot / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "--no-index", "--find-links", str(wheels), *requirements], check=True, timeout=300)


class Node:
    """Slots under `root`, a data dir, a config, and the gateway process the restart script (re)starts."""

    def __init__(self, base: Path) -> None:
        self.root = base / "opt"
        self.data = base / "data"
        self.config = base / "config.yaml"
        self.pidfile = base / "gateway.pid"
        self.log = base / "gateway.log"
        self.port = free_port()
        self.restart_script = base / "restart.py"
        self.root.mkdir()
        self.data.mkdir()
        self.config.write_text(CONFIG.format(port=self.port))
        self.restart_script.write_text(RESTART_SCRIPT)
        self.token = ""

    @property
    def restart_command(self) -> str:
        return " ".join([sys.executable, str(self.restart_script), str(self.root), str(self.config),
                         str(self.data), str(self.pidfile), str(self.log)])

    def restart(self) -> None:
        subprocess.run(self.restart_command.split(), check=True, timeout=60)

    def stop(self) -> None:
        if not self.pidfile.exists():
            return
        pid = int(self.pidfile.read_text())
        try:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def status(self) -> dict[str, object]:
        response = httpx.get(f"http://127.0.0.1:{self.port}/api/v1/status", timeout=5,
                             headers={"Authorization": f"Bearer {self.token}"})
        response.raise_for_status()
        result: dict[str, object] = response.json()
        return result

    def wait_version(self, version: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        seen: object = "no answer"
        while time.monotonic() < deadline:
            try:
                seen = self.status().get("version")
                if seen == version:
                    return
            except httpx.HTTPError as exc:
                seen = exc
            time.sleep(0.3)
        raise AssertionError(f"version {version} never answered (last: {seen}); log: {self.log.read_text()[-2000:]}")

    def upgrade(self, wheels: Path, deadline: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*FIELDGATE, "upgrade", "--from-wheels", str(wheels), "--root", str(self.root),
                               "--data-dir", str(self.data), "--url", f"http://127.0.0.1:{self.port}",
                               "--deadline", deadline, "--restart-command", self.restart_command],
                              capture_output=True, text=True, timeout=300)

    def current(self) -> str:
        return os.readlink(self.root / "current")

    def recorded(self) -> dict[str, object]:
        result: dict[str, object] = json.loads((self.data / "upgrade" / "status.json").read_text())
        return result


@pytest.fixture(scope="module")
def wheelhouses(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("wheelhouses")
    plugins = build_plugins(base / "plugins")
    return {"old": build_wheels(base / "src", base, "9.0.0", plugins),
            "new": build_wheels(base / "src", base, "9.1.0", plugins),
            "broken": build_wheels(base / "src", base, "9.2.0", plugins, broken=True)}


@pytest.fixture
def node(tmp_path: Path, wheelhouses: dict[str, Path]) -> Iterator[Node]:
    node = Node(tmp_path)
    make_slot(node.root / "a")
    make_slot(node.root / "b")
    plugins = sorted(w.name.split("-")[0].replace("_", "-") for w in wheelhouses["old"].glob("fieldgate_*.whl"))
    pip_install(node.root / "a", wheelhouses["old"], "fieldgate==9.0.0", *plugins)
    (node.root / "current").symlink_to("a")
    node.token = subprocess.run([str(node.root / "a" / "bin" / "fieldgate"), "token", "create", "--role", "viewer",
                                 "--data-dir", str(node.data)], capture_output=True, text=True, check=True,
                                timeout=60).stdout.strip()
    node.restart()
    try:
        node.wait_version("9.0.0")
        yield node
    finally:
        node.stop()


def test_upgrade_succeeds_then_a_broken_build_rolls_back(node: Node, wheelhouses: dict[str, Path]) -> None:
    upgraded = node.upgrade(wheelhouses["new"], "60s")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "version 9.1.0 runs from slot b" in upgraded.stdout
    assert node.current() == "b"
    assert node.status()["version"] == "9.1.0"
    recorded = node.recorded()
    assert recorded["status"] == "succeeded"
    assert recorded["from"] == {"slot": "a", "version": "9.0.0"}
    assert recorded["to"] == {"slot": "b", "version": "9.1.0"}

    started = time.monotonic()
    broken = node.upgrade(wheelhouses["broken"], "10s")
    assert broken.returncode == 1, broken.stderr
    assert "upgrade failed-rolled-back: version 9.2.0 not healthy within the deadline" in broken.stderr
    assert time.monotonic() - started < 90
    assert node.current() == "b"
    assert node.status()["version"] == "9.1.0"  # the old one runs again, restarted
    assert "this build is broken on purpose" in node.log.read_text()
    recorded = node.recorded()
    assert recorded["status"] == "failed-rolled-back"
    assert recorded["to"] == {"slot": "a", "version": "9.2.0"}
    assert "not healthy within the deadline" in str(recorded["reason"])
    history = [json.loads(line)["status"] for line in
               (node.data / "upgrade" / "history.jsonl").read_text().splitlines()]
    assert history == ["upgrading", "succeeded", "upgrading", "failed-rolled-back"]
    left = tokens_described(node.data / "fieldgate.db", "upgrade health check")
    assert left == (0,)  # the checks' own token is gone


def test_a_failing_rollback_is_reported(node: Node, wheelhouses: dict[str, Path]) -> None:
    # The old slot is damaged too (its gateway cannot start): the rollback cannot bring it back.
    (node.root / "a" / "bin" / "fieldgate").write_text("#!/bin/sh\nexit 3\n")
    result = node.upgrade(wheelhouses["broken"], "6s")
    assert result.returncode == 1
    assert "upgrade failed-rollback-failed: version 9.2.0 not healthy within the deadline" in result.stderr
    assert "; rollback: version 9.0.0 not healthy within the deadline" in result.stderr
    assert node.recorded()["status"] == "failed-rollback-failed"
    assert node.current() == "a"


def test_bad_input_gets_one_line(tmp_path: Path, wheelhouses: dict[str, Path]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        (str(empty), str(tmp_path)): f"--from-wheels {empty}: no fieldgate wheel in it",
        (str(wheelhouses["new"]), str(tmp_path)): f"{tmp_path}/current: not a symlink to a slot",
        (str(tmp_path / "missing"), str(tmp_path)): "no such directory",
    }
    for (wheels, root), message in cases.items():
        result = subprocess.run([*FIELDGATE, "upgrade", "--from-wheels", wheels, "--root", root, "--data-dir",
                                 str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
