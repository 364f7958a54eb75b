"""Secrets: encrypted in the SQLite file, given to the app in plain, masked by the API; config items as files."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import StoreError
from gateway.workloads.secrets import MASK, SecretBox
from tests.workloads.conftest import APPS, PYTHON, Node
from tests.workloads.test_supervisor import ask_app, ready_instances

PLAIN = "s3cr3t-Pl41n-7c9e"
LOCAL_PLAIN = "l0cal-Pl41n-51aa"
DOCUMENTS = f"""\
kind: Secret
name: db
data: {{password: {PLAIN}}}
---
kind: ConfigItem
name: app-config
data: {{ini: "[app]\\nmode = fast\\n"}}
---
kind: Workload
name: web
command: [{PYTHON}, {APPS / "web.py"}]
ports: [{{name: http}}]
env_from: [{{name: DB_PASSWORD, secret: db, key: password}}]
files: [{{path: conf/app.ini, config_item: app-config, key: ini}}]
health: {{type: tcp, port: http, interval: 100ms}}
restart_delay: 200ms
"""


def database_bytes(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(data_dir.glob("fieldgate.db*")))


async def test_a_secret_is_encrypted_at_rest_given_to_the_app_and_masked(
        start_node: Callable[..., Any], tmp_path: Path) -> None:
    node: Node = await start_node(DOCUMENTS)
    (instance,) = await ready_instances(node, "web")
    answer = await ask_app(instance)
    assert answer["password"] == PLAIN
    assert answer["file"] == "[app]\nmode = fast\n"

    local = await node.gateway.configuration.apply_documents(
        "kind: Secret\nname: local\ndata: {token: " + LOCAL_PLAIN + "}\n", actor="test")
    assert local == ["Secret default/local"]
    await node.gateway.store.flush()
    stored = database_bytes(node.gateway.data_dir)
    assert b"fernet:" in stored, "the Secret documents are in the store, encrypted"
    assert PLAIN.encode() not in stored and LOCAL_PLAIN.encode() not in stored
    key = node.gateway.data_dir / "secrets.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600

    for role in ("viewer", "admin"):
        listing = await node.clients[role].get("/api/v1/secrets")
        assert listing.status_code == 200
        assert PLAIN not in listing.text and LOCAL_PLAIN not in listing.text
        assert {s["name"]: s["data"] for s in listing.json()} == {"db": {"password": MASK},
                                                                  "local": {"token": MASK}}
    one = await node.api.get("/api/v1/secrets/default/db")
    assert one.json()["data"] == {"password": MASK} and one.json()["owner"] == "file"
    for path in ("/api/v1/workloads", "/api/v1/workloads/default/web/versions", "/api/v1/workloads/default/web/events",
                 "/api/v1/workloads/default/web/logs"):
        assert PLAIN not in (await node.api.get(path)).text, path
    items = (await node.api.get("/api/v1/configitems")).json()
    assert items == [{"namespace": "default", "name": "app-config", "labels": {}, "owner": "file",
                      "data": {"ini": "[app]\nmode = fast\n"}}]
    files_dir = node.gateway.workloads.instance_dir(node.gateway.workloads.runner("default", "web").target,
                                                    instance["id"])
    assert (files_dir / "files" / "conf" / "app.ini").exists()

    await node.gateway.stop()
    assert not files_dir.exists(), "an instance's files go when it ends"
    assert PLAIN.encode() not in database_bytes(node.gateway.data_dir)


async def test_a_locally_applied_secret_is_decrypted_after_a_restart(
        start_node: Callable[..., Any], tmp_path: Path) -> None:
    node: Node = await start_node()
    await node.gateway.configuration.apply_documents(DOCUMENTS.replace(PLAIN, LOCAL_PLAIN), actor="test")
    (instance,) = await ready_instances(node, "web")
    assert (await ask_app(instance))["password"] == LOCAL_PLAIN
    await node.gateway.stop()
    assert LOCAL_PLAIN.encode() not in database_bytes(node.gateway.data_dir)

    again: Node = await start_node()
    assert again.gateway.data_dir == node.gateway.data_dir
    (instance,) = await ready_instances(again, "web")
    assert (await ask_app(instance))["password"] == LOCAL_PLAIN
    assert (await again.api.get("/api/v1/workloads/default/web/versions")).json()[-1]["version"] == 1, \
        "an unchanged spec is no new version"


def test_a_replaced_key_is_a_clear_error(tmp_path: Path) -> None:
    box = SecretBox(tmp_path)
    sealed = box.seal("value")
    assert sealed.startswith("fernet:") and box.unseal(sealed) == "value"
    assert box.seal(sealed) == sealed, "sealing twice does not wrap the value twice"
    (tmp_path / "secrets.key").unlink()
    with pytest.raises(StoreError, match="cannot be decrypted"):
        SecretBox(tmp_path).unseal(sealed)
