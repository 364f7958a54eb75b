"""Files both ways between a real registry and real gateway processes, through a proxy that drops their
connections, and across restarts of the registry and of a gateway: the bytes arrive whole (SHA-256) and less than
5 % of them are sent twice, counted by the side that receives them (cloud → edge) or sends them (edge → cloud).

The file size is FIELDGATE_FILE_TEST_MB (100 by default). The nodes' bandwidth cap makes each transfer last a few
seconds, long enough to break it on purpose at known points."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.files.conftest import CHUNK, FileNode, random_file, registry_api, sha256_of
from tests.files.proxy import Proxy
from tests.registry.conftest import Registry, wait_until

pytestmark = pytest.mark.slow
SIZE = int(float(os.environ.get("FIELDGATE_FILE_TEST_MB", "100")) * (1 << 20))
CAP = max(SIZE // 6, 1 << 20)  # bytes a second: a transfer lasts about six seconds


@pytest.fixture
def nodes(registry: Registry, proxy: Proxy, tmp_path: Path) -> Iterator[list[FileNode]]:
    started = [FileNode(registry, proxy, tmp_path, name, f"{{bandwidth: {CAP}, quota: 1Gi, outbox_poll: 200ms}}")
               for name in ("gw-1", "gw-2")]
    for node in started:
        node.start()
    yield started
    for node in started:
        node.close()


def when(check: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    return wait_until(check, timeout=timeout, what=what)


def test_a_file_goes_to_two_nodes_through_drops_and_restarts(registry: Registry, proxy: Proxy,
                                                            nodes: list[FileNode], tmp_path: Path) -> None:
    source = tmp_path / "firmware.bin"
    digest = random_file(source, SIZE)
    pushed = registry.cli("files", "push", str(source), "--node", "gw-1", "--node", "gw-2", "--path", "firmware/v2",
                          "--registry", registry.url, "--json")
    file_id = json.loads(pushed.stdout)["id"]
    gw1, gw2 = nodes

    def at(node: FileNode, fraction: float) -> bool:
        record = node.received(file_id)
        return bool(record and (record["position"] >= SIZE * fraction
                                or record["state"] not in ("transferring", "pending")))

    registry_restarts = gateway_restarts = 0
    when(lambda: at(gw1, 0.1), "a tenth at gw-1")
    # at the bandwidth cap the link still carries the heartbeats: both nodes stay healthy at the registry
    assert {name: node["status"] for name, node in registry.nodes().items()} == {"gw-1": "healthy",
                                                                                   "gw-2": "healthy"}
    proxy.drop()
    when(lambda: at(gw1, 0.25), "a quarter at gw-1")
    assert registry.process is not None
    from tests.registry.conftest import stop

    stop(registry.process)  # the registry goes away mid-transfer and comes back on its port
    time.sleep(0.5)
    registry.start()
    registry_restarts += 1
    when(lambda: at(gw1, 0.45), "nearly half at gw-1")
    proxy.drop()
    when(lambda: at(gw2, 0.55), "over half at gw-2")
    gw2.stop()  # the gateway goes away mid-transfer and comes back
    gw2.start()
    gateway_restarts += 1
    when(lambda: at(gw1, 0.7), "most at gw-1")
    proxy.drop()
    done = when(lambda: all((r := n.received(file_id)) and r["state"] == "done" and r for n in nodes) and
                [n.received(file_id) for n in nodes], "the file at both nodes", timeout=180)
    for node, record in zip(nodes, done, strict=True):
        landed = node.data_dir / "files" / "firmware" / "v2" / "firmware.bin"
        assert sha256_of(landed) == digest, node.name
        assert not list((node.data_dir / "file-transfers" / "incoming").iterdir())
        # bytes taken off the link, partial chunks too; a gateway stopped mid-chunk loses the count of that one
        received = record["bytes_received"] + (CHUNK if node is gw2 else 0) * gateway_restarts
        resent = (received - SIZE) / SIZE
        print(f"{node.name}: {record['bytes_received']} bytes received for a {SIZE}-byte file, "
              f"{100 * resent:.2f} % resent, {proxy.drops} drops, {registry_restarts} registry restart(s), "
              f"{gateway_restarts} gateway restart(s)")
        assert resent < 0.05
    assert proxy.drops == 3
    with registry_api(registry, "viewer") as api:
        shown = api.get(f"/api/v1/files/{file_id}").json()
        assert {n["node"]: n["state"] for n in shown["nodes"]} == {"gw-1": "done", "gw-2": "done"}
        assert all(n["position"] == SIZE for n in shown["nodes"])


def test_a_file_goes_from_a_node_to_the_registry_through_drops_and_restarts(
        registry: Registry, proxy: Proxy, nodes: list[FileNode], tmp_path: Path) -> None:
    from tests.registry.conftest import stop

    source = tmp_path / "video.mp4"
    digest = random_file(source, SIZE)
    gw1 = nodes[0]
    with source.open("rb") as stream:
        put = gw1.local.put("/api/v1/files/video.mp4", content=stream)
    assert put.status_code == 201, put.text
    file_id = put.json()["id"]
    assert put.json()["sha256"] == digest

    def sent(fraction: float) -> bool:
        record = next((f for f in gw1.files()["sent"] if f["id"] == file_id), None)
        return bool(record and (record["position"] >= SIZE * fraction or record["state"] == "done"))

    when(lambda: sent(0.1), "a tenth sent")
    proxy.drop()
    when(lambda: sent(0.3), "some more sent")
    assert registry.process is not None
    stop(registry.process)
    time.sleep(0.5)
    registry.start()
    when(lambda: sent(0.5), "half sent")
    gw1.stop()
    gw1.start()
    when(lambda: sent(0.7), "most sent")
    proxy.drop()
    record = when(lambda: next((f for f in gw1.files()["sent"] if f["id"] == file_id and f["state"] == "done"),
                               None), "the file whole at the registry", timeout=180)
    assert not (gw1.data_dir / "file-transfers" / "outbox" / file_id).exists()  # out of the outbox once verified
    sent_bytes = record["bytes_sent"] + CHUNK  # the gateway stopped mid-chunk: at most one chunk not counted
    resent = (sent_bytes - SIZE) / SIZE
    print(f"gw-1: {record['bytes_sent']} bytes sent for a {SIZE}-byte file, {100 * resent:.2f} % resent")
    assert resent < 0.05
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
