"""The relay across registry replicas: two replicas on one PostgreSQL, each started with `--peer-listen`; gw-a is
linked to replica A, gw-b to replica B and listens for no direct streams. gw-a calls gw-b's echo instance by service
name, TCP and UDP: the streams go gw-a → A → B → gw-b, as gw-a's path counters (relay) and the replicas' relay
counters (A: to_replica, B: from_replica) show, and the bytes come back whole, a large message included. A node's
certificate from the same CA is refused at a replica's relay listener, and no certificate fails the handshake."""

from __future__ import annotations

import asyncio
import re
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.registry.peers import ABORT, HEADER, OPEN, read_frame
from tests.conftest import FIELDGATE, free_port
from tests.registry.conftest import Registry, stop, wait_for_port
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

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*FIELDGATE, "registry", "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir",
                 str(self.data_dir), "--heartbeat-interval", "1s", *self.db_args,
                 "--peer-listen", f"127.0.0.1:{self.peer_port}"], stdout=log, stderr=log)
        wait_for_port(self.port, self.process)
        wait_for_port(self.peer_port, self.process)

    def relay_counters(self, token: str) -> dict[str, float]:
        with api(self, token) as client:
            answer = client.get("/metrics")
            assert answer.status_code == 200, answer.text
        return {match[0]: float(match[1]) for match in
                re.findall(r'^fieldgate_registry_relay_streams_total\{path="(\w+)"\} (\S+)$', answer.text, re.M)}


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
