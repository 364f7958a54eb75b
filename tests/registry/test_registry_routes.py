"""Endpoints and routes at the registry: applied through the API (a Route without its Endpoints refused), placed on
a node, by labels or by group with the Endpoints they use, run by a real gateway (read-only there), reporting their
counters with the heartbeat, and gone from the node when deleted at the registry."""

from __future__ import annotations

import re
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from gateway.testing import Mosquitto
from gateway.wire import MAX_ROUTE_REPORTS, HeartbeatRequest
from tests.conftest import FIELDGATE, free_port
from tests.registry.conftest import Registry, join, stop, wait_for_port, wait_until
from tests.registry.test_messages import Subscriber, api
from tests.registry.test_pages import beat

CLOUD = {"kind": "Endpoint", "name": "cloud", "type": "rest"}
ROUTE = {"kind": "Route", "name": "down", "node": "gw-1", "source": "cloud", "source_resource": {"path": "/alarms"},
         "target": "broker", "target_resource": {"topic": "alarms/in"}}
NODE_PASSWORD = "node-admin-pass-1"


def broker_endpoint(mosquitto: Mosquitto) -> dict[str, Any]:
    return {"kind": "Endpoint", "name": "broker", "type": "mqtt", "properties": {"url": mosquitto.url}}


@pytest.fixture
def subscriber(mosquitto: Mosquitto) -> Iterator[Subscriber]:
    sub = Subscriber(mosquitto, "alarms/#")
    wait_until(lambda: sub.process.poll() is None, what="mosquitto_sub")
    yield sub
    stop(sub.process)  # type: ignore[arg-type]


class Node:
    """A joined gateway (`fieldgate run`) with a local admin user, and its API as a viewer."""

    def __init__(self, registry: Registry, tmp_path: Path, name: str = "gw-1") -> None:
        self.data_dir = tmp_path / name
        assert join(registry, registry.token(), self.data_dir, "--name", name).returncode == 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp_path / f"{name}.yaml"
        config.write_text(textwrap.dedent(f"""\
            kind: Gateway
            name: {name}
            http: {{listen: "127.0.0.1:{self.port}"}}
            eventbus: {{url: none}}
            """))
        subprocess.run([*FIELDGATE, "user", "add", "admin", "--role", "admin", "--password-stdin", "--data-dir",
                        str(self.data_dir)], input=NODE_PASSWORD + "\n", text=True, check=True, timeout=30,
                       capture_output=True)
        viewer = subprocess.run([*FIELDGATE, "token", "create", "--role", "viewer", "--data-dir", str(self.data_dir)],
                                capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        self.log = tmp_path / f"{name}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen([*FIELDGATE, "run", "-c", str(config), "--data-dir",
                                             str(self.data_dir)], stdout=log, stderr=log)
        wait_for_port(self.port, self.process)
        self.api = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {viewer}"}, timeout=10)

    def routes(self) -> dict[str, dict[str, Any]]:
        answer = self.api.get("/api/v1/routes")
        assert answer.status_code == 200, answer.text
        return {f"{r['namespace']}/{r['name']}": r for r in answer.json()}

    def ui(self) -> tuple[httpx.Client, str]:
        """A logged-in session of the node's pages and its CSRF token."""
        client = httpx.Client(base_url=self.url, timeout=10)
        client.get("/login")
        done = client.post("/login", data={"username": "admin", "password": NODE_PASSWORD, "next": "/",
                                           "_csrf": client.cookies.get("fieldgate_login_csrf", "")})
        assert done.status_code == 303, done.text
        found = re.search(r'name="csrf-token" content="([^"]*)"', client.get("/").text)
        assert found
        return client, found.group(1)

    def close(self) -> None:
        self.api.close()
        stop(self.process)  # type: ignore[arg-type]


