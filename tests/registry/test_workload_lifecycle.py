"""Stop, start and restart of a registry workload on a real joined gateway from the real registry (API, page,
command): a restart runs a new process, a stop ends the process and holds through document syncs and updates until
a start, the node refuses its own workloads, and a node that answers nothing is a 504 or `no answer`. The tests
share one registry and node and build on each other in file order."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import free_port
from tests.registry import test_workload_pages as pages
from tests.registry.conftest import Registry, wait_until
from tests.registry.test_access import add_user, api, cli, login
from tests.registry.test_batch_workloads import WEB_APP, Gateway
from tests.registry.test_workload_pages import NODE, app


def local_app(port: int) -> str:
    return f"""\
---
kind: Workload
name: local-app
command: [{sys.executable}, {WEB_APP}]
env: {{APP_VERSION: local}}
ports: [{{name: http, host_port: {port}}}]
health: {{type: http, path: /health, port: http, interval: 200ms}}
stop_grace: 2s
"""


class Fleet(pages.Fleet):
    """The workload pages' fleet, with the node's own workload beside the registry's."""

    def __init__(self, registry: Registry, gateway: Gateway, tmp_path: Path, local_port: int) -> None:
        super().__init__(registry, gateway, tmp_path)
        self.local_port = local_port

    def local_pid(self) -> int:
        pid: int = httpx.get(f"http://127.0.0.1:{self.local_port}/", timeout=5).json()["pid"]
        return pid


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp_path = tmp_path_factory.mktemp("workload-lifecycle")
    local_port = free_port()
    with pages.registry_and_node(tmp_path, local_app(local_port)) as (registry, gateway):  # and its own workload
        yield Fleet(registry, gateway, tmp_path, local_port)


def test_a_restart_from_the_registry_runs_a_new_process(fleet: Fleet) -> None:
    fleet.apply_text(app("v1", password="first"), "v1")
    first = fleet.runs("v1")
    path = f"/api/v1/nodes/{NODE}/workloads/default/app"
    with api(fleet.registry, fleet.viewer) as viewer, api(fleet.registry, fleet.operator) as operator:
        assert viewer.post(f"{path}/restart").status_code == 403
        assert viewer.post("/api/v1/workloads/default/app/restart").status_code == 403
        assert operator.post("/api/v1/nodes/gw-9/workloads/default/app/restart").status_code == 404
        assert operator.post(f"/api/v1/nodes/{NODE}/workloads/default/other/restart").status_code == 404
        assert operator.post("/api/v1/workloads/default/other/restart").status_code == 404
        assert operator.post(f"{path}/pause").status_code == 404
        assert operator.post(f"{path}/restart", params={"timeout": "0"}).status_code == 400
        done = operator.post(f"{path}/restart")
        assert done.status_code == 200, done.text
        assert done.json()["outcome"] == "ok" and done.json()["node"] == NODE and done.json()["changed"] is True
    second = fleet.runs("v1", other_than=first["pid"])
    wait_until(lambda: gone(first["pid"]), what=f"the old process {first['pid']} gone")
    token_id = fleet.operator.split(".")[0]
    restarted = wait_until(lambda: [e for e in fleet.events() if e["event"] == "restarted"],
                           what="a restarted event at the registry")
    assert restarted[-1]["node"] == NODE and f"restart requested by registry:token:{token_id}" in restarted[-1][
        "reason"]
    assert fleet.local_pid()  # the node's own workload runs on, untouched

    audit = [json.loads(line) for line in cli(fleet.registry, "audit", "--json").stdout.splitlines()]
    restarts = [e for e in audit if e["action"] == "workload.restart"]
    assert {e["outcome"] for e in restarts} >= {"ok", "not found"}
    [ok] = [e for e in restarts if e["outcome"] == "ok"]
    assert ok["object"] == "Workload/default/app" and ok["actor"] == f"token:{token_id}" and NODE in ok["detail"]
    assert second["pid"] != first["pid"]


