"""Edge apps from the registry: a BatchWorkload applied at a real registry runs on a group of three real gateway
processes with the group's overrides and a Secret, its status comes back, and when one gateway stops its instance
moves to another node of the group within the failover time. The placement rules themselves are checked on the
registry store (SQLite and PostgreSQL) with heartbeats set by hand."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.errors import NotFound, ResourceError
from tests.conftest import FIELDGATE, free_port
from tests.registry.conftest import Registry, join, stop, wait_for_port, wait_until
from tests.registry.test_access import add_user, login

WEB_APP = Path(__file__).resolve().parents[1] / "workloads" / "apps" / "web.py"

BATCH = f"""\
kind: Secret
name: db
data: {{password: s3cret-value}}
---
kind: BatchWorkload
name: echo
template:
  command: [{sys.executable}, {WEB_APP}]
  env: {{APP_VERSION: template}}
  env_from: [{{name: DB_PASSWORD, secret: db, key: password}}]
  ports: [{{name: http}}]
  health: {{type: http, path: /health, port: http, interval: 200ms}}
  restart_delay: 200ms
  stop_grace: 2s
groups:
  - group: line-a
    env: {{APP_VERSION: line-a-v2}}
failover: {{after: 3s, move_back: false}}
"""


class Gateway:
    """A joined `fieldgate run` process."""

    def __init__(self, registry: Registry, tmp_path: Path, name: str) -> None:
        self.name = name
        self.data_dir = tmp_path / name
        joined = join(registry, registry.token("--labels", "line=a"), self.data_dir, "--name", name)
        assert joined.returncode == 0, joined.stderr
        self.port = free_port()
        self.config = tmp_path / f"{name}.yaml"
        self.config.write_text(textwrap.dedent(f"""\
            kind: Gateway
            name: {name}
            http: {{listen: "127.0.0.1:{self.port}"}}
            eventbus: {{url: none}}
            store: {{flush_interval: 50ms}}
            """))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([*FIELDGATE, "run", "-c", str(self.config), "--data-dir", str(self.data_dir)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)


@pytest.fixture
def gateways(registry: Registry, tmp_path: Path) -> Iterator[list[Gateway]]:
    started = [Gateway(registry, tmp_path, f"gw-{i}") for i in (1, 2, 3)]
    try:
        for gateway in started:
            gateway.start()
        yield started
    finally:
        for gateway in started:
            gateway.stop()


def views(registry: Registry) -> dict[tuple[str, str | None], dict[str, Any]]:
    lines = registry.cli("workloads", "--json").stdout.splitlines()
    return {(view["name"], view["node"]): view for view in map(json.loads, lines)}


def running(registry: Registry, name: str, node: str) -> dict[str, Any] | None:
    view = views(registry).get((name, node))
    return view if view and view["placed"] and view["status"] == "running" and view["ready"] == 1 else None


def answer(view: dict[str, Any]) -> dict[str, Any]:
    [instance] = view["instances"]
    reply = httpx.get(f"http://127.0.0.1:{instance['ports']['http']}/", timeout=5)
    assert reply.status_code == 200
    result: dict[str, Any] = reply.json()
    return result


def test_a_batch_workload_runs_on_its_group_and_fails_over(registry: Registry, gateways: list[Gateway],
                                                          tmp_path: Path) -> None:
    registry.cli("group", "create", "line-a", "--nodes", "gw-1,gw-2,gw-3")

    # bad documents are refused with the document and the field, and nothing is stored
    bad = tmp_path / "bad.yaml"
    bad.write_text(BATCH.replace("ports:", "node: gw-1\n  ports:"))
    refused = registry.cli("apply", "-f", str(bad), check=False)
    assert refused.returncode == 2 and "$.template.node: set by the registry for each node" in refused.stderr
    bad.write_text("kind: Workload\nname: lonely\nnode: gw-1\ncommand: [x]\n"
                   "env_from: [{name: A, config_item: missing, key: a}]\n")
    refused = registry.cli("apply", "-f", str(bad), check=False)
    assert refused.returncode == 2 and "ConfigItem default/missing is not at the registry" in refused.stderr
    assert views(registry) == {}

    (tmp_path / "batch.yaml").write_text(BATCH)
    applied = registry.cli("apply", "-f", str(tmp_path / "batch.yaml"))
    assert "BatchWorkload default/echo" in applied.stdout

    # every node of the group runs its instance with the group's env and the secret, and reports it
    for gateway in gateways:
        view = wait_until(lambda g=gateway: running(registry, f"echo.{g.name}", g.name), timeout=30,
                          what=f"echo on {gateway.name}")
        assert view["source"] == "BatchWorkload echo" and view["node_status"] == "healthy"
        assert view["last_event"] and view["restarts"] == 0
        reply = answer(view)
        assert reply["version"] == "line-a-v2" and reply["password"] == "s3cret-value"

    # the secret is encrypted in the registry's database and masked by its API
    assert b"s3cret-value" not in (registry.data_dir / "registry.db").read_bytes()
    token = registry.cli("token", "create", "--role", "viewer").stdout.strip()
    context = ssl.create_default_context(cafile=registry.data_dir / "ca.pem")
    with httpx.Client(base_url=registry.url, verify=context, timeout=10,
                      headers={"Authorization": f"Bearer {token}"}) as api:
        [secret] = api.get("/api/v1/documents", params={"kind": "Secret"}).json()
        assert secret["document"]["data"] == {"password": "********"}
        listed = api.get("/api/v1/workloads").json()
        assert {(w["name"], w["node"]) for w in listed} >= {("echo.gw-1", "gw-1"), ("echo.gw-3", "gw-3")}
        assert api.post("/api/v1/documents", json=[]).status_code == 403  # applying needs an admin

    # gw-3 stops: its instance moves to another node of the group within the failover time
    gateways[2].stop()
    stopped_at = time.monotonic()

    def moved() -> dict[str, Any] | None:
        return next((view for node in ("gw-1", "gw-2") if (view := running(registry, "echo.gw-3", node))), None)

    view = wait_until(moved, timeout=25, what="echo.gw-3 on another node")
    took = time.monotonic() - stopped_at
    assert took < 15, f"failover took {took:.1f}s"  # 3 s offline + 3 s `after` + a heartbeat or two
    assert view["origin"] == "gw-3" and answer(view)["version"] == "line-a-v2"
    assert ("echo.gw-3", "gw-3") not in views(registry)

    # the page lists the workloads per node
    add_user(registry, tmp_path, "ops", "--role", "viewer")
    with login(registry, "ops") as pages:
        page = pages.get("/workloads")
        assert page.status_code == 200
        assert f'data-workload="default/echo.gw-3" data-node="{view["node"]}"' in page.text
        assert "moved from gw-3" in page.text

    # move_back: false — gw-3 comes back and its instance stays where it went; gw-3 runs nothing of it
    gateways[2].start()
    wait_until(lambda: registry.nodes()["gw-3"]["status"] == "healthy", what="gw-3 back")
    wait_until(lambda: ("echo.gw-3", "gw-3") not in views(registry), what="gw-3 without echo.gw-3")
    assert running(registry, "echo.gw-3", view["node"])

    # a paused node gets no new instances; resumed, it does
    registry.cli("nodes", "pause", "gw-1")
    assert registry.nodes()["gw-1"]["paused"] is True
    (tmp_path / "one.yaml").write_text(f"kind: Workload\nname: solo\nnode: gw-1\ncommand: [{sys.executable}, "
                                       f"{WEB_APP}]\nports: [{{name: http}}]\n")
    registry.cli("apply", "-f", str(tmp_path / "one.yaml"))
    time.sleep(1.5)
    assert views(registry)[("solo", None)]["status"] == "not-placed"
    assert running(registry, "echo.gw-1", "gw-1")  # what runs there keeps running
    registry.cli("nodes", "resume", "gw-1")
    wait_until(lambda: running(registry, "solo", "gw-1"), what="solo on gw-1 after resume")
    missing = registry.cli("nodes", "pause", "gw-9", check=False)
    assert missing.returncode == 2 and "no node gw-9" in missing.stderr
    in_use = registry.cli("delete", "Secret", "db", check=False)
    assert in_use.returncode == 2 and "used by BatchWorkload default/echo" in in_use.stderr



async def test_placement_follows_node_status_and_the_failover_policy(db_url: str | None, tmp_path: Path) -> None:
    from gateway import wire
    from gateway.registry import access, workloads
    from gateway.registry.store import RegistryStore
    from gateway.resources.loader import parse_yaml

    async def placements(store: RegistryStore) -> dict[str, str]:
        return {name: node for name, node in await store.database.rows(
            "SELECT name, node FROM workload_placements ORDER BY name")}

    async def offline(store: RegistryStore, node: str, seconds: float) -> None:
        await store.database.write("UPDATE nodes SET last_heartbeat=? WHERE name=?", time.time() - seconds, node)

    document = """\
