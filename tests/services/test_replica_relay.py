"""The relay across registry replicas: two replicas on one PostgreSQL, each started with `--peer-listen`; gw-a is
linked to replica A, gw-b to replica B and listens for no direct streams. gw-a calls gw-b's echo instance by service
name, TCP and UDP: the streams go gw-a → A → B → gw-b, as gw-a's path counters (relay) and the replicas' relay
counters (A: to_replica, B: from_replica) show, and the bytes come back whole, a large message included. A node's
certificate from the same CA is refused at a replica's relay listener, and no certificate fails the handshake; a
replica's certificate asking for a stream between nodes of different workspaces (or from a node that does not exist)
is refused by the replica holding the target, which checks the nodes itself.

A replica killed (SIGKILL: it deletes nothing) is taken for gone once its row has not been refreshed for the bound:
its node behind a load balancer reconnects to the other replica and is reached through the relay there, while a
relay to its node that cannot reconnect is refused at once with the reason, and the stale rows are deleted."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.registry.peers import ABORT, HEADER, OPEN, read_frame, write_frame
from gateway.registry.store import RegistryStore
from gateway.registry.store.channels import REPLICA_BEAT, REPLICA_GONE_AFTER
from tests.conftest import free_port
from tests.registry.conftest import Registry, join, stop, wait_for_port, wait_until
from tests.registry.conftest import pg_database as pg_database
from tests.registry.conftest import postgres as postgres
from tests.registry.test_messages import api
from tests.services.test_fleet_services import SERVICE, FleetNode, echo_workload, paths
from tests.services.test_local_services import ask, ask_udp

pytestmark = pytest.mark.beside
BIG = 512 * 1024  # bytes of the large message: several times the channel's stream window


class Replica(Registry):
    """A registry replica with the relay between replicas listening on a port of its own."""

    def __init__(self, data_dir: Path, db: str) -> None:
        super().__init__(data_dir, db)
        self.peer_port = free_port()
        self.serve_args = ["--peer-listen", f"127.0.0.1:{self.peer_port}"]

    def start(self) -> None:
        super().start()
        assert self.process is not None
        wait_for_port(self.peer_port, self.process)

    def relay_counters(self, token: str) -> dict[str, float]:
        with api(self, token) as client:
            answer = client.get("/metrics")
            assert answer.status_code == 200, answer.text
        return {match[0]: float(match[1]) for match in
                re.findall(r'^fieldgate_registry_relay_streams_total\{path="(\w+)"\} (\S+)$', answer.text, re.M)}

    def refused_counters(self, token: str) -> dict[str, float]:
        with api(self, token) as client:
            answer = client.get("/metrics")
            assert answer.status_code == 200, answer.text
        return {match[0]: float(match[1]) for match in
                re.findall(r'^fieldgate_registry_relay_refused_total\{reason="(\w+)"\} (\S+)$', answer.text, re.M)}

    def replica_figures(self, token: str) -> dict[str, float]:
        """This replica's refresh state and the gone replicas' rows it deleted, from /metrics."""
        with api(self, token) as client:
            answer = client.get("/metrics")
            assert answer.status_code == 200, answer.text
        return {match[0]: float(match[1]) for match in
                re.findall(r'^fieldgate_registry_replica_(refresh_failing|gone_rows_total) (\S+)$', answer.text, re.M)}


@pytest.fixture
def replicas(pg_database: str, tmp_path: Path) -> Iterator[tuple[Replica, Replica]]:
    first = Replica(tmp_path / "replica-a", pg_database)
    first.start()  # makes the CA and migrates the database
    second = Replica(tmp_path / "replica-b", pg_database)
    second.data_dir.mkdir()
    for name in ("ca.pem", "ca.key"):  # the replicas share one CA
        shutil.copy2(first.data_dir / name, second.data_dir / name)
    second.start()
    yield first, second
    for replica in (first, second):
        if replica.process is not None:
            stop(replica.process)


async def ask_big(address: str, port: int, size: int) -> bytes:
    payload = bytes(range(256)) * (size // 256)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), 5)
    try:
        writer.write(payload)
        await writer.drain()
        answer = await asyncio.wait_for(reader.readexactly(len(payload)), 30)
    finally:
        writer.close()
    assert answer == payload
    return answer


async def test_a_node_reaches_a_node_linked_to_another_replica_through_the_relay(
        replicas: tuple[Replica, Replica], tmp_path: Path) -> None:
    replica_a, replica_b = replicas
    a = FleetNode(replica_a, tmp_path, "gw-a", direct=False)
    b = FleetNode(replica_b, tmp_path, "gw-b", direct=False)
    try:
        admin = replica_a.cli("token", "create", "--role", "admin").stdout.strip()
        with api(replica_a, admin) as client:
            applied = client.post("/api/v1/documents", json=[echo_workload("gw-b"), SERVICE])
            assert applied.status_code == 200, applied.text
        view = await a.wait_service(lambda v: sum(e["ready"] for e in v["endpoints"]) == 1, "gw-b's endpoint ready")
        address = view["address"]

        answer = await ask(address, 7000)
        assert answer.startswith("echo-gw-b-") and answer.endswith("|who"), answer
        await ask_big(address, 7000, BIG)  # more than the stream windows on both channels and the link hold
        view = await a.service()
        assert paths(view) == {"gw-b": {"relay"}}, view["counters"]
        udp = await ask_udp(address, 7001)
        assert udp.startswith("echo-gw-b-") and udp.endswith("|who"), udp
        assert paths(await a.service(), "udp") == {"gw-b": {"relay"}}

        counters_a, counters_b = replica_a.relay_counters(admin), replica_b.relay_counters(admin)
        assert counters_a["to_replica"] >= 3 and counters_a["local"] == 0, counters_a  # 2 TCP, 1 UDP flow
        assert counters_b["from_replica"] >= 3 and counters_b["to_replica"] == 0, counters_b
        assert counters_a["failed"] == 0 and counters_b["failed"] == 0, (counters_a, counters_b)
        served = await b.service()
        assert any(c["path"] == "served" and c["endpoint"].startswith("gw-a/") for c in served["counters"]), served

        # a node's certificate, from the same CA, opens no stream at a replica's relay listener: it is refused
        # with the reason before any OPEN is read, and counted
        node_dir = a.data_dir / "registry"
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.load_verify_locations(node_dir / "ca.pem")
        context.load_cert_chain(node_dir / "node.pem", node_dir / "node.key")
        reader, writer = await asyncio.open_connection("127.0.0.1", replica_b.peer_port, ssl=context)
        writer.write(HEADER.pack(OPEN, 30) + b'{"node": "gw-b", "from": "gw-a"}'[:30])
        await writer.drain()
        kind, payload = await asyncio.wait_for(read_frame(reader), 5)
        writer.close()
        assert (kind, payload) == (ABORT, b"a registry replica's certificate is required")
        assert replica_b.relay_counters(admin)["failed"] == 1

        # a replica's certificate (A's) asking B for a stream to gw-b from a node of another workspace, or from a node
        # that does not exist: B checks the nodes itself and refuses with the reason, whatever the other replica says
        replica_a.cli("workspace", "create", "east")
        joined = join(replica_a, replica_a.token("--workspace", "east"), tmp_path / "gw-x", "--name", "gw-x")
        assert joined.returncode == 0, joined.stderr
        as_replica = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        as_replica.check_hostname = False
        as_replica.load_verify_locations(replica_a.data_dir / "ca.pem")
        as_replica.load_cert_chain(replica_a.data_dir / "replica.pem", replica_a.data_dir / "replica.key")
        for source, reason in (("gw-x", b"node gw-b is not in node gw-x's workspace"),
                               ("gw-nobody", b"no node 'gw-nobody'")):
            reader, writer = await asyncio.open_connection("127.0.0.1", replica_b.peer_port, ssl=as_replica)
            write_frame(writer, OPEN, json.dumps({"node": "gw-b", "from": source}).encode())
            await writer.drain()
            kind, payload = await asyncio.wait_for(read_frame(reader), 5)
            writer.close()
            assert (kind, payload) == (ABORT, reason)
        assert replica_b.refused_counters(admin) == {"certificate": 1, "workspace": 2, "channel": 0, "gone": 0}
        assert replica_b.relay_counters(admin)["from_replica"] == counters_b["from_replica"]  # no stream opened
        # and without a client certificate the handshake fails
        bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        bare.check_hostname = False
        bare.load_verify_locations(node_dir / "ca.pem")
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            reader, writer = await asyncio.open_connection("127.0.0.1", replica_b.peer_port, ssl=bare)
            await asyncio.wait_for(read_frame(reader), 5)
    finally:
        for node in (a, b):
            node.stop()
            await node.api.aclose()


class Balancer:
    """A load balancer in front of the replicas, as a fleet has one: each TCP connection goes to the replica chosen
    at the time (`target`, a port). Its loop runs in a thread of its own, so the test's blocking calls do not stall
    the nodes' connections."""

    def __init__(self, target: int) -> None:
        self.port = free_port()
        self.target = target
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._connection, "127.0.0.1", self.port), self.loop).result(5)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.target), 5)
        except (OSError, TimeoutError):
            writer.close()
            return

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(1 << 16):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def service_of(workload: str) -> dict[str, Any]:
    return {"kind": "Service", "name": f"svc-{workload.rsplit('-', 1)[1]}", "workload": workload,
            "ports": [{"name": "tcp", "port": 7000, "target_port": "echo"}]}


