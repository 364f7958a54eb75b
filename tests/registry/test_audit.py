"""The registry's audit log: every change (from the CLI, the API, a join) with time, actor, scope, action, object
and outcome; read back with `fieldgate registry audit` and `GET /api/v1/audit` within the reader's scope."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError
from gateway.registry import access, admin
from gateway.registry.access import cli_caller
from gateway.registry.store import RegistryStore
from tests.registry.conftest import Registry, stop
from tests.registry.test_access import api, cli, join, token, two_workspaces


def entries(registry: Registry) -> list[dict[str, Any]]:
    return [json.loads(line) for line in cli(registry, "audit", "--json", "--limit", "1000").stdout.splitlines()]


def actions(log: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    return [(e["action"], e["object"], e["scope"], e["outcome"]) for e in log]


@pytest.fixture
def pg_registry(pg_database: str, tmp_path: Path) -> Iterator[Registry]:
    server = Registry(tmp_path / "registry-pg", pg_database)
    server.start()
    yield server
    if server.process is not None:
        stop(server.process)


def test_every_change_is_audited_and_read_back_within_scope(registry: Registry, tmp_path: Path) -> None:
    started = time.time()
    two_workspaces(registry, tmp_path)
    refused = join(registry, token(registry, "--max-uses", "1"), tmp_path / "a2", "--name", "a")  # name taken
    assert refused.returncode == 2
    admin_b = cli(registry, "token", "create", "--role", "admin", "--scope", "workspace:plant-b").stdout.strip()
    admin_default = cli(registry, "token", "create", "--role", "admin").stdout.strip()
    with api(registry, admin_b) as client:
        assert client.post("/api/v1/groups", json={"name": "east", "nodes": ["b"],
                                                   "workspace": "plant-b"}).status_code == 201
        assert client.post("/api/v1/messages/b/plant/alarms", content=b"{}").status_code == 202
        assert client.post("/api/v1/messages/a/plant/alarms", content=b"{}").status_code == 404
        assert client.patch("/api/v1/nodes/b", json={"labels": {"site": "b2"}}).status_code == 200
        assert client.delete("/api/v1/groups/east").status_code == 200
    cli(registry, "nodes", "remove", "a")

    log = entries(registry)
    assert all(started - 1 <= e["at"] <= time.time() for e in log)
    token_b = admin_b.split(".")[0]
    assert actions([e for e in log if e["actor"] == f"token:{token_b}"]) == [
        ("group.create", "group/east", "workspace:plant-b", "ok"),
        ("message.post", "node/b/plant/alarms", "workspace:plant-b", "ok"),
        ("message.post", "node/a/plant/alarms", "workspace:plant-b", "not found"),
        ("node.change", "node/b", "workspace:plant-b", "ok"),
        ("group.delete", "group/east", "workspace:plant-b", "ok")]
    joins = [a for a in actions(log) if a[0] == "node.join"]
    assert joins == [("node.join", "node/a", "workspace:default", "ok"),
                     ("node.join", "node/b", "workspace:plant-b", "ok"),
                     ("node.join", "node/a", "workspace:default", "refused: node name a is taken")]
    cli_entries = [e for e in log if e["actor"].startswith("cli:")]
    assert ("workspace.create", "workspace/plant-b", "folder:east", "ok") in actions(cli_entries)
    assert ("token.create", "token", "workspace:plant-b", "ok") in actions(cli_entries)
    assert ("node.remove", "node/a", "workspace:default", "ok") in actions(cli_entries)
    assert {e["action"] for e in cli_entries} >= {"join-token.create"}
    assert "secret" not in json.dumps(log) and admin_b.split(".")[1] not in json.dumps(log)

    # the API shows an admin the entries of its scope only; viewers are refused
    with api(registry, admin_b) as client:
        seen = client.get("/api/v1/audit").json()
        assert seen and {e["scope"] for e in seen} == {"workspace:plant-b"}
        assert [e["action"] for e in seen][:2] == ["group.delete", "node.change"]  # newest first
        assert len(client.get("/api/v1/audit?limit=2").json()) == 2
        assert client.get("/api/v1/audit?limit=many").status_code == 400
        groups = client.get("/api/v1/audit?action=group.").json()  # the Audit page's filters, in the API too
        assert groups and {e["action"] for e in groups} <= {"group.create", "group.delete"}
        assert {e["scope"] for e in groups} == {"workspace:plant-b"}
        assert client.get("/api/v1/audit?actor=nobody-at-all").json() == []
        assert client.get("/api/v1/audit?workspace=default").json() == []  # outside the token's scope
        newest = groups[0]["at"]  # ?until= is exclusive, as ?before= is
        assert client.get(f"/api/v1/audit?action=group.&until={newest}").json() == groups[1:]
        assert client.get(f"/api/v1/audit?action=group.&since={newest}").json() == groups[:1]
        refused = client.get("/api/v1/audit?since=yesterday")
        assert refused.status_code == 400 and "?since=" in refused.text
    with api(registry, admin_default) as client:
        assert {e["scope"] for e in client.get("/api/v1/audit").json()} == {"workspace:default"}
    viewer = cli(registry, "token", "create").stdout.strip()
    with api(registry, viewer) as client:
        assert client.get("/api/v1/audit").status_code == 403
    text = cli(registry, "audit", "--limit", "1").stdout.strip()
    assert "token.create" in text and " ok" in text and len(text.splitlines()) == 1


def test_scopes_and_audit_on_postgresql(pg_registry: Registry, tmp_path: Path) -> None:
    two_workspaces(pg_registry, tmp_path)
    east = cli(pg_registry, "token", "create", "--role", "admin", "--scope", "folder:east").stdout.strip()
    with api(pg_registry, east) as client:
        assert [n["name"] for n in client.get("/api/v1/nodes").json()] == ["b"]
        assert client.get("/api/v1/nodes/a").status_code == 404
        made = client.post("/api/v1/workspaces", json={"name": "plant-c", "folder": "east"})
        assert made.status_code == 201
        assert client.post("/api/v1/workspaces", json={"name": "plant-d", "folder": "west"}).status_code == 403
        assert client.patch("/api/v1/nodes/b", json={"workspace": "plant-c"}).json()["workspace"] == "plant-c"
        assert [w["name"] for w in client.get("/api/v1/workspaces").json()] == ["plant-b", "plant-c"]
        seen = actions(client.get("/api/v1/audit").json())
    assert seen[:3] == [("node.change", "node/b", "workspace:plant-b", "ok"),
                        ("workspace.create", "workspace/plant-d", "folder:east", "refused: the scope folder:east "
                         "cannot create workspaces in folder west"),
                        ("workspace.create", "workspace/plant-c", "folder:east", "ok")]
    assert ("node.join", "node/a", "workspace:default", "ok") not in seen
    assert ("node.join", "node/a", "workspace:default", "ok") in actions(entries(pg_registry))


async def test_what_a_hostile_request_names_is_kept_bounded_in_the_audit_log(tmp_path: Path) -> None:
    """A 1 MB user name, password or token description is refused with the field named, and the refusal's entry
    keeps no more of it than a reader needs."""
    async with RegistryStore(tmp_path / "registry") as store:
        root = cli_caller()
        huge = "a" * 1_000_000
        with pytest.raises(ConfigError, match="user name"):
            await admin.add_user_as(store, root, huge, "viewer", "platform", "password-1")
        with pytest.raises(ConfigError, match="password: use at most 1024 characters"):
            await admin.add_user_as(store, root, "ann", "viewer", "platform", huge)
        with pytest.raises(ConfigError, match="description: use at most 200 characters"):
            await admin.create_token_as(store, root, "viewer", "platform", huge)
        assert [u["name"] for u in await access.users(store)] == []
        assert await access.api_tokens(store) == []
        entries = await access.audit_entries(store, root)
        assert [e["action"] for e in entries] == ["token.create", "user.add", "user.add"]
        assert all(e["outcome"].startswith("refused: ") for e in entries)
        for entry in entries:
            assert len(entry["object"]) <= access.AUDIT_FIELD and len(entry["outcome"]) <= access.AUDIT_TEXT
            assert len(entry["detail"]) <= access.AUDIT_TEXT and huge not in json.dumps(entry)
        token = await admin.create_token_as(store, root, "viewer", "platform", "d" * 200)  # the limit itself is fine
        assert token and (await access.api_tokens(store))[0]["description"] == "d" * 200