kind: BatchWorkload
name: app
template: {command: [sleep, "60"], image: "registry.local:5000/app:1"}
groups:
  - {group: g, image_tag: "2", replicas: 2, args: [--fast]}
failover: {after: 10s, move_back: true}
"""
    async with RegistryStore(tmp_path / "registry", db_url) as store:
        for name in ("a", "b", "c"):
            await store.add_node(name, name, {"line": "1" if name != "c" else "2"}, 1.0, None)
            await store.heartbeat(name, {})
        await store.create_group("g", ["a", "b", "c"], {})
        cli = access.cli_caller()
        await workloads.apply_documents(store, parse_yaml(document, "app.yaml"), "default", cli, "app.yaml")
        assert await placements(store) == {"app.a": "a", "app.b": "b", "app.c": "c"}
        [raw] = [d for d in (await store.node_documents("b"))[1] if d["kind"] == "Workload"]
        assert raw["image"] == "registry.local:5000/app:2" and raw["replicas"] == 2
        assert raw["args"] == ["--fast"] and "node" not in raw and raw["labels"]["origin"] == "b"

        await offline(store, "c", 5)  # offline, but not for `after` yet
        assert await workloads.schedule(store) == 0
        await offline(store, "c", 11)
        await workloads.schedule(store)
        assert (await placements(store))["app.c"] in ("a", "b")
        host = (await placements(store))["app.c"]
        assert "app.c" in {d["name"] for d in (await store.node_documents(host))[1]}
        await store.heartbeat("c", {})  # back: move_back takes it home
        await workloads.schedule(store)
        assert (await placements(store))["app.c"] == "c"

        await store.set_paused("a", True)
        await offline(store, "c", 11)
        await workloads.schedule(store)
        assert (await placements(store))["app.c"] == "b"  # not to the paused node
        await store.heartbeat("c", {})
        await workloads.schedule(store)

        with pytest.raises(ResourceError, match=r"group g is listed twice"):
            await workloads.apply_documents(store, parse_yaml(document.replace(
                "failover", "  - {group: g}\nfailover"), "dup.yaml"), "default", cli, "dup.yaml")
        with pytest.raises(ResourceError, match=r"\$\.template\.restart: .* \(with the overrides of group g\)"):
            await workloads.apply_documents(store, parse_yaml(document.replace('"60"]', '"60"], restart: sometimes'),
                                                              "bad.yaml"), "default", cli, "bad.yaml")
        await workloads.record_status(store, "c", [wire.WorkloadReport(
            workload="default/app.c", status="running", replicas=2, ready=2, last_event="ready app.c-2-1")])
        [view] = [v for v in await workloads.workload_views(store) if v["name"] == "app.c"]
        assert (view["node"], view["status"], view["ready"], view["source"]) == ("c", "running", 2,
                                                                                "BatchWorkload app")
        await store.remove_node("c")
        assert "app.c" not in await placements(store)

        # a Workload with a node selector runs on every node whose labels match, but not yet on the paused one
        await workloads.apply_documents(store, parse_yaml(
            "kind: Workload\nname: probe\ncommand: [sleep, '60']\nnode_selector: {line: '1'}\n", "probe.yaml"),
            "default", cli, "probe.yaml")
        probe = "SELECT node FROM workload_placements WHERE name='probe' ORDER BY node"
        assert await store.database.rows(probe) == [("b",)]
        await store.set_paused("a", False)
        await workloads.schedule(store)
        assert await store.database.rows(probe) == [("a",), ("b",)]

        # deleting a document takes its placements away
        await workloads.delete_document(store, cli, "BatchWorkload", "default", "app")
        assert set(await placements(store)) == {"probe"}
        with pytest.raises(NotFound):
            await workloads.delete_document(store, cli, "BatchWorkload", "default", "app")