def channel_replicas(replica: Replica) -> dict[str, str | None]:
    """The relay address of the replica each node's channel is at, as `registry nodes --json` shows it."""
    return {name: (node["replica"] or {}).get("peer") for name, node in replica.nodes().items()}


async def test_a_killed_replica_is_taken_for_gone_within_the_bound(
        replicas: tuple[Replica, Replica], pg_database: str, tmp_path: Path) -> None:
    replica_a, replica_b = replicas
    balancer = Balancer(replica_b.port)
    front = Registry(replica_b.data_dir, pg_database)  # replica B's CLI, with the balancer's URL for the join
    front.url = f"https://127.0.0.1:{balancer.port}"
    a = FleetNode(replica_a, tmp_path, "gw-a", direct=False)
    b = FleetNode(front, tmp_path, "gw-b", direct=False)  # reaches B through the balancer
    c = FleetNode(replica_b, tmp_path, "gw-c", direct=False)  # reaches B only
    try:
        admin = replica_a.cli("token", "create", "--role", "admin").stdout.strip()
        with api(replica_a, admin) as client:
            applied = client.post("/api/v1/documents", json=[
                echo_workload("gw-b"), echo_workload("gw-c"), service_of("echo-gw-b"), service_of("echo-gw-c")])
            assert applied.status_code == 200, applied.text
        addresses = {}
        for name in ("svc-b", "svc-c"):
            view = await a.wait_service(lambda v: sum(e["ready"] for e in v["endpoints"]) == 1, f"{name} ready", name)
            addresses[name] = view["address"]
        peer_a, peer_b = f"127.0.0.1:{replica_a.peer_port}", f"127.0.0.1:{replica_b.peer_port}"
        wait_until(lambda: channel_replicas(replica_a) == {"gw-a": peer_a, "gw-b": peer_b, "gw-c": peer_b},
                   what="the three channels recorded")
        listed = {line.split()[0]: line for line in replica_a.cli("nodes").stdout.splitlines()}
        assert listed["gw-c"].endswith(f"(channel at replica {peer_b})"), listed
        for name, node in (("svc-b", "gw-b"), ("svc-c", "gw-c")):
            answer = await ask(addresses[name], 7000)
            assert answer.startswith(f"echo-{node}-"), answer
        assert replica_a.relay_counters(admin)["to_replica"] == 2

        # B is killed: it deletes nothing. The balancer sends gw-b's next connection to A; gw-c cannot reconnect
        async with RegistryStore(tmp_path / "reader", pg_database) as store:  # what the replicas read
            balancer.target = replica_a.port
            assert replica_b.process is not None
            replica_b.process.send_signal(signal.SIGKILL)
            replica_b.process.wait(10)
            killed = time.monotonic()
            while "gw-c" in await store.channels.holders():
                assert time.monotonic() - killed < REPLICA_GONE_AFTER + 3, "gw-c's row not taken for gone in time"
                await asyncio.sleep(0.1)
            assert channel_replicas(replica_a)["gw-c"] is None  # registry nodes shows no replica for it

            # a relay to gw-c is refused at once, with the reason, instead of trying the dead replica
            started = time.monotonic()
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError, TimeoutError)):
                answer = await ask(addresses["svc-c"], 7000)
                if not answer:
                    raise ConnectionError("closed without an answer")
            assert time.monotonic() - started < 3.0
            errors = [c["last_error"] for c in (await a.service("svc-c"))["counters"] if c["errors"]]
            assert errors and "relay: node gw-c has no channel open" in errors[-1], errors
            assert "could not be reached" not in errors[-1]

            # the stale rows are deleted by A's refresh, and none is left of B
            deadline = time.monotonic() + 2 * REPLICA_BEAT + 3
            while (row := await store.channels.holder("gw-c")) is not None:
                assert time.monotonic() < deadline, f"gw-c's stale row stays: {row}"
                await asyncio.sleep(0.2)
            rows = [await store.channels.holder(node) for node in ("gw-a", "gw-b")]
            assert all(row is None or row[1] == peer_a for row in rows), rows
        figures = replica_a.replica_figures(admin)
        assert figures == {"refresh_failing": 0, "gone_rows_total": figures["gone_rows_total"]}, figures
        assert figures["gone_rows_total"] >= 1  # gw-c's, and gw-b's unless it reconnected to A first

        # gw-b reconnected to A through the balancer: A records it, and the relay reaches it there
        wait_until(lambda: channel_replicas(replica_a)["gw-b"] == peer_a, timeout=60, what="gw-b's channel at A")
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = await ask(addresses["svc-b"], 7000)
                if answer.startswith("echo-gw-b-"):
                    break
            except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "no answer from gw-b after it moved to A"
            await asyncio.sleep(0.5)
        assert replica_a.relay_counters(admin)["local"] >= 1  # both channels at A now
    finally:
        for node in (a, b, c):
            node.stop()
            await node.api.aclose()
        balancer.close()
