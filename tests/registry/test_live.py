"""The registry pages' live data on a real TLS registry: the node states stream (counts and rows of the user's scope,
changes only, ended at logout, a session needed), the overview's stream (apps, devices, upgrade tasks and alerts of
the user's scope), an upgrade task's stream as its node moves on, and a node's samples for its plots."""

from __future__ import annotations

import json
import re
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.registry.conftest import Registry
from tests.registry.test_access import add_user, cli, heartbeat, login, trust, two_workspaces
from tests.registry.test_pages import beat


def stream_events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    """(event name, data) of each event of a stream; comments are left out."""
    name, data = "message", ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
        elif line == "" and data:
            yield name, json.loads(data) if data.startswith("{") else data
            name, data = "message", ""


def test_the_node_states_stream_follows_the_users_scope_and_ends_at_logout(registry: Registry,
                                                                          tmp_path: Path) -> None:
    two_workspaces(registry, tmp_path)  # node a in workspace default, b in plant-b; neither has beaten yet
    add_user(registry, tmp_path, "vic")  # a viewer of workspace default
    with httpx.Client(base_url=registry.url, verify=trust(registry), timeout=10) as anonymous:
        assert anonymous.get("/events/nodes").status_code == 401
        assert anonymous.get("/nodes/a/metrics").status_code == 401
    with login(registry, "vic") as pages, pages.stream("GET", "/events/nodes") as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in response.headers  # asked for gzip (httpx does), events go as they are
        events = stream_events(response)
        name, first = next(events)
        assert name == "update"
        assert first["counts"] == {"total": 1, "healthy": 0, "offline": 0, "joined": 1, "paused": 0}
        assert set(first["nodes"]) == {"a"} and first["nodes"]["a"]["status"] == "joined"
        heartbeat(registry, tmp_path / "b")  # not in vic's scope: nothing to tell
        heartbeat(registry, tmp_path / "a", version="4.0.0")
        _, second = next(events)
        assert second["counts"]["healthy"] == 1 and second["counts"]["joined"] == 0
        assert set(second["nodes"]) == {"a"}
        assert second["nodes"]["a"]["status"] == "healthy" and second["nodes"]["a"]["version"] == "4.0.0"

        csrf = re.search(r'name="csrf-token" content="([^"]+)"', pages.get("/groups").text)
        assert csrf
        ended: list[Any] = []
        reader = threading.Thread(target=lambda: ended.extend(event for event in events if event[0] == "closed"),
                                  daemon=True)
        reader.start()
        assert pages.post("/logout", data={"_csrf": csrf.group(1)}).status_code == 303
        reader.join(timeout=15)
        assert ended and "session ended" in ended[0][1]


def test_a_nodes_plots_read_its_samples_with_the_page_session(registry: Registry, tmp_path: Path) -> None:
    two_workspaces(registry, tmp_path)
    add_user(registry, tmp_path, "vic")
    directory = tmp_path / "a" / "registry"
    context = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    context.load_cert_chain(directory / "node.pem", directory / "node.key")
    with httpx.Client(base_url=registry.url, verify=context, timeout=10) as node:
        beat = node.post("/api/v1/heartbeat", json={"info": {"version": "1", "metrics": {"cpu_percent": 12.5}}})
        assert beat.status_code == 200
    with login(registry, "vic") as pages:
        samples = pages.get("/nodes/a/metrics", params={"window": "15m"})
        assert samples.status_code == 200, samples.text[:300]
        assert samples.headers["content-type"].startswith("application/json"), samples.text[:300]
        body = samples.json()
        assert body["until"] - body["since"] == 900 and body["series"]["cpu_percent"] == [12.5]
        assert len(body["times"]) == 1
        assert pages.get("/nodes/b/metrics").status_code == 404  # outside vic's scope, as if it did not exist
        wrong = pages.get("/nodes/a/metrics", params={"window": "2d"})
        assert wrong.status_code == 400 and "15m, 1h, 6h, 24h" in wrong.json()["detail"]
        page = pages.get("/nodes/a")
        assert 'data-plot-src="/nodes/a/metrics"' in page.text and "uplot.min.js?v=" in page.text
        assert page.text.count("<svg") == 4  # what shows without script


def follow(events: Iterator[tuple[str, Any]], state: dict[str, Any], done: Any, limit: int = 10) -> dict[str, Any]:
    """Apply the stream's `update` events to `state` (as live.js does: records replaced, rows merged, lists
    replaced) until `done(state)`; at most `limit` events (each one comes within seconds of a change)."""
    for _ in range(limit):
        name, data = next(events)
        assert name == "update", (name, data)
        for group, value in data.items():
            if group == "removed":
                continue
            if group in ("nodes",) and isinstance(state.get(group), dict):
                for key, row in value.items():
                    state[group].setdefault(key, {}).update(row)
            else:
                state[group] = value
        if done(state):
            return state
    raise AssertionError(f"not seen after {limit} events: {state}")


