"""The container runtime with real podman: run, health through a port mapping, restart, logs, limits, update and
rollback, pull policies, pre-pulling before an update, leftovers of a dead gateway, and no engine at all."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from container_helpers import Images, Node, podman, wait_until
from fieldgate_container.runtime import LABEL_OWNER, LABEL_WORKLOAD, STARTED_MARKER, ContainerRuntime

pytestmark = pytest.mark.usefixtures("publish_on_loopback")

FILES = """\
kind: ConfigItem
name: web-files
data: {motd: "from a file"}
"""


@pytest.fixture
def publish_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIELDGATE_CONTAINER_PUBLISH_ADDRESS", "127.0.0.1")


def web(images: Images, version: int = 1, **extra: Any) -> dict[str, Any]:
    greeting = "hello" if version == 1 else "second"
    return {"name": "web", "runtime": "container", "image": images.tag(version),
            "command": ["/bin/busybox", "sh", "-c",
                        f'echo {greeting} $GREETING $(/bin/busybox cat $FIELDGATE_FILES/motd); '
                        'exec /bin/busybox httpd -f -p $PORT -h /www'],
            "env": {"GREETING": "world"}, "files": [{"config_item": "web-files", "key": "motd", "path": "motd"}],
            "ports": [{"name": "http", "container_port": 8080}],
            "health": {"type": "http", "port": "http", "path": "/index.html", "interval": "0.2s"},
            "limits": {"memory": "64Mi", "cpu": 0.5}, "restart_delay": "0.2s", "stop_grace": "1s", **extra}


def containers(workload: str) -> list[str]:
    return podman("ps", "-a", "--filter", f"label={LABEL_WORKLOAD}={workload}", "--format", "{{.Names}}").split()


async def running(node: Node, name: str, version: int | None = None) -> dict[str, Any] | None:
    found = await node.workload(name)
    ok = found["status"] == "running" and (version is None or found["version"] == version)
    return found if ok else None


async def served(found: dict[str, Any]) -> str:
    port = found["instances"][0]["ports"]["http"]
    async with httpx.AsyncClient(timeout=5) as client:
        return (await client.get(f"http://127.0.0.1:{port}/index.html")).text


async def test_container_runs_restarts_logs_updates_and_rolls_back(images: Images,
                                                                  start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(FILES)
    await node.deploy(web(images))
    found = await wait_until(lambda: running(node, "web"), timeout=30)
    assert await served(found) == "version 1\n"
    [name] = containers("default/web")
    inspected = json.loads(podman("inspect", name))[0]
    assert inspected["HostConfig"]["Memory"] == 64 << 20
    assert inspected["HostConfig"]["NanoCpus"] == 500_000_000
    assert inspected["Config"]["Labels"][LABEL_OWNER] == str(node.gateway.data_dir.resolve())

    async def logged() -> list[str]:
        lines = (await node.api.get("/api/v1/workloads/default/web/logs")).json()["lines"]
        return [line["line"] for line in lines]

    assert "hello world from a file" in await wait_until(logged)

    podman("kill", name)

    async def restarted_once() -> dict[str, Any] | None:
        found = await running(node, "web")
        return found if found is not None and found["instances"][0]["restarts"] == 1 else None

    restarted = await wait_until(restarted_once, timeout=30)
    assert "killed by signal 9" in restarted["instances"][0]["last_exit"]
    assert await served(restarted) == "version 1\n"

    await node.deploy(web(images, 2))
    second = await wait_until(lambda: running(node, "web", 2), timeout=30)
    assert await served(second) == "version 2\n"
    assert "second world from a file" in await wait_until(logged)

    response = await node.api.post("/api/v1/workloads/default/web/rollback", json={"version": 1})
    assert response.status_code == 202, response.text
    third = await wait_until(lambda: running(node, "web", 3), timeout=30)
    assert await served(third) == "version 1\n"
    [name] = containers("default/web")
    inspected = json.loads(podman("inspect", name))[0]
    assert inspected["ImageName"] == images.tag(1)
    assert [inspected["Path"], *inspected["Args"]] == web(images)["command"]
    versions = (await node.api.get("/api/v1/workloads/default/web/versions")).json()
    assert versions[-1]["spec"] == versions[0]["spec"] and versions[-1]["current"]

    response = await node.api.delete("/api/v1/workloads/default/web")
    assert response.status_code == 200, response.text
    assert containers("default/web") == []


async def test_pull_policies_and_pre_pull_before_an_update(images: Images, start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(FILES)
    absent = "localhost/fieldgate-absent:1"
    await node.deploy({"name": "never", "runtime": "container", "image": absent, "restart": "never",
                       "image_pull_policy": "Never"})
    await node.deploy({"name": "always", "runtime": "container", "image": images.tag(1), "restart": "never",
                       "image_pull_policy": "Always"})
    odd = await node.api.post("/api/v1/workloads", json={"name": "odd", "runtime": "container",
                                                         "image": images.tag(1), "image_pull_policy": "Sometimes"})
    assert odd.status_code == 400 and "image_pull_policy" in odd.text, odd.text  # refused before it runs
    await node.deploy({"name": "nobinary", "runtime": "container", "image": images.tag(1), "command": ["/nope"],
                       "restart": "never"})
    await node.deploy({**web(images), "name": "keep"})
    kept = await wait_until(lambda: running(node, "keep"), timeout=30)

    never = await wait_until(lambda: _failed(node, "never"))
    assert f"cannot start: image {absent!r} is not on this node and its pull policy is Never (podman image " \
           "inspect: " in never["reason"] and never["reason"].endswith(f"{absent}: image not known)")
    always = await wait_until(lambda: _failed(node, "always"))
    assert f"cannot start: cannot pull image {images.tag(1)!r}: podman pull:" in always["reason"]
    nobinary = await wait_until(lambda: _failed(node, "nobinary"))
    # created and initialised first (the node's services go into its namespace before it starts): init says it
    assert "podman init failed:" in nobinary["reason"] and "/nope" in nobinary["reason"], nobinary["reason"]

    # The new image cannot be had: the old version keeps serving and the workload says why.
    await node.deploy({**web(images), "name": "keep", "image": absent, "image_pull_policy": "Never"})
    halted = await wait_until(lambda: _status(node, "keep", "degraded"))
    assert halted["reason"].startswith(f"update to version 2 halted: image {absent!r} is not on this node and its "
                                       "pull policy is Never (podman image inspect: ")
    assert halted["reason"].endswith(f"{absent}: image not known); 1 old instances kept")
    assert halted["instances"][0]["version"] == 1 and halted["instances"][0]["ready"]
    assert await served(kept) == "version 1\n"


async def _status(node: Node, name: str, status: str) -> dict[str, Any] | None:
    found = await node.workload(name)
    return found if found["status"] == status else None


async def _failed(node: Node, name: str) -> dict[str, Any] | None:
    return await _status(node, name, "failed")


def test_a_restarted_gateway_removes_only_its_own_containers(images: Images, tmp_path: Path) -> None:
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    names = [f"fieldgate-test-left-{tmp_path.name[-12:]}-{i}" for i in (1, 2)]
    for name, data_dir in zip(names, (mine, theirs), strict=True):
        podman("run", "-d", "--name", name, "--label", f"{LABEL_OWNER}={data_dir.resolve()}", images.tag(1),
               "/bin/busybox", "sleep", "60")
    try:
        (mine / "workloads").mkdir(parents=True)
        (mine / "workloads" / STARTED_MARKER).touch()  # that gateway had started containers
        ContainerRuntime(mine)
        left = podman("ps", "-a", "--filter", f"name={names[0]}", "--filter", f"name={names[1]}",
                      "--format", "{{.Names}}").split()
        assert left == [names[1]]
    finally:
        podman("rm", "-f", "--ignore", "-t", "0", *names, check=False)


async def test_without_an_engine_the_workload_fails_clearly(start_node: Callable[..., Any], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("FIELDGATE_CONTAINER_ENGINE", raising=False)
    node: Node = await start_node()
    await node.deploy({"name": "app", "runtime": "container", "image": "localhost/app:1"})
    found = await node.workload("app")
    assert (found["status"], found["reason"]) == (
        "failed", "runtime 'container' cannot run here: neither podman nor docker is on PATH")
    status = (await node.api.get("/api/v1/status")).json()
    assert status["workloads"]["runtimes"]["container"]["engine"] == "none"
