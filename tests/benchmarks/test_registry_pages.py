"""Benchmark: the registry's node list (`/nodes`) for a logged-in admin with 1,000 nodes.

Run: .venv/bin/python -m pytest -p no:cacheprovider -m benchmark tests/benchmarks/test_registry_pages.py -s
Knobs: FIELDGATE_BENCH_NODES (1000), FIELDGATE_BENCH_PAGE_REQUESTS (15).

The nodes are recorded through the registry store's own methods (added as a join records them, each with a
heartbeat carrying node info as a gateway sends it; a few groups and workspaces), then `fieldgate registry serve`
runs in a subprocess on loopback and an admin logs in through the login form. Reported: the first render of
`/nodes` and the median of the requests after it (TLS on a kept-alive connection included), each under 300 ms.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from pathlib import Path

import pytest

from gateway.registry.store import RegistryStore
from tests.registry.conftest import Registry, stop
from tests.registry.test_access import add_user
from tests.registry.test_pages import session

pytestmark = pytest.mark.benchmark

NODES = int(os.environ.get("FIELDGATE_BENCH_NODES", "1000"))
REQUESTS = int(os.environ.get("FIELDGATE_BENCH_PAGE_REQUESTS", "15"))
LIMIT_MS = 300.0


async def provision(data_dir: Path) -> None:
    async with RegistryStore(data_dir) as store:
        for n in range(NODES):
            name = f"bench-{n:04d}"
            labels = {"site": f"site-{n % 10}", "line": str(n % 7)}
            await store.add_node(name, f"serial-{n:04d}", labels, 5.0)
            if n % 5:  # most nodes heartbeat; a fifth only joined
                await store.heartbeat(name, {"version": f"1.{n % 3}.0", "os": "Linux 6.1",
                                             "addresses": [f"10.0.{n // 250}.{n % 250}"], "cpu_percent": 3.5})


def test_nodes_page_with_1000_nodes_renders_within_300_ms(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    asyncio.run(provision(registry.data_dir))
    for site in range(3):
        registry.cli("group", "create", f"site-{site}", "--selector", f"site=site-{site}")
    add_user(registry, tmp_path, "admin", "--role", "admin", "--scope", "platform")
    registry.start()
    try:
        with session(registry, "admin") as pages:
            timings = []
            for _ in range(1 + REQUESTS):
                started = time.perf_counter()
                answer = pages.get("/nodes")
                timings.append((time.perf_counter() - started) * 1000)
                assert answer.status_code == 200
                assert answer.text.count("<tr data-node=") == NODES
    finally:
        if registry.process is not None:
            stop(registry.process)
    first, median = timings[0], statistics.median(timings[1:])
    print(f"\n/nodes with {NODES} nodes, admin, loopback TLS: first {first:.0f} ms, median of {REQUESTS} "
          f"{median:.0f} ms (min {min(timings[1:]):.0f}, max {max(timings[1:]):.0f}), "
          f"{len(answer.content) / 1024:.0f} KiB")
    assert first < LIMIT_MS, f"first render of /nodes took {first:.0f} ms"
    assert median < LIMIT_MS, f"/nodes took {median:.0f} ms (median)"
