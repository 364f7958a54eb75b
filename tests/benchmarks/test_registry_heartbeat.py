"""Benchmark: 1,000 node links heartbeating against one registry, on SQLite and on PostgreSQL.

Run: .venv/bin/pytest -m benchmark tests/benchmarks/test_registry_heartbeat.py -s
Knobs: FIELDGATE_BENCH_NODES (1000), FIELDGATE_BENCH_HB_INTERVAL (seconds, 5), FIELDGATE_BENCH_SECONDS (20),
FIELDGATE_BENCH_APPS (app instances whose figures every heartbeat carries, 2; a node sends them after each of its
10 s samples, so with 5 s heartbeats every other one: this is the worse case).

The nodes are joined for real, without a join round-trip each: the registry's CA signs 1,000 node certificates
and the nodes are recorded in the registry's database as a join records them. `fieldgate registry serve` runs in a
subprocess; one client process keeps one mutual-TLS connection per node (the node's own certificate) and sends
each node's heartbeat (with node info as a gateway sends it) at a fixed interval, the nodes' phases spread over
the interval. Reported: heartbeat latency p50/p99, heartbeats/s achieved against the target, the registry's CPU
(% of one core, and per heartbeat) and RSS (psutil on its PID) over the measured window, with the load average:
latency and rate need the two cores to themselves, CPU per heartbeat much less so.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import statistics
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from gateway.pki import key_pem, make_csr, new_key
from gateway.registry.ca import CertificateAuthority, cert_pem
from gateway.registry.store import RegistryStore
from tests.conftest import FIELDGATE, free_port
from tests.registry.conftest import pg_database, postgres, stop, wait_for_port

__all__ = ["pg_database", "postgres"]  # the PostgreSQL fixtures, used here as in tests/registry

NODES = int(os.environ.get("FIELDGATE_BENCH_NODES", "1000"))
INTERVAL = float(os.environ.get("FIELDGATE_BENCH_HB_INTERVAL", "5"))
SECONDS = float(os.environ.get("FIELDGATE_BENCH_SECONDS", "20"))
P99_LIMIT_MS = 500.0
CPU_MS_LIMIT = 5.0  # registry CPU per heartbeat (TLS included): what one core affords, whatever else runs
INFO = {"version": "0.1.0", "plugins": ["gateway.core", "gateway.uplink.plugin", "gateway.virtual"], "os": "Linux 6.1",
        "architecture": "x86_64", "cpu_percent": 3.5, "memory_percent": 41.2, "disk_percent": 12.0,
        "devices": {"total": 12, "online": 12}, "uplink_latency_ms": 4.2, "resource_version": "",
        "messages_received": 0, "messages_unrouted": 0}
APPS = int(os.environ.get("FIELDGATE_BENCH_APPS", "2"))
# what a node adds for its apps: their figures (gateway.wire.AppFigures, an array each) and what it offers them
APP_PART = {"figures": [[f"default/app-{i}", f"app-{i}-1-0", 12.5, 52428800.0, 0.0, 4096.0, None, None]
                        for i in range(APPS)],
            "allocatable": {"cpu": 4.0, "memory": 4294967296.0}}


async def provision(data_dir: Path, db_url: str | None, certs: Path) -> None:
    """Sign a certificate for every node and record the nodes as a join does."""
    ca = CertificateAuthority.load_or_create(data_dir)
    key = new_key()  # one key for all: signing, not key generation, is what a join costs the registry
    csr, key_text = make_csr(key), key_pem(key)
    certs.mkdir()  # noqa: ASYNC240  (set-up, before anything runs)
    async with RegistryStore(data_dir, db_url) as store:
        for n in range(NODES):
            name = f"bench-{n:04d}"
            cert = ca.sign_node(csr, name)
            (certs / f"{name}.pem").write_bytes(cert_pem(cert).encode() + key_text)
            await store.add_node(name, format(cert.serial_number, "x"), {"bench": "yes"}, INTERVAL)


class Link:
    """One node's kept-alive mutual-TLS connection, speaking just enough HTTP/1.1 for its heartbeat."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.port = port
        self.context = context
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.resource_version = ""
        self.connections = 0

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.port, ssl=self.context, server_hostname="localhost"), 30)

    async def heartbeat(self) -> float:
        """Send one heartbeat and read its answer; the latency in seconds (with a new connection's handshake when
        the registry closed the idle one, as an HTTP client's connection pool would make one)."""
        started = time.perf_counter()
        if self.reader is None or self.reader.at_eof():
            self.close()
            await self.connect()
            self.connections += 1
        try:
            answer = await self._exchange()
        except (asyncio.IncompleteReadError, ConnectionError):  # closed while the request was on its way
            self.close()
            await self.connect()
            self.connections += 1
            answer = await self._exchange()
        latency = time.perf_counter() - started
        self.resource_version = json.loads(answer)["resource_version"]
        return latency

    async def _exchange(self) -> bytes:
        assert self.reader is not None and self.writer is not None
        body = json.dumps({"resource_version": self.resource_version, "info": INFO, **APP_PART}).encode()
        self.writer.write(b"POST /api/v1/heartbeat HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 30)
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        answer = await asyncio.wait_for(self.reader.readexactly(length), 30)
        if not head.startswith(b"HTTP/1.1 200"):
            raise AssertionError(f"heartbeat refused: {head.splitlines()[0]!r} {answer[:200]!r}")
        return answer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def drive(port: int, certs: Path, ca_file: Path, pid: int) -> dict[str, float]:
    links = []
    for n in range(NODES):
        context = ssl.create_default_context(cafile=ca_file)
        context.load_cert_chain(certs / f"bench-{n:04d}.pem")
        links.append(Link(port, context))
    gate = asyncio.Semaphore(50)

    async def connect(link: Link) -> None:
        async with gate:
            await link.heartbeat()  # the first answer carries the resource version

    await asyncio.gather(*(connect(link) for link in links))
    registry = psutil.Process(pid)
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.5
    end = start + SECONDS

    async def beat(index: int, link: Link) -> None:
        due = start + INTERVAL * index / NODES
        while due < end:
            await asyncio.sleep(max(0.0, due - loop.time()))
            latencies.append(await link.heartbeat())
            due += INTERVAL  # a fixed rate: a slow answer does not push the schedule back

    await asyncio.sleep(max(0.0, start - loop.time()))
    connections_before = sum(link.connections for link in links)
    client = psutil.Process()
    cpu_before, client_before, wall_before = registry.cpu_times(), client.cpu_times(), time.monotonic()
    await asyncio.gather(*(beat(i, link) for i, link in enumerate(links)))
    cpu_after, client_after, wall = registry.cpu_times(), client.cpu_times(), time.monotonic() - wall_before
    rss = registry.memory_info().rss
    connections = sum(link.connections for link in links) - connections_before
    for link in links:
        link.close()
    latencies.sort()
    cpu = (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system) / wall
    client_cpu = (client_after.user + client_after.system - client_before.user - client_before.system) / wall
    return {"heartbeats": len(latencies), "per_second": len(latencies) / wall, "target_per_second": NODES / INTERVAL,
            "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
            "max_ms": latencies[-1] * 1000, "new_connections": connections, "cpu_percent": cpu * 100,
            "cpu_ms_per_heartbeat": cpu * wall / len(latencies) * 1000,
            "client_cpu_percent": client_cpu * 100, "rss_mb": rss / 2**20}


def run_benchmark(tmp_path: Path, db_url: str | None, label: str) -> dict[str, float]:
    data_dir = tmp_path / "registry"
    asyncio.run(provision(data_dir, db_url, tmp_path / "certs"))
    port = free_port()
    with (tmp_path / "registry.log").open("wb") as log:
        process = subprocess.Popen(
            [*FIELDGATE, "registry", "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir),
             "--heartbeat-interval", f"{INTERVAL}s", *(["--db", db_url] if db_url else [])],
            stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_for_port(port, process)
            result = asyncio.run(drive(port, tmp_path / "certs", data_dir / "ca.pem", process.pid))
        finally:
            stop(process)
    print(f"\n{label}: {NODES} nodes every {INTERVAL:g}s for {SECONDS:g}s: {result['heartbeats']:.0f} heartbeats, "
          f"{result['per_second']:.1f}/s (target {result['target_per_second']:.1f}/s), latency p50 "
          f"{result['p50_ms']:.1f} ms p99 {result['p99_ms']:.1f} ms max {result['max_ms']:.1f} ms, "
          f"{result['new_connections']:.0f} new TLS connections, registry CPU "
          f"{result['cpu_percent']:.0f}% of a core ({result['cpu_ms_per_heartbeat']:.2f} ms a heartbeat), "
          f"RSS {result['rss_mb']:.0f} MB (the client: "
          f"{result['client_cpu_percent']:.0f}% of a core; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs)")
    return result


def check(result: dict[str, float]) -> None:
    assert result["cpu_ms_per_heartbeat"] < CPU_MS_LIMIT, result
    assert result["per_second"] >= 0.9 * result["target_per_second"], result
    assert result["p99_ms"] < P99_LIMIT_MS, result


@pytest.mark.benchmark
def test_heartbeats_of_1000_nodes_on_sqlite(tmp_path: Path) -> None:
    check(run_benchmark(tmp_path, None, "SQLite"))


@pytest.mark.benchmark
def test_heartbeats_of_1000_nodes_on_postgresql(tmp_path: Path, pg_database: str) -> None:
    check(run_benchmark(tmp_path, pg_database, "PostgreSQL"))
