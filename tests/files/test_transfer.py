"""Files both ways between a real registry and real gateway processes, through the bad-link proxy
(gateway.badlink) resetting every connection 20 times over each transfer, and across restarts of the registry and of
a gateway: the bytes arrive whole (SHA-256) and less than 5 % of them are sent twice, counted by the side that
receives them (cloud → edge) or sends them (edge → cloud).

The file size is FIELDGATE_FILE_TEST_MB (100 by default). The nodes' bandwidth cap makes each transfer last several
seconds, long enough to break it on purpose at known points."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.badlink import BadLink
from tests.files.conftest import CHUNK, FileNode, random_file, registry_api, sha256_of
from tests.registry.conftest import Registry, stop, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.beside]
SIZE = int(float(os.environ.get("FIELDGATE_FILE_TEST_MB", "100")) * (1 << 20))
CAP = max(SIZE // 8, 1 << 20)  # bytes a second: a transfer lasts about eight seconds on a good link
RESETS = 20


@pytest.fixture
def nodes(registry: Registry, link: BadLink, tmp_path: Path) -> Iterator[list[FileNode]]:
    started = [FileNode(registry, link, tmp_path, name, f"{{bandwidth: {CAP}, quota: 1Gi, outbox_poll: 200ms}}")
               for name in ("gw-1", "gw-2")]
    for node in started:
        node.start()
    yield started
    for node in started:
        node.close()


def when(check: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    return wait_until(check, timeout=timeout, what=what)


def break_the_link(link: BadLink, progress: Callable[[], int], restarts: dict[float, Callable[[], None]]) -> int:
    """Reset every connection through `link` RESETS times, one after each further 1/(RESETS + 2) of the file moved
    (`progress`: bytes), and run the `restarts` once their fraction of the file moved; the resets that hit open
    connections (one without any is tried again a moment later)."""
    step = SIZE / (RESETS + 2)
    pending = sorted(restarts.items())
    resets = 0
    deadline = time.monotonic() + 240
    while resets < RESETS or pending:
        assert time.monotonic() < deadline, f"{resets} resets, restarts left at {[at for at, _ in pending]}"
        position = progress()
        assert position < SIZE, f"the transfer ended after {resets} resets"
        if pending and position >= pending[0][0] * SIZE:
            pending.pop(0)[1]()
        elif resets < RESETS and position >= (resets + 1) * step and link.reset_all():
            resets += 1
        time.sleep(0.02)
    return resets


def test_a_file_goes_to_two_nodes_through_resets_and_restarts(registry: Registry, link: BadLink,
                                                             nodes: list[FileNode], tmp_path: Path) -> None:
    source = tmp_path / "firmware.bin"
    digest = random_file(source, SIZE)
    pushed = registry.cli("files", "push", str(source), "--node", "gw-1", "--node", "gw-2", "--path", "firmware/v2",
                          "--registry", registry.url, "--json")
    file_id = json.loads(pushed.stdout)["id"]
    gw1, gw2 = nodes

    def position(node: FileNode) -> int:
        record = node.received(file_id)
        if record is None:
            return 0
        return SIZE if record["state"] not in ("transferring", "pending") else int(record["position"])

    restarts = {"registry": 0, "gateway": 0}

    def restart_registry() -> None:
        assert registry.process is not None
        stop(registry.process)  # the registry goes away mid-transfer and comes back on its port
        time.sleep(0.5)
        registry.start()
        restarts["registry"] += 1

    def restart_gateway() -> None:
        gw2.stop()  # the gateway goes away mid-transfer and comes back
        gw2.start()
        restarts["gateway"] += 1

    when(lambda: position(gw1) >= SIZE * 0.03, "the first chunks at gw-1")
    # at the bandwidth cap the link still carries the heartbeats: both nodes stay healthy at the registry
    assert {name: node["status"] for name, node in registry.nodes().items()} == {"gw-1": "healthy",
                                                                                   "gw-2": "healthy"}
    started = time.monotonic()
    resets = break_the_link(link, lambda: min(position(gw1), position(gw2)),
                            {0.3: restart_registry, 0.6: restart_gateway})
    done = when(lambda: all((r := n.received(file_id)) and r["state"] == "done" and r for n in nodes) and
                [n.received(file_id) for n in nodes], "the file at both nodes", timeout=180)
    for node, record in zip(nodes, done, strict=True):
        landed = node.data_dir / "files" / "firmware" / "v2" / "firmware.bin"
        assert sha256_of(landed) == digest, node.name
        assert not list((node.data_dir / "file-transfers" / "incoming").iterdir())
        # bytes taken off the link, partial chunks too; a gateway stopped mid-chunk loses the count of that one
        received = record["bytes_received"] + (CHUNK if node is gw2 else 0) * restarts["gateway"]
        resent = (received - SIZE) / SIZE
        print(f"{node.name}: {record['bytes_received']} bytes received for a {SIZE}-byte file, "
              f"{100 * resent:.2f} % resent, {resets} resets ({link.stats.resets} connections), "
              f"{restarts['registry']} registry restart(s), {restarts['gateway']} gateway restart(s), "
              f"{time.monotonic() - started:.1f} s")
        assert resent < 0.05
    assert resets == RESETS and link.stats.resets >= RESETS
    assert restarts == {"registry": 1, "gateway": 1}
    with registry_api(registry, "viewer") as api:
        shown = api.get(f"/api/v1/files/{file_id}").json()
        assert {n["node"]: n["state"] for n in shown["nodes"]} == {"gw-1": "done", "gw-2": "done"}
        assert all(n["position"] == SIZE for n in shown["nodes"])


def test_a_file_goes_from_a_node_to_the_registry_through_resets_and_restarts(
        registry: Registry, link: BadLink, nodes: list[FileNode], tmp_path: Path) -> None:
    source = tmp_path / "video.mp4"
    digest = random_file(source, SIZE)
    gw1 = nodes[0]
    with source.open("rb") as stream:
        put = gw1.local.put("/api/v1/files/video.mp4", content=stream)
    assert put.status_code == 201, put.text
    file_id = put.json()["id"]
    assert put.json()["sha256"] == digest

    def position() -> int:
        record = next((f for f in gw1.files()["sent"] if f["id"] == file_id), None)
        if record is None:
            return 0
        return SIZE if record["state"] == "done" else int(record["position"])

    def restart_registry() -> None:
        assert registry.process is not None
        stop(registry.process)
        time.sleep(0.5)
        registry.start()

    def restart_gateway() -> None:
        gw1.stop()
        gw1.start()

    when(lambda: position() >= SIZE * 0.03, "the first chunks sent")
    started = time.monotonic()
    resets = break_the_link(link, position, {0.3: restart_registry, 0.6: restart_gateway})
    record = when(lambda: next((f for f in gw1.files()["sent"] if f["id"] == file_id and f["state"] == "done"),
                               None), "the file whole at the registry", timeout=180)
    assert not (gw1.data_dir / "file-transfers" / "outbox" / file_id).exists()  # out of the outbox once verified
    sent_bytes = record["bytes_sent"] + CHUNK  # the gateway stopped mid-chunk: at most one chunk not counted
    resent = (sent_bytes - SIZE) / SIZE
    print(f"gw-1: {record['bytes_sent']} bytes sent for a {SIZE}-byte file, {100 * resent:.2f} % resent, "
          f"{resets} resets ({link.stats.resets} connections), a registry and a gateway restart, "
          f"{time.monotonic() - started:.1f} s")
    assert resent < 0.05
    assert resets == RESETS and link.stats.resets >= RESETS
    with registry_api(registry, "viewer") as api:
        listed = api.get("/api/v1/files", params={"direction": "from-edge"}).json()
        assert [(f["id"], f["state"], f["source_node"], f["size"]) for f in listed] == [
            (file_id, "done", "gw-1", SIZE)]
        downloaded = tmp_path / "downloaded"
        with api.stream("GET", f"/api/v1/files/{file_id}/content") as response, downloaded.open("wb") as out:
            assert response.status_code == 200
            for block in response.iter_bytes():
                out.write(block)
        assert sha256_of(downloaded) == digest
