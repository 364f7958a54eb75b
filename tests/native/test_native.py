"""The native module: backend selection, fuzzing the C entry points (also under ASan), an optional build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import native
from tests.native import fuzz

REPO = Path(__file__).resolve().parents[2]
needs_native = pytest.mark.skipif(not native.available(), reason="gateway._native is not built")
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc on this machine")


def backends_under(mode: str | None, *prelude: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != native.MODE_VARIABLE}
    if mode is not None:
        env[native.MODE_VARIABLE] = mode
    code = "\n".join([*prelude, "import gateway.codec, gateway.router",
                      "print(gateway.codec.backend, gateway.router.backend)"])
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=60)


@needs_native
@pytest.mark.parametrize(("mode", "expected"), [(None, "c c"), ("auto", "c c"), ("c", "c c"),
                                                 ("python", "python python"), (" Python ", "python python")])
def test_mode_picks_backend(mode: str | None, expected: str) -> None:
    result = backends_under(mode)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_missing_module_falls_back_or_fails_clearly() -> None:
    hide = "import sys; sys.modules['gateway._native'] = None"
    assert backends_under("auto", hide).stdout.strip() == "python python"
    result = backends_under("c", hide)
    assert result.returncode != 0
    assert "NativeError: the native module gateway._native is not available" in result.stderr


def test_bad_mode_is_a_config_error() -> None:
    result = backends_under("fast")
    assert result.returncode != 0
    assert "ConfigError: FIELDGATE_NATIVE='fast': expected one of auto, c, python" in result.stderr


@needs_native
def test_fuzz_entry_points() -> None:
    assert fuzz.main(["fuzz", "-", "3000", "7"]) == 0


def _libasan() -> str | None:
    if shutil.which("gcc") is None:
        return None
    path = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.slow
@needs_gcc
def test_fuzz_under_address_sanitizer(tmp_path: Path) -> None:
    libasan = _libasan()
    if libasan is None:
        pytest.skip("libasan is not installed (gcc -print-file-name=libasan.so finds nothing)")
    sys.path.insert(0, str(REPO / "native"))
    try:
        from build_native import make_builder
    finally:
        sys.path.pop(0)
    flags = ["-fsanitize=address", "-fno-omit-frame-pointer", "-g"]
    builder = make_builder(extra_compile_args=flags, extra_link_args=["-fsanitize=address"])
    module = Path(builder.compile(tmpdir=str(tmp_path), verbose=False))
    env = dict(os.environ, LD_PRELOAD=libasan, ASAN_OPTIONS="detect_leaks=0:abort_on_error=1")
    result = subprocess.run(
        [sys.executable, "-m", "tests.native.fuzz", str(module), "3000", "11"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "fuzz ok" in result.stdout


@needs_gcc
def test_c_sources_are_warning_free(tmp_path: Path) -> None:
    for source in ("codec.c", "router.c"):
        result = subprocess.run(
            ["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-c", str(REPO / "native" / source),
             "-o", str(tmp_path / (source + ".o"))],
            capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_failed_build_still_installs_with_one_warning(tmp_path: Path) -> None:
    for name in ("setup.py", "pyproject.toml", "native", "gateway"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("*.so", "_native.c", "__pycache__"))
        else:
            shutil.copy(source, tmp_path / name)
    (tmp_path / "README.md").write_text("copy\n")
    env = dict(os.environ, CC="/bin/false")
    result = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "fieldgate" in line and "WARNING" in line]
    assert len(warnings) == 1, result.stderr
    assert "pure-Python codec and router will be used" in warnings[0]
    assert not list((tmp_path / "gateway").glob("_native*.so"))
