"""Benchmark: service traffic between network namespaces (the acceptance test's topology: a registry and three
gateways, each in its own namespace, A and B linked, C reachable through the registry only), through A's proxy on
its three paths, against a plain TCP connection between the same namespaces (A to an echo server in B over the A-B
link): local (an instance on A), direct (mutual TLS from A to B) and relay (TLS inside channel streams through the
registry to C). The client runs in A's namespace.

Run (root: it makes namespaces and veth links, and removes them): .venv/bin/pytest -m benchmark
tests/benchmarks/test_service_paths_netns.py -s
Knobs: FIELDGATE_BENCH_MB (32, per path), FIELDGATE_BENCH_ROUNDS (500), FIELDGATE_BENCH_CONNECTIONS (300).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIELDGATE
from tests.services.apps.bench import print_paths
from tests.services.conftest import APPS, ECHO, PYTHON
from tests.services.test_services_netns import A_B, MESH, NODES, PORT, REGISTRY, Fleet
from tests.services.test_services_netns import fleet as fleet  # the namespaces, made and removed

pytestmark = [pytest.mark.benchmark, pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")]
MB = int(os.environ.get("FIELDGATE_BENCH_MB", "32"))
ROUNDS = int(os.environ.get("FIELDGATE_BENCH_ROUNDS", "500"))
CONNECTIONS = int(os.environ.get("FIELDGATE_BENCH_CONNECTIONS", "300"))
PLAIN_PORT = 7100


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path, role in (("local", "a"), ("direct", "b"), ("relay", "c")):
        docs.append({"kind": "Workload", "name": f"echo-{path}", "node": f"gw-{role}",
                     "labels": {"app": f"echo-{path}"}, "command": [PYTHON, str(ECHO)], "ports": [{"name": "echo"}],
                     "health": {"type": "tcp", "port": "echo", "interval": "500ms"}})
        docs.append({"kind": "Service", "name": path, "selector": {"app": f"echo-{path}"},
                     "ports": [{"name": "tcp", "port": 7000, "target_port": "echo"}]})
    return docs


def test_service_paths_between_namespaces(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start("r", *FIELDGATE, "registry", "serve", "--listen", f"{REGISTRY}:{PORT}", "--data-dir",
                str(tmp_path / "registry"), "--heartbeat-interval", "1s")
    fleet.wait_port("a", REGISTRY, PORT)
    fleet.node("a", "none")
    fleet.node("b", f"{A_B[1]}:{MESH}")
    fleet.node("c", f"{NODES['c'][0]}:{MESH}")  # an address A has no route to: C only through the registry
    fleet.processes["plain"] = subprocess.Popen(  # stopped with the fleet's processes
        ["ip", "netns", "exec", fleet.ns["b"], "env", f"PORT={PLAIN_PORT}", PYTHON, str(ECHO), A_B[1]],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fleet.wait_port("a", A_B[1], PLAIN_PORT)
    (tmp_path / "services.yaml").write_text("\n---\n".join(json.dumps(doc) for doc in documents()))
    fleet.registry_cli("apply", "-f", str(tmp_path / "services.yaml"))
    targets = {"plain": (A_B[1], PLAIN_PORT)}
    for path in ("local", "direct", "relay"):
        targets[path] = (fleet.wait_ready(path, 1)["address"], 7000)
    results: dict[str, dict[str, float]] = {}
    for path, (host, port) in targets.items():
        answer = fleet.exec("a", PYTHON, str(APPS / "bench.py"), host, str(port), str(MB), str(ROUNDS),
                            str(CONNECTIONS))
        results[path] = json.loads(answer.stdout)
    for path, node in (("local", "gw-a"), ("direct", "gw-b"), ("relay", "gw-c")):
        view = fleet.api("a", f"/api/v1/services/default/{path}")
        used = {c["path"] for c in view["counters"] if c["connections"] and c["endpoint"].startswith(node)}
        assert used == {path}, (path, view["counters"])
    print_paths(f"service paths between namespaces ({MB} MB echoed per path, {ROUNDS} round trips of 64 B, "
                f"{CONNECTIONS} connections; plain: A to an echo server in B over the A-B link)", results)
    assert all(r["MB/s"] > 0 and r["conn/s"] > 0 for r in results.values())
