"""What the node and the registry refuse, with a clear reason and nothing written: names and paths out of the files
area (through a symlink too), a file over the node's quota, a file whose bytes do not match its SHA-256 (either
way), a corrupted chunk, a local upload over the size limit. And what a received file tells the local apps."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.testing import Mosquitto
from tests.files.conftest import FileNode, random_file, registry_api
from tests.registry.conftest import Registry, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def node(registry: Registry, mosquitto: Mosquitto, tmp_path: Path) -> Iterator[FileNode]:
    started = FileNode(registry, None, tmp_path, "gw-1", "{quota: 3Mi, max_upload: 2Mi, outbox_poll: 200ms}",
                       eventbus=mosquitto.url)
    started.start()
    yield started
    started.close()


def push(api: httpx.Client, body: bytes, name: str, path: str = "", node: str = "gw-1") -> httpx.Response:
    return api.post("/api/v1/files", params={"name": name, "nodes": node, "path": path}, content=body)


def final_state(api: httpx.Client, file_id: str) -> dict[str, Any]:
    def settled() -> dict[str, Any] | None:
        shown: dict[str, Any] = api.get(f"/api/v1/files/{file_id}").json()
        return shown if shown["nodes"][0]["state"] in ("done", "refused") else None

    found: dict[str, Any] = wait_until(settled, timeout=30, what=f"file {file_id} done or refused")["nodes"][0]
    return found


def files_in(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()) \
        if directory.exists() else []


def test_the_node_refuses_what_would_leave_its_area_or_pass_its_quota_or_its_hash(
        registry: Registry, node: FileNode, mosquitto: Mosquitto, tmp_path: Path) -> None:
    area = node.data_dir / "files"
    outside = tmp_path / "outside"
    outside.mkdir()
    area.mkdir(exist_ok=True)
    (area / "escape").symlink_to(outside)
    with registry_api(registry) as api:
        # the registry refuses `..`, absolute paths and names with a slash itself, naming the field
        for name, path, field in (("a.bin", "../up", "path"), ("a.bin", "/etc", "path"), ("../a.bin", "", "name"),
                                  ("a/b.bin", "", "name"), ("..", "", "name")):
            refused = push(api, b"x", name, path)
            assert refused.status_code == 400 and refused.json()["detail"].startswith(field), refused.text
        assert push(api, b"x", "a.bin", node="gw-9").status_code == 404
        assert api.get("/api/v1/files").json() == []

        listener = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(mosquitto.port), "-C", "1",
                                     "-W", "60", "-t", "fieldgate/gw-1/files/received"], stdout=subprocess.PIPE,
                                    text=True)
        time.sleep(0.3)
        good = push(api, b"hello files area", "hello.txt", "docs")
        assert good.status_code == 201, good.text
        assert final_state(api, good.json()["id"])["state"] == "done"
        assert (area / "docs" / "hello.txt").read_bytes() == b"hello files area"
        empty = push(api, b"", "empty.txt", "docs")
        assert final_state(api, empty.json()["id"])["state"] == "done"
        assert (area / "docs" / "empty.txt").read_bytes() == b""
        message = json.loads(listener.communicate(timeout=60)[0])
        assert message["name"] == "hello.txt" and message["path"] == "docs/hello.txt" and message["size"] == 16
        assert message["sha256"] == hashlib.sha256(b"hello files area").hexdigest()

        # a symlink in the area that leads out of it: refused on the node, nothing written outside
        through_link = push(api, b"secret", "x.txt", "escape/deeper")
        state = final_state(api, through_link.json()["id"])
        assert state["state"] == "refused" and "symlink" in state["reason"], state
        assert files_in(outside) == []

        # over the quota (3 MiB, 16 bytes used): refused before a byte is fetched
        big = tmp_path / "big.bin"
        random_file(big, 4 << 20)
        over = push(api, big.read_bytes(), "big.bin")
        state = final_state(api, over.json()["id"])
        assert state["state"] == "refused" and "quota" in state["reason"], state
        assert state["bytes_sent"] == 0
    assert files_in(area) == ["docs/empty.txt", "docs/hello.txt"]
    received = {f["name"]: f for f in node.files()["received"]}
    assert received["x.txt"]["state"] == "refused" and received["big.bin"]["state"] == "refused"
    metrics = node.local.get("/metrics").text
    assert 'fieldgate_files_total{direction="from-registry",outcome="received"} 2.0' in metrics
    assert 'fieldgate_files_total{direction="from-registry",outcome="refused"} 2.0' in metrics
    assert "fieldgate_file_bytes_received_total 16.0" in metrics
    with registry_api(registry, "viewer") as api:
        registry_metrics = api.get("/metrics").text
    assert "fieldgate_registry_file_bytes_sent_total 16.0" in registry_metrics
    assert 'fieldgate_registry_files_total{direction="to-edge",outcome="refused"} 2.0' in registry_metrics


def test_a_file_whose_bytes_do_not_match_its_hash_is_refused_and_nothing_kept(
        registry: Registry, node: FileNode, tmp_path: Path) -> None:
    node.stop()  # the file waits for the node while its bytes at the registry are corrupted (at rest)
    with registry_api(registry) as api:
        pushed = push(api, b"b" * 300_000, "corrupt.bin")
        file_id = pushed.json()["id"]
        stored = registry.data_dir / "files" / "objects" / file_id
        data = bytearray(stored.read_bytes())
        data[150_000] ^= 0xFF
        stored.write_bytes(bytes(data))
        node.start()
        state = final_state(api, file_id)
        assert state["state"] == "refused" and "SHA-256" in state["reason"], state
    assert files_in(node.data_dir / "files") == []
    assert files_in(node.data_dir / "file-transfers" / "incoming") == []


def test_the_registry_refuses_a_corrupted_chunk_and_a_file_that_does_not_match_its_hash(
        registry: Registry, node: FileNode, tmp_path: Path) -> None:
    from gateway.uplink.join import client_ssl_context

    data = b"0123456789" * 100_000
    digest = hashlib.sha256(data).hexdigest()
    with httpx.Client(base_url=registry.url, verify=client_ssl_context(node.data_dir), timeout=30) as link:
        file_id = "ab" * 16
        start = link.post("/api/v1/nodes/self/uploads", json={"id": file_id, "name": "log.txt", "size": len(data),
                                                                "sha256": "0" * 64})
        assert start.json() == {"id": file_id, "offset": 0, "state": "transferring", "reason": ""}
        # a chunk whose bytes do not match its X-Chunk-SHA256: refused, nothing of it written
        bad = link.put(f"/api/v1/nodes/self/uploads/{file_id}", params={"offset": "0"}, content=data[:500_000],
                       headers={"X-Chunk-SHA256": hashlib.sha256(b"other").hexdigest()})
        assert bad.status_code == 422 and "corrupted" in bad.json()["detail"]
        assert link.get(f"/api/v1/nodes/self/uploads/{file_id}").json()["offset"] == 0
        # a chunk at another offset than the registry holds: 409 with the offset to send from
        ahead = link.put(f"/api/v1/nodes/self/uploads/{file_id}", params={"offset": "500000"},
                         content=data[500_000:], headers={"X-Chunk-SHA256": hashlib.sha256(data[500_000:]).hexdigest()})
        assert ahead.status_code == 409 and ahead.json()["offset"] == 0
        for offset in (0, 500_000):
            chunk = data[offset:offset + 500_000]
            answer = link.put(f"/api/v1/nodes/self/uploads/{file_id}", params={"offset": str(offset)}, content=chunk,
                              headers={"X-Chunk-SHA256": hashlib.sha256(chunk).hexdigest()})
        # whole, but not the file announced: refused, and its bytes dropped
        assert answer.json()["state"] == "refused" and "SHA-256" in answer.json()["reason"]
        assert files_in(registry.data_dir / "files") == []
        # the same bytes announced with their hash go through
        good_id = "cd" * 16
        link.post("/api/v1/nodes/self/uploads", json={"id": good_id, "name": "log.txt", "size": len(data),
                                                      "sha256": digest})
        answer = link.put(f"/api/v1/nodes/self/uploads/{good_id}", params={"offset": "0"}, content=data,
                          headers={"X-Chunk-SHA256": digest})
        assert answer.json()["state"] == "done"
    with registry_api(registry, "viewer") as api:
        listed = {f["id"]: f["state"] for f in api.get("/api/v1/files").json()}
        assert listed == {file_id: "refused", good_id: "done"}
        assert api.get(f"/api/v1/files/{file_id}/content").status_code == 409
        assert api.get(f"/api/v1/files/{good_id}/content").content == data


def test_local_uploads_are_bounded_and_the_outbox_folder_is_sent(registry: Registry, node: FileNode,
                                                                 tmp_path: Path) -> None:
    too_big = node.local.put("/api/v1/files/big.bin", content=b"x" * (3 << 20))
    assert too_big.status_code == 413 and "files.max_upload" in too_big.json()["detail"]
    for name in ("..", ".hidden/x", "a\\b"):
        assert node.local.put(f"/api/v1/files/{name}", content=b"x").status_code in (400, 404), name
    assert files_in(node.data_dir / "file-transfers" / "outbox") == []
    folder = node.data_dir / "file-outbox"
    folder.mkdir(exist_ok=True)
    (folder / ".part").write_bytes(b"still being written")
    (folder / "reading.csv").write_bytes(b"t,v\n1,2\n")

    def sent() -> dict[str, Any] | None:
        return next((f for f in node.files()["sent"] if f["name"] == "reading.csv" and f["state"] == "done"), None)

    record = wait_until(sent, timeout=30, what="the dropped file at the registry")
    assert record["source"] == "folder"
    empty = node.local.put("/api/v1/files/empty.log", content=b"")
    assert empty.status_code == 201, empty.text
    wait_until(lambda: next((f for f in node.files()["sent"] if f["id"] == empty.json()["id"]
                             and f["state"] == "done"), None), timeout=30, what="the empty file at the registry")
    assert sorted(p.name for p in folder.iterdir()) == [".part"]
    with registry_api(registry, "viewer") as api:
        assert api.get(f"/api/v1/files/{record['id']}/content").content == b"t,v\n1,2\n"
        got = api.get(f"/api/v1/files/{empty.json()['id']}/content")
        assert got.status_code == 200 and got.content == b""


def test_a_file_damaged_in_the_outbox_is_refused_by_the_registry_and_nothing_kept(
        registry: Registry, node: FileNode, tmp_path: Path) -> None:
    from tests.registry.conftest import stop

    assert registry.process is not None
    stop(registry.process)  # the file waits in the outbox while the registry is away
    put = node.local.put("/api/v1/files/meter.csv", content=b"t,v\n" * 50_000)
    assert put.status_code == 201, put.text
    file_id = put.json()["id"]
    kept = node.data_dir / "file-transfers" / "outbox" / file_id
    data = bytearray(kept.read_bytes())
    data[100_000] ^= 0xFF  # the disk garbles it before it goes
    kept.write_bytes(bytes(data))
    registry.start()

    def settled() -> dict[str, Any] | None:
        return next((f for f in node.files()["sent"] if f["id"] == file_id and f["state"] != "queued"
                     and f["state"] != "sending"), None)

    record = wait_until(settled, timeout=60, what="the registry's verdict")
    assert record["state"] == "refused" and "SHA-256" in record["reason"], record
    assert not kept.exists()
    with registry_api(registry, "viewer") as api:
        listed = api.get("/api/v1/files").json()
        assert [(f["id"], f["state"]) for f in listed] == [(file_id, "refused")]
        assert api.get(f"/api/v1/files/{file_id}/content").status_code == 409
    assert files_in(registry.data_dir / "files") == []
