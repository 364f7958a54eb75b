"""How file bytes travel: over the registry channel while it is up, cut anywhere (the bad-link proxy resets the
connection after a number of bytes, so the cuts land inside pieces, not between them) and resumed from the last whole
piece, so little is sent twice; over HTTPS when a proxy refuses the channel's WebSocket upgrade.

The file size is FIELDGATE_FILE_TEST_MB (100 by default); the node's bandwidth cap makes each transfer last several
seconds, long enough to cut it 20 times."""

from __future__ import annotations

import json
import random
import re
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.badlink import BadLink, LinkConditions, TlsTermination, bad_link
from tests.files.conftest import FileNode, random_file, registry_api, sha256_of
from tests.files.test_transfer import CAP, RESETS, SIZE
from tests.registry.conftest import Registry, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.beside]


def metric(node: FileNode, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", node.local.get("/metrics").text, re.MULTILINE)
    assert found, name
    return float(found.group(1))


@pytest.fixture
def node(registry: Registry, link: BadLink, tmp_path: Path) -> Iterator[FileNode]:
    started = FileNode(registry, link, tmp_path, "gw-1", f"{{bandwidth: {CAP}, quota: 1Gi, outbox_poll: 200ms}}")
    started.start()
    wait_until(lambda: started.local.get("/api/v1/status").json()["uplink"]["transport"] == "channel",
               what="the node's channel")
    yield started
    started.close()


def cut_while(link: BadLink, direction: str, moving: Callable[[], bool]) -> int:
    """Cut the link RESETS times in `direction`, each after a random number of bytes (about a 1/(RESETS + 2) of the
    file and less), while `moving` (the file is not whole yet); the cuts made."""
    chooser = random.Random(5)
    step = SIZE // (RESETS + 2)
    deadline = time.monotonic() + 300
    while link.stats.cuts < RESETS:
        assert time.monotonic() < deadline, f"{link.stats.cuts} cuts"
        assert moving(), f"the file was whole after {link.stats.cuts} cuts"
        if not link.conditions.cut:
            link.conditions.cut = {direction: chooser.randrange(step // 3, step)}
        time.sleep(0.02)
    return link.stats.cuts


def test_files_cut_inside_pieces_resume_from_the_last_whole_piece(registry: Registry, link: BadLink,
                                                                  node: FileNode, tmp_path: Path) -> None:
    # cloud → edge: the registry's pieces cut on their way down
    source = tmp_path / "firmware.bin"
    digest = random_file(source, SIZE)
    pushed = registry.cli("files", "push", str(source), "--node", "gw-1", "--registry", registry.url, "--json")
    file_id = json.loads(pushed.stdout)["id"]
    started = time.monotonic()
    cuts = cut_while(link, "down", lambda: (r := node.received(file_id)) is None or r["state"] != "done")
    record = wait_until(lambda: (r := node.received(file_id)) and r["state"] in ("done", "refused") and r,
                        timeout=180, what="the file at the node")
    assert record["state"] == "done", record
    assert sha256_of(node.data_dir / "files" / "firmware.bin") == digest
    received = record["bytes_received"]
    resent_down = (received - SIZE) / SIZE
    print(f"\ncloud → edge: {received} bytes received for a {SIZE}-byte file, {100 * resent_down:.2f} % resent, "
          f"{cuts} cuts inside pieces, {time.monotonic() - started:.1f} s")
    assert resent_down < 0.05
    assert metric(node, 'fieldgate_file_channel_bytes_total{direction="received"}') == received  # all on the channel

    # edge → cloud: the node's pieces cut on their way up
    upload = tmp_path / "video.mp4"
    digest = random_file(upload, SIZE)
    with upload.open("rb") as stream:
        put = node.local.put("/api/v1/files/video.mp4", content=stream)
    assert put.status_code == 201, put.text
    upload_id = put.json()["id"]

    def sent() -> dict[str, Any] | None:
        return next((f for f in node.files()["sent"] if f["id"] == upload_id), None)

    started, before = time.monotonic(), link.stats.cuts
    link.stats.cuts = 0
    cuts = cut_while(link, "up", lambda: (r := sent()) is None or r["state"] != "done")
    record = wait_until(lambda: (r := sent()) and r["state"] in ("done", "refused") and r, timeout=180,
                        what="the file at the registry")
    assert record["state"] == "done", record
    resent_up = (record["bytes_sent"] - SIZE) / SIZE
    print(f"edge → cloud: {record['bytes_sent']} bytes sent for a {SIZE}-byte file, {100 * resent_up:.2f} % resent, "
          f"{cuts} cuts inside pieces, {time.monotonic() - started:.1f} s")
    assert resent_up < 0.05
    assert metric(node, 'fieldgate_file_channel_bytes_total{direction="sent"}') == record["bytes_sent"]
    assert before >= RESETS  # the cut the first direction asked for last may land after it counted
    with registry_api(registry, "viewer") as api:
        downloaded = tmp_path / "downloaded"
        with api.stream("GET", f"/api/v1/files/{upload_id}/content") as response, downloaded.open("wb") as out:
            assert response.status_code == 200
            for block in response.iter_bytes():
                out.write(block)
    assert sha256_of(downloaded) == digest


@pytest.fixture
def refusing(registry: Registry, tmp_path: Path) -> Iterator[tuple[FileNode, BadLink]]:
    """A node behind a proxy that refuses WebSocket upgrades (it terminates TLS to see them)."""
    from gateway.uplink.join import client_ssl_context

    node = FileNode(registry, None, tmp_path, "gw-1", "{quota: 1Gi, outbox_poll: 200ms}")
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(registry.data_dir / "server.pem", registry.data_dir / "server.key")
    tls = TlsTermination(server=server_side, client=client_ssl_context(node.data_dir))
    with bad_link(registry.port, seed=3, tls=tls, conditions=LinkConditions(refuse_upgrades=True)) as link:
        node.route_through(link.url)
        node.start()
        yield node, link
    node.close()


def test_files_go_over_https_when_the_channel_is_refused(registry: Registry, refusing: tuple[FileNode, BadLink],
                                                         tmp_path: Path) -> None:
    node, link = refusing
    wait_until(lambda: (u := node.local.get("/api/v1/status").json()["uplink"])["channel"]["state"] == "fallback"
               and u["state"] == "connected", what="the node on HTTPS polling")
    size = 5 << 20
    source = tmp_path / "firmware.bin"
    digest = random_file(source, size)
    pushed = registry.cli("files", "push", str(source), "--node", "gw-1", "--registry", registry.url, "--json")
    file_id = json.loads(pushed.stdout)["id"]
    upload = tmp_path / "video.mp4"
    upload_digest = random_file(upload, size)
    with upload.open("rb") as stream:
        put = node.local.put("/api/v1/files/video.mp4", content=stream)
    assert put.status_code == 201, put.text
    received = wait_until(lambda: (r := node.received(file_id)) and r["state"] in ("done", "refused") and r,
                          timeout=60, what="the file at the node")
    sent = wait_until(lambda: next((f for f in node.files()["sent"] if f["id"] == put.json()["id"]
                                    and f["state"] in ("done", "refused")), None), timeout=60,
                      what="the file at the registry")
    assert received["state"] == "done" and sent["state"] == "done", (received, sent)
    assert sha256_of(node.data_dir / "files" / "firmware.bin") == digest
    assert received["bytes_received"] == size and sent["bytes_sent"] == size
    assert link.stats.refused_upgrades >= 1
    assert node.local.get("/api/v1/status").json()["uplink"]["transport"] == "https-polling"
    assert metric(node, 'fieldgate_file_channel_bytes_total{direction="received"}') == 0
    assert metric(node, 'fieldgate_file_channel_bytes_total{direction="sent"}') == 0
    assert metric(node, "fieldgate_file_bytes_received_total") == size
    with registry_api(registry, "viewer") as api:
        assert api.get(f"/api/v1/files/{put.json()['id']}/content").content == upload.read_bytes()
    assert upload_digest == sha256_of(upload)
