"""Pods with real podman: an init container that runs first, two containers that share the pod's network and a
volume and serve on one port, per-container logs, health checks and restarts; a failing init container."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from container_helpers import Images, Node, podman, wait_until
from fieldgate_container.pod import LABEL_CONTAINER
from fieldgate_container.runtime import LABEL_WORKLOAD

BUSYBOX = "/bin/busybox"


@pytest.fixture(autouse=True)
def publish_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIELDGATE_CONTAINER_PUBLISH_ADDRESS", "127.0.0.1")


def sh(script: str) -> list[str]:
    return [BUSYBOX, "sh", "-c", script]


def pod(images: Images, name: str = "shop", init: str = "echo initialized > /shared/init.txt; echo setup done"
        ) -> dict[str, Any]:
    """An init container writes a file into the shared volume; `web` serves the volume on port 8080; `sidecar`
    writes into it too and fetches from `web` over the pod's localhost."""
    return {
        "name": name, "runtime": "container", "restart_delay": "0.2s", "stop_grace": "1s",
        "volumes": [{"name": "shared", "scratch": True, "mount_path": "/shared"}],
        "init_containers": [{"name": "setup", "image": images.tag(1), "command": sh(init)}],
        "lifecycle": {"post_start": {"type": "exec", "command": sh("echo hooked > /shared/hook.txt")},
                      "pre_stop": {"type": "http", "port": "http", "path": "/init.txt"}},
        "containers": [
            {"name": "web", "image": images.tag(1), "command": sh("echo web up; exec /bin/busybox httpd -f -p 8080 "
                                                                  "-h /shared"),
             "ports": [{"name": "http", "container_port": 8080}],
             "health": {"type": "http", "port": "http", "path": "/init.txt", "interval": "0.2s"},
             "limits": {"memory": "64Mi"}},
            {"name": "sidecar", "image": images.tag(1),
             "command": sh("echo sidecar up; echo from the sidecar > /shared/sidecar.txt; while true; do "
                           "/bin/busybox wget -q -O /shared/fetched.txt http://127.0.0.1:8080/init.txt; "
                           "/bin/busybox sleep 0.2; done"),
             "health": {"type": "exec", "command": [BUSYBOX, "test", "-s", "/shared/fetched.txt"],
                        "interval": "0.2s"}},
        ],
    }


def pod_containers(workload: str) -> dict[str, str]:
    """Container name of the pod's members (label) -> engine name, infra containers left out."""
    found = podman("ps", "-a", "--filter", f"label={LABEL_WORKLOAD}={workload}", "--format",
                   f'{{{{.Names}}}} {{{{index .Labels "{LABEL_CONTAINER}"}}}}').splitlines()
    return {label: name for name, _, label in (line.partition(" ") for line in found) if label}


async def fetch(port: int, path: str) -> str:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"http://127.0.0.1:{port}{path}")
        return response.text if response.status_code == 200 else ""


async def logs(node: Node, name: str, container: str) -> list[str]:
    response = await node.api.get(f"/api/v1/workloads/default/{name}/logs", params={"container": container})
    assert response.status_code == 200, response.text
    return [line["line"] for line in response.json()["lines"]]


async def events(node: Node, name: str) -> list[tuple[str, str]]:
    response = await node.api.get(f"/api/v1/workloads/default/{name}/events")
    return [(e["event"], e["reason"]) for e in response.json()]