def counters(client: httpx.Client, node: str) -> dict[str, Any] | None:
    answer = client.get("/api/v1/routes/default/down")
    assert answer.status_code == 200, answer.text
    return next((c for c in answer.json()["counters"] if c["node"] == node), None)


def test_a_route_applied_at_the_registry_runs_on_its_node_read_only_and_reports_its_counters(
        registry: Registry, mosquitto: Mosquitto, subscriber: Subscriber, tmp_path: Path) -> None:
    admin = registry.cli("token", "create", "--role", "admin").stdout.strip()
    operator = registry.cli("token", "create", "--role", "operator").stdout.strip()
    node = Node(registry, tmp_path)
    try:
        with api(registry, admin) as client, api(registry, operator) as sender:
            # a Route whose endpoints are not at the registry is refused, naming them
            refused = client.post("/api/v1/documents", json=[ROUTE])
            assert refused.status_code == 400
            assert "$.source: no Endpoint default/cloud at the registry" in refused.text
            assert "$.target: no Endpoint default/broker at the registry" in refused.text
            wrong_way = client.post("/api/v1/documents", json=[CLOUD, broker_endpoint(mosquitto),
                                                               {**ROUTE, "source": "broker", "target": "cloud"}])
            assert wrong_way.status_code == 400 and "a mqtt endpoint cannot be a route source" in wrong_way.text
            assert client.get("/api/v1/routes/default/down").status_code == 404  # nothing of it was kept

            applied = client.post("/api/v1/documents", json=[CLOUD, broker_endpoint(mosquitto), ROUTE])
            assert applied.status_code == 200, applied.text
            assert "Route default/down → node gw-1" in applied.json()["applied"]
            assert client.get("/api/v1/routes/default/down").json()["nodes"] == ["gw-1"]

            # the node runs it, with the endpoints it uses, owned by the registry
            route = wait_until(lambda: node.routes().get("default/down"), what="the route on the node")
            assert route["source"] == "rest:cloud" and route["target"] == "mqtt:broker"
            pages, csrf = node.ui()
            try:
                yaml_route = ("kind: Route\nname: down\nsource: cloud\nsource_resource: {path: /other}\n"
                              "target: broker\ntarget_resource: {topic: alarms/in}\n")
                changed = pages.post("/editor", data={"_csrf": csrf, "yaml": yaml_route})
                assert changed.status_code == 400
                assert "Route default/down is owned by the registry; change it there" in changed.text
                deleted = pages.post("/resources/delete", data={"_csrf": csrf, "kind": "Endpoint", "name": "broker"})
                assert deleted.status_code == 303
                shown = pages.get(deleted.headers["location"]).text
                assert "Endpoint default/broker: Endpoint default/broker is owned by registry" in shown
            finally:
                pages.close()
            assert "default/down" in node.routes()  # still there, unchanged

            # data flows along it, and its counters reach the registry
            sent = sender.post("/api/v1/messages/gw-1/default/alarms", content=b'{"n": 1}')
            assert sent.status_code == 202, sent.text
            assert subscriber.next_line() == 'alarms/in {"n": 1}'
            on_node = wait_until(lambda: (r := node.routes()["default/down"])["successes"] >= 1 and r,
                                 what="the node's counter")
            assert on_node["accepted"] == 1 and on_node["failures"] == 0
            reported = wait_until(lambda: (c := counters(client, "gw-1")) and c["delivered"] >= 1 and c,
                                  what="the counters at the registry")
            assert reported["accepted"] == 1 and reported["failed"] == 0 and reported["queued"] == 0

            # an endpoint a route uses stays; the route deleted at the registry goes from the node with its endpoints
            in_use = client.delete("/api/v1/documents/Endpoint/default/broker")
            assert in_use.status_code == 400 and "used by Route default/down" in in_use.text
            assert client.delete("/api/v1/documents/Route/default/down").status_code == 200
            wait_until(lambda: "default/down" not in node.routes(), what="the route gone from the node")
            assert client.delete("/api/v1/documents/Endpoint/default/broker").status_code == 200
    finally:
        node.close()


