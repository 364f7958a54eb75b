"""Batch bundles: many nodes join with one bundle and get their own names and certificates; a used-up, revoked or
expired batch is refused with the reason and exit 2."""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
import time
from pathlib import Path

import httpx
import pytest

from gateway.errors import ConfigError, NotFound
from gateway.pki import make_csr, new_key
from gateway.registry.ca import peer_identity
from gateway.registry.store import NameTaken
from gateway.resources.schema import NAME_PATTERN
from gateway.uplink.join import client_ssl_context, read_bundle
from tests.conftest import FIELDGATE
from tests.registry.conftest import Registry


def join_bundle(bundle: Path, data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FIELDGATE, "join", "--bundle", str(bundle), "--data-dir", str(data_dir), *extra],
                          capture_output=True, text=True, timeout=30)


def batch_client(bundle: Path, tmp_path: Path) -> httpx.Client:
    """An mTLS client presenting the bundle's batch certificate."""
    import ssl

    _, files = read_bundle(bundle)
    directory = tmp_path / "batch-cert"
    directory.mkdir(exist_ok=True)
    for name in ("batch.pem", "batch.key"):
        (directory / name).write_bytes(files[name])
    context = ssl.create_default_context(cadata=files["ca.pem"].decode())
    context.load_cert_chain(directory / "batch.pem", directory / "batch.key")
    return httpx.Client(verify=context, timeout=10)


def test_two_nodes_join_with_one_bundle_and_the_third_is_refused(registry: Registry, tmp_path: Path) -> None:
    bundle = tmp_path / "line1.tar.gz"
    made = registry.cli("batch", "create", "line1", "--count", "2", "--labels", "site=north", "-o", str(bundle))
    assert "bundle for 2 nodes" in made.stdout
    assert bundle.stat().st_mode & 0o077 == 0
    with tarfile.open(bundle) as tar:
        assert set(tar.getnames()) == {"bundle.json", "ca.pem", "batch.pem", "batch.key"}
    info, _ = read_bundle(bundle)
    assert info.registry == [registry.url] and info.labels == {"site": "north"}  # where `registry serve` listens

    names = []
    for gateway in ("gw-a", "gw-b"):
        result = join_bundle(bundle, tmp_path / gateway)
        assert result.returncode == 0, result.stderr
        names.append(json.loads((tmp_path / gateway / "registry" / "registry.json").read_text())["node"])
    assert names[0] != names[1] and all(name.startswith("line1-") for name in names)

    for gateway, name in zip(("gw-a", "gw-b"), names, strict=True):
        with httpx.Client(verify=client_ssl_context(tmp_path / gateway), timeout=10) as client:
            answer = client.post(f"{registry.url}/api/v1/heartbeat", json={"info": {"version": "1"}})
        assert answer.status_code == 200 and answer.json()["node"] == name
    nodes = registry.nodes()
    assert nodes[names[0]]["labels"] == {"site": "north"} and nodes[names[1]]["status"] == "healthy"

    third = join_bundle(bundle, tmp_path / "gw-c")
    assert third.returncode == 2
    assert third.stderr.strip() == "fieldgate join: batch refused: used up"
    assert not (tmp_path / "gw-c" / "registry").exists()
    [listed] = map(json.loads, registry.cli("batch", "list", "--json").stdout.splitlines())
    assert (listed["name"], listed["status"], listed["used"], listed["count"]) == ("line1", "used up", 2, 2)

    # the batch certificate is no node certificate
    with batch_client(bundle, tmp_path) as client:
        assert client.post(f"{registry.url}/api/v1/heartbeat", json={}).status_code == 403