async def test_a_pod_runs_its_init_container_first_and_serves_on_one_port(images: Images,
                                                                          start_node: Callable[..., Any]) -> None:
    node: Node = await start_node()
    await node.deploy(pod(images))

    async def running() -> dict[str, Any] | None:
        found = await node.workload("shop")
        return found if found["status"] == "running" else None

    found = await wait_until(running, timeout=60)
    port = found["instances"][0]["ports"]["http"]
    assert await fetch(port, "/init.txt") == "initialized\n"  # written by the init container, before web started
    assert await fetch(port, "/sidecar.txt") == "from the sidecar\n"  # the shared volume
    assert await fetch(port, "/fetched.txt") == "initialized\n"  # the sidecar reached web on localhost
    containers = found["instances"][0]["containers"]
    assert [(c["name"], c["state"], c["restarts"]) for c in containers] == [("web", "running", 0),
                                                                           ("sidecar", "running", 0)]
    happened = await events(node, "shop")
    kinds = [event for event, _ in happened]
    assert ("initialized", "init container setup exited with code 0") in happened
    assert kinds.index("initialized") < kinds.index("started") < kinds.index("ready")
    assert ("ready", "every container's check passed") in happened

    assert await logs(node, "shop", "setup") == ["setup done"]
    assert await logs(node, "shop", "web") == ["web up"]
    assert "sidecar up" in await logs(node, "shop", "sidecar")
    members = pod_containers("default/shop")
    assert sorted(members) == ["sidecar", "web"]  # the init container is gone once it ended
    page = (await node.api.get("/workloads/default/shop")).text
    assert '<tr data-container="web">' in page and '<tr data-container="sidecar">' in page
    assert 'href="/workloads/default/shop?container=setup#workload-log"' not in page  # init containers have ended
    one = (await node.api.get("/workloads/default/shop", params={"container": "setup"})).text
    assert '<td class="message">setup done</td>' in one and '<td class="message">web up</td>' not in one
    assert 'data-container="setup"' in one

    # One container ends: it alone is restarted and counted; the other keeps serving.
    podman("kill", members["sidecar"])

    async def sidecar_restarted() -> list[dict[str, Any]] | None:
        found = await node.workload("shop")
        containers = found["instances"][0]["containers"]
        by_name = {c["name"]: c for c in containers}
        return containers if by_name["sidecar"]["restarts"] == 1 and by_name["sidecar"]["state"] == "running" \
            else None

    containers = await wait_until(sidecar_restarted, timeout=30)
    assert {c["name"]: c["restarts"] for c in containers} == {"web": 0, "sidecar": 1}
    assert "killed by signal 9" in {c["name"]: c for c in containers}["sidecar"]["last_exit"]
    assert (await node.workload("shop"))["instances"][0]["restarts"] == 0
    assert any(e == "restarted" and r.startswith("container sidecar: restart 1 after: ")
               for e, r in await events(node, "shop"))
    assert await fetch(port, "/init.txt") == "initialized\n"
    assert (await logs(node, "shop", "sidecar")).count("sidecar up") == 2

    metrics = (await node.api.get("/metrics")).text.splitlines()
    assert ('fieldgate_workload_container_restarts_total{container="sidecar",workload="default/shop",'
            'workload_instance="shop-1-0"} 1.0') in metrics
    assert ('fieldgate_workload_container_running{container="web",workload="default/shop",'
            'workload_instance="shop-1-0"} 1.0') in metrics

    # post_start ran in the first container; an update and a rollback replace the whole pod.
    assert await fetch(port, "/hook.txt") == "hooked\n"
    assert ("post-start", "exec hook succeeded: exit code 0") in await events(node, "shop")
    await node.deploy({**pod(images), "env": {"EDITION": "2"}})

    async def version(number: int) -> dict[str, Any] | None:
        found = await node.workload("shop")
        ok = found["status"] == "running" and found["version"] == number and len(found["instances"]) == 1
        return found if ok else None

    second = await wait_until(lambda: version(2), timeout=60)
    assert second["instances"][0]["id"] == "shop-2-0"
    assert any(e == "pre-stop" and r.startswith("http hook succeeded") for e, r in await events(node, "shop"))
    await wait_until(lambda: len(podman("pod", "ps", "-q", "--filter", f"label={LABEL_WORKLOAD}=default/shop")
                                 .split()) == 1, timeout=30)
    assert {c["restarts"] for c in second["instances"][0]["containers"]} == {0}
    response = await node.api.post("/api/v1/workloads/default/shop/rollback", json={"version": 1})
    assert response.status_code == 202, response.text
    third = await wait_until(lambda: version(3), timeout=60)
    assert await fetch(third["instances"][0]["ports"]["http"], "/init.txt") == "initialized\n"
    await wait_until(lambda: sorted(pod_containers("default/shop")) == ["sidecar", "web"], timeout=30)

    # Stopping the workload stops every container and removes the pod, and no check judges them meanwhile.
    unhealthy = [r for e, r in await events(node, "shop") if e == "unhealthy"]  # a killed sidecar may have been
    response = await node.api.post("/api/v1/workloads/default/shop/stop")
    assert response.status_code == 202, response.text
    await wait_until(lambda: podman("pod", "ps", "-q", "--filter", f"label={LABEL_WORKLOAD}=default/shop") == "",
                     timeout=30)
    assert pod_containers("default/shop") == {}

    async def stopped() -> bool:
        found = await node.workload("shop")
        return found["status"] == "stopped" and found["instances"] == []

    await wait_until(stopped, timeout=30)
    assert [r for e, r in await events(node, "shop") if e == "unhealthy"] == unhealthy


