"""Joining: a token and a CSR give a node certificate; bad tokens are refused with a reason and exit 2."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import httpx

from gateway.uplink.join import client_ssl_context
from tests.registry.conftest import Registry, join


def test_join_issues_a_node_certificate_and_uses_it_for_mutual_tls(registry: Registry, tmp_path: Path) -> None:
    token = registry.token("--labels", "site=north")
    result = join(registry, token, tmp_path / "gw", "--name", "gw-a")
    assert result.returncode == 0, result.stderr
    assert "as node gw-a" in result.stdout
    directory = tmp_path / "gw" / "registry"
    assert {p.name for p in directory.iterdir()} == {"ca.pem", "node.pem", "node.key", "registry.json"}
    assert json.loads((directory / "registry.json").read_text())["node"] == "gw-a"
    assert (directory / "node.key").stat().st_mode & 0o077 == 0

    with httpx.Client(verify=client_ssl_context(tmp_path / "gw"), timeout=10) as client:
        answer = client.post(f"{registry.url}/api/v1/heartbeat", json={"info": {"version": "9.9"}})
        assert answer.status_code == 200, answer.text
        assert answer.json()["node"] == "gw-a"
    node = registry.nodes()["gw-a"]
    assert node["status"] == "healthy" and node["version"] == "9.9" and node["labels"] == {"site": "north"}

    # without a client certificate every route but join is refused
    with httpx.Client(verify=ssl.create_default_context(cafile=directory / "ca.pem"), timeout=10) as client:
        assert client.post(f"{registry.url}/api/v1/heartbeat", json={}).status_code == 401

    registry.cli("nodes", "remove", "gw-a")
    with httpx.Client(verify=client_ssl_context(tmp_path / "gw"), timeout=10) as client:
        refused = client.post(f"{registry.url}/api/v1/heartbeat", json={})
    assert refused.status_code == 403 and "revoked" in refused.text


def test_bad_tokens_are_refused_with_the_reason(registry: Registry, tmp_path: Path) -> None:
    used = registry.token("--max-uses", "1")
    assert join(registry, used, tmp_path / "first").returncode == 0
    expired = registry.token("--ttl", "0s")
    revoked = registry.token()
    registry.cli("join-token", "revoke", revoked.split(".")[0])
    unknown = "deadbeef.nosecret." + used.split(".")[2]
    wrong_secret = ".".join([revoked.split(".")[0], "x", used.split(".")[2]])
    for token, reason in ((used, "used up"), (expired, "expired"), (revoked, "revoked"), (unknown, "unknown"),
                          (wrong_secret, "unknown")):
        result = join(registry, token, tmp_path / reason)
        assert result.returncode == 2, (reason, result.stderr)
        assert result.stderr.strip() == f"fieldgate join: token refused: {reason}"
        assert not (tmp_path / reason / "registry").exists()


def test_a_token_for_another_ca_is_refused(registry: Registry, tmp_path: Path) -> None:
    token_id, secret, _ = registry.token().split(".")
    result = join(registry, f"{token_id}.{secret}.{'0' * 64}", tmp_path / "gw")
    assert result.returncode == 2
    assert "does not match the token's fingerprint" in result.stderr
