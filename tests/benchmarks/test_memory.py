"""Benchmark (issue 21, point 5): the gateway's memory while it works, and over an hour.

Run: .venv/bin/pytest -m benchmark tests/benchmarks/test_memory.py -s
     (FIELDGATE_SOAK_SECONDS=3600 for the hour; 300 by default)

The plant of the latency benchmark (`plant` in test_latency.py: a real `fieldgate run`, 100 Modbus TCP devices x
100 float32 registers on the C simulator, telemetry to mosquitto and a subscriber). The gateway's RSS is read from
/proc (psutil) every SAMPLE_S seconds, which asks its loop nothing.

- 10,000 points/s (every device read once a second) for FIELDGATE_SOAK_SECONDS: printed, the RSS after the warm-up,
  its largest, the mean of the first and of the last tenth of the window, and the line fitted through the samples
  (MB an hour). Asserted: at most 60 MB all along (the bar), and flat: the last tenth's mean at most 4 MB over the
  first's (a leak of a few bytes a report shows as MBs over an hour: 10,000 reports a minute).
- 200,000 points/s asked (200 devices read every 100 ms, more than this box delivers, so the backlog's memory is
  measured too) for 60 s: at most 100 MB.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "benchmarks"))
from test_latency import WARMUP_S, plant

pytestmark = [pytest.mark.benchmark, pytest.mark.timeout(7800)]

SOAK_S = float(os.environ.get("FIELDGATE_SOAK_SECONDS", "300"))
SAMPLE_S = 5.0


def sample(pid: int, seconds: float) -> list[tuple[float, int]]:
    """(seconds since the first sample, RSS bytes) every SAMPLE_S seconds for `seconds`."""
    process = psutil.Process(pid)
    start = time.monotonic()
    samples: list[tuple[float, int]] = []
    while (now := time.monotonic()) - start <= seconds:
        samples.append((now - start, process.memory_info().rss))
        time.sleep(SAMPLE_S)
    return samples


def figures(case: str, samples: list[tuple[float, int]]) -> dict[str, Any]:
    mb = [rss / 2**20 for _, rss in samples]
    tenth = max(1, len(mb) // 10)
    times = [t for t, _ in samples]
    mean_t, mean_mb = sum(times) / len(times), sum(mb) / len(mb)
    spread = sum((t - mean_t) ** 2 for t in times)
    slope = sum((t - mean_t) * (m - mean_mb) for t, m in zip(times, mb, strict=True)) / spread if spread else 0.0
    result = {"case": case, "seconds": round(times[-1]), "samples": len(mb), "rss_mb_start": round(mb[0], 1),
              "rss_mb_max": round(max(mb), 1), "rss_mb_first_tenth": round(sum(mb[:tenth]) / tenth, 1),
              "rss_mb_last_tenth": round(sum(mb[-tenth:]) / tenth, 1), "mb_an_hour": round(slope * 3600, 2)}
    print("\n" + json.dumps(result), flush=True)
    return result


def test_memory_at_10k_points_per_s_stays_under_60_mb_and_flat(tmp_path: Path) -> None:
    with plant(tmp_path, "soak-10k", 1000) as running:
        time.sleep(WARMUP_S)
        result = figures("10k", sample(running.gateway.pid, SOAK_S))
        assert running.gateway.poll() is None
    assert result["rss_mb_max"] <= 60
    assert result["rss_mb_last_tenth"] <= result["rss_mb_first_tenth"] + 4


def test_memory_at_200k_points_per_s_asked_stays_under_100_mb(tmp_path: Path) -> None:
    with plant(tmp_path, "200k", 100, devices=200) as running:
        time.sleep(WARMUP_S)
        result = figures("200k", sample(running.gateway.pid, 60))
        assert running.gateway.poll() is None
    assert result["rss_mb_max"] <= 100
