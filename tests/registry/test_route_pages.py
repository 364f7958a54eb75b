"""The registry's endpoint and route pages against a real registry and a real gateway: an HTTP endpoint, a REST
endpoint and a route made through the forms reach the node (read-only there), a message posted to the registry flows
along the route to a local HTTP server, and the route's page shows the node's counters; the forms check like the API,
need the admin role and the session's CSRF token, and every change is audited."""

from __future__ import annotations

import html
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.registry.pages.routes import _mapping
from tests.registry.conftest import Registry, wait_until
from tests.registry.test_access import add_user, cli
from tests.registry.test_messages import api
from tests.registry.test_pages import session
from tests.registry.test_registry_routes import Node


class Receiver:
    """A small HTTP server on a free loopback port that keeps the bodies posted to it."""

    def __init__(self) -> None:
        bodies: list[bytes] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                bodies.append(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.bodies = bodies
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def flashes(text: str, kind: str) -> list[str]:
    return [html.unescape(m) for m in re.findall(rf'class="flash {kind}"[^>]*>([^<]*)', text)]


def counter(text: str, node: str, column: str) -> int | None:
    """A counter of a node's row on a route's page."""
    row = re.search(rf'<tr data-node="{node}">(.*?)</tr>', text, re.S)
    found = row and re.search(rf'<td class="{column}">(\d+)</td>', row.group(1))
    return int(found.group(1)) if found else None


def test_endpoints_and_a_route_made_in_the_forms_run_on_the_node_and_show_its_counters(
        registry: Registry, receiver: Receiver, tmp_path: Path) -> None:
    for role in ("admin", "viewer"):
        add_user(registry, tmp_path, role, "--role", role, "--scope", "platform")
    operator = registry.cli("token", "create", "--role", "operator").stdout.strip()
    node = Node(registry, tmp_path)
    try:
        with session(registry, "admin") as admin, session(registry, "viewer") as viewer, \
                api(registry, operator) as sender:
            # the forms: an endpoint of each kind, then a route between them, for node gw-1
            made = admin.post("/endpoints/edit", {"is_new": "1", "name": "cloud", "type": "rest", "node": "gw-1"})
            assert made.status_code == 303 and made.headers["location"] == "/endpoints"
            made = admin.post("/endpoints/edit", {"is_new": "1", "name": "receiver", "type": "http",
                                                  "properties": f"url: {receiver.url}\nmode: each",
                                                  "description": "the plant's receiver"})
            assert made.status_code == 303
            missing = admin.post("/routes/edit", {"is_new": "1", "name": "down", "source": "cloud",
                                                  "source_resource": "path=/alarms", "target": "nosuch",
                                                  "node": "gw-1"})
            assert missing.status_code == 400
            assert "$.target: no Endpoint default/nosuch at the registry" in html.unescape(missing.text)
            bad_yaml = admin.post("/endpoints/edit", {"is_new": "1", "name": "odd", "type": "http",
                                                      "properties": "- a list"})
            assert bad_yaml.status_code == 400 and "properties: expected a mapping" in bad_yaml.text
            made = admin.post("/routes/edit", {"is_new": "1", "name": "down", "source": "cloud",
                                               "source_resource": "path=/alarms", "target": "receiver",
                                               "node": "gw-1"})
            assert made.status_code == 303 and made.headers["location"] == "/routes/default/down"
            again = admin.post("/routes/edit", {"is_new": "1", "name": "down", "source": "cloud",
                                                "target": "receiver"})
            assert again.status_code == 400 and "exists already" in again.text

            # roles and CSRF: a viewer reads, an admin changes, no form goes through without the session's token
            assert viewer.get("/routes").status_code == 200 and viewer.get("/endpoints").status_code == 200
            assert viewer.post("/routes/edit", {"name": "sneaky", "source": "cloud", "target": "receiver"}
                               ).status_code == 403
            assert viewer.post("/routes/default/down/delete").status_code == 403
            assert admin.client.post("/routes/default/down/delete").status_code == 403
            listed = viewer.get("/endpoints").text
            assert 'data-endpoint="default/receiver"' in listed and ">down</a>" in listed

            # the node runs the route with both endpoints, and refuses to change them locally
            wait_until(lambda: "default/down" in node.routes(), what="the route on the node")
            pages, csrf = node.ui()
            try:
                refused = pages.post("/resources/delete", data={"_csrf": csrf, "kind": "Route", "name": "down"})
                assert refused.status_code == 303
                assert "Route default/down is owned by registry" in pages.get(refused.headers["location"]).text
            finally:
                pages.close()

            # a message posted to the registry flows along it, and the route's page shows the node's counters
            assert sender.post("/api/v1/messages/gw-1/default/alarms", content=b'{"level": 3}').status_code == 202
            wait_until(lambda: receiver.bodies, what="the message at the HTTP receiver")
            assert receiver.bodies == [b'{"level": 3}']
            wait_until(lambda: counter(viewer.get("/routes/default/down").text, "gw-1", "delivered") == 1,
                       what="the node's counters on the route's page")
            page = viewer.get("/routes/default/down").text
            assert counter(page, "gw-1", "accepted") == 1 and counter(page, "gw-1", "failed") == 0
            assert 'href="/nodes/gw-1"' in page and "/routes/default/down/delete" not in page  # no delete for viewers
            totals = re.search(r'<tr data-route="default/down">(.*?)</tr>', viewer.get("/routes").text, re.S)
            assert totals and "<td>1</td><td>1</td><td>0</td><td>0</td>" in totals.group(1)

            # an edit keeps what the form does not show; an endpoint in use is not deleted; the route is
            form = admin.get("/routes/edit?name=down").text
            assert 'value="path=/alarms"' in form and 'name="name" value="down" required readonly' in form
            edited = admin.post("/routes/edit", {"name": "down", "source": "cloud", "source_resource": "path=/alarms",
                                                 "target": "receiver", "node": "gw-1", "description": "alarms out"})
            assert edited.status_code == 303
            assert "alarms out" in admin.get("/routes/edit?name=down").text
            in_use = admin.post("/endpoints/default/receiver/delete")
            assert in_use.status_code == 303
            assert flashes(admin.get("/endpoints").text, "error") == [
                "Endpoint default/receiver is used by Route default/down"]
            gone = admin.post("/routes/default/down/delete")
            assert gone.status_code == 303 and gone.headers["location"] == "/routes"
            assert "Route default/down deleted" in " ".join(flashes(admin.get("/routes").text, "ok"))
            wait_until(lambda: "default/down" not in node.routes(), what="the route gone from the node")
            assert admin.post("/endpoints/default/receiver/delete").status_code == 303
            assert 'data-endpoint="default/receiver"' not in admin.get("/endpoints").text
    finally:
        node.close()
    audit = [json.loads(line) for line in cli(registry, "audit", "--limit", "100", "--json").stdout.splitlines()]
    done = [(entry["actor"], entry["action"], entry["object"], entry["outcome"], entry["detail"]) for entry in audit]
    for document in ("Endpoint/default/cloud", "Endpoint/default/receiver", "Route/default/down"):
        assert ("user:admin", "document.apply", "pages", "ok", f'["{document}"]') in done, document
    assert sum(1 for d in done if d[1] == "document.apply" and "Route/default/down" in d[4]) == 2  # made, edited
    for document in ("Route/default/down", "Endpoint/default/receiver"):
        assert any(d[:4] == ("user:admin", "document.delete", document, "ok") for d in done), document
    assert any(d[1:3] == ("document.delete", "Endpoint/default/receiver") and d[3].startswith("refused")
               for d in done)


@pytest.mark.parametrize("text", ["[" * 3000 + "]" * 3000, "a: " + "{b: " * 100 + "1" + "}" * 100, "- a list"])
def test_endpoint_properties_deep_or_not_a_mapping_are_refused_by_name(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^properties: "):
        _mapping(text, "properties")