def test_a_revoked_or_expired_batch_is_refused_with_the_reason(registry: Registry, tmp_path: Path) -> None:
    revoked = tmp_path / "revoked.tar.gz"
    registry.cli("batch", "create", "old", "--prefix", "plant", "-o", str(revoked))
    assert "batch old revoked" in registry.cli("batch", "revoke", "old").stdout
    result = join_bundle(revoked, tmp_path / "gw-r", "--registry", registry.url)
    assert result.returncode == 2 and result.stderr.strip() == "fieldgate join: batch refused: revoked"

    expired = tmp_path / "expired.tar.gz"
    registry.cli("batch", "create", "short", "--ttl", "1s", "-o", str(expired))
    time.sleep(1.2)
    result = join_bundle(expired, tmp_path / "gw-e")
    assert result.returncode == 2 and result.stderr.strip() == "fieldgate join: batch refused: expired"
    with batch_client(expired, tmp_path) as client:  # the registry says so too, not only the node
        answer = client.post(f"{registry.url}/api/v1/join/batch", json={"csr": make_csr(new_key())})
    assert answer.status_code == 403 and answer.json()["detail"] == "expired"

    fresh = tmp_path / "fresh.tar.gz"
    registry.cli("batch", "create", "fresh", "--prefix", "plant", "-o", str(fresh))
    with batch_client(fresh, tmp_path) as client:  # a bad CSR is a 400 and does not use up a place
        answer = client.post(f"{registry.url}/api/v1/join/batch", json={"csr": "nonsense"})
        assert answer.status_code == 400 and "csr" in answer.json()["detail"]
    assert join_bundle(fresh, tmp_path / "gw-f", "--name", "Cabinet 7").returncode == 0
    assert json.loads((tmp_path / "gw-f" / "registry" / "registry.json").read_text())["node"] == "plant-cabinet-7"
    nameless = join_bundle(fresh, tmp_path / "gw-n", "--name", "../..")  # nothing to make a name of: not sent
    assert nameless.returncode == 2 and nameless.stderr.startswith("fieldgate join: --name '../..': "), \
        nameless.stderr
    statuses = {b["name"]: (b["status"], b["used"]) for b in map(json.loads, registry.cli(
        "batch", "list", "--json").stdout.splitlines())}
    assert statuses == {"fresh": ("active", 1), "old": ("revoked", 0), "short": ("expired", 0)}

    assert registry.cli("batch", "create", "fresh", "-o", str(tmp_path / "x.tar.gz"), check=False).returncode == 2
    bad = join_bundle(tmp_path / "gw.yaml", tmp_path / "gw-x")
    assert bad.returncode == 2 and "not a batch bundle" in bad.stderr



async def test_a_batch_gives_out_no_more_places_than_its_count_at_once(db_url: str | None, tmp_path: Path) -> None:
    import asyncio

    from gateway.registry import batch
    from gateway.registry.ca import CertificateAuthority
    from gateway.registry.store import RegistryStore

    ca = CertificateAuthority.load_or_create(tmp_path / "registry")
    async with RegistryStore(tmp_path / "registry", db_url) as store:
        bundle = tmp_path / "b.tar.gz"
        bundle.write_bytes(await batch.create_batch(store, ca, "b1", count=3, ttl=60, labels={}, prefix=None,
                                                    urls=["https://reg.example:8443"]))
        info, files = read_bundle(bundle)
        assert info.registry == ["https://reg.example:8443"] and info.ca_fingerprint == ca.fingerprint
        assert peer_identity(files["batch.pem"].decode())[0] == "batch:b1"
        await batch.take_place(store, "b1", "b1-0", "s0", {}, 1.0, None, "default")
        with pytest.raises(NameTaken):  # a node whose name was taken meanwhile takes no place
            await batch.take_place(store, "b1", "b1-0", "s9", {}, 1.0, None, "default")
        assert await store.database.rows("SELECT used FROM batches") == [(1,)]
        results = await asyncio.gather(*(batch.take_place(store, "b1", f"b1-{n}", f"s{n}", {}, 1.0, None, "default")
                                         for n in range(1, 6)), return_exceptions=True)
        assert [str(r) for r in results if isinstance(r, Exception)] == ["used up"] * 3
        assert await store.database.rows("SELECT used FROM batches") == [(3,)]
        assert len(await store.database.rows("SELECT name FROM nodes WHERE batch='b1'")) == 3
        with pytest.raises(ConfigError, match="exists already"):
            await batch.create_batch(store, ca, "b1", count=1, ttl=60, labels={}, prefix=None, urls=[])
        with pytest.raises(ConfigError, match="--prefix"):
            await batch.create_batch(store, ca, "b2", count=1, ttl=60, labels={}, prefix="Bad_Prefix", urls=[])
        # the batch certificate's common name `batch:NAME` holds at most 64 characters; node names at most 63
        with pytest.raises(ConfigError, match=r"batch name 'b{59}': expected at most 58 characters"):
            await batch.create_batch(store, ca, "b" * 59, count=1, ttl=60, labels={}, prefix="p", urls=[])
        with pytest.raises(ConfigError, match=r"--prefix 'p{49}': expected at most 48 characters"):
            await batch.create_batch(store, ca, "b3", count=1, ttl=60, labels={}, prefix="p" * 49, urls=[])
        with pytest.raises(NotFound):
            await batch.revoke_batch(store, "nope")
    assert batch.node_name("p", "SN 0042/A", 1, set()) == "p-sn-0042-a"
    longest = batch.node_name("p" * 48, "Serial " + "x-" * 40, 1, set())
    assert len(longest) <= 63 and re.fullmatch(NAME_PATTERN, longest), longest
    taken = {longest, batch.node_name("p" * 48, "Serial " + "x-" * 40, 1, {longest})}
    assert len(taken) == 2 and all(len(name) <= 63 and re.fullmatch(NAME_PATTERN, name) for name in taken)
    assert batch.node_name("p", "host", 2, {"p-host", "p-host-2"}) == "p-host-3"
    assert batch.node_name("p", "", 7, set()) == "p-7"
