"""Benchmark: what opening the node's services inside a container's network namespace costs before its app starts —
a thread that enters the namespace, then a TCP and a UDP socket bound per service — for 1, 20 and 100 services, in
a namespace the test makes with `ip netns add` (root).

Run: .venv/bin/pytest -m benchmark tests/benchmarks/test_netns_listeners.py -s
Knob: FIELDGATE_BENCH_ROUNDS (20, openings per size).

Reported per size: median and slowest opening (ms).
"""

from __future__ import annotations

import os
import secrets
import statistics
import subprocess
import time
from collections.abc import Iterator

import pytest

from gateway.services.netns import Listen, Namespace

pytestmark = [pytest.mark.benchmark,
              pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")]
ROUNDS = int(os.environ.get("FIELDGATE_BENCH_ROUNDS", "20"))


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    name = f"fgb{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=30)
        opened = Namespace(f"/run/netns/{name}")
        try:
            yield opened
        finally:
            opened.close()
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


async def test_opening_services_in_a_namespace(namespace: Namespace) -> None:
    for services in (1, 20, 100):
        wanted = [Listen(f"127.77.{i // 250}.{2 + i % 250}", 7000, protocol)
                  for i in range(services) for protocol in ("TCP", "UDP")]
        took = []
        for _ in range(ROUNDS):
            started = time.perf_counter()
            opened = await namespace.open(wanted)
            took.append(time.perf_counter() - started)
            assert all(not isinstance(sock, OSError) for sock in opened), opened
            for sock in opened:
                if not isinstance(sock, OSError):
                    sock.close()
        print(f"\n{services} services ({2 * services} sockets): median {statistics.median(took) * 1000:.2f} ms, "
              f"slowest {max(took) * 1000:.2f} ms")
        assert statistics.median(took) < 1.0  # a start is not held up noticeably