def test_the_overview_stream_brings_every_number_and_the_alerts_of_the_users_scope(registry: Registry,
                                                                                    tmp_path: Path) -> None:
    two_workspaces(registry, tmp_path)
    add_user(registry, tmp_path, "vic")  # a viewer of workspace default: node a, not b
    (tmp_path / "pump.yaml").write_text("kind: Workload\nname: pump\nnode: a\ncommand: [sleep, '60']\n")
    cli(registry, "apply", "-f", str(tmp_path / "pump.yaml"))
    (tmp_path / "far.yaml").write_text("kind: Workload\nname: far\nnode: b\ncommand: [sleep, '60']\n")
    cli(registry, "apply", "-f", str(tmp_path / "far.yaml"), "--workspace", "plant-b")
    with httpx.Client(base_url=registry.url, verify=trust(registry), timeout=10) as anonymous:
        assert anonymous.get("/events/overview").status_code == 401
    with login(registry, "vic") as pages, pages.stream("GET", "/events/overview") as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = stream_events(response)
        state = follow(events, {}, lambda s: "alerts" in s)
        assert state["counts"]["total"] == 1 and state["counts"]["joined"] == 1
        assert state["apps"] == {"running": 0, "failed": 0, "total": 1}  # pump, placed on a; not b's
        assert state["devices"] == {"online": 0, "not_online": 0, "total": 0}
        assert state["upgrades"] == {"open": 0, "total": 0} and state["alerts"] == []

        beat(registry, tmp_path / "b", {"workloads": [{"workload": "default/far", "status": "failed"}]})  # not vic's
        beat(registry, tmp_path / "a", {
            "workloads": [{"workload": "default/pump", "status": "running", "replicas": 1, "ready": 1}],
            "twins": [{"device": "default/boiler-1", "state": "online", "properties": {
                "temperature": {"reported": 21.5, "quality": "good", "reported_at": 1.0}}},
                {"device": "default/meter-1", "state": "offline", "reason": "no answer"}],
            "twins_complete": True})
        state = follow(events, state, lambda s: s["apps"]["running"] == 1 and s["devices"]["total"] == 2)
        # a: healthy, or offline already (the test registry's nodes beat every second, so 3 s of quiet is offline)
        assert state["counts"]["healthy"] + state["counts"]["offline"] == 1
        assert state["apps"] == {"running": 1, "failed": 0, "total": 1}
        assert state["devices"] == {"online": 1, "not_online": 1, "total": 2}

        beat(registry, tmp_path / "a", {"workloads": [{"workload": "default/pump", "status": "failed",
                                                       "reason": "exited with code 3"}]})
        state = follow(events, state, lambda s: s["apps"]["failed"] == 1)
        [alert] = [alert for alert in state["alerts"] if alert["kind"] != "node offline"]
        assert alert["kind"] == "workload failed" and alert["subject"] == "default/pump on a"
        assert alert["href"] == "/workloads/default/pump" and alert["reason"] == "exited with code 3"
        assert alert["when"].endswith(" UTC") and isinstance(alert["at"], float)


def test_the_upgrade_task_stream_follows_each_node_to_the_end(registry: Registry, tmp_path: Path) -> None:
    two_workspaces(registry, tmp_path)
    add_user(registry, tmp_path, "vic")
    add_user(registry, tmp_path, "eve", "--scope", "workspace:plant-b")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "fieldgate-9.9.0-py3-none-any.whl").write_bytes(b"")
    task = json.loads(cli(registry, "upgrade", "create", "--version", "9.9.0", "--wheels", str(wheels), "--nodes",
                          "a", "--json").stdout)["id"]
    with login(registry, "eve") as pages:
        assert pages.get(f"/events/upgrades/{task}").status_code == 404  # not in eve's workspace
    with login(registry, "vic") as pages, pages.stream("GET", f"/events/upgrades/{task}") as response:
        assert response.status_code == 200
        events = stream_events(response)
        state = follow(events, {}, lambda s: "nodes" in s)
        assert state["task"] == {"state": "running", "open": True, "finished": "\u2013"}
        assert state["phases"] == {"pending": 1, "running": 0, "done": 0, "failed": 0, "cancelled": 0}
        assert state["nodes"]["a"]["phase"] == "pending" and state["nodes"]["a"]["has_log"] is False

        assert beat(registry, tmp_path / "a", {})["upgrade"]["task"] == task  # healthy now: handed the task
        state = follow(events, state, lambda s: s["nodes"]["a"]["phase"] == "running")
        assert state["nodes"]["a"]["status"] == "assigned" and state["phases"]["running"] == 1
        assert state["nodes"]["a"]["started"].endswith(" UTC")

        beat(registry, tmp_path / "a", {"upgrade": {"task": task, "status": "succeeded",
                                                    "reason": "version 9.9.0 healthy", "log": "switching to b"}})
        state = follow(events, state, lambda s: s["task"]["state"] == "succeeded")
        assert state["task"]["open"] is False and state["task"]["finished"].endswith(" UTC")
        assert state["nodes"]["a"] | {"started": "", "finished": ""} == {
            "phase": "done", "status": "succeeded", "reason": "version 9.9.0 healthy", "log": "switching to b",
            "has_log": True, "started": "", "finished": ""}
        assert state["phases"]["done"] == 1 and state["phases"]["running"] == 0
