"""A byte of a piece changed on the wire, both ways, by the bad-link proxy terminating TLS (it answers the node with
the registry's server certificate and dials the registry with the node's own) on the channel the files go over: the
receiver finds the piece's SHA-256 wrong, nothing of it is written, and it goes again from that piece (with the few
behind it that were on the way), so the file arrives whole. A file whose whole
SHA-256 does not match is refused with nothing kept: tests/files/test_refusals.py."""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.badlink import BadLink, TlsTermination, bad_link
from gateway.wire import FILE_PIECE
from tests.files.conftest import CHUNK, FileNode, random_file, registry_api, sha256_of
from tests.registry.conftest import Registry, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.beside]
SIZE = 8 * CHUNK
INSIDE_FIRST_CHUNK = 600_000  # bytes into a fresh connection's stream: inside a piece of the file it carries


def counter(metrics: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", metrics, re.MULTILINE)
    assert found, name
    return float(found.group(1))


@pytest.fixture
def node(registry: Registry, tmp_path: Path) -> Iterator[FileNode]:
    started = FileNode(registry, None, tmp_path, "gw-1", "{quota: 1Gi, outbox_poll: 200ms}")
    yield started
    started.close()


@pytest.fixture
def link(registry: Registry, node: FileNode) -> Iterator[BadLink]:
    from gateway.uplink.join import client_ssl_context

    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(registry.data_dir / "server.pem", registry.data_dir / "server.key")
    tls = TlsTermination(server=server_side, client=client_ssl_context(node.data_dir))
    with bad_link(registry.port, seed=11, tls=tls) as started:
        node.route_through(started.url)
        node.start()
        wait_until(lambda: node.local.get("/api/v1/status").json()["uplink"]["transport"] == "channel",
                   what="the node's channel through the proxy")
        yield started


def corrupt_next_chunk(link: BadLink, direction: str) -> None:
    """Flip a byte inside the first piece the next connections carry that way (all of them start afresh)."""
    link.conditions.corrupt = {direction: INSIDE_FIRST_CHUNK}
    link.reset_all()


def test_a_chunk_corrupted_on_the_way_to_the_node_is_fetched_again(registry: Registry, node: FileNode,
                                                                   link: BadLink, tmp_path: Path) -> None:
    source = tmp_path / "firmware.bin"
    digest = random_file(source, SIZE)
    corrupt_next_chunk(link, "down")
    pushed = registry.cli("files", "push", str(source), "--node", "gw-1", "--path", "firmware",
                          "--registry", registry.url, "--json")
    file_id = json.loads(pushed.stdout)["id"]
    record = wait_until(lambda: (r := node.received(file_id)) and r["state"] in ("done", "refused") and r,
                        timeout=60, what="the file at the node")
    assert record["state"] == "done", record
    assert link.stats.corrupted == 1
    assert sha256_of(node.data_dir / "files" / "firmware" / "firmware.bin") == digest  # no corrupted byte kept
    # the corrupted piece fetched again, with the ones behind it on the way: less than the 1 MiB an HTTPS chunk costs
    assert SIZE + FILE_PIECE <= record["bytes_received"] < SIZE + CHUNK, record
    metrics = node.local.get("/metrics").text
    assert counter(metrics, "fieldgate_file_chunks_corrupted_total") == 1
    assert counter(metrics, 'fieldgate_file_channel_bytes_total{direction="received"}') == record["bytes_received"]


def test_a_chunk_corrupted_on_the_way_to_the_registry_is_sent_again(registry: Registry, node: FileNode,
                                                                    link: BadLink, tmp_path: Path) -> None:
    source = tmp_path / "video.mp4"
    digest = random_file(source, SIZE)
    corrupt_next_chunk(link, "up")
    with source.open("rb") as stream:
        put = node.local.put("/api/v1/files/video.mp4", content=stream)
    assert put.status_code == 201, put.text
    file_id = put.json()["id"]
    record = wait_until(lambda: next((f for f in node.files()["sent"] if f["id"] == file_id
                                      and f["state"] in ("done", "refused")), None),
                        timeout=60, what="the file at the registry")
    assert record["state"] == "done", record
    assert link.stats.corrupted == 1
    # the refused piece sent again, with the ones behind it on the way until the registry's refusal came back
    assert SIZE + FILE_PIECE <= record["bytes_sent"] <= SIZE + 2 * CHUNK, record
    metrics = node.local.get("/metrics").text
    assert counter(metrics, "fieldgate_file_chunks_corrupted_total") == 1
    assert counter(metrics, 'fieldgate_file_channel_bytes_total{direction="sent"}') == record["bytes_sent"]
    with registry_api(registry, "viewer") as api:
        assert counter(api.get("/metrics").text, "fieldgate_registry_file_chunks_corrupted_total") == 1
        downloaded = tmp_path / "downloaded"
        downloaded.write_bytes(api.get(f"/api/v1/files/{file_id}/content").content)
    assert sha256_of(downloaded) == digest
