"""One workload at a real registry with a real joined gateway running it: every applied spec is a version, a rollback
(API, page, command) runs the old spec again on the node, the node's events (started, restarted after its process
is killed) and its log reach the registry, the workload page shows them, the node answering nothing is a 504, and
events the node recorded while the registry was down reach it once both are back, though the node restarted.
The tests share one registry and node (starting them is the slow part) and build on each other in file order."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from gateway.store import db_path
from gateway.uplink.join import client_ssl_context
from tests.registry.conftest import Registry, stop, wait_until
from tests.registry.test_access import add_user, api, cli, login
from tests.registry.test_batch_workloads import WEB_APP, Gateway

NODE = "gw-1"


def app(version: str, password: str = "s3cret-value") -> str:
    return f"""\
kind: Secret
name: db
data: {{password: {password}}}
---
kind: Workload
name: app
node: {NODE}
command: [{sys.executable}, {WEB_APP}]
env: {{APP_VERSION: {version}}}
env_from: [{{name: DB_PASSWORD, secret: db, key: password}}]
ports: [{{name: http}}]
health: {{type: http, path: /health, port: http, interval: 200ms}}
restart_delay: 200ms
stop_grace: 2s
"""


class Fleet:
    def __init__(self, registry: Registry, gateway: Gateway, tmp_path: Path) -> None:
        self.registry = registry
        self.gateway = gateway
        self.tmp_path = tmp_path
        self.viewer = cli(registry, "token", "create", "--role", "viewer").stdout.strip()
        self.operator = cli(registry, "token", "create", "--role", "operator").stdout.strip()

    def apply(self, version: str) -> None:
        self.apply_text(app(version), f"app-{version}")

    def apply_text(self, text: str, label: str) -> None:
        path = self.tmp_path / f"{label}.yaml"
        path.write_text(text)
        cli(self.registry, "apply", "-f", str(path))

    def workload(self) -> dict[str, Any]:
        """The registry's view of the workload on the node."""
        with api(self.registry, self.viewer) as client:
            [found] = [w for w in client.get("/api/v1/workloads").json() if w["name"] == "app" and w["node"] == NODE]
        return dict(found)

    def view(self) -> dict[str, Any] | None:
        """The view while the workload runs and is ready, else None."""
        found = self.workload()
        return found if found["status"] == "running" and found["ready"] == 1 else None

    def answer(self) -> dict[str, Any] | None:
        """What the running instance says (its pid and APP_VERSION), or None while it is not up."""
        view = self.view()
        if view is None:
            return None
        try:
            reply = httpx.get(f"http://127.0.0.1:{view['instances'][0]['ports']['http']}/", timeout=5)
        except httpx.HTTPError:
            return None
        result: dict[str, Any] = reply.json()
        return result

    def runs(self, version: str, other_than: int | None = None) -> dict[str, Any]:
        answer: dict[str, Any] = wait_until(
            lambda: (a := self.answer()) and a["version"] == version and a["pid"] != other_than and a, timeout=30,
            what=f"the node running {version}" + (f" in a process other than {other_than}" if other_than else ""))
        return answer

    def events(self) -> list[dict[str, Any]]:
        with api(self.registry, self.viewer) as client:
            response = client.get("/api/v1/workloads/default/app/events")
            assert response.status_code == 200, response.text
            return list(response.json())


@contextlib.contextmanager
def registry_and_node(tmp_path: Path, node_documents: str = "") -> Iterator[tuple[Registry, Gateway]]:
    """A real registry and a real gateway joined to it as NODE (with more documents of its own, if given)."""
    registry = Registry(tmp_path / "registry")
    registry.start()
    gateway = None
    try:
        gateway = Gateway(registry, tmp_path, NODE)
        if node_documents:
            gateway.config.write_text(gateway.config.read_text() + node_documents)
        gateway.start()
        yield registry, gateway
    finally:
        if gateway is not None:
            gateway.stop()
        if registry.process is not None:
            registry.process.terminate()
            registry.process.wait(10)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp_path = tmp_path_factory.mktemp("workload-pages")
    with registry_and_node(tmp_path) as (registry, gateway):
        yield Fleet(registry, gateway, tmp_path)


