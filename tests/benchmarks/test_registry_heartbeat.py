"""Benchmark: 1,000 nodes heartbeating against one registry over the channel (on SQLite and on PostgreSQL) and
over HTTPS, with the registry's memory per connected node.

Run: .venv/bin/pytest -m benchmark tests/benchmarks/test_registry_heartbeat.py -s
Knobs: FIELDGATE_BENCH_NODES (1000), FIELDGATE_BENCH_HB_INTERVAL (seconds, 5), FIELDGATE_BENCH_SECONDS (20),
FIELDGATE_BENCH_APPS (app instances whose figures every heartbeat carries, 2; a node sends them after each of its
10 s samples, so with 5 s heartbeats every other one: this is the worse case).

The nodes are joined for real, without a join round-trip each: the registry's CA signs 1,000 node certificates
and the nodes are recorded in the registry's database as a join records them. `fieldgate registry serve` runs in a
subprocess; one client process keeps one mutual-TLS connection per node (the node's own certificate) and sends
each node's heartbeat (with node info as a gateway sends it) at a fixed interval, the nodes' phases spread over
the interval. The channel case is what nodes do: one WebSocket each (gateway.uplink.channel), Hello, then Heartbeat
frames answered by HeartbeatAnswer frames; the HTTPS case is the fallback, POST /api/v1/heartbeat on a kept-alive
connection. Reported: heartbeat latency p50/p99, heartbeats/s achieved against the target, the registry's CPU
(% of one core, and per heartbeat) and RSS (psutil on its PID) over the measured window, with the load average:
latency and rate need the two cores to themselves, CPU per heartbeat much less so.

Memory per connected node: the channel case connects its nodes a quarter at a time and reads the registry's RSS
after each quarter; a line fitted through those points gives KB per connected node. The 10,000-node line is a
model from the measured figures (CPU per heartbeat, KB per node, latency at the measured load), not a measurement:
10,000 nodes every 10 s is 1,000 heartbeats/s; the registry's share of a core is that times the CPU per heartbeat,
and p99 follows an M/M/1 queue on one core: p99 = s * ln(100) / (1 - load), with s the measured CPU per heartbeat
(the service time) and load the modelled share of a core; the loopback and the client add what they add here.
Latency and rate are checked only when the box is not busier than its cores (load average at the start); the CPU
per heartbeat and the memory per node, which other processes hardly change, always are.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import ssl
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest

from gateway.channel import decode_frame, encode_frame
from gateway.pki import key_pem, make_csr, new_key
from gateway.registry.ca import CertificateAuthority, cert_pem
from gateway.registry.store import RegistryStore
from gateway.wire import CHANNEL_PATH, MAX_CHANNEL_FRAME, Heartbeat, HeartbeatAnswer, HeartbeatRequest, Hello, Welcome
from tests.conftest import FIELDGATE, free_port
from tests.registry.conftest import pg_database, postgres, stop, wait_for_port

__all__ = ["pg_database", "postgres"]  # the PostgreSQL fixtures, used here as in tests/registry

NODES = int(os.environ.get("FIELDGATE_BENCH_NODES", "1000"))
INTERVAL = float(os.environ.get("FIELDGATE_BENCH_HB_INTERVAL", "5"))
SECONDS = float(os.environ.get("FIELDGATE_BENCH_SECONDS", "20"))
ANSWER_TIMEOUT = 30.0  # a heartbeat not answered within this counts as lost
# loose bars with room for a busy shared box; the targets are 0.5 ms a heartbeat, 50 KB a node and p99 200 ms
P99_LIMIT_MS = 500.0
CPU_MS_LIMIT = 1.5  # registry CPU per heartbeat over the channel (TLS included)
HTTPS_CPU_MS_LIMIT = 3.0  # the same over HTTPS (a request through the HTTP stack each)
KB_PER_NODE_LIMIT = 150.0
MODEL_NODES, MODEL_INTERVAL = 10_000, 10.0
FLEET_NODES, REPLICA_LOAD = 100_000, 0.7  # the fleet model: replicas kept at most 70 % busy for their latency
INFO = {"version": "0.1.0", "plugins": ["gateway.core", "gateway.uplink.plugin", "gateway.virtual"], "os": "Linux 6.1",
        "architecture": "x86_64", "cpu_percent": 3.5, "memory_percent": 41.2, "disk_percent": 12.0,
        "devices": {"total": 12, "online": 12}, "uplink_latency_ms": 4.2, "resource_version": "",
        "messages_received": 0, "messages_unrouted": 0}
APPS = int(os.environ.get("FIELDGATE_BENCH_APPS", "2"))
# what a node adds for its apps: their figures (gateway.wire.AppFigures, an array each) and what it offers them
APP_PART = {"figures": [[f"default/app-{i}", f"app-{i}-1-0", 12.5, 52428800.0, 0.0, 4096.0, None, None]
                        for i in range(APPS)],
            "allocatable": {"cpu": 4.0, "memory": 4294967296.0}}
APP_FRAME_PART = msgspec.convert(APP_PART, HeartbeatRequest)


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


class HttpsLink:
    """One node's kept-alive mutual-TLS connection, speaking just enough HTTP/1.1 for its heartbeat."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.port = port
        self.context = context
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.resource_version = ""
        self.connections = 0
        self.beats = 0

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.port, ssl=self.context, server_hostname="localhost"), 30)

    async def heartbeat(self) -> None:
        """Send one heartbeat and read its answer (with a new connection's handshake when the registry closed the
        idle one, as an HTTP client's connection pool would make one)."""
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
        self.resource_version = json.loads(answer)["resource_version"]

    async def _exchange(self) -> bytes:
        assert self.reader is not None and self.writer is not None
        self.beats += 1
        body = json.dumps({"resource_version": self.resource_version, "info": INFO,
                           **(APP_PART if self.beats % 2 else {})}).encode()
        self.writer.write(b"POST /api/v1/heartbeat HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        answer = await self.reader.readexactly(length)
        if not head.startswith(b"HTTP/1.1 200"):
            raise AssertionError(f"heartbeat refused: {head.splitlines()[0]!r} {answer[:200]!r}")
        return answer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class ChannelLink:
    """One node's channel: a WebSocket over mutual TLS, as gateway.uplink.channel opens it, heartbeats as frames."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.url = f"wss://localhost:{port}{CHANNEL_PATH}"
        self.context = context
        self.socket: Any = None
        self.resource_version = ""
        self.seq = 0
        self.connections = 0
        self.beats = 0
        self._answers: dict[int, asyncio.Future[HeartbeatAnswer]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        from websockets.asyncio.client import connect

        # the node's settings (gateway.uplink.channel)
        self.socket = await connect(self.url, ssl=self.context, open_timeout=30, max_size=MAX_CHANNEL_FRAME,
                                    compression=None, ping_interval=20, ping_timeout=20, close_timeout=2)
        await self.socket.send(encode_frame(Hello(resource_version=self.resource_version)))
        welcome = decode_frame(await asyncio.wait_for(self.socket.recv(), 30))
        assert isinstance(welcome, Welcome), welcome
        self.connections += 1
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for data in self.socket:
            frame = decode_frame(data)
            future = self._answers.pop(frame.seq, None) if isinstance(frame, HeartbeatAnswer) else None
            if future is not None and not future.done():  # not given up on (a lost heartbeat)
                future.set_result(frame)
            # Pushes (the first one carries the node's documents) need no answer here

    async def heartbeat(self) -> None:
        self.seq += 1
        self.beats += 1
        apps = APP_FRAME_PART if self.beats % 2 else HeartbeatRequest()
        body = HeartbeatRequest(resource_version=self.resource_version, info=INFO, figures=apps.figures,
                                allocatable=apps.allocatable)
        future: asyncio.Future[HeartbeatAnswer] = asyncio.get_running_loop().create_future()
        self._answers[self.seq] = future
        try:
            await self.socket.send(encode_frame(Heartbeat(seq=self.seq, body=body)))
            answer = await future
        finally:
            self._answers.pop(self.seq, None)
        if answer.body is None:
            raise AssertionError(f"heartbeat refused: {answer.refused}")
        self.resource_version = answer.body.resource_version

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self.socket is not None:
            self.socket.transport.abort()


def node_contexts(certs: Path, ca_file: Path) -> list[ssl.SSLContext]:
    contexts = []
    for n in range(NODES):
        context = ssl.create_default_context(cafile=ca_file)
        context.load_cert_chain(certs / f"bench-{n:04d}.pem")
        contexts.append(context)
    return contexts


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line through the points."""
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    slope = (sum((x - mean_x) * (y - mean_y) for x, y in points)
             / sum((x - mean_x) ** 2 for x, _ in points))
    return slope, mean_y - slope * mean_x


async def connect_all(links: list[Any], registry: psutil.Process, steps: int) -> list[tuple[float, float]]:
    """Connect the links in `steps` parts (each with its first heartbeat, which carries the resource version);
    (connected nodes, registry RSS in bytes) after each part once the registry settled."""
    gate = asyncio.Semaphore(50)

    async def connect(link: Any) -> None:
        async with gate:
            if isinstance(link, ChannelLink):
                await link.connect()
            await asyncio.wait_for(link.heartbeat(), ANSWER_TIMEOUT)

    points = []
    for step in range(steps):
        part = links[len(links) * step // steps:len(links) * (step + 1) // steps]
        await asyncio.gather(*(connect(link) for link in part))
        await asyncio.sleep(2.0)  # the first syncs and their pushes are done
        points.append((len(links) * (step + 1) // steps, float(registry.memory_info().rss)))
    return points


async def postgres_server(db_url: str) -> psutil.Process:
    """The PostgreSQL server (postmaster) the registry's database is on: its processes' CPU is the database's."""
    import asyncpg  # type: ignore[import-untyped]

    connection = await asyncpg.connect(db_url)
    try:  # the backend serving this connection is a child of the server while the connection is open
        parent = psutil.Process(await connection.fetchval("SELECT pg_backend_pid()")).parent()
    finally:
        await connection.close()
    assert parent is not None
    return parent


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """User and system CPU of the processes still there."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


async def drive(links: list[Any], pid: int, memory_steps: int, db_url: str | None = None) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    registry = psutil.Process(pid)
    rss_idle = float(registry.memory_info().rss)
    points = await connect_all(links, registry, memory_steps)
    latencies: list[float] = []
    lost = 0
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.5
    end = start + SECONDS

    async def beat(index: int, link: Any) -> None:
        nonlocal lost
        due = start + INTERVAL * index / len(links)
        while due < end:
            await asyncio.sleep(max(0.0, due - loop.time()))
            started = time.perf_counter()
            try:
                await asyncio.wait_for(link.heartbeat(), ANSWER_TIMEOUT)
                latencies.append(time.perf_counter() - started)
            except TimeoutError:
                lost += 1
            due += INTERVAL  # a fixed rate: a slow answer does not push the schedule back

    await asyncio.sleep(max(0.0, start - loop.time()))
    connections_before = sum(link.connections for link in links)
    client = psutil.Process()
    server = await postgres_server(db_url) if db_url else None
    # the server's processes then (the registry's connections are pooled: they stay for the window)
    database = [server, *server.children(recursive=True)] if server else []
    database_before = cpu_seconds(database)
    cpu_before, client_before, wall_before = registry.cpu_times(), client.cpu_times(), time.monotonic()
    await asyncio.gather(*(beat(i, link) for i, link in enumerate(links)))
    cpu_after, client_after, wall = registry.cpu_times(), client.cpu_times(), time.monotonic() - wall_before
    database_cpu = cpu_seconds(database) - database_before
    rss = registry.memory_info().rss
    connections = sum(link.connections for link in links) - connections_before
    for link in links:
        link.close()
    latencies.sort()
    answered = max(1, len(latencies))
    cpu = (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system) / wall
    client_cpu = (client_after.user + client_after.system - client_before.user - client_before.system) / wall
    result: dict[str, Any] = {
        "heartbeats": len(latencies), "lost": lost, "per_second": len(latencies) / wall,
        "target_per_second": len(links) / INTERVAL,
        "p50_ms": statistics.median(latencies or [math.inf]) * 1000,
        "p99_ms": (latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else math.inf) * 1000,
        "max_ms": (latencies[-1] if latencies else math.inf) * 1000, "new_connections": connections,
        "cpu_percent": cpu * 100, "cpu_ms_per_heartbeat": cpu * wall / answered * 1000,
        # the system's share: mostly the sends on loopback, which carry the receiving side's TCP work too
        "system_ms_per_heartbeat": (cpu_after.system - cpu_before.system) / answered * 1000,
        "client_cpu_percent": client_cpu * 100, "rss_mb": rss / 2**20, "rss_idle_mb": rss_idle / 2**20,
        "memory_points": points, "load_before": load_before}
    if server is not None:
        result["database_cpu_ms_per_heartbeat"] = database_cpu / answered * 1000
    if len(points) >= 2:
        slope, intercept = fit_line(points)
        result["kb_per_node"], result["rss_fit_base_mb"] = slope / 1024, intercept / 2**20
    return result


def fleet_model_line(result: dict[str, Any]) -> str:
    """What the measured figures make of 100,000 nodes every 10 s on replicas sharing one PostgreSQL (a model): as
    many replicas as keep each at most REPLICA_LOAD of a core, and the database's cores for all of them."""
    rate = FLEET_NODES / MODEL_INTERVAL
    registry_cores = rate * result["cpu_ms_per_heartbeat"] / 1000
    replicas = math.ceil(registry_cores / REPLICA_LOAD)
    line = (f"model of {FLEET_NODES} nodes every {MODEL_INTERVAL:g}s across replicas sharing PostgreSQL: "
            f"{rate:.0f} heartbeats/s, {registry_cores:.1f} cores of replicas: {replicas} replicas at "
            f"{registry_cores / replicas * 100:.0f}% of a core each")
    if "kb_per_node" in result:
        rss = result["rss_fit_base_mb"] + FLEET_NODES / replicas * result["kb_per_node"] / 1024
        line += f", about {rss:.0f} MB each"
    if "database_cpu_ms_per_heartbeat" in result:
        line += f"; PostgreSQL {rate * result['database_cpu_ms_per_heartbeat'] / 1000:.1f} cores"
    return line


def model_line(result: dict[str, Any]) -> str:
    """What the measured figures make of 10,000 nodes every 10 s on one replica (a model, see the docstring)."""
    rate = MODEL_NODES / MODEL_INTERVAL
    load = rate * result["cpu_ms_per_heartbeat"] / 1000
    line = f"model of {MODEL_NODES} nodes every {MODEL_INTERVAL:g}s: {rate:.0f} heartbeats/s, registry CPU " \
           f"{load * 100:.0f}% of a core"
    if load < 1:
        p99 = result["cpu_ms_per_heartbeat"] * math.log(100) / (1 - load)
        line += f", p99 about {p99:.0f} ms"
    else:
        line += ", more than a core: one replica does not hold it"
    if "kb_per_node" in result:
        rss = result["rss_fit_base_mb"] + MODEL_NODES * result["kb_per_node"] / 1024
        line += f", RSS about {rss:.0f} MB"
    return line


def run_benchmark(tmp_path: Path, db_url: str | None, label: str, *, channel: bool) -> dict[str, Any]:
    data_dir = tmp_path / "registry"
    asyncio.run(provision(data_dir, db_url, tmp_path / "certs"))
    port = free_port()
    contexts = node_contexts(tmp_path / "certs", data_dir / "ca.pem")
    links: list[Any] = [ChannelLink(port, c) if channel else HttpsLink(port, c) for c in contexts]
    with (tmp_path / "registry.log").open("wb") as log:
        process = subprocess.Popen(
            [*FIELDGATE, "registry", "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir),
             "--heartbeat-interval", f"{INTERVAL}s", *(["--db", db_url] if db_url else [])],
            stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_for_port(port, process)
            time.sleep(1.0)  # the store is open, the first sweep ran
            result = asyncio.run(drive(links, process.pid, 4 if channel else 1, db_url))
        finally:
            stop(process)
    way = "channel" if channel else "HTTPS"
    print(f"\n{label} over the {way}: {NODES} nodes every {INTERVAL:g}s for {SECONDS:g}s: "
          f"{result['heartbeats']:.0f} heartbeats ({result['lost']} lost), "
          f"{result['per_second']:.1f}/s (target {result['target_per_second']:.1f}/s), latency p50 "
          f"{result['p50_ms']:.1f} ms p99 {result['p99_ms']:.1f} ms max {result['max_ms']:.1f} ms, "
          f"{result['new_connections']:.0f} new connections, registry CPU "
          f"{result['cpu_percent']:.0f}% of a core ({result['cpu_ms_per_heartbeat']:.3f} ms a heartbeat, "
          f"{result['system_ms_per_heartbeat']:.3f} of it in the kernel), "
          f"RSS {result['rss_mb']:.0f} MB, {result['rss_idle_mb']:.0f} MB before any node connected (the client: "
          f"{result['client_cpu_percent']:.0f}% of a core; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs)")
    if "kb_per_node" in result:
        points = ", ".join(f"{n:.0f}: {rss / 2**20:.1f} MB" for n, rss in result["memory_points"])
        print(f"{label} memory: {result['kb_per_node']:.1f} KB per connected node (RSS by nodes connected: {points})")
    if "database_cpu_ms_per_heartbeat" in result:
        print(f"{label} over the {way}: the PostgreSQL server's CPU {result['database_cpu_ms_per_heartbeat']:.3f} ms "
              "a heartbeat")
    print(f"{label} over the {way}, {model_line(result)}")
    if db_url:
        print(f"{label} over the {way}, {fleet_model_line(result)}")
    return result


def check(result: dict[str, Any], cpu_ms_limit: float) -> None:
    assert result["cpu_ms_per_heartbeat"] < cpu_ms_limit, result
    if "kb_per_node" in result:
        assert result["kb_per_node"] < KB_PER_NODE_LIMIT, result
    if result["load_before"] > (os.cpu_count() or 1):
        print(f"latency and rate not checked: load average {result['load_before']:.1f} before the run")
        return
    assert result["lost"] == 0, result
    assert result["per_second"] >= 0.9 * result["target_per_second"], result
    assert result["p99_ms"] < P99_LIMIT_MS, result


@pytest.mark.benchmark
def test_channel_heartbeats_of_1000_nodes_on_sqlite(tmp_path: Path) -> None:
    check(run_benchmark(tmp_path, None, "SQLite", channel=True), CPU_MS_LIMIT)


@pytest.mark.benchmark
def test_channel_heartbeats_of_1000_nodes_on_postgresql(tmp_path: Path, pg_database: str) -> None:
    check(run_benchmark(tmp_path, pg_database, "PostgreSQL", channel=True), CPU_MS_LIMIT)


@pytest.mark.benchmark
def test_https_heartbeats_of_1000_nodes_on_sqlite(tmp_path: Path) -> None:
    check(run_benchmark(tmp_path, None, "SQLite", channel=False), HTTPS_CPU_MS_LIMIT)
