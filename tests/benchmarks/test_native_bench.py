"""Speed targets of the native hot paths (run with `pytest -m benchmark tests/benchmarks`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gateway import native
from gateway.ops import bench

pytestmark = [
    pytest.mark.benchmark,
    pytest.mark.skipif(not native.available(), reason="gateway._native is not built"),
]


def by_backend(results: list[dict[str, object]], case_prefix: str) -> dict[str, float]:
    return {str(r["backend"]): float(r["ops_per_s"]) for r in results if str(r["case"]).startswith(case_prefix)}


@pytest.fixture(scope="module")
def codec_results() -> dict[str, float]:
    return by_backend(bench.bench_codec(quick=False), "codec-")


@pytest.fixture(scope="module")
def router_all() -> list[dict[str, object]]:
    return bench.bench_router(quick=False)


@pytest.fixture(scope="module")
def router_results(router_all: list[dict[str, object]]) -> dict[str, float]:
    return by_backend([r for r in router_all if r["case"] == "router-100000-filters"], "router-100000-")


@pytest.fixture(scope="module")
def router_batch_results(router_all: list[dict[str, object]]) -> dict[str, float]:
    return by_backend([r for r in router_all if r["case"] == "router-100000-filters-batch"], "router-100000-")


def test_codec_c_is_20x_pymodbus(codec_results: dict[str, float]) -> None:
    assert codec_results["c"] >= 20 * codec_results["pymodbus"], codec_results


def test_codec_c_is_5x_python(codec_results: dict[str, float]) -> None:
    assert codec_results["c"] >= 5 * codec_results["python"], codec_results


def test_router_c_matches_a_million_topics_per_second_at_100k_filters(router_results: dict[str, float]) -> None:
    assert router_results["c"] >= 1_000_000, router_results


def test_router_c_batches_are_10x_python(router_batch_results: dict[str, float]) -> None:
    assert router_batch_results["c"] >= 10 * router_batch_results["python"], router_batch_results


def test_router_c_single_topics_are_3x_python(router_results: dict[str, float]) -> None:
    """One cffi call a topic costs ~0.15 us before any matching; the whole-batch call is the fast path."""
    assert router_results["c"] >= 3 * router_results["python"], router_results


def test_quick_json_output_is_one_object_per_line() -> None:
    result = subprocess.run([sys.executable, "-m", "gateway", "bench", "codec", "--quick", "--json"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert {row["backend"] for row in rows} == {"c", "python", "pymodbus"}
    assert all(set(row) == {"case", "backend", "ops_per_s"} for row in rows)