def test_endpoints_and_routes_go_by_selector_and_group_with_the_endpoints_they_use(
        registry: Registry, tmp_path: Path) -> None:
    for name, site in (("gw-n", "north"), ("gw-s", "south")):
        assert join(registry, registry.token("--labels", f"site={site}"), tmp_path / name, "--name",
                    name).returncode == 0
    registry.cli("group", "create", "line-s", "--selector", "site=south")
    admin = registry.cli("token", "create", "--role", "admin").stdout.strip()
    viewer = registry.cli("token", "create", "--role", "viewer").stdout.strip()
    documents = [
        {"kind": "Endpoint", "name": "bus", "type": "bus"},
        {"kind": "Endpoint", "name": "uplink", "type": "mqtt", "properties": {"url": "mqtt://127.0.0.1:1"}},
        {"kind": "Endpoint", "name": "spare", "type": "http", "properties": {"url": "http://127.0.0.1:1"},
         "groups": ["line-s"]},
        {"kind": "Route", "name": "north-up", "node_selector": {"site": "north"}, "source": "bus",
         "source_resource": {"topic": "devices/#"}, "target": "uplink", "target_resource": {"topic": "n/{device}"}},
        {"kind": "Route", "name": "south-up", "groups": ["line-s"], "source": "bus",
         "source_resource": {"topic": "devices/#"}, "target": "uplink", "target_resource": {"topic": "s/{device}"}},
        {"kind": "Route", "name": "nowhere", "source": "bus", "source_resource": {"topic": "x/#"},
         "target": "uplink", "target_resource": {"topic": "x"}},
    ]
    with api(registry, admin) as client:
        assert client.post("/api/v1/documents", json=documents).status_code == 200

    def sent(node: str) -> dict[str, dict[str, Any]]:
        return {f"{d['kind']} {d['name']}": d for d in beat(registry, tmp_path / node, {})["documents"]}

    north, south = sent("gw-n"), sent("gw-s")
    assert set(north) == {"Endpoint bus", "Endpoint uplink", "Route north-up"}
    assert set(south) == {"Endpoint bus", "Endpoint uplink", "Endpoint spare", "Route south-up"}
    for document in (*north.values(), *south.values()):
        assert not {"node", "node_selector", "groups"} & document.keys(), document  # the node gets no placement

    # each node's counters are kept per node and route, the latest report replacing the one before
    report = {"route": "default/north-up", "accepted": 5, "delivered": 4, "failed": 2, "queued": 1,
              "state": "failing", "last_error": "connection refused"}
    beat(registry, tmp_path / "gw-n", {"routes": [report]})
    beat(registry, tmp_path / "gw-n", {"routes": [{**report, "accepted": 6}]})
    with api(registry, viewer) as reader:
        shown = reader.get("/api/v1/routes/default/north-up").json()
        assert shown["nodes"] == ["gw-n"]
        assert [(c["node"], c["accepted"], c["delivered"], c["failed"], c["last_error"]) for c in
                shown["counters"]] == [("gw-n", 6, 4, 2, "connection refused")]
        assert reader.get("/api/v1/routes/default/missing").status_code == 404
        assert reader.post("/api/v1/documents", json=documents).status_code == 403

    # the routes part of a heartbeat is bounded like the others
    over = [{"route": f"default/r{i}"} for i in range(MAX_ROUTE_REPORTS + 1)]
    with pytest.raises(msgspec.ValidationError, match=r"\$\.routes"):
        msgspec.json.decode(msgspec.json.encode({"routes": over}), type=HeartbeatRequest)
    with pytest.raises(msgspec.ValidationError, match=r"\$\.routes\[0\]\.delivered"):
        msgspec.json.decode(b'{"routes": [{"route": "default/a", "delivered": -1}]}', type=HeartbeatRequest)
