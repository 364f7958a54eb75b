"""Benchmark: service traffic through the node's proxy on its three paths against a plain TCP connection to the
same echo app: local (an instance on the calling node), direct (mutual TLS to another node) and relay (TLS inside a
channel stream through the registry). A registry and three gateways on loopback, an echo app on each.

Run: .venv/bin/pytest -m benchmark tests/benchmarks/test_service_paths.py -s
Knobs: FIELDGATE_BENCH_MB (32, per path), FIELDGATE_BENCH_ROUNDS (500, round trips for the latency),
FIELDGATE_BENCH_CONNECTIONS (300, for connections per second).

Reported per path: throughput (MB/s, echoed both ways on one connection), round-trip latency p50/p99 of 64 bytes and
what the path adds to the plain connection's, and connections per second (connect, one round trip, close).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.registry.conftest import Registry
from tests.registry.conftest import registry as registry  # a fixture
from tests.registry.test_messages import api
from tests.services.apps.bench import measure, print_paths
from tests.services.conftest import ECHO, PYTHON
from tests.services.test_fleet_services import FleetNode

pytestmark = pytest.mark.benchmark
MB = int(os.environ.get("FIELDGATE_BENCH_MB", "32"))
ROUNDS = int(os.environ.get("FIELDGATE_BENCH_ROUNDS", "500"))
CONNECTIONS = int(os.environ.get("FIELDGATE_BENCH_CONNECTIONS", "300"))


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path, node in (("local", "gw-a"), ("direct", "gw-b"), ("relay", "gw-c")):
        docs.append({"kind": "Workload", "name": f"echo-{path}", "node": node, "labels": {"app": f"echo-{path}"},
                     "command": [PYTHON, str(ECHO)], "ports": [{"name": "echo"}],
                     "health": {"type": "tcp", "port": "echo", "interval": "500ms"}})
        docs.append({"kind": "Service", "name": path, "selector": {"app": f"echo-{path}"},
                     "ports": [{"port": 7000, "target_port": "echo"}]})
    return docs


async def test_service_paths(registry: Registry, tmp_path: Path) -> None:
    nodes = [FleetNode(registry, tmp_path, "gw-a", direct=True), FleetNode(registry, tmp_path, "gw-b", direct=True),
             FleetNode(registry, tmp_path, "gw-c", direct=False)]
    a = nodes[0]
    try:
        admin = registry.cli("token", "create", "--role", "admin").stdout.strip()
        with api(registry, admin) as client:
            assert client.post("/api/v1/documents", json=documents()).status_code == 200
        for path in ("direct", "relay"):
            await a.wait_service(lambda v: any(e["ready"] for e in v["endpoints"]), f"{path} ready", path)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            local = await a.service("local")
            if local and any(e["local"] for e in local["endpoints"]):
                break
            await asyncio.sleep(0.2)
        addresses = {path: (await a.service(path))["address"] for path in ("local", "direct", "relay")}
        plain_port = next(e["ports"]["7000"] for e in (await a.service("direct"))["endpoints"])
        targets = {"plain": ("127.0.0.1", plain_port), **{p: (addr, 7000) for p, addr in addresses.items()}}
        results = {}
        for path, (host, port) in targets.items():
            try:
                results[path] = await measure(host, port, MB, ROUNDS, CONNECTIONS)
            except (ConnectionError, TimeoutError) as exc:
                raise AssertionError(f"{path}: {exc!r}\n{(await a.service(path))['counters']}") from exc
        paths_seen = {c["endpoint"].split("/")[0]: c["path"] for p in ("local", "direct", "relay")
                      for c in (await a.service(p))["counters"] if c["connections"]}
        assert paths_seen == {"gw-a": "local", "gw-b": "direct", "gw-c": "relay"}, paths_seen
        print_paths(f"service paths on loopback ({MB} MB echoed per path, {ROUNDS} round trips of 64 B, "
                    f"{CONNECTIONS} connections)", results)
        assert all(r["MB/s"] > 0 for r in results.values())
    finally:
        for node in nodes:
            node.stop()
            await node.api.aclose()
