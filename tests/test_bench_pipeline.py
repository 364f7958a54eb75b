"""`fieldgate bench pipeline` runs the real pipeline and reports what it measured."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import FIELDGATE


def test_bench_pipeline_quick_json() -> None:
    result = subprocess.run([*FIELDGATE, "bench", "pipeline", "--quick", "--json"], capture_output=True, text=True,
                            timeout=120, check=True)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["case"] for line in lines] == ["pipeline-50x20@100ms"]
    assert lines[0]["backend"] in ("c/c", "python/python")
    assert lines[0]["ops_per_s"] > 1000  # values reached the history: the pipeline ran end to end
