"""Upgrade tasks that carry an OS bundle (kind `os`) from a real registry to real joined gateways.

The bundle is a file of random bytes with a bundle's name: the registry and the node never look inside it (RAUC does,
on the appliance). A node runs the appliance image when its data dir has `os-update/system.json`, which the tests
write as the appliance's root side would; they also write the status the root side records after the reboot.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.ops.upgrade import StatusLog
from gateway.uplink.join import client_ssl_context
from gateway.uplink.upgrade import NOT_THE_APPLIANCE
from tests.conftest import FIELDGATE, free_port
from tests.registry.conftest import Registry, join, stop, wait_until
from tests.registry.test_upgrade_task import create, follow, show

BUNDLE_BYTES = 9 * 2**20 + 123  # three pieces in the registry's database (4 MiB each), the last one short
CONFIG = """\
kind: Gateway
name: os-upgrade-test
http: {{listen: "127.0.0.1:{port}"}}
eventbus: {{url: none}}
"""


def write_system(data_dir: Path, version: str, slot: str = "a") -> None:
    """What the appliance's boot check writes on every boot: the booted slot and the system's version."""
    (data_dir / "os-update").mkdir(parents=True, exist_ok=True)
    (data_dir / "os-update" / "system.json").write_text(json.dumps(
        {"slot": slot, "version": version, "compatible": "fieldgate-appliance-amd64"}))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bundles") / "fieldgate-os-2.0.0.raucb"
    path.write_bytes(os.urandom(BUNDLE_BYTES))
    return path


def admin_api(registry: Registry) -> httpx.Client:
    token = registry.cli("token", "create", "--role", "admin").stdout.strip()
    return httpx.Client(base_url=registry.url, verify=ssl.create_default_context(cafile=registry.data_dir / "ca.pem"),
                        timeout=60, headers={"Authorization": f"Bearer {token}"})


def test_os_tasks_from_the_cli_and_the_api_and_the_ones_refused(registry: Registry, tmp_path: Path,
                                                                bundle: Path) -> None:
    node_dir = tmp_path / "n1"
    assert join(registry, registry.token(), node_dir, "--name", "n1").returncode == 0
    digest = hashlib.sha256(bundle.read_bytes()).hexdigest()

    task = create(registry, "--version", "2.0.0", "--os-bundle", str(bundle), "--nodes", "n1")
    assert task["kind"] == "os" and task["wheels"] == [bundle.name]
    assert task["files"] == [{"name": bundle.name, "sha256": digest, "size": BUNDLE_BYTES}]
    printed = registry.cli("upgrade", "show", task["id"]).stdout
    assert f"kind os: OS bundle {bundle.name}, {BUNDLE_BYTES} bytes, sha256 {digest}" in printed
    assert " os " in registry.cli("upgrade", "list").stdout
    # the node fetches it over mutual TLS from the route wheels come from, whole and unchanged
    with httpx.Client(base_url=registry.url, verify=client_ssl_context(node_dir), timeout=60) as node:
        fetched = node.get(f"/api/v1/upgrades/{task['id']}/wheels/{bundle.name}")
        assert fetched.status_code == 200 and fetched.headers["content-length"] == str(BUNDLE_BYTES)
        assert hashlib.sha256(fetched.content).hexdigest() == digest
        assert node.get(f"/api/v1/upgrades/{task['id']}/wheels/other.raucb").status_code == 404

    encoded = base64.b64encode(bundle.read_bytes()).decode()
    with admin_api(registry) as api:
        answer = api.post("/api/v1/upgrades", json={"version": "2.0.0", "os_bundle": {bundle.name: encoded},
                                                    "nodes": ["n1"]})
        assert answer.status_code == 201, answer.text
        view = answer.json()
        assert view["kind"] == "os" and view["files"] == [{"name": bundle.name, "sha256": digest,
                                                           "size": BUNDLE_BYTES}]
        assert api.get(f"/api/v1/upgrades/{view['id']}").json()["kind"] == "os"

        wheel = {"fieldgate-2.0.0-py3-none-any.whl": base64.b64encode(b"PK").decode()}
        refusals = [
            ({"os_bundle": {bundle.name: encoded, "fieldgate-os-2.0.1.raucb": encoded}},
             "$.os_bundle: expected one file (name → base64), got 2"),
            ({"os_bundle": {bundle.name: encoded}, "wheels": wheel},
             "expected exactly one of --wheels, --os-bundle (got both)"),
            ({}, "expected exactly one of --wheels, --os-bundle"),
            ({"os_bundle": {"system.img": encoded}}, "--os-bundle: not a RAUC bundle's file name"),
            ({"os_bundle": {bundle.name: "%%not base64%%"}}, "$.os_bundle: not base64"),
            ({"os_bundle": {bundle.name: encoded[:-1]}}, "$.os_bundle: not base64"),
            ({"os_bundle": {bundle.name: ""}}, f"--os-bundle {bundle.name}: empty"),
        ]
        for fields, message in refusals:
            answer = api.post("/api/v1/upgrades", json={"version": "2.0.0", "nodes": ["n1"], **fields})
            assert answer.status_code == 400 and message in answer.json()["detail"], (message, answer.text)

    image = tmp_path / "system.img"
    image.write_bytes(b"not a bundle")
    empty = tmp_path / "empty.raucb"
    empty.touch()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for args, message in {
        ("--os-bundle", str(image)): "--os-bundle: not a RAUC bundle's file name (expected NAME.raucb",
        ("--os-bundle", str(empty)): f"--os-bundle {empty.name}: empty",
        ("--os-bundle", str(tmp_path / "gone.raucb")): "no such file",
        ("--os-bundle", str(bundle), "--wheels", str(wheels)): "expected exactly one of --wheels, --os-bundle "
                                                               "(got both)",
        (): "expected exactly one of --wheels, --os-bundle",
    }.items():
        result = registry.cli("upgrade", "create", "--version", "2.0.0", *args, "--nodes", "n1", check=False)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1

    audit = [json.loads(line) for line in registry.cli("audit", "--json").stdout.splitlines()]
    outcomes = [entry["outcome"] for entry in audit if entry["action"] == "upgrade.create"]
    assert outcomes.count("ok") == 2
    assert any("refused: $.os_bundle: not base64" in outcome for outcome in outcomes)
    assert any(outcome.startswith("refused: --os-bundle: not a RAUC bundle's file name") for outcome in outcomes)


class Gateway:
    """A joined gateway (`fieldgate run`) on its own data dir."""

    def __init__(self, registry: Registry, base: Path, name: str) -> None:
        self.name = name
        self.data = base / name
        joined = join(registry, registry.token("--labels", "fleet=os-test"), self.data, "--name", name)
        assert joined.returncode == 0, joined.stderr
        self.config = base / f"{name}.yaml"
        self.config.write_text(CONFIG.format(port=free_port()))
        self.log = base / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([*FIELDGATE, "run", "-c", str(self.config), "--data-dir", str(self.data)],
                                            stdout=log, stderr=log)


@pytest.fixture
def gateways(registry: Registry, tmp_path: Path) -> Iterator[dict[str, Gateway]]:
    """Three joined gateways: `plain` runs from no appliance image, `appliance` runs system 1.0.0 and `current`
    runs system 2.0.0 already."""
    started = {name: Gateway(registry, tmp_path, name) for name in ("plain", "appliance", "current")}
    write_system(started["appliance"].data, "1.0.0")
    write_system(started["current"].data, "2.0.0")
    try:
        for gateway in started.values():
            gateway.start()

        def reported() -> bool:
            nodes = registry.nodes()
            return all(nodes.get(name, {}).get("status") == "healthy" for name in started) and \
                nodes["appliance"]["info"].get("system", {}).get("version") == "1.0.0" and \
                nodes["current"]["info"].get("system", {}).get("version") == "2.0.0" and \
                "system" not in nodes["plain"]["info"]

        wait_until(reported, timeout=60, what="three healthy nodes, the appliances with their system")
        yield started
    finally:
        for gateway in started.values():
            if gateway.process is not None:
                stop(gateway.process)


def node_status(view: dict[str, Any]) -> dict[str, str]:
    return {node["node"]: node["status"] for node in view["nodes"]}


def test_an_os_task_on_real_nodes_refused_requested_skipped_and_succeeded(registry: Registry, bundle: Path,
                                                                         gateways: dict[str, Gateway]) -> None:
    # a node that is not the appliance image fails at once with the reason, and max_failures 0 cancels the rest
    refused = create(registry, "--version", "2.0.0", "--os-bundle", str(bundle), "--nodes", "plain,appliance",
                     "--max-failures", "0")
    view, _ = follow(registry, refused["id"], timeout=60)
    assert view["state"] == "failed" and node_status(view) == {"plain": "failed-rolled-back",
                                                               "appliance": "cancelled"}, view
    assert view["nodes"][0]["reason"] == NOT_THE_APPLIANCE
    assert "more than --max-failures 0" in view["nodes"][1]["reason"]
    assert not (gateways["plain"].data / "os-update" / "request.json").exists()

    # the appliance downloads the bundle and asks its system updater; the node already at 2.0.0 is skipped
    task = create(registry, "--version", "2.0.0", "--os-bundle", str(bundle), "--labels", "fleet=os-test",
                  "--max-failures", "1", "--deadline", "300s")
    appliance = gateways["appliance"].data
    request_file = appliance / "os-update" / "request.json"
    wait_until(request_file.exists, timeout=60, what="the appliance's request for the bundle")
    request = json.loads(request_file.read_text())
    task_dir = (appliance / "upgrade" / f"task-{task['id']}").resolve()
    assert request["task"] == task["id"] and request["version"] == "2.0.0" and request["deadline"] == 300
    assert Path(request["bundle"]) == task_dir / bundle.name
    assert hashlib.sha256(Path(request["bundle"]).read_bytes()).hexdigest() == \
        hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert not list(task_dir.glob("*.part"))

    def upgrading() -> dict[str, Any] | None:
        view = show(registry, task["id"])
        return view if node_status(view)["appliance"] == "upgrading" else None

    view = wait_until(upgrading, timeout=30, what="the appliance reporting its upgrade")
    assert [node["node"] for node in view["nodes"]] == ["appliance", "current", "plain"]
    assert node_status(view) == {"appliance": "upgrading", "current": "skipped", "plain": "pending"}
    assert "its system already runs version 2.0.0" in view["nodes"][1]["reason"]
    assert "the OS bundle is downloaded and handed to the system updater" in view["nodes"][0]["reason"]
    assert view["state"] == "running"
    assert task_dir.is_dir()  # kept while the system updater may still read the bundle

    # what the root side records once the new slot booted healthy
    write_system(appliance, "2.0.0", slot="b")
    StatusLog(appliance).record(status="succeeded", reason="slot b booted version 2.0.0 healthy",
                                wheels=str(task_dir))
    view, _ = follow(registry, task["id"], timeout=60)
    # then plain had its turn and failed (one failure tolerated, but not every node succeeded or was skipped)
    assert view["state"] == "failed", view
    assert node_status(view) == {"appliance": "succeeded", "current": "skipped", "plain": "failed-rolled-back"}
    assert "slot b booted version 2.0.0 healthy" in view["nodes"][0]["reason"]
    assert "downloading the OS bundle fieldgate-os-2.0.0.raucb" in view["nodes"][0]["log"]
    assert view["nodes"][2]["reason"] == NOT_THE_APPLIANCE
    wait_until(lambda: not task_dir.exists(), what="the task directory removed after the upgrade")
    wait_until(lambda: registry.nodes()["appliance"]["info"]["system"]["version"] == "2.0.0",
               what="the new system version at the registry")

    # the same bundle again: the appliance now runs it, so the task succeeds with both appliances skipped
    again = create(registry, "--version", "2.0.0", "--os-bundle", str(bundle), "--nodes", "appliance,current")
    view, _ = follow(registry, again["id"], timeout=30)
    assert view["state"] == "succeeded" and node_status(view) == {"appliance": "skipped", "current": "skipped"}


async def test_the_store_keeps_a_bundle_in_pieces_and_hands_it_out_as_an_os_task(db_url: str | None, tmp_path: Path,
                                                                                 bundle: Path) -> None:
    """On both databases: the bundle is kept in pieces and read back whole; the assignment says `os`; the skip rule
    looks at the system's version, not the gateway's."""
    from gateway.registry import access, upgrades
    from gateway.registry.store import RegistryStore

    async with RegistryStore(tmp_path, db_url) as store:
        for name, info in (("n1", {"version": "2.0.0"}),  # the gateway's version is not the system's
                           ("n2", {"version": "9.0.0", "system": {"slot": "a", "version": "2.0.0"}}),
                           ("n3", {"version": "9.0.0", "system": {"slot": "b", "version": "1.0.0"}})):
            await store.add_node(name, f"serial-{name}", {}, 1.0)
            await store.heartbeat(name, info)
        spec = upgrades.CreateUpgrade(version="2.0.0", nodes=["n1", "n2", "n3"], concurrency=2)
        view = await upgrades.create_task(store, spec, {}, access.cli_caller(), upgrades.Bundle.from_file(bundle))
        assert view["kind"] == "os"
        assert {n["node"]: n["status"] for n in view["nodes"]} == {"n1": "assigned", "n2": "skipped",
                                                                   "n3": "assigned"}
        assert "it reported no A/B system" in view["nodes"][0]["reason"]
        assert "its system ran version 1.0.0" in view["nodes"][2]["reason"]
        assignment = await upgrades.on_heartbeat(store, "n3", None)
        assert assignment is not None and assignment.kind == "os" and assignment.version == "2.0.0"
        content = await asyncio.to_thread(bundle.read_bytes)
        assert [(w.name, w.sha256, w.size) for w in assignment.wheels] == [
            (bundle.name, hashlib.sha256(content).hexdigest(), len(content))]
        pieces = [piece async for piece in store.upgrades.content(view["id"], bundle.name)]
        assert len(pieces) == 3 and b"".join(pieces) == content
        assert [piece async for piece in store.upgrades.content(view["id"], "other.raucb")] == []

        wheel = {"fieldgate-2.0.0-py3-none-any.whl": b"not used here"}  # a gateway task keeps its rule
        gateway_task = await upgrades.create_task(store, upgrades.CreateUpgrade(version="2.0.0", nodes=["n1", "n2"]),
                                                  wheel, access.cli_caller())
        assert gateway_task["kind"] == "gateway"
        assert [n["status"] for n in gateway_task["nodes"]] == ["skipped", "assigned"]
        assert [piece async for piece in store.upgrades.content(gateway_task["id"], next(iter(wheel)))] == [
            b"not used here"]


def test_a_request_the_system_updater_never_takes_fails_the_task(tmp_path: Path) -> None:
    """The root side is not running (a unit disabled): after UPDATER_TAKES_WITHIN the node reports the task failed
    and withdraws the request, rather than `upgrading` for ever."""
    from types import SimpleNamespace

    from gateway.ops import osupdate
    from gateway.uplink import upgrade as node_upgrade

    node = node_upgrade.NodeUpgrade(SimpleNamespace(data_dir=tmp_path))  # type: ignore[arg-type]
    task_dir = tmp_path / "upgrade" / "task-t9"
    task_dir.mkdir(parents=True)
    bundle = task_dir / "fieldgate-os-2-amd64.raucb"
    bundle.write_bytes(b"bundle")
    request = osupdate.request_update(tmp_path, task="t9", version="2", bundle=bundle, deadline=60)
    record = {"task": "t9", "version": "2", "kind": "os", "wheels": str(task_dir),
              "log": str(tmp_path / "upgrade" / "task-t9.log"), "started_at": time.time(), "requested_at": time.time()}
    node._write_task(record)
    assert node.outgoing()["upgrade"]["status"] == "upgrading"
    node._write_task({**record, "requested_at": time.time() - node_upgrade.UPDATER_TAKES_WITHIN - 1})
    report = node.outgoing()["upgrade"]
    assert report["status"] == "failed-rolled-back"
    assert report["reason"] == ("the system updater did not take the request within 10 minutes (is "
                                "fieldgate-os-update.path enabled?); nothing was installed")
    assert not request.exists()
    assert node.outgoing()["upgrade"]["status"] == "failed-rolled-back"  # recorded, as the updater would have