def stays_stopped(fleet: Fleet, seconds: float = 2.5) -> None:
    """Still stopped after more than two heartbeats (1 s), each with its document sync."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        view = fleet.workload()
        assert view["status"] == "stopped" and not view["instances"], view
        time.sleep(0.2)


def test_a_stop_holds_through_syncs_and_updates_until_started(fleet: Fleet) -> None:
    running = fleet.runs("v1")
    stopped = cli(fleet.registry, "workloads", "stop", "app", "--registry", fleet.registry.url)
    assert stopped.stdout.strip() == f"{NODE}: ok, stopped"
    wait_until(lambda: fleet.workload()["status"] == "stopped" and not fleet.workload()["instances"],
               what="the node reporting the workload stopped")
    wait_until(lambda: gone(running["pid"]), what=f"process {running['pid']} gone")
    wait_until(lambda: any(e["event"] == "stopped" and "stop requested by registry:token:" in e["reason"]
                           for e in fleet.events()), what="the stopped event at the registry")
    again = cli(fleet.registry, "workloads", "stop", "app", "--node", NODE, "--registry", fleet.registry.url)
    assert again.stdout.strip() == f"{NODE}: ok (nothing to do), stopped"

    # a changed Secret, then a new spec, reach the node with the document syncs; neither starts it
    fleet.apply_text(app("v1", password="second"), "v1-second")
    stays_stopped(fleet)
    fleet.apply_text(app("v2", password="second"), "v2")
    wait_until(lambda: any(e["event"] == "scheduled" and "version 2" in e["reason"] for e in fleet.events()),
               what="the node taking version 2")
    stays_stopped(fleet)

    add_user(fleet.registry, fleet.tmp_path, "vera", "--role", "viewer")
    add_user(fleet.registry, fleet.tmp_path, "olga", "--role", "operator")
    with login(fleet.registry, "vera") as pages:
        page = pages.get("/workloads/default/app")
        assert page.status_code == 200 and 'data-action="start"' not in page.text
        csrf = re.search(r'name="_csrf" value="([^"]+)"', page.text)
        assert csrf
        refused = pages.post("/workloads/default/app/action", data={"_csrf": csrf.group(1), "action": "start",
                                                                    "node": NODE})
        assert refused.status_code == 403
    with login(fleet.registry, "olga") as pages:
        page = pages.get("/workloads/default/app")
        assert page.text.count('data-action="start"') == 2  # the node's row and all nodes
        csrf = re.search(r'name="_csrf" value="([^"]+)"', page.text)
        assert csrf
        assert pages.post("/workloads/default/app/action", data={"action": "start", "node": NODE}
                          ).status_code == 403  # no CSRF token
        done = pages.post("/workloads/default/app/action", data={"_csrf": csrf.group(1), "action": "start",
                                                                 "node": NODE})
        assert done.status_code == 303 and done.headers["location"] == "/workloads/default/app"
        shown = pages.get("/workloads/default/app").text
        assert f"start default/app on {NODE}: ok" in shown
    started = fleet.runs("v2")  # the spec updated while stopped, with the Secret's new value
    assert started["password"] == "second"

    with api(fleet.registry, fleet.operator) as operator:
        idle = operator.post("/api/v1/workloads/default/app/start")
        assert idle.status_code == 200, idle.text
        [result] = idle.json()["nodes"]
        assert result["outcome"] == "ok" and result["changed"] is False and result["status"] == "running"
    assert fleet.runs("v2")["pid"] == started["pid"]  # a start leaves a running workload alone


def test_the_node_refuses_a_workload_it_did_not_get_from_the_registry(fleet: Fleet) -> None:
    local_pid = fleet.local_pid()
    # the registry places a Workload named as the node's own: the node keeps its own (and refuses the documents)
    fleet.apply_text(f"kind: Workload\nname: local-app\nnode: {NODE}\ncommand: [sleep, '60']\n", "clash")
    try:
        with api(fleet.registry, fleet.operator) as operator:
            refused = operator.post(f"/api/v1/nodes/{NODE}/workloads/default/local-app/stop")
            assert refused.status_code == 502, refused.text
            assert "no workload default/local-app from the registry runs here" in refused.json()["detail"]
            everywhere = operator.post("/api/v1/workloads/default/local-app/restart").json()
            assert [(r["node"], r["outcome"]) for r in everywhere["nodes"]] == [(NODE, "error")]
        assert fleet.local_pid() == local_pid and not gone(local_pid)
    finally:
        cli(fleet.registry, "delete", "Workload", "local-app")


def test_a_silent_node_is_a_504_and_no_answer(fleet: Fleet) -> None:
    running = fleet.runs("v2")
    fleet.gateway.stop()
    wait_until(lambda: gone(running["pid"]), what="the workload ending with its gateway")
    with api(fleet.registry, fleet.operator) as operator:
        started = time.monotonic()
        silent = operator.post(f"/api/v1/nodes/{NODE}/workloads/default/app/restart", params={"timeout": "1s"})
        assert silent.status_code == 504 and f"node {NODE} did not answer within 1 s" in silent.json()["detail"]
        everywhere = operator.post("/api/v1/workloads/default/app/stop", params={"timeout": "1s"})
        assert everywhere.status_code == 200, everywhere.text
        [result] = everywhere.json()["nodes"]
        assert result["node"] == NODE and result["outcome"] == "no answer"
        assert time.monotonic() - started < 8
    printed = cli(fleet.registry, "workloads", "restart", "app", "--timeout", "1s", "--registry", fleet.registry.url,
                  check=False)
    assert printed.returncode == 1 and f"{NODE}: no answer: node {NODE} did not answer within 1 s" in printed.stdout