def test_versions_and_a_rollback_reach_the_node(fleet: Fleet) -> None:
    fleet.apply("v1")
    first = fleet.runs("v1")
    assert first["password"] == "s3cret-value"
    fleet.apply("v2")
    fleet.runs("v2")

    with api(fleet.registry, fleet.viewer) as viewer, api(fleet.registry, fleet.operator) as operator:
        listed = viewer.get("/api/v1/workloads/Workload/default/app/versions").json()
        assert [(v["version"], v["document"]["env"]["APP_VERSION"], v["current"]) for v in listed] == [
            (1, "v1", False), (2, "v2", True)]
        assert "s3cret-value" not in json.dumps(listed)  # the Workload names the secret, never holds it
        refused = viewer.post("/api/v1/workloads/Workload/default/app/rollback", json={"version": 1})
        assert refused.status_code == 403
        missing = operator.post("/api/v1/workloads/Workload/default/app/rollback", json={"version": 7})
        assert missing.status_code == 404 and "kept: 1, 2" in missing.json()["detail"]
        bad = operator.post("/api/v1/workloads/Workload/default/app/rollback", json={"version": 0})
        assert bad.status_code == 400
        done = operator.post("/api/v1/workloads/Workload/default/app/rollback", json={"version": 1})
        assert done.status_code == 200, done.text
        assert done.json()["version"] == 3 and done.json()["changed"] is True
    assert fleet.runs("v1")["pid"] != first["pid"]  # v1's spec again, in a new process

    audit = [json.loads(line) for line in cli(fleet.registry, "audit", "--json").stdout.splitlines()]
    [entry] = [e for e in audit if e["action"] == "document.rollback" and e["outcome"] == "ok"]
    assert entry["object"] == "Workload/default/app" and entry["actor"] == f"token:{fleet.operator.split('.')[0]}"
    assert "rollback to version 1" in entry["detail"]

    listed_cli = cli(fleet.registry, "workloads", "versions", "app").stdout.splitlines()
    assert len(listed_cli) == 3 and "rollback to version 1" in listed_cli[2] and " * " in listed_cli[2]
    rolled = cli(fleet.registry, "workloads", "rollback", "app", "--version", "2")
    assert "version 2 applied again as version 4" in rolled.stdout
    fleet.runs("v2")
    refused_cli = cli(fleet.registry, "workloads", "rollback", "app", "--version", "99", check=False)
    assert refused_cli.returncode == 2 and "has no version 99" in refused_cli.stderr


def test_events_of_a_real_process_reach_the_registry(fleet: Fleet) -> None:
    running = fleet.runs("v2")
    wait_until(lambda: any(e["event"] == "started" and e["node"] == NODE for e in fleet.events()),
               what="a started event at the registry")
    os.kill(running["pid"], signal.SIGKILL)
    restarted = wait_until(lambda: [e for e in fleet.events() if e["event"] == "restarted"], timeout=20,
                           what="a restarted event at the registry")
    assert restarted[-1]["node"] == NODE and restarted[-1]["instance"]
    printed = cli(fleet.registry, "workloads", "events", "app").stdout
    assert "restarted" in printed and NODE in printed
    with api(fleet.registry, fleet.viewer) as viewer:
        assert viewer.get("/api/v1/workloads/default/nothing/events").status_code == 404


def test_a_hostile_event_report_is_refused(fleet: Fleet) -> None:
    before = len(fleet.events())
    event = {"seq": 10**6, "ts": time.time(), "event": "started", "instance": "x", "reason": "hostile"}
    context = client_ssl_context(fleet.gateway.data_dir)
    with httpx.Client(base_url=fleet.registry.url, verify=context, timeout=10) as node:
        for events, named in (([event] * 21, "events"), ([{**event, "reason": "r" * 5000}], "reason")):
            body = {"workloads": [{"workload": "default/app", "status": "running", "events": events}]}
            response = node.post("/api/v1/heartbeat", content=msgspec.json.encode(body),
                                 headers={"Content-Type": "application/json"})
            assert response.status_code == 400, response.text
            assert named in response.text
    assert not any(e["reason"] == "hostile" for e in fleet.events())
    assert len(fleet.events()) >= before


