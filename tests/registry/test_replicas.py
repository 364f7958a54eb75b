"""Two registry replicas on one PostgreSQL: a message posted to replica A reaches a node linked to replica B
(PostgreSQL NOTIFY wakes B's waiting long-poll), and what one replica writes the other reads."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from gateway.uplink.join import RegistrySettings
from tests.conftest import Mosquitto
from tests.registry.conftest import Registry, join, stop, wait_until
from tests.registry.test_messages import Subscriber, api, start_gateway


@pytest.fixture
def replicas(pg_database: str, tmp_path: Path) -> Iterator[tuple[Registry, Registry]]:
    first = Registry(tmp_path / "replica-a", pg_database)
    first.start()  # makes the CA and migrates the database
    second = Registry(tmp_path / "replica-b", pg_database)
    second.data_dir.mkdir()
    for name in ("ca.pem", "ca.key"):  # the replicas share one CA
        shutil.copy2(first.data_dir / name, second.data_dir / name)
    second.start()
    yield first, second
    for replica in (first, second):
        if replica.process is not None:
            stop(replica.process)


def test_a_message_posted_to_one_replica_reaches_a_node_linked_to_the_other(
        replicas: tuple[Registry, Registry], mosquitto: Mosquitto, tmp_path: Path) -> None:
    replica_a, replica_b = replicas
    subscriber = Subscriber(mosquitto, "alarms/#")
    data_dir = tmp_path / "gw"
    try:
        # joined through A with a token made on B: both read the same tables
        assert join(replica_a, replica_b.token(), data_dir, "--name", "gw-1").returncode == 0
        settings_path = data_dir / "registry" / "registry.json"
        settings = msgspec.json.decode(settings_path.read_bytes(), type=RegistrySettings)
        settings_path.write_bytes(msgspec.json.encode(msgspec.structs.replace(settings, url=replica_b.url)))
        operator = replica_b.cli("token", "create", "--role", "operator").stdout.strip()

        gateway = start_gateway(tmp_path, data_dir, mosquitto)
        try:
            wait_until(lambda: replica_a.nodes()["gw-1"]["status"] == "healthy", what="a heartbeat through B")
            time.sleep(0.5)  # the node's long-poll is waiting at B
            with api(replica_a, operator) as client:
                started = time.monotonic()
                sent = client.post("/api/v1/messages/gw-1/plant/alarms", content=b'{"via": "a"}')
                assert sent.status_code == 202 and sent.json()["status"] == "sent"
                assert subscriber.next_line() == 'alarms/in {"via": "a"}'
                assert time.monotonic() - started < 2.0  # NOTIFY woke B's poll (its timeout is 25 s)
            wait_until(lambda: replica_a.nodes()["gw-1"]["messages_pending"] == 0, what="the acknowledgement")
        finally:
            stop(gateway)
    finally:
        stop(subscriber.process)  # type: ignore[arg-type]
