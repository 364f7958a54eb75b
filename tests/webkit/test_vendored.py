"""The vendored browser libraries are exactly the files of the npm packages recorded in gateway/webkit/vendored.json
(scripts/vendor_web_assets.py copies them and records package, version, tarball, integrity and SHA-256)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "vendor_web_assets.py"


def vendoring() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vendor_web_assets", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_vendored_files_are_the_recorded_ones_of_the_recorded_version() -> None:
    script = vendoring()
    assert script.check() == []
    manifest = json.loads(script.MANIFEST.read_text(encoding="utf-8"))
    uplot = manifest["uplot"]
    version = uplot["version"]
    assert uplot["tarball"] == f"https://registry.npmjs.org/uplot/-/uplot-{version}.tgz"
    assert re.fullmatch(r"sha512-[A-Za-z0-9+/=]{88}", uplot["integrity"])
    banner = (script.STATIC / "uplot.min.js").read_text(encoding="utf-8")[:200]
    assert f"(v{version})" in banner  # the library says which version it is
    licence = (script.STATIC / "uplot.LICENSE").read_text(encoding="utf-8")
    assert "MIT License" in licence and "Leon Sorokin" in licence


def test_the_check_fails_on_a_changed_or_missing_file(tmp_path: Path) -> None:
    script = vendoring()
    copy = tmp_path / "static"
    shutil.copytree(script.STATIC, copy)
    assert script.check(copy) == []
    (copy / "uplot.min.css").write_bytes((copy / "uplot.min.css").read_bytes() + b"/* patched */")
    (copy / "uplot.LICENSE").unlink()
    assert script.check(copy) == ["uplot.min.css: not the file of uplot@1.6.32", "uplot.LICENSE: missing"]
    answer = subprocess.run([sys.executable, str(SCRIPT), "--check", "--static", str(copy)], capture_output=True,
                            text=True, timeout=60)
    assert answer.returncode == 1 and "uplot.min.css" in answer.stderr
