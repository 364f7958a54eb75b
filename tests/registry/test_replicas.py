"""Two registry replicas on one PostgreSQL: a message posted to replica A reaches a node linked to replica B
(PostgreSQL NOTIFY wakes B's waiting long-poll), and what one replica writes the other reads."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from gateway.uplink.join import RegistrySettings
from tests.conftest import FIELDGATE, Mosquitto, free_port
from tests.registry.conftest import Registry, join, stop, wait_for_port, wait_until
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


SLEEPER = f"""\
kind: Workload
name: sleeper
node: gw-1
command: [{sys.executable}, -c, "import time; time.sleep(600)"]
stop_grace: 1s
"""


@pytest.mark.parametrize("link", ["channel", "long-poll"])
def test_requests_asked_at_one_replica_get_the_answer_of_a_node_linked_to_the_other(
        pg_database: str, tmp_path: Path, link: str) -> None:
    """A log request and a workload action made at replica A reach the node through replica B (its channel, or its
    HTTPS long-poll when B runs without a channel) and the node's answer, taken at B, comes back to A."""
    replica_a = Registry(tmp_path / "replica-a", pg_database)
    replica_a.start()
    replica_b = Registry(tmp_path / "replica-b", pg_database)
    replica_b.data_dir.mkdir()
    for name in ("ca.pem", "ca.key"):
        shutil.copy2(replica_a.data_dir / name, replica_b.data_dir / name)
    gateway = None
    try:
        if link == "long-poll":
            replica_b.process = subprocess.Popen(
                [*FIELDGATE, "registry", "serve", "--listen", f"127.0.0.1:{replica_b.port}", "--data-dir",
                 str(replica_b.data_dir), "--heartbeat-interval", "1s", "--channel-listen", "off",
                 *replica_b.db_args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for_port(replica_b.port, replica_b.process)
        else:
            replica_b.start()
        data_dir = tmp_path / "gw"
        assert join(replica_b, replica_b.token(), data_dir, "--name", "gw-1").returncode == 0
        config = tmp_path / "gw.yaml"
        port = free_port()
        config.write_text(f'kind: Gateway\nname: gw-1\nhttp: {{listen: "127.0.0.1:{port}"}}\n'
                          "eventbus: {url: none}\nstore: {flush_interval: 50ms}\n")
        gateway = subprocess.Popen([*FIELDGATE, "run", "-c", str(config), "--data-dir", str(data_dir)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(port, gateway)
        wait_until(lambda: replica_a.nodes()["gw-1"]["status"] == "healthy", what="a heartbeat through B")
        operator = replica_a.cli("token", "create", "--role", "operator").stdout.strip()
        wanted = 1 if link == "channel" else 0
        wait_until(lambda: _channels_open(replica_b, replica_b.cli("token", "create", "--role", "viewer")
                                          .stdout.strip()) == wanted, what=f"{wanted} channel open at B")
        assert _channels_open(replica_a, operator) == 0  # A holds no link of the node
        (tmp_path / "sleeper.yaml").write_text(SLEEPER)
        replica_a.cli("apply", "-f", str(tmp_path / "sleeper.yaml"))
        with api(replica_a, operator) as client:
            def running() -> bool:
                found = [w for w in client.get("/api/v1/workloads").json() if w["name"] == "sleeper"]
                return bool(found) and found[0]["status"] == "running"

            wait_until(running, what="the workload running on the node", timeout=30)
            started = time.monotonic()
            logs = client.get("/api/v1/nodes/gw-1/logs", params={"timeout": "8", "limit": "5"}, timeout=15)
            assert logs.status_code == 200, logs.text
            assert logs.json()["node"] == "gw-1" and logs.json()["records"], logs.json()
            assert time.monotonic() - started < 4.0  # answered at once, not at the request's deadline
            restarted = client.post("/api/v1/nodes/gw-1/workloads/default/sleeper/restart", params={"timeout": "8"},
                                    timeout=15)
            assert restarted.status_code == 200, restarted.text
            assert restarted.json()["outcome"] == "ok" and restarted.json()["changed"] is True, restarted.json()
        # nothing is left behind in the shared table once the calls have their answers
        rows = asyncio.run(_request_rows(pg_database))
        assert rows == 0
    finally:
        if gateway is not None:
            stop(gateway)
        for replica in (replica_a, replica_b):
            if replica.process is not None:
                stop(replica.process)


async def _request_rows(dsn: str) -> int:
    import asyncpg  # type: ignore[import-untyped]

    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        return int(await connection.fetchval("SELECT COUNT(*) FROM node_requests"))
    finally:
        await connection.close()


def _channels_open(replica: Registry, token: str) -> int:
    with api(replica, token) as client:
        text = client.get("/metrics").text
    [line] = [line for line in text.splitlines() if line.startswith("fieldgate_registry_channels_open ")]
    return int(float(line.split()[1]))