async def test_a_failing_init_container_fails_the_instance_and_the_app_never_starts(
        images: Images, start_node: Callable[..., Any]) -> None:
    node: Node = await start_node()
    await node.deploy(pod(images, "broken", init="echo setting up; exit 3"))

    async def failed_twice() -> list[tuple[str, str]] | None:
        happened = await events(node, "broken")
        failures = [r for e, r in happened if e == "failed"]
        return happened if len(failures) >= 2 else None  # retried with the restart backoff

    happened = await wait_until(failed_twice, timeout=60)
    assert ("failed", "cannot start: init container setup exited with code 3") in happened
    assert not any(event in ("started", "ready", "initialized") for event, _ in happened)
    assert "setting up" in await logs(node, "broken", "setup")
    assert await logs(node, "broken", "web") == [] and await logs(node, "broken", "sidecar") == []
    found = await node.workload("broken")
    assert found["status"] in ("restarting", "failed") and "init container setup" in found["reason"]
    response = await node.api.delete("/api/v1/workloads/default/broken")
    assert response.status_code == 200, response.text
    await wait_until(lambda: podman("pod", "ps", "-q", "--filter", f"label={LABEL_WORKLOAD}=default/broken") == "",
                     timeout=30)


async def test_an_unhealthy_container_is_restarted_alone(images: Images, start_node: Callable[..., Any]) -> None:
    node: Node = await start_node()
    check = {"type": "exec", "command": [BUSYBOX, "test", "-f", "/tmp/ok"], "interval": "0.2s",
             "failure_threshold": 2}
    await node.deploy({
        "name": "duo", "runtime": "container", "restart_delay": "0.2s", "stop_grace": "1s",
        "containers": [
            {"name": "web", "image": images.tag(1), "command": sh("exec /bin/busybox httpd -f -p 8080 -h /www"),
             "ports": [{"name": "http", "container_port": 8080}],
             "health": {"type": "tcp", "port": 8080, "interval": "0.2s"}},
            {"name": "worker", "image": images.tag(1),
             "command": sh("/bin/busybox mkdir -p /tmp; /bin/busybox touch /tmp/ok; exec /bin/busybox sleep 600"),
             "health": check}]})

    async def ready(restarts: int) -> dict[str, Any] | None:
        found = await node.workload("duo")
        instance = found["instances"][0] if found["instances"] else None
        ok = (found["status"] == "running" and instance is not None and instance["ready"]
              and {c["name"]: c["restarts"] for c in instance["containers"]} == {"web": 0, "worker": restarts})
        return found if ok else None

    found = await wait_until(lambda: ready(0), timeout=60)
    assert await fetch(found["instances"][0]["ports"]["http"], "/index.html") == "version 1\n"
    manager = node.gateway.workloads
    manager.figures.sample(manager.running_instances())  # the pod's cgroup: both containers
    figures = manager.figures.of(found["instances"][0]["id"])
    assert figures is not None and figures.counters is not None and (figures.counters.memory_bytes or 0) > 0
    podman("exec", pod_containers("default/duo")["worker"], BUSYBOX, "rm", "/tmp/ok")
    again = await wait_until(lambda: ready(1), timeout=30)
    assert again["instances"][0]["restarts"] == 0 and again["instances"][0]["id"] == found["instances"][0]["id"]
    happened = await events(node, "duo")
    assert any(e == "unhealthy" and r.startswith("unhealthy: container worker: exec check exited with 1")
               for e, r in happened), happened
    assert any(e == "restarted" and r.startswith("container worker: restart 1 after: unhealthy: ")
               for e, r in happened), happened
    response = await node.api.delete("/api/v1/workloads/default/duo")
    assert response.status_code == 200, response.text
