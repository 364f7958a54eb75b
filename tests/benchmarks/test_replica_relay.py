"""Benchmark: service traffic relayed across registry replicas — node A → replica 1 → replica 2 → node B, two
replicas on one PostgreSQL, each with `--peer-listen` — against a plain TCP connection to the same echo app, and
against the relay through one replica (node A → replica 1 → node C) to show what the second replica adds. The nodes
listen for no direct streams; everything runs on loopback.

Run: .venv/bin/pytest -m benchmark tests/benchmarks/test_replica_relay.py -s
Knobs: FIELDGATE_BENCH_MB (32, per path), FIELDGATE_BENCH_ROUNDS (500, round trips for the latency),
FIELDGATE_BENCH_CONNECTIONS (300, for connections per second).

Reported per path: throughput (MB/s, echoed both ways on one connection), round-trip latency p50/p99 of 64 bytes and
what the path adds to the plain connection's, and connections per second (connect, one round trip, close).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.registry.conftest import pg_database as pg_database  # fixtures
from tests.registry.conftest import postgres as postgres
from tests.registry.test_messages import api
from tests.services.apps.bench import measure, print_paths
from tests.services.conftest import ECHO, PYTHON
from tests.services.test_fleet_services import FleetNode
from tests.services.test_replica_relay import Replica
from tests.services.test_replica_relay import replicas as replicas

pytestmark = pytest.mark.benchmark
MB = int(os.environ.get("FIELDGATE_BENCH_MB", "32"))
ROUNDS = int(os.environ.get("FIELDGATE_BENCH_ROUNDS", "500"))
CONNECTIONS = int(os.environ.get("FIELDGATE_BENCH_CONNECTIONS", "300"))
MIN_MB_S = 5.0  # a loose bar a busy 2-core machine still clears


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path, node in (("relay", "gw-c"), ("replicas", "gw-b")):
        docs.append({"kind": "Workload", "name": f"echo-{path}", "node": node, "labels": {"app": f"echo-{path}"},
                     "command": [PYTHON, str(ECHO)], "ports": [{"name": "echo"}],
                     "health": {"type": "tcp", "port": "echo", "interval": "500ms"}})
        docs.append({"kind": "Service", "name": path, "selector": {"app": f"echo-{path}"},
                     "ports": [{"port": 7000, "target_port": "echo"}]})
    return docs


async def test_relay_across_replicas(replicas: tuple[Replica, Replica], tmp_path: Path) -> None:
    first, second = replicas
    nodes = [FleetNode(first, tmp_path, "gw-a", direct=False), FleetNode(second, tmp_path, "gw-b", direct=False),
             FleetNode(first, tmp_path, "gw-c", direct=False)]
    a = nodes[0]
    try:
        admin = first.cli("token", "create", "--role", "admin").stdout.strip()
        with api(first, admin) as client:
            applied = client.post("/api/v1/documents", json=documents())
            assert applied.status_code == 200, applied.text
        views = {path: await a.wait_service(lambda v: any(e["ready"] for e in v["endpoints"]), f"{path} ready", path)
                 for path in ("relay", "replicas")}
        plain_port = next(e["ports"]["7000"] for e in views["replicas"]["endpoints"])
        targets = {"plain": ("127.0.0.1", plain_port), "relay": (views["relay"]["address"], 7000),
                   "replicas": (views["replicas"]["address"], 7000)}
        results = {}
        for path, (host, port) in targets.items():
            try:
                results[path] = await measure(host, port, MB, ROUNDS, CONNECTIONS)
            except (ConnectionError, TimeoutError) as exc:
                counters = (await a.service(path))["counters"] if path != "plain" else []
                raise AssertionError(f"{path}: {exc!r}\n{counters}") from exc
        used = {path: {c["path"] for c in (await a.service(path))["counters"] if c["connections"]}
                for path in ("relay", "replicas")}
        assert used == {"relay": {"relay"}, "replicas": {"relay"}}, used
        first_counters, second_counters = first.relay_counters(admin), second.relay_counters(admin)
        streams = 2 + CONNECTIONS  # the latency's and the throughput's connections, and the short ones
        assert first_counters["to_replica"] >= streams and first_counters["local"] >= streams, first_counters
        assert second_counters["from_replica"] >= streams and first_counters["failed"] == 0, second_counters
        print_paths(f"relay across registry replicas on loopback ({MB} MB echoed per path, {ROUNDS} round trips of "
                    f"64 B, {CONNECTIONS} connections; relay: A → replica 1 → C, replicas: A → replica 1 → "
                    "replica 2 → B)", results)
        assert results["replicas"]["MB/s"] > MIN_MB_S, results["replicas"]
        assert all(r["conn/s"] > 0 for r in results.values())
    finally:
        for node in nodes:
            node.stop()
            await node.api.aclose()
