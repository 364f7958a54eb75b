"""Workloads as real child processes behind the real REST API: health-gated start, restart after a kill,
the memory limit, logs, stop/restart, rolling update and rollback, unavailable runtimes."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

import httpx
import psutil

from gateway.testing import wait_until
from tests.workloads.conftest import APPS, PYTHON, Node


def web_workload(name: str = "web", version: str = "one", replicas: int = 1, extra: str = "") -> str:
    return f"""\
kind: Workload
name: {name}
command: [{PYTHON}, {APPS / "web.py"}]
env: {{APP_VERSION: {version}}}
ports: [{{name: http}}]
health: {{type: http, port: http, path: /health, interval: 100ms, timeout: 1s, failure_threshold: 3}}
restart_delay: 200ms
stop_grace: 2s
replicas: {replicas}
{extra}"""


async def ready_instances(node: Node, name: str, count: int = 1) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        workload = await node.workload(name)
        ready = [i for i in workload["instances"] if i["ready"]]
        return ready if workload["status"] == "running" and len(ready) == count else None

    result: list[dict[str, Any]] = await wait_until(check)
    return result


async def ask_app(instance: dict[str, Any]) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"http://127.0.0.1:{instance['ports']['http']}/")
    result: dict[str, Any] = response.json()
    return result


async def test_starts_passes_its_health_check_and_is_restarted_after_a_kill(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(web_workload())
    (instance,) = await ready_instances(node, "web")
    answer = await ask_app(instance)
    assert answer["pid"] == instance["pid"] and answer["version"] == "one"
    assert answer["files_dir"] == str(node.gateway.data_dir / "files")  # the node's files area, for apps to read
    assert os.getpgid(instance["pid"]) == instance["pid"], "the app runs in its own process group"

    os.kill(instance["pid"], signal.SIGKILL)

    async def restarted() -> dict[str, Any] | None:
        workload = await node.workload("web")
        (current,) = workload["instances"]
        return current if current["ready"] and current["pid"] != instance["pid"] else None

    current = await wait_until(restarted)
    assert current["restarts"] == 1 and "signal 9" in current["last_exit"]
    assert (await ask_app(current))["pid"] == current["pid"]
    events = await node.api.get("/api/v1/workloads/default/web/events")
    names = [e["event"] for e in events.json()]
    assert names[:3] == ["scheduled", "started", "ready"]
    assert names[3:] == ["failed", "restarted", "started", "ready"]
    failed = events.json()[3]
    assert failed["instance"] == instance["id"] and "killed by signal 9" in failed["reason"]


async def test_a_process_past_its_memory_limit_is_stopped_and_reported(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(f"""\
kind: Workload
name: hog
command: [{PYTHON}, {APPS / "hog.py"}]
limits: {{memory: 64Mi}}
restart: never
""")

    async def failed() -> dict[str, Any] | None:
        workload = await node.workload("hog")
        return workload if workload["status"] == "failed" else None

    workload = await wait_until(failed)
    (instance,) = workload["instances"]
    assert instance["state"] == "oom"
    assert "out of memory" in instance["reason"] and "64 MiB" in instance["reason"]
    assert "out of memory" in workload["reason"]
    assert not psutil.pid_exists(instance["pid"]) or psutil.Process(instance["pid"]).status() == "zombie"
    events = (await node.api.get("/api/v1/workloads/default/hog/events")).json()
    assert events[-1]["event"] == "failed" and "out of memory" in events[-1]["reason"]
    logs = (await node.api.get("/api/v1/workloads/default/hog/logs")).json()
    stdout = [line["line"] for line in logs["lines"] if line["stream"] == "stdout"]
    assert stdout == ["allocating"], "stopped before it got far"


async def test_logs_are_read_by_tail_and_followed_by_cursor(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(web_workload())
    (instance,) = await ready_instances(node, "web")
    viewer = node.clients["viewer"]
    first = (await viewer.get("/api/v1/workloads/default/web/logs", params={"tail": 1000})).json()
    assert first["lines"][0]["line"] == f"web app one listening on {instance['ports']['http']}"
    assert first["lines"][0]["stream"] == "stdout" and first["lines"][0]["instance"] == instance["id"]
    assert any(line["stream"] == "stderr" and line["line"] == "request /health" for line in first["lines"])
    cursor = first["cursor"]
    assert cursor == first["lines"][-1]["seq"]

    await ask_app(instance)  # the app logs the request on stderr
    follow = (await viewer.get("/api/v1/workloads/default/web/logs", params={"cursor": cursor, "wait": 5})).json()
    assert follow["lines"] and all(line["seq"] > cursor for line in follow["lines"])
    assert [line["seq"] for line in follow["lines"]] == list(range(cursor + 1, follow["cursor"] + 1))
    tail = (await viewer.get("/api/v1/workloads/default/web/logs", params={"tail": 2})).json()
    assert len(tail["lines"]) == 2

    async def measured() -> int:
        (current,) = (await node.workload("web"))["instances"]
        used = int(current["memory_bytes"] or 0)
        # the first sample may come while the interpreter is still starting (a few pages on cgroup v1): wait for
        # the app's own
        return used if used > 1 << 20 else 0

    assert await wait_until(measured) < 1 << 30, "the instance's memory is measured for its status"

    anonymous = await httpx.AsyncClient(base_url=node.base).get("/api/v1/workloads/default/web/logs")
    assert anonymous.status_code == 401
    missing = await viewer.get("/api/v1/workloads/default/nope/logs")
    assert missing.status_code == 404 and "no workload default/nope" in missing.json()["detail"]


async def test_stop_and_restart_through_the_api_with_roles(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(web_workload())
    (instance,) = await ready_instances(node, "web")
    denied = await node.clients["viewer"].post("/api/v1/workloads/default/web/stop")
    assert denied.status_code == 403
    stopped = await node.clients["operator"].post("/api/v1/workloads/default/web/stop")
    assert stopped.status_code == 202

    async def is_stopped() -> bool:
        workload = await node.workload("web")
        return workload["status"] == "stopped" and not workload["instances"]

    await wait_until(is_stopped)
    assert not psutil.pid_exists(instance["pid"]) or psutil.Process(instance["pid"]).status() == "zombie"

    await node.gateway.stop()  # the stop holds across a restart of the gateway
    node = await start_node(web_workload())
    await asyncio.sleep(0.3)
    assert await is_stopped()
    started = await node.clients["operator"].post("/api/v1/workloads/default/web/start")
    assert started.status_code == 202 and started.json()["changed"] is True
    (again,) = await ready_instances(node, "web")
    assert again["pid"] != instance["pid"]
    running = await node.clients["operator"].post("/api/v1/workloads/default/web/start")
    assert running.json()["changed"] is False  # a running workload is left alone
    assert (await ready_instances(node, "web"))[0]["pid"] == again["pid"]
    restarted = await node.clients["operator"].post("/api/v1/workloads/default/web/restart")
    assert restarted.status_code == 202

    async def replaced() -> bool:
        instances = (await node.workload("web"))["instances"]
        return bool(instances) and instances[0]["pid"] != again["pid"] and instances[0]["ready"]

    await wait_until(replaced)
    assert "stopped" in await node.events("web")


async def test_update_rolls_then_rollback_restores_the_earlier_version_exactly(
        start_node: Callable[..., Any]) -> None:
    node: Node = await start_node()
    import yaml

    first = yaml.safe_load(web_workload(replicas=2))
    created = await node.api.post("/api/v1/workloads", json=first)
    assert created.status_code == 201, created.text
    old = await ready_instances(node, "web", 2)

    second = yaml.safe_load(web_workload(version="two", replicas=2))
    rolling: list[int] = []

    async def watch() -> None:
        while True:
            workload = await node.workload("web")
            rolling.append(workload["ready"] + sum(  # ready instances, old ones included
                i["ready"] for i in workload["instances"] if i["version"] != workload["version"]))
            await asyncio.sleep(0.03)

    watcher = asyncio.create_task(watch())
    updated = await node.api.post("/api/v1/workloads", json=second)
    assert updated.status_code == 201, updated.text

    async def all_new() -> list[dict[str, Any]] | None:
        workload = await node.workload("web")
        instances = workload["instances"]
        done = (workload["status"] == "running" and len(instances) == 2
                and all(i["version"] == 2 and i["ready"] for i in instances))
        return instances if done else None

    new = await wait_until(all_new)
    watcher.cancel()
    assert min(rolling) >= 1, f"a rolling update keeps instances serving: {rolling}"
    assert {(await ask_app(i))["version"] for i in new} == {"two"}
    assert not {i["pid"] for i in old} & {i["pid"] for i in new}

    versions = (await node.api.get("/api/v1/workloads/default/web/versions")).json()
    assert [(v["version"], v["current"]) for v in versions] == [(1, False), (2, True)]
    assert versions[0]["spec"]["env"] == {"APP_VERSION": "one"}

    back = await node.api.post("/api/v1/workloads/default/web/rollback", json={"version": 1})
    assert back.status_code == 202, back.text

    async def rolled_back() -> list[dict[str, Any]] | None:
        workload = await node.workload("web")
        instances = workload["instances"]
        done = workload["version"] == 3 and workload["status"] == "running" and len(instances) == 2 and all(
            i["version"] == 3 and i["ready"] for i in instances)
        return instances if done else None

    restored = await wait_until(rolled_back)
    assert {(await ask_app(i))["version"] for i in restored} == {"one"}
    versions = (await node.api.get("/api/v1/workloads/default/web/versions")).json()
    assert versions[2]["spec"] == versions[0]["spec"] and versions[2]["note"] == "rollback to version 1"
    rollbacks = [e for e in reversed(await node.gateway.store.audit.recent(10_000)) if e["action"] == "rollback"]
    assert versions[2]["actor"] == rollbacks[0]["actor"]

    no_such = await node.api.post("/api/v1/workloads/default/web/rollback", json={"version": 99})
    assert no_such.status_code == 404 and "kept: 1, 2, 3" in no_such.json()["detail"]
    operator = await node.clients["operator"].post("/api/v1/workloads/default/web/rollback", json={"version": 1})
    assert operator.status_code == 403

    deleted = await node.api.delete("/api/v1/workloads/default/web")
    assert deleted.status_code == 200
    await wait_until(lambda: all(not psutil.pid_exists(i["pid"]) or psutil.Process(i["pid"]).status() == "zombie"
                                 for i in restored))
    assert (await node.api.get("/api/v1/workloads/default/web")).status_code == 404


async def test_bad_documents_and_requests_get_clear_errors(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(web_workload())
    await ready_instances(node, "web")
    bad = await node.api.post("/api/v1/workloads", json={"name": "broken", "command": ["x"], "replicas": -1,
                                                         "limits": {"memory": "lots"}})
    assert bad.status_code == 400
    assert "document 1 (Workload broken): $.replicas: Expected int >= 0, got -1" in bad.json()["detail"]
    ref = await node.api.post("/api/v1/workloads", json={
        "name": "broken", "command": ["x"], "env_from": [{"name": "P", "secret": "nope", "key": "k"}]})
    assert ref.status_code == 400 and "$.env_from[0].secret: no Secret default/nope" in ref.json()["detail"]
    kind = await node.api.post("/api/v1/workloads", json={"kind": "Device", "name": "x"})
    assert kind.status_code == 400 and "$.kind: expected Workload" in kind.json()["detail"]
    garbage = await node.api.post("/api/v1/workloads", content=b"{not json",
                                  headers={"Content-Type": "application/json"})
    assert garbage.status_code == 400
    rollback = await node.api.post("/api/v1/workloads/default/web/rollback", json={"version": "first"})
    assert rollback.status_code == 400
    owned = await node.api.post("/api/v1/workloads/default/web/rollback", json={"version": 1})
    assert owned.status_code == 400 and "owned by the file" in owned.json()["detail"]
    assert (await node.workload("web"))["status"] == "running", "the gateway and the good workload are untouched"


async def test_an_unavailable_runtime_fails_its_workload_not_the_gateway(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(web_workload() + """\
---
kind: Workload
name: boxed
runtime: vm
image: example/app:1
---
kind: Workload
name: missing-binary
command: [/nonexistent/app]
restart: never
""")

    async def failed(name: str) -> dict[str, Any] | None:
        workload = await node.workload(name)
        return workload if workload["status"] == "failed" else None

    boxed = await wait_until(lambda: failed("boxed"))
    assert boxed["reason"].startswith("runtime 'vm' is not available on this node (loaded: ")
    missing = await wait_until(lambda: failed("missing-binary"))
    assert "cannot start" in missing["reason"] and "/nonexistent/app" in missing["reason"]
    await ready_instances(node, "web")
