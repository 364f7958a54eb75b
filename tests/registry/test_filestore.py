"""Where the registry keeps file bytes: a directory or S3-compatible storage (moto's S3 server, a separate process
on loopback), the same behaviour on both; and two registry replicas on one PostgreSQL and one bucket, where a file
uploaded through one replica downloads through the other (both ways)."""

from __future__ import annotations

import hashlib
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.errors import NotFound
from gateway.registry.filestore import DirectoryStore, OffsetMismatch, S3Store, open_content_store
from tests.conftest import free_port
from tests.registry.conftest import Registry, join, stop, wait_for_port

BUCKET = "fieldgate-files"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[str]:
    """moto's S3 server on a free loopback port with one bucket; its endpoint."""
    port = free_port()
    server = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process)
        endpoint = f"http://127.0.0.1:{port}"
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        stop(process)


def s3_store(endpoint: str, spool: Path) -> S3Store:
    return S3Store(f"s3://{BUCKET}/registry-a", spool, endpoint=endpoint, access_key="testing", secret_key="testing")


@pytest.mark.parametrize("backend", ["directory", "s3"])
async def test_parts_grow_at_their_end_and_become_files(backend: str, tmp_path: Path, request: pytest.FixtureRequest
                                                        ) -> None:
    store: DirectoryStore | S3Store
    if backend == "s3":
        store = s3_store(request.getfixturevalue("s3"), tmp_path / "spool")
        await store.check()
    else:
        store = DirectoryStore(tmp_path / "files")
    file_id = "0f" * 16
    data = os.urandom(3 << 20)
    assert await store.part_size(file_id) == 0
    assert await store.append(file_id, 0, data[:1 << 20]) == 1 << 20
    with pytest.raises(OffsetMismatch) as mismatch:  # a chunk sent again, or one ahead: the offset to go on from
        await store.append(file_id, 0, data[:1 << 20])
    assert mismatch.value.offset == 1 << 20
    assert await store.append(file_id, 1 << 20, data[1 << 20:]) == len(data)
    assert await store.part_sha256(file_id) == hashlib.sha256(data).hexdigest()
    with pytest.raises(NotFound):
        await store.size(file_id)
    await store.commit(file_id)
    assert await store.size(file_id) == len(data)
    assert await store.part_size(file_id) == 0
    assert await store.read(file_id, 5, 10) == data[5:15]
    assert await store.read(file_id, len(data), 10) == b""
    assert b"".join([block async for block in store.stream(file_id, 7)]) == data[7:]
    await store.delete(file_id)
    with pytest.raises(NotFound):
        await store.size(file_id)
    with pytest.raises(Exception, match="32 hex digits"):
        await store.append("../escape", 0, b"x")


def test_the_files_option_names_a_directory_or_a_bucket(tmp_path: Path) -> None:
    assert isinstance(open_content_store(tmp_path, None), DirectoryStore)
    assert open_content_store(tmp_path, str(tmp_path / "shared")).root == tmp_path / "shared"  # type: ignore[union-attr]
    with pytest.raises(Exception, match="s3://bucket/prefix"):
        open_content_store(tmp_path, "ftp://host/x")


def client(registry: Registry, token: str) -> httpx.Client:
    context = ssl.create_default_context(cafile=registry.data_dir / "ca.pem")
    return httpx.Client(base_url=registry.url, verify=context, headers={"Authorization": f"Bearer {token}"},
                        timeout=60)


def test_a_file_uploaded_through_one_replica_downloads_through_the_other(
        pg_database: str, s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {**CREDENTIALS, "FIELDGATE_S3_ENDPOINT": s3,
                       "FIELDGATE_REGISTRY_FILES": f"s3://{BUCKET}/fleet"}.items():
        monkeypatch.setenv(key, value)  # the replicas' environment (and their CLI's)
    first = Registry(tmp_path / "replica-a", pg_database)
    first.start()
    second = Registry(tmp_path / "replica-b", pg_database)
    second.data_dir.mkdir()
    for name in ("ca.pem", "ca.key"):
        shutil.copy2(first.data_dir / name, second.data_dir / name)
    second.start()
    try:
        node_dir = tmp_path / "gw"
        assert join(first, first.token(), node_dir, "--name", "gw-1").returncode == 0
        operator = first.cli("token", "create", "--role", "operator", "--scope", "platform").stdout.strip()
        data = os.urandom(5 << 20)
        digest = hashlib.sha256(data).hexdigest()
        with client(first, operator) as a, client(second, operator) as b:
            pushed = a.post("/api/v1/files", params={"name": "map.bin", "nodes": "gw-1"}, content=data)
            assert pushed.status_code == 201, pushed.text
            file_id = pushed.json()["id"]
            assert not (first.data_dir / "files" / "objects").exists()  # the bytes are in the bucket
            assert b.get(f"/api/v1/files/{file_id}/content").content == data
            assert b.get(f"/api/v1/files/{file_id}").json()["nodes"][0]["state"] == "pending"

            from gateway.uplink.join import client_ssl_context

            with httpx.Client(base_url=second.url, verify=client_ssl_context(node_dir), timeout=30) as link:
                # the node, linked to the other replica, is offered the file and fetches a chunk of it there
                offers = link.get("/api/v1/nodes/self/files").json()
                assert [o["id"] for o in offers] == [file_id]
                chunk = link.get(f"/api/v1/nodes/self/files/{file_id}/content", params={"offset": "1000",
                                                                                      "size": "5000"})
                assert chunk.content == data[1000:6000]
                assert chunk.headers["x-chunk-sha256"] == hashlib.sha256(data[1000:6000]).hexdigest()
                # and sends one of its own through it
                upload_id = "ee" * 16
                link.post("/api/v1/nodes/self/uploads", json={"id": upload_id, "name": "clip.mp4",
                                                               "size": len(data), "sha256": digest})
                done = link.put(f"/api/v1/nodes/self/uploads/{upload_id}", params={"offset": "0"}, content=data,
                                headers={"X-Chunk-SHA256": digest})
                assert done.json()["state"] == "done", done.text
            downloaded = a.get(f"/api/v1/files/{upload_id}/content")
            assert downloaded.status_code == 200 and hashlib.sha256(downloaded.content).hexdigest() == digest
            assert {f["id"] for f in a.get("/api/v1/files").json()} == {file_id, upload_id}
            assert b.delete(f"/api/v1/files/{upload_id}").status_code == 200
            assert a.get(f"/api/v1/files/{upload_id}/content").status_code == 404
    finally:
        for replica in (first, second):
            if replica.process is not None:
                stop(replica.process)
