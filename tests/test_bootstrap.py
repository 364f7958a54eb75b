"""scripts/bootstrap.sh on a machine where everything is installed: no apt-get, and pip only when the venv's
sources changed; the demo's set-up leaves the test extras out."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

RECORDER = """#!/bin/sh
echo "$(basename "$0") $*" >>"{log}"
[ "$1" = -V ] && echo "Python 3.11.7"
exit 0
"""


def project_copy(tmp_path: Path) -> Path:
    """The files bootstrap.sh reads, with a venv whose python only records what it is asked to do."""
    root = tmp_path / "project"
    for name in ["scripts/bootstrap.sh", "pyproject.toml", "setup.py", *(str(p.relative_to(REPO)) for p in
                 [*REPO.glob("native/*.[ch]"), *REPO.glob("native/*.py"), *REPO.glob("plugins/*/pyproject.toml")])]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    (root / ".venv" / "bin").mkdir(parents=True)
    fake_python = root / ".venv" / "bin" / "python"
    fake_python.write_text(RECORDER.format(log=tmp_path / "calls"))
    fake_python.chmod(0o755)
    return root


def bootstrap(root: Path, tmp_path: Path, *args: str) -> list[str]:
    """Run bootstrap.sh with an apt-get first on the PATH that records being called; the calls recorded."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    for tool in ("apt-get", "apt"):
        (fake_bin / tool).write_text(RECORDER.format(log=tmp_path / "calls"))
        (fake_bin / tool).chmod(0o755)
    (tmp_path / "calls").unlink(missing_ok=True)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-x", str(root / "scripts" / "bootstrap.sh"), *args], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    calls = tmp_path / "calls"
    return calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.parametrize("target", ["demo", "tests"])
def test_nothing_is_installed_again_when_everything_is_there(tmp_path: Path, target: str) -> None:
    root = project_copy(tmp_path)
    first = bootstrap(root, tmp_path, "--for", target)
    assert not [c for c in first if c.startswith("apt")], f"apt-get was called though all is installed: {first}"
    pip = [c for c in first if c.startswith("python -m pip install") and "-e" in c.split()]
    assert len(pip) == 1
    assert ("-e .[test]" in pip[0]) == (target == "tests"), pip  # the demo goes without the test extras
    assert "-e plugins/modbus/" in pip[0]
    # Started again with nothing changed: no package manager, no pip, so no network.
    assert [c for c in bootstrap(root, tmp_path, "--for", target) if "pip" in c or c.startswith("apt")] == []


def test_a_changed_pyproject_installs_the_venv_again_and_the_tests_venv_serves_the_demo(tmp_path: Path) -> None:
    root = project_copy(tmp_path)
    bootstrap(root, tmp_path)  # --for tests is the default
    assert [c for c in bootstrap(root, tmp_path, "--for", "demo") if "pip" in c] == []
    with open(root / "pyproject.toml", "a") as pyproject:
        pyproject.write("\n# changed\n")
    assert [c for c in bootstrap(root, tmp_path, "--for", "demo") if "pip install" in c] != []


def test_unknown_target_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(REPO / "scripts" / "bootstrap.sh"), "--for", "everything"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "--for takes demo or tests" in result.stderr