def test_logs_and_the_workload_page(fleet: Fleet) -> None:
    fleet.runs("v2")
    with api(fleet.registry, fleet.viewer) as viewer:
        def log_lines() -> list[dict[str, Any]]:
            response = viewer.get(f"/api/v1/nodes/{NODE}/workloads/default/app/logs", params={"tail": "50"})
            assert response.status_code == 200, response.text
            return [line for line in response.json()["lines"] if "web app v2 listening" in line["line"]]

        [line, *_] = wait_until(log_lines, what="the app's log line through the registry")
        only = viewer.get(f"/api/v1/nodes/{NODE}/workloads/default/app/logs",
                          params={"instance": line["instance"], "tail": "5"}).json()
        assert only["lines"] and {x["instance"] for x in only["lines"]} == {line["instance"]}
        assert viewer.get(f"/api/v1/nodes/{NODE}/workloads/default/app/logs?tail=x").status_code == 400
        # a process has no containers: asking for one container's lines gets none, through the node
        none = viewer.get(f"/api/v1/nodes/{NODE}/workloads/default/app/logs", params={"container": "web"}).json()
        assert none["lines"] == [] and none["container"] == "web"
        too_long = viewer.get(f"/api/v1/nodes/{NODE}/workloads/default/app/logs", params={"container": "c" * 64})
        assert too_long.status_code == 400 and "?container: at most 63 characters" in too_long.text
        assert viewer.get(f"/api/v1/nodes/{NODE}/workloads/default/other/logs").status_code == 404
    printed = cli(fleet.registry, "workloads", "logs", "app", "--node", NODE, "--registry", fleet.registry.url)
    assert "web app v2 listening" in printed.stdout

    add_user(fleet.registry, fleet.tmp_path, "vera", "--role", "viewer")
    add_user(fleet.registry, fleet.tmp_path, "olga", "--role", "operator")
    with login(fleet.registry, "vera") as pages:
        listing = pages.get("/workloads")
        assert 'href="/workloads/default/app"' in listing.text
        page = pages.get("/workloads/default/app")
        assert page.status_code == 200
        assert 'class="event event-restarted"' in page.text and 'data-version="4"' in page.text
        assert "Rollback to" not in page.text  # viewers see versions, not the button
        csrf = re.search(r'name="_csrf" value="([^"]+)"', page.text)
        assert csrf
        refused = pages.post("/workloads/default/app/rollback", data={
            "_csrf": csrf.group(1), "kind": "Workload", "source": "app", "version": "1"})
        assert refused.status_code == 403
        with_logs = pages.get("/workloads/default/app", params={"logs": NODE})
        assert "web app v2 listening" in with_logs.text
        assert pages.get("/workloads/default/nothing").status_code == 404

    with login(fleet.registry, "olga") as pages:
        page = pages.get("/workloads/default/app")
        assert "Rollback to 1" in page.text
        csrf = re.search(r'name="_csrf" value="([^"]+)"', page.text)
        assert csrf
        assert pages.post("/workloads/default/app/rollback", data={
            "kind": "Workload", "source": "app", "version": "1"}).status_code == 403  # no CSRF token
        done = pages.post("/workloads/default/app/rollback", data={
            "_csrf": csrf.group(1), "kind": "Workload", "source": "app", "version": "1"})
        assert done.status_code == 303 and done.headers["location"] == "/workloads/default/app"
        after = pages.get("/workloads/default/app")
        assert "rolled back to version 1: now version 5" in after.text
        assert 'data-version="5" class="current"' in after.text
    fleet.runs("v1")

    # the node stops: its log cannot be had, with a clear answer
    fleet.gateway.stop()
    with api(fleet.registry, fleet.viewer) as viewer:
        silent = viewer.get(f"/api/v1/nodes/{NODE}/workloads/default/app/logs", params={"timeout": "1s"})
        assert silent.status_code == 504 and f"node {NODE} did not answer within 1 s" in silent.json()["detail"]
    with login(fleet.registry, "vera") as pages:
        started = time.monotonic()
        page = pages.get("/workloads/default/app", params={"logs": NODE})
        assert page.status_code == 200 and f"node {NODE} did not answer within 5 s" in page.text
        assert time.monotonic() - started < 10


def node_events(gateway: Gateway) -> list[tuple[float, str, str, str]]:
    """The events of default/app the node's store keeps: (ts, event, instance, reason), oldest first."""
    with contextlib.closing(sqlite3.connect(f"file:{db_path(gateway.data_dir)}?mode=ro", uri=True, timeout=10)) as db:
        return [(ts, event, instance, reason) for ts, event, instance, reason in db.execute(
            "SELECT ts, event, instance, reason FROM workload_events WHERE namespace='default' AND name='app' "
            "ORDER BY id")]


def test_events_recorded_while_the_registry_is_down_survive_a_restart_of_the_node(fleet: Fleet) -> None:
    """The registry stops, the app is killed and restarted, the gateway restarts, the registry comes back: every
    event of the node from before its restart reaches the registry, exactly once."""
    if fleet.gateway.process is None or fleet.gateway.process.poll() is not None:
        fleet.gateway.start()  # the previous test stopped it
    fleet.apply("v3")
    running = fleet.runs("v3")
    wait_until(lambda: any(e["event"] == "started" and e["reason"] == f"pid {running['pid']}"
                           for e in fleet.events()), what="the node's started event at the registry")
    registry_process = fleet.registry.process
    assert registry_process is not None
    stop(registry_process)
    down = time.time()
    os.kill(running["pid"], signal.SIGKILL)
    wait_until(lambda: [e for e in node_events(fleet.gateway) if e[0] > down and e[1] == "started"], timeout=20,
               what="the app restarted on the node")
    fleet.gateway.stop()  # SIGTERM: the app stops, which is an event too
    offline = [e for e in node_events(fleet.gateway) if e[0] > down]
    assert {"restarted", "started", "stopped"} <= {event for _, event, _, _ in offline}, offline
    fleet.gateway.start()
    time.sleep(1.5)  # heartbeats fail meanwhile, and the restarted node records its own events
    fleet.registry.start()

    def at_registry() -> list[tuple[float, str, str, str]]:
        return [(e["ts"], e["event"], e["instance"], e["reason"]) for e in fleet.events() if e["node"] == NODE]

    wait_until(lambda: set(offline) <= set(at_registry()), timeout=30,
               what="the events from before the node's restart at the registry")
    time.sleep(2.5)  # a few more heartbeats: nothing comes twice
    received = at_registry()
    assert [e for e in received if e in offline] == offline  # each once, in order
    assert len(received) == len(set(received)), "no event of the node is stored twice"
