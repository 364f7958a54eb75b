"""Upgrade tasks from a real registry to three real joined gateways, each running from its own A/B slot root.

The wheels are real builds of this tree (tests/test_upgrade.py): 9.0.0 on two nodes and 9.1.0 on the third at the
start, 9.1.0 the good upgrade, 9.2.0 a build whose gateway dies at import. The registry serves the wheels over mutual
TLS; each node runs `fieldgate upgrade` on them with its own restart script (the test's, as in tests/test_upgrade.py).
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FIELDGATE
from tests.registry.conftest import Registry, join, wait_until
from tests.test_upgrade import Node, build_plugins, build_wheels, make_slot, pip_install

pytestmark = pytest.mark.slow
IN_FLIGHT = ("assigned", "upgrading")


@pytest.fixture(scope="module")
def wheelhouses(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("wheelhouses")
    plugins = build_plugins(base / "plugins")
    return {"9.0.0": build_wheels(base / "src", base, "9.0.0", plugins),
            "9.1.0": build_wheels(base / "src", base, "9.1.0", plugins),
            "9.2.0": build_wheels(base / "src", base, "9.2.0", plugins, broken=True)}


def start_node(registry: Registry, base: Path, name: str, version: str, wheels: Path,
               monkeypatch: pytest.MonkeyPatch) -> Node:
    """A joined node whose slot a holds `version`, started by its restart script (which upgrades use too)."""
    base.mkdir()
    node = Node(base)
    make_slot(node.root / "a")
    make_slot(node.root / "b")
    plugins = sorted(w.name.split("-")[0].replace("_", "-") for w in wheels.glob("fieldgate_*.whl"))
    pip_install(node.root / "a", wheels, f"fieldgate=={version}", *plugins)
    (node.root / "current").symlink_to("a")
    joined = join(registry, registry.token("--labels", "fleet=upgrade-test"), node.data, "--name", name)
    assert joined.returncode == 0, joined.stderr
    node.token = subprocess.run([*FIELDGATE, "token", "create", "--role", "viewer", "--data-dir", str(node.data)],
                                capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    # the gateway passes this on to the upgrade process it starts, which restarts it with the same script
    monkeypatch.setenv("FIELDGATE_UPGRADE_RESTART", node.restart_command)
    node.restart()
    node.wait_version(version)
    return node


@pytest.fixture
def nodes(registry: Registry, tmp_path: Path, wheelhouses: dict[str, Path],
          monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Node]]:
    started: dict[str, Node] = {}
    try:
        for name, version in (("n1", "9.0.0"), ("n2", "9.0.0"), ("n3", "9.1.0")):
            started[name] = start_node(registry, tmp_path / name, name, version, wheelhouses[version], monkeypatch)
        yield started
    finally:
        for node in started.values():
            node.restart_script.unlink(missing_ok=True)  # an upgrade still running cannot start it again
            node.stop()


def create(registry: Registry, *args: str) -> dict[str, Any]:
    task: dict[str, Any] = json.loads(registry.cli("upgrade", "create", *args, "--json").stdout)
    return task


def show(registry: Registry, task: str) -> dict[str, Any]:
    view: dict[str, Any] = json.loads(registry.cli("upgrade", "show", task, "--json").stdout)
    return view


def follow(registry: Registry, task: str, timeout: float) -> tuple[dict[str, Any], int]:
    """Wait for a task to end; its last view and the most nodes seen upgrading at once."""
    deadline = time.monotonic() + timeout
    most = 0
    while True:
        view = show(registry, task)
        most = max(most, sum(1 for node in view["nodes"] if node["status"] in IN_FLIGHT))
        if view["state"] != "running":
            return view, most
        if time.monotonic() > deadline:
            raise AssertionError(f"upgrade {task} still running: {json.dumps(view['nodes'])}")
        time.sleep(0.3)


def test_upgrade_tasks_one_node_at_a_time_skip_and_cancel(registry: Registry, nodes: dict[str, Node],
                                                          wheelhouses: dict[str, Path]) -> None:
    wait_until(lambda: all(registry.nodes().get(name, {}).get("version") == node.status()["version"]
                           for name, node in nodes.items()), what="the nodes' versions at the registry")

    good = create(registry, "--version", "9.1.0", "--wheels", str(wheelhouses["9.1.0"]), "--labels",
                  "fleet=upgrade-test", "--concurrency", "1", "--deadline", "60s")
    assert [n["node"] for n in good["nodes"]] == ["n1", "n2", "n3"]
    view, most = follow(registry, good["id"], timeout=150)
    statuses = {n["node"]: n for n in view["nodes"]}
    assert view["state"] == "succeeded", view
    assert {name: n["status"] for name, n in statuses.items()} == {
        "n1": "succeeded", "n2": "succeeded", "n3": "skipped"}
    assert "already runs version 9.1.0" in statuses["n3"]["reason"]
    assert most <= 1
    assert statuses["n2"]["started_at"] >= statuses["n1"]["finished_at"]  # never two upgrading at once
    for name in ("n1", "n2"):
        assert nodes[name].current() == "b"
        assert nodes[name].status()["version"] == "9.1.0"
        assert "switching to slot b and restarting" in statuses[name]["log"]
    assert nodes["n3"].current() == "a"
    wait_until(lambda: registry.nodes()["n2"]["version"] == "9.1.0", what="n2's new version at the registry")

    broken = create(registry, "--version", "9.2.0", "--wheels", str(wheelhouses["9.2.0"]), "--nodes", "n1,n2,n3",
                    "--max-failures", "0", "--deadline", "8s")
    view, most = follow(registry, broken["id"], timeout=120)
    statuses = {n["node"]: n for n in view["nodes"]}
    assert view["state"] == "failed"
    assert {name: n["status"] for name, n in statuses.items()} == {
        "n1": "failed-rolled-back", "n2": "cancelled", "n3": "cancelled"}
    assert "version 9.2.0 not healthy within the deadline" in statuses["n1"]["reason"]
    assert "rolling back to slot b" in statuses["n1"]["log"]
    assert "more than --max-failures 0" in statuses["n2"]["reason"]
    assert statuses["n2"]["started_at"] is None
    assert nodes["n1"].current() == "b"
    assert nodes["n1"].status()["version"] == "9.1.0"  # rolled back and running again
    assert nodes["n2"].status()["version"] == "9.1.0"

    listing = registry.cli("upgrade", "list").stdout
    assert f"{good['id']}" in listing and f"{broken['id']}" in listing
    audit = registry.cli("audit", "--json").stdout
    assert audit.count("upgrade.create") == 2


def test_bad_upgrade_tasks_get_one_line(registry: Registry, tmp_path: Path, wheelhouses: dict[str, Path]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    wheels = str(wheelhouses["9.1.0"])
    cases = {
        ("--version", "9.9.9", "--wheels", wheels, "--nodes", "n1"): "--version 9.9.9: the fieldgate wheel is "
                                                                     "version 9.1.0",
        ("--version", "9.1.0", "--wheels", str(empty), "--nodes", "n1"): "--wheels: no .whl files in it",
        ("--version", "9.1.0", "--wheels", wheels): "expected exactly one of --nodes, --labels, --group",
        ("--version", "9.1.0", "--wheels", wheels, "--nodes", "nowhere"): "--nodes: no node nowhere",
        ("--version", "9.1.0", "--wheels", wheels, "--group", "g"): "--group g: no such group",
    }
    for args, message in cases.items():
        result = registry.cli("upgrade", "create", *args, check=False)
        assert result.returncode == 2, result
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    missing = registry.cli("upgrade", "show", "up-nothing", check=False)
    assert missing.returncode == 2 and "no upgrade task up-nothing" in missing.stderr

    context = ssl.create_default_context(cafile=registry.data_dir / "ca.pem")
    wheel = next(wheelhouses["9.1.0"].glob("fieldgate-9.1.0-*.whl"))
    body = {"version": "9.1.0", "wheels": {wheel.name: base64.b64encode(wheel.read_bytes()).decode()},
            "nodes": ["nowhere"]}
    for role, expected in (("viewer", 403), ("admin", 400)):
        token = registry.cli("token", "create", "--role", role).stdout.strip()
        with httpx.Client(base_url=registry.url, verify=context, timeout=10,
                          headers={"Authorization": f"Bearer {token}"}) as api:
            answer = api.post("/api/v1/upgrades", json=body)
            assert answer.status_code == expected, answer.text
            if role == "admin":
                assert answer.json()["detail"] == "--nodes: no node nowhere in workspace default"
                assert api.post("/api/v1/upgrades", json={**body, "wheels": {wheel.name: "%%"}}).status_code == 400
                assert api.get("/api/v1/upgrades/up-nothing").status_code == 404
                assert api.get("/api/v1/upgrades").json() == []
    with httpx.Client(base_url=registry.url, verify=context, timeout=10) as anonymous:
        assert anonymous.get(f"/api/v1/upgrades/up-nothing/wheels/{wheel.name}").status_code == 401


async def test_a_node_silent_mid_upgrade_is_lost_and_the_task_goes_on(tmp_path: Path) -> None:
    """A node handed a task that never reports (it died, or runs a version without upgrades) does not hold the
    task forever: past the deadline and a grace it is `lost`, counts as a failure, and the next node starts."""
    from gateway.registry import access, upgrades
    from gateway.registry.store import RegistryStore

    async with RegistryStore(tmp_path) as store:
        for name in ("n1", "n2"):
            await store.add_node(name, f"serial-{name}", {}, 1.0)
            await store.heartbeat(name, {"version": "9.0.0"})
        wheel = {"fieldgate-9.1.0-py3-none-any.whl": b"not used here"}
        spec = upgrades.CreateUpgrade(version="9.1.0", wheels={}, nodes=["n1", "n2"], max_failures=1, deadline=60)
        task = (await upgrades.create_task(store, spec, wheel, access.cli_caller()))["id"]
        assert await upgrades.on_heartbeat(store, "n1", None) is not None  # handed out, then nothing from n1
        assert await upgrades.on_heartbeat(store, "n2", None) is None  # concurrency 1: n2 waits
        await store.database.write("UPDATE upgrade_nodes SET updated_at=? WHERE task=? AND node='n1'",
                                   time.time() - 60 - upgrades.SILENCE_GRACE - 1, task)
        assignment = await upgrades.on_heartbeat(store, "n2", None)
        assert assignment is not None and assignment.task == task  # the task went on to n2
        view = await upgrades.task_view(store, task)
        n1 = next(node for node in view["nodes"] if node["node"] == "n1")
        assert n1["status"] == "lost" and "no report from the node for 360 s" in n1["reason"], n1


async def test_a_stopped_task_cancels_the_nodes_not_started_and_lets_the_upgrading_one_finish(tmp_path: Path) -> None:
    from gateway.errors import ConfigError
    from gateway.registry import access, upgrades
    from gateway.registry.store import RegistryStore
    from gateway.wire import UpgradeReport

    async with RegistryStore(tmp_path) as store:
        for name in ("n1", "n2", "n3"):
            await store.add_node(name, f"serial-{name}", {}, 1.0)
            await store.heartbeat(name, {"version": "9.0.0"})
        wheel = {"fieldgate-9.1.0-py3-none-any.whl": b"not used here"}
        spec = upgrades.CreateUpgrade(version="9.1.0", wheels={}, nodes=["n1", "n2", "n3"], max_failures=2)
        task = (await upgrades.create_task(store, spec, wheel, access.cli_caller()))["id"]
        assert await upgrades.on_heartbeat(store, "n1", None) is not None
        await upgrades.on_heartbeat(store, "n1", UpgradeReport(task=task, status="upgrading", reason="", log=""))
        view = await upgrades.stop_task(store, task, access.cli_caller())
        assert view["state"] == "stopping"
        assert {n["node"]: n["status"] for n in view["nodes"]} == {"n1": "upgrading", "n2": "cancelled",
                                                                     "n3": "cancelled"}
        assert "before this node started" in view["nodes"][1]["reason"]
        assert await upgrades.on_heartbeat(store, "n2", None) is None  # nothing handed out after the stop
        await upgrades.on_heartbeat(store, "n1", UpgradeReport(task=task, status="succeeded", reason="ok", log=""))
        view = await upgrades.task_view(store, task)
        assert view["state"] == "stopped" and view["nodes"][0]["status"] == "succeeded"
        with pytest.raises(ConfigError, match="already stopped"):
            await upgrades.stop_task(store, task, access.cli_caller())
        stops = [e for e in await access.audit_entries(store, access.cli_caller()) if e["action"] == "upgrade.stop"]
        assert [e["outcome"] for e in stops] == [  # newest first
            f"refused: upgrade {task}: already stopped, nothing to stop", "ok"], stops


async def test_a_task_stops_handing_out_after_more_than_max_failures(tmp_path: Path) -> None:
    from gateway.registry import access, upgrades
    from gateway.registry.store import RegistryStore
    from gateway.wire import UpgradeReport

    async with RegistryStore(tmp_path) as store:
        for name in ("n1", "n2", "n3", "n4"):
            await store.add_node(name, f"serial-{name}", {}, 1.0)
            await store.heartbeat(name, {"version": "9.0.0"})
        wheel = {"fieldgate-9.1.0-py3-none-any.whl": b"not used here"}
        spec = upgrades.CreateUpgrade(version="9.1.0", wheels={}, nodes=["n1", "n2", "n3", "n4"], max_failures=1)
        task = (await upgrades.create_task(store, spec, wheel, access.cli_caller()))["id"]
        for node in ("n1", "n2"):  # one failure is tolerated: n2 still gets the task after n1 failed
            assignment = await upgrades.on_heartbeat(store, node, None)
            assert assignment is not None and assignment.task == task, node
            await upgrades.on_heartbeat(store, node, UpgradeReport(task=task, status="failed-rolled-back",
                                                                   reason="not healthy", log=""))
        view = await upgrades.task_view(store, task)
        assert view["state"] == "failed"
        assert [n["status"] for n in view["nodes"]] == ["failed-rolled-back", "failed-rolled-back", "cancelled",
                                                        "cancelled"]
        assert "2 node(s) failed, more than --max-failures 1" in view["nodes"][2]["reason"]
