"""The registry's pages against a real registry over TLS: every page route for every built-in role and a custom one
(200 or 303 where the role's permissions allow, 403 where they do not, a redirect to the login form without a
session, never a 500), HTML error pages for
browsers, the overview's figures and alerts, every device the nodes report with its values and units, nodes,
groups, join tokens and documents changed through the forms. The tests share one registry and build on it."""

from __future__ import annotations

import contextlib
import html
import json
import re
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.registry.pages import PAGE_PERMISSIONS
from gateway.registry.permissions import BUILTIN_ROLES
from gateway.registry.store import ROLES
from tests.conftest import FIELDGATE
from tests.registry.conftest import Registry, stop
from tests.registry.test_access import add_user, api, cli, join, token, trust

NODE = "gw-a"
# a custom role for the walk: what a field technician needs, some reading, some acting, some changing
FIELD_TECH = frozenset({"nodes.read", "groups.manage", "devices.read", "devices.write", "devices.manage",
                        "apps.read", "apps.operate", "routes.read", "routes.write", "audit.read"})
WALKERS = {**BUILTIN_ROLES, "field-tech": FIELD_TECH}
DOCUMENTS = """\
kind: DeviceModel
name: thermo
properties:
  - {name: temperature, type: float, access: ReadOnly, unit: degC}
  - {name: setpoint, type: float, access: ReadWrite, unit: degC, minimum: 5, maximum: 30}
---
kind: Device
name: boiler-1
model: thermo
node: gw-a
protocol: {name: virtual}
properties:
  - {name: temperature, visitor: {generator: constant, value: 21.0}}
  - {name: setpoint, visitor: {generator: memory, initial: 20.0}}
---
kind: Workload
name: app
node: gw-a
command: [sleep, '60']
"""
# what the node reports: the registry's boiler-1 and a meter only the node knows, with its model and units
TWINS = {
    "twins": [
        {"device": "default/boiler-1", "state": "online", "properties": {
            "temperature": {"reported": 21.0, "quality": "good", "reported_at": 1.0},
            "setpoint": {"reported": 20.0, "quality": "good", "reported_at": 1.0}}},
        {"device": "plant/meter-7", "state": "online", "properties": {
            "power": {"reported": 4.25, "quality": "good", "reported_at": 1.0},
            "energy": {"reported": 1234.5678912, "quality": "good", "reported_at": 1.0},
            "limit": {"reported": 10, "quality": "good", "reported_at": 1.0}}},
    ],
    "twins_complete": True,
    "described": [{"device": "plant/meter-7", "model": "sdm630", "units": {"power": "kW", "energy": "kWh"}},
                  {"device": "default/boiler-1", "model": "thermo", "units": {"temperature": "degC",
                                                                                "setpoint": "degC"}}],
}


class Session:
    """A registry user's page session (the login form with its CSRF cookie), and the session's CSRF token."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.csrf = ""

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def post(self, path: str, data: dict[str, Any] | None = None) -> httpx.Response:
        return self.client.post(path, data={"_csrf": self.csrf, **(data or {})})


@contextlib.contextmanager
def session(registry: Registry, user: str | None) -> Iterator[Session]:
    with httpx.Client(base_url=registry.url, verify=trust(registry), timeout=20) as client:
        pages = Session(client)
        if user is not None:
            form = client.get("/login")
            csrf = re.search(r'name="_csrf" value="([^"]+)"', form.text)
            assert csrf
            done = client.post("/login", data={"_csrf": csrf.group(1), "username": user,
                                               "password": "registry-pass-1", "next": "/"})
            assert done.status_code == 303, done.text
            found = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").text)
            assert found
            pages.csrf = found.group(1)
        yield pages


def beat(registry: Registry, node_dir: Path, body: dict[str, Any]) -> dict[str, Any]:
    """A node's heartbeat over mutual TLS with the certificate it got at join."""
    directory = node_dir / "registry"
    context = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    context.load_cert_chain(directory / "node.pem", directory / "node.key")
    with httpx.Client(base_url=registry.url, verify=context, timeout=10) as node:
        answer = node.post("/api/v1/heartbeat", json={"info": {"version": "4.2.0"}, **body})
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result


class Fleet:
    def __init__(self, registry: Registry, tmp_path: Path) -> None:
        self.registry = registry
        self.tmp_path = tmp_path
        self.node_dir = tmp_path / NODE
        assert join(registry, token(registry, "--labels", "site=north"), self.node_dir, "--name",
                    NODE).returncode == 0
        (tmp_path / "docs.yaml").write_text(DOCUMENTS)
        cli(registry, "apply", "-f", str(tmp_path / "docs.yaml"))
        beat(registry, self.node_dir, TWINS)
        cli(registry, "group", "create", "line-a", "--selector", "site=north")
        for role in ROLES:
            add_user(registry, tmp_path, role, "--role", role, "--scope", "platform")
        admin = cli(registry, "token", "create", "--role", "admin", "--scope", "platform").stdout.strip()
        with api(registry, admin) as client:
            made = client.post("/api/v1/roles", json={"name": "field-tech", "description": "walks the pages",
                                                      "permissions": sorted(FIELD_TECH)})
            assert made.status_code == 201, made.text
        add_user(registry, tmp_path, "field-tech", "--role", "field-tech", "--scope", "platform")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp_path = tmp_path_factory.mktemp("registry-pages")
    registry = Registry(tmp_path / "registry")
    registry.start()
    try:
        yield Fleet(registry, tmp_path)
    finally:
        if registry.process is not None:
            stop(registry.process)


def page_routes() -> set[tuple[str, str, tuple[str, ...]]]:
    """(method, path, the permissions of which one is needed) of every page route of the registry app."""
    import tempfile

    from gateway.registry.app import create_app
    from gateway.webkit.routes import app_routes

    with tempfile.TemporaryDirectory() as directory:  # the app makes its CA in its data dir
        app = create_app(Path(directory))
    return {(method, path, handler.opt[PAGE_PERMISSIONS]) for method, path, handler in app_routes(app)
            if PAGE_PERMISSIONS in handler.opt}


WALK_BATCH = ("kind: BatchWorkload\nname: walk-batch\ntemplate: {command: [sleep, '60']}\ngroups: [{group: line-a}]\n"
              "---\nkind: BatchWorkload\nname: walk-doomed\ntemplate: {command: [sleep, '60']}\n"
              "groups: [{group: line-a}]\n"  # deleted by the first role that may: the others still see walk-batch
              "---\nkind: ConfigItem\nname: walk-config\ndata: {a: b}\n")
SPARE_DEVICE = "kind: Device\nname: spare-{n}\nmodel: thermo\nprotocol: {{name: virtual}}\n"
WALK_ROUTE = ("kind: Endpoint\nname: walk-in\ntype: rest\n---\nkind: Endpoint\nname: walk-out\ntype: http\n"
              "properties: {url: 'http://127.0.0.1:1'}\n---\nkind: Route\nname: walk-route\nsource: walk-in\n"
              "source_resource: {path: /walk}\ntarget: walk-out\n")
# Each page route with a path that exists and, for a form, fields it takes: nothing here may fail with a 500.
WALK: dict[tuple[str, str], tuple[str, dict[str, str]]] = {
    ("GET", "/"): ("/", {}),
    ("GET", "/api-tokens"): ("/api-tokens", {}),
    ("POST", "/api-tokens"): ("/api-tokens", {"role": "viewer", "scope": "workspace:default", "description": "walk"}),
    ("POST", "/api-tokens/{token_id:str}/revoke"): ("/api-tokens/nosuch/revoke", {}),
    ("GET", "/apps"): ("/apps", {}),
    ("GET", "/apps/batch/{namespace:str}/{name:str}"): ("/apps/batch/default/walk-batch", {}),
    ("POST", "/apps/batch/{namespace:str}/{name:str}/rollback"): ("/apps/batch/default/walk-batch/rollback",
                                                                  {"version": "1"}),
    ("POST", "/apps/delete"): ("/apps/delete", {"kind": "BatchWorkload", "name": "walk-doomed"}),
    ("GET", "/apps/edit"): ("/apps/edit?kind=BatchWorkload&name=walk-batch", {}),
    ("POST", "/apps/edit"): ("/apps/edit", {"kind": "Workload", "name": "walk-app", "command": "sleep\n60",
                                            "node": NODE}),
    ("GET", "/audit"): ("/audit", {}),
    ("GET", "/configs"): ("/configs", {}),
    ("POST", "/configs/delete"): ("/configs/delete", {"kind": "ConfigItem", "name": "walk-config"}),
    ("GET", "/configs/edit"): ("/configs/edit?kind=Secret", {}),
    ("POST", "/configs/edit"): ("/configs/edit", {"kind": "Secret", "name": "walk-secret", "rows": "1",
                                                  "data-0-key": "token", "data-0-value": "walk"}),
    ("GET", "/devices"): ("/devices", {}),
    ("GET", "/devices/edit"): ("/devices/edit", {}),
    ("POST", "/devices/edit"): ("/devices/edit", {"name": "made-in-form", "model": "thermo", "protocol": "virtual",
                                                  "rows": "1", "prop-0-name": "setpoint",
                                                  "prop-0-visitor": "{generator: memory, initial: 1}"}),
    ("GET", "/devices/{namespace:str}/{name:str}"): ("/devices/plant/meter-7", {}),
    ("POST", "/devices/{namespace:str}/{name:str}/bind"): ("/devices/default/boiler-1/bind", {"node": NODE}),
    ("POST", "/devices/{namespace:str}/{name:str}/desired"): ("/devices/default/boiler-1/desired",
                                                               {"property": "setpoint", "value": "21"}),
    ("GET", "/editor"): ("/editor", {}),
    ("GET", "/endpoints"): ("/endpoints", {}),
    ("GET", "/endpoints/edit"): ("/endpoints/edit?name=walk-in", {}),
    ("POST", "/endpoints/edit"): ("/endpoints/edit", {"name": "walk-ep", "type": "http",
                                                      "properties": "url: http://127.0.0.1:1", "node": NODE}),
    ("POST", "/endpoints/{namespace:str}/{name:str}/delete"): ("/endpoints/default/walk-ep/delete", {}),
    ("GET", "/routes"): ("/routes", {}),
    ("GET", "/services"): ("/services", {}),
    ("GET", "/routes/edit"): ("/routes/edit?name=walk-route", {}),
    ("POST", "/routes/edit"): ("/routes/edit", {"name": "walk-route-2", "source": "walk-in",
                                                "source_resource": "path=/walk-2", "target": "walk-out",
                                                "groups": "line-a"}),
    ("GET", "/routes/{namespace:str}/{name:str}"): ("/routes/default/walk-route", {}),
    ("POST", "/routes/{namespace:str}/{name:str}/delete"): ("/routes/default/walk-route-2/delete", {}),
    ("POST", "/editor"): ("/editor", {"yaml": SPARE_DEVICE.format(n=1)}),
    ("GET", "/groups"): ("/groups", {}),
    ("POST", "/groups"): ("/groups", {"name": "spare", "selector": "site=nowhere"}),
    ("GET", "/groups/new"): ("/groups/new", {}),
    ("GET", "/groups/preview"): ("/groups/preview?selector=site%3Dnorth", {}),
    ("GET", "/groups/{name:str}"): ("/groups/line-a", {}),
    ("POST", "/groups/{name:str}"): ("/groups/line-a", {"selector": "site=north"}),
    ("POST", "/groups/{name:str}/delete"): ("/groups/spare/delete", {}),
    ("GET", "/join"): ("/join", {}),
    ("GET", "/join-tokens"): ("/join-tokens", {}),
    ("POST", "/join-tokens"): ("/join-tokens", {"labels": "site=south", "prefix": "south"}),
    ("POST", "/join-tokens/{token_id:str}/revoke"): ("/join-tokens/{revocable}/revoke", {}),
    ("GET", "/join/bundle"): ("/join/bundle", {}),
    ("POST", "/join/bundle"): ("/join/bundle", {"name": "walk", "count": "2"}),
    ("GET", "/models"): ("/models", {}),
    ("GET", "/models/edit"): ("/models/edit?name=thermo", {}),
    ("POST", "/models/edit"): ("/models/edit", {"name": "meter", "rows": "1", "prop-0-name": "power",
                                                "prop-0-unit": "kW"}),
    ("GET", "/nodes"): ("/nodes", {}),
    ("POST", "/nodes/batch"): ("/nodes/batch", {"node": NODE, "action": "resume"}),
    ("GET", "/nodes/{name:str}"): (f"/nodes/{NODE}", {}),
    ("POST", "/nodes/{name:str}/move"): (f"/nodes/{NODE}/move", {"workspace": "default"}),
    ("POST", "/nodes/{name:str}/remove"): (f"/nodes/{NODE}/remove", {"confirm": "not its name"}),
    ("POST", "/nodes/{name:str}/scheduling"): (f"/nodes/{NODE}/scheduling", {"action": "resume"}),
    ("POST", "/nodes/{name:str}/settings"): (f"/nodes/{NODE}/settings", {"alias": "boiler room",
                                                                          "labels": "site=north"}),
    ("GET", "/workspaces"): ("/workspaces", {}),
    ("POST", "/workspaces"): ("/workspaces", {"name": "walked", "folder": "default"}),
    ("POST", "/workspaces/{name:str}/folder"): ("/workspaces/walked/folder", {"folder": "walk-lab"}),
    ("POST", "/folders"): ("/folders", {"name": "walk-folder", "description": "made by the walk"}),
    ("POST", "/folders/{name:str}/delete"): ("/folders/walk-folder/delete", {}),
    ("GET", "/roles"): ("/roles?need=devices.read&need=devices.write", {}),
    ("GET", "/roles/new"): ("/roles/new?from=viewer", {}),
    ("GET", "/roles/{name:str}"): ("/roles/field-tech", {}),
    ("POST", "/roles"): ("/roles", {"name": "walk-role", "description": "walk", "perm-nodes.read": "on"}),
    ("POST", "/roles/{name:str}"): ("/roles/walk-role", {"description": "walked", "perm-nodes.read": "on",
                                                         "perm-devices.read": "on"}),
    ("POST", "/roles/{name:str}/delete"): ("/roles/walk-role/delete", {}),
    ("GET", "/upgrades"): ("/upgrades", {}),
    ("GET", "/files"): ("/files", {}),
    ("POST", "/files"): ("/files", {"node": NODE}),  # no file chosen
    ("GET", "/files/{file_id:str}"): ("/files/{file}", {}),
    ("GET", "/files/{file_id:str}/download"): ("/files/{file}/download", {}),
    ("POST", "/files/{file_id:str}/delete"): ("/files/0123456789abcdef0123456789abcdef/delete", {}),
    ("GET", "/users"): ("/users", {}),
    ("POST", "/users"): ("/users", {"name": "walked", "role": "viewer", "scope": "workspace:default",
                                    "password": "walked-pass-1"}),
    ("POST", "/users/{name:str}"): ("/users/walked", {"role": "operator", "scope": "platform"}),
    ("POST", "/users/{name:str}/password"): ("/users/walked/password", {"password": "walked-pass-2"}),
    ("POST", "/users/{name:str}/remove"): ("/users/walked/remove", {}),
    ("POST", "/upgrades"): ("/upgrades", {"node": NODE}),
    ("GET", "/upgrades/new"): ("/upgrades/new", {}),
    ("GET", "/upgrades/{task:str}"): ("/upgrades/{task}", {}),
    ("POST", "/upgrades/{task:str}/stop"): ("/upgrades/{task}/stop", {}),
    ("GET", "/workloads"): ("/workloads", {}),
    ("GET", "/workloads/{namespace:str}/{name:str}"): ("/workloads/default/app", {}),
    ("POST", "/workloads/{namespace:str}/{name:str}/action"): ("/workloads/default/app/action",
                                                               {"action": "start", "node": "nowhere"}),
    ("POST", "/workloads/{namespace:str}/{name:str}/rollback"): ("/workloads/default/app/rollback",
                                                                 {"kind": "Workload", "source": "app",
                                                                  "version": "1"}),
}
# forms the walk fills so that they are refused, and say why on the next page
REFUSED = {("POST", "/nodes/{name:str}/remove"), ("POST", "/workloads/{namespace:str}/{name:str}/action"),
           ("POST", "/api-tokens/{token_id:str}/revoke"),
           ("POST", "/upgrades"), ("POST", "/files"), ("POST", "/files/{file_id:str}/delete")}


def upgrade_task(fleet: Fleet) -> str:
    """A running upgrade task for the node (its wheel is a name only: the node never gets that far)."""
    wheels = fleet.tmp_path / "wheels"
    wheels.mkdir(exist_ok=True)
    (wheels / "fieldgate-9.9.0-py3-none-any.whl").write_bytes(b"")
    made = cli(fleet.registry, "upgrade", "create", "--version", "9.9.0", "--wheels", str(wheels), "--nodes", NODE,
               "--json").stdout
    task: str = json.loads(made)["id"]
    return task


def test_every_page_route_answers_each_role_as_the_role_allows(fleet: Fleet) -> None:
    routes = page_routes()
    assert {(method, path) for method, path, _ in routes} == set(WALK) | {("POST", "/logout")}, \
        "a page route without an entry in WALK (or one gone)"
    revocable = token(fleet.registry).split(".")[0]
    cli(fleet.registry, "workspace", "create", "walk-spare", "--folder", "walk-lab")
    (fleet.tmp_path / "walk-batch.yaml").write_text(WALK_BATCH)
    cli(fleet.registry, "apply", "-f", str(fleet.tmp_path / "walk-batch.yaml"))
    (fleet.tmp_path / "walk-route.yaml").write_text(WALK_ROUTE)
    cli(fleet.registry, "apply", "-f", str(fleet.tmp_path / "walk-route.yaml"))
    task = upgrade_task(fleet)
    (fleet.tmp_path / "walk.bin").write_bytes(b"walk")
    pushed = cli(fleet.registry, "files", "push", str(fleet.tmp_path / "walk.bin"), "--node", NODE, "--registry",
                 fleet.registry.url, "--json")
    file_id = json.loads(pushed.stdout)["id"]
    with session(fleet.registry, None) as anonymous:
        for method, path, _ in sorted(routes):
            concrete = WALK.get((method, path), (path, {}))[0].format(revocable=revocable, task=task, file=file_id)
            answer = anonymous.client.request(method, concrete)
            assert answer.status_code == 303 and answer.headers["location"].startswith("/login"), (method, path)
    for role, permissions in WALKERS.items():
        with session(fleet.registry, role) as pages:
            for method, path, needed in sorted(routes):
                if (method, path) == ("POST", "/logout"):
                    continue
                concrete, fields = WALK[(method, path)]
                concrete = concrete.format(revocable=revocable, task=task, file=file_id)
                answer = pages.get(concrete) if method == "GET" else pages.post(concrete, fields)
                allowed = not needed or bool(permissions & set(needed))
                expected = ({200} if method == "GET" else {200, 303}) if allowed else {403}
                assert answer.status_code in expected, (role, method, path, answer.status_code, answer.text[-600:])
                if method == "POST" and allowed and answer.status_code == 303:
                    shown = pages.get(answer.headers["location"])
                    refusals = re.findall(r'class="flash error"[^>]*>([^<]*)', shown.text)
                    assert shown.status_code == 200 and bool(refusals) == ((method, path) in REFUSED), (
                        role, method, path, refusals)
            # a form without the session's CSRF token is refused, whatever the role
            assert pages.client.post(f"/nodes/{NODE}/scheduling", data={"action": "pause"}).status_code == 403
            assert pages.post("/logout").status_code == 303
            assert pages.get("/").status_code == 303
    for kind, name in (("Workload", "walk-app"), ("Secret", "walk-secret"), ("BatchWorkload", "walk-batch"),
                       ("Route", "walk-route"), ("Endpoint", "walk-in"), ("Endpoint", "walk-out")):
        cli(fleet.registry, "delete", kind, name)  # the later tests count the fleet's apps
    audit = cli(fleet.registry, "audit", "--limit", "400").stdout
    for action in ("node.change", "group.create", "group.change", "group.delete", "join-token.create",
                   "join-token.revoke", "batch.create", "document.apply", "device.set-desired", "user.add",
                   "user.change", "user.password", "user.remove", "token.create", "workspace.create",
                   "upgrade.stop", "role.create", "role.change", "role.delete", "folder.create", "folder.delete",
                   "workspace.move", "document.delete"):
        assert f" {action} " in audit, action


def test_browsers_get_error_pages_and_api_callers_error_bodies(fleet: Fleet) -> None:
    with session(fleet.registry, None) as anonymous:
        missing = anonymous.get("/tokens")
        assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")
        assert "Not found" in missing.text and 'href="/"' in missing.text
        api = anonymous.get("/api/v1/nothing")
        assert api.status_code == 404 and api.json()["status_code"] == 404
    with session(fleet.registry, "viewer") as pages:
        gone = pages.get("/nodes/no-such-node")
        assert gone.status_code == 404 and "no node no-such-node" in gone.text and "Log out" in gone.text
        assert pages.get("/devices/default/nothing").status_code == 404
        refused = pages.get("/audit")
        assert refused.status_code == 403 and "the viewer role cannot see this page; admin can" in refused.text


def test_the_overview_counts_and_alerts_link_to_their_lists(fleet: Fleet) -> None:
    with session(fleet.registry, "operator") as pages:
        # a refused desired value: the node says why with its next heartbeat
        pages.post("/devices/plant/meter-7/desired", {"property": "limit", "value": "99", "node": NODE})
        version = beat(fleet.registry, fleet.node_dir, {"desired_version": 0})["desired"][-1]["version"]
        refusal = {"device": "plant/meter-7", "property": "limit", "version": version,
                   "error": "limit: above the maximum 50"}
        beat(fleet.registry, fleet.node_dir, {"desired_version": version,
                                              "desired_ack": {"version": version, "errors": [refusal]}})
        overview = pages.get("/")
        assert overview.status_code == 200
        assert re.search(r'id="nodes-healthy">1<', overview.text) and re.search(r'id="nodes-total">1<', overview.text)
        assert re.search(r'id="devices-total">2<', overview.text) and 'href="/devices?state=online"' in overview.text
        assert re.search(r'id="apps-total">1<', overview.text) and 'href="/workloads?status=failed"' in overview.text
        assert 'href="/upgrades?state=running"' in overview.text
        alert = re.search(r'<tr data-alert="desired value refused"[^>]*>.*?</tr>', overview.text, re.S)
        assert alert and "limit: above the maximum 50" in alert.group(0) and "plant/meter-7" in alert.group(0)
        device = pages.get(f"/devices/plant/meter-7?node={NODE}").text
        assert "refused" in device and "limit: above the maximum 50" in device
        assert pages.get("/devices?delivery=refused").text.count("data-device=") == 1


def test_workload_statuses_have_the_colours_of_the_local_ui(fleet: Fleet) -> None:
    with session(fleet.registry, "viewer") as pages:
        for path in ("/workloads", "/workloads/default/app", f"/nodes/{NODE}"):
            assert 'class="badge unhealthy" data-status="pending"' in pages.get(path).text, path


def test_every_device_a_node_reports_is_listed_with_its_latest_values_and_units(fleet: Fleet) -> None:
    with session(fleet.registry, "viewer") as pages:
        listing = pages.get("/devices").text
        meter = re.search(r'<tr data-device="plant/meter-7".*?</tr>', listing, re.S)
        assert meter, "a device only the node knows is missing from the fleet's list"
        assert "sdm630" in meter.group(0) and ">4.25 kW</strong>" in meter.group(0)
        assert ">1234.568 kWh</strong>" in meter.group(0)  # three decimals at most, not the float's noise
        assert ">10</strong>" in meter.group(0)  # an integer as an integer
        boiler = re.search(r'<tr data-device="default/boiler-1".*?</tr>', listing, re.S)
        assert boiler and ">21 \u00b0C</strong>" in boiler.group(0) and "registry" in boiler.group(0)
        assert "degC" not in boiler.group(0)
        node = pages.get(f"/nodes/{NODE}").text
        assert 'data-device="plant/meter-7"' in node and 'data-device="default/boiler-1"' in node
        assert ">1234.568 kWh</strong>" in node and ">21 \u00b0C</strong>" in node
        device = pages.get("/devices/plant/meter-7", params={"node": NODE}).text
        assert ">1234.568 kWh</td>" in device
        assert "4.2.0" in node and "(seen by the registry)" in node
        assert pages.get("/devices?q=meter").text.count("data-device=") == 1
        assert pages.get(f"/devices?node={NODE}&state=online").text.count("data-device=") == 2


def test_registry_serve_prints_the_first_admin_command_and_the_url(tmp_path: Path) -> None:
    from tests.conftest import free_port

    port = free_port()
    process = subprocess.Popen([*FIELDGATE, "registry", "serve", "--listen", f"127.0.0.1:{port}", "--data-dir",
                                str(tmp_path / "r")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(4)]
    finally:
        stop(process)
    text = "".join(lines)
    assert f"https://127.0.0.1:{port}/" in lines[0] and "CA fingerprint sha256" in lines[0]
    assert (f"fieldgate registry user add admin --role admin --scope platform --password-stdin --data-dir "
            f"{tmp_path / 'r'}") in text
    assert f"open https://127.0.0.1:{port}/ in a browser and log in" in text and "/api/v1/ca" in text
    added = subprocess.run([*FIELDGATE, "registry", "user", "add", "admin", "--role", "admin", "--scope", "platform",
                            "--password-stdin", "--data-dir", str(tmp_path / "r")], input="first-admin-pw\n",
                           capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    assert cli_users(tmp_path / "r") == ["admin admin platform"]


def cli_users(data_dir: Path) -> list[str]:
    listed = subprocess.run([*FIELDGATE, "registry", "user", "list", "--data-dir", str(data_dir)],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    return [" ".join(line.split()) for line in listed.splitlines()]


def test_join_tokens_with_a_name_prefix_and_the_commands_to_run(fleet: Fleet) -> None:
    with session(fleet.registry, "admin") as pages:
        made = pages.post("/join-tokens", {"prefix": "north", "labels": "site=north", "max_uses": "2"})
        assert made.status_code == 200
        secret = re.search(r'<pre id="new-token">([^<]+)</pre>', made.text)
        assert secret
        command = re.search(r'<pre id="join-command">([^<]+)</pre>', made.text)
        assert command
        assert f"fieldgate join --registry {fleet.registry.url} --token {secret.group(1)}" in command.group(1)
        fingerprint = re.search(r'id="ca-fingerprint">([0-9A-F:]+)<', made.text)
        assert fingerprint and len(fingerprint.group(1)) == 95
        assert 'href="/api/v1/ca" download=' in made.text
        bad = pages.post("/join-tokens", {"prefix": "Not_OK"})
        assert bad.status_code == 400 and "prefix 'Not_OK'" in html.unescape(bad.text)
    assert join(fleet.registry, secret.group(1), fleet.tmp_path / "joined").returncode == 0
    [joined] = [name for name in fleet.registry.nodes() if name.startswith("north-")]
    assert re.fullmatch(r"north-[0-9a-f]{6}", joined)
    # the token's labels put it in the group whose selector takes them
    assert fleet.registry.nodes()[joined]["group"] == "line-a"
    cli(fleet.registry, "nodes", "remove", joined)


def test_groups_by_selector_and_names_with_a_preview(fleet: Fleet) -> None:
    assert join(fleet.registry, token(fleet.registry, "--labels", "site=south"), fleet.tmp_path / "gw-s", "--name",
                "gw-s").returncode == 0
    with session(fleet.registry, "admin") as pages:
        preview = pages.get("/groups/preview", params={"selector": "site=south"}).json()
        assert [n["name"] for n in preview["nodes"]] == ["gw-s"] and preview["problems"] == []
        taken = pages.get("/groups/preview", params={"nodes": f"{NODE}, ghost"}).json()
        assert taken["problems"] == ["no node ghost in workspace default",
                                     f"node {NODE} is in group line-a already (a node is in at most one group)"]
        assert pages.get("/groups/preview", params={"selector": "site"}).json()["problems"] == [
            "selector: expected key=value pairs separated by commas, got 'site'"]
        assert 'data-node="gw-s"' in pages.get("/groups/new", params={"selector": "site=south"}).text
        refused = pages.post("/groups", {"name": "south", "nodes": NODE})
        assert refused.status_code == 400 and "is in group line-a already" in refused.text
        made = pages.post("/groups", {"name": "south", "selector": "site=south"})
        assert made.status_code == 303 and made.headers["location"] == "/groups/south"
        assert 'data-node="gw-s"' in pages.get("/groups/south").text
        assert pages.post("/groups/south", {"nodes": "gw-s", "selector": ""}).status_code == 303
        assert pages.get("/nodes?group=south").text.count("data-node=") == 1
        assert pages.post("/groups/south/delete").status_code == 303
        assert pages.get("/groups/south").status_code == 404
    cli(fleet.registry, "nodes", "remove", "gw-s")


def test_a_node_changed_and_removed_from_its_page(fleet: Fleet) -> None:
    assert join(fleet.registry, token(fleet.registry), fleet.tmp_path / "gw-x", "--name", "gw-x").returncode == 0
    with session(fleet.registry, "admin") as pages:
        assert pages.post("/nodes/gw-x/settings", {"alias": "spare box", "labels": "rack=7, site=west"}
                          ).status_code == 303
        bad = pages.post("/nodes/gw-x/settings", {"labels": "rack"})
        assert bad.status_code == 303 and "Not saved" in pages.get("/nodes/gw-x").text
        assert pages.post("/nodes/batch", {"node": "gw-x", "action": "pause"}).status_code == 303
        assert "node.change by user:admin: ok" in pages.get("/nodes/gw-x").text
        node = fleet.registry.nodes()["gw-x"]
        assert node["labels"] == {"rack": "7", "site": "west"} and node["alias"] == "spare box" and node["paused"]
        assert pages.get("/nodes", params={"q": "spare"}).text.count("data-node=") == 1
        assert pages.get("/nodes", params={"label": "rack=7", "state": "paused"}).text.count("data-node=") == 1
        assert pages.post("/nodes/gw-x/scheduling", {"action": "resume"}).status_code == 303
        assert pages.post("/nodes/gw-x/remove", {"confirm": "gw-"}).status_code == 303
        assert "gw-x" in fleet.registry.nodes()
        assert "type the node's name" in html.unescape(pages.get("/nodes/gw-x").text)
        assert pages.post("/nodes/gw-x/remove", {"confirm": "gw-x"}).status_code == 303
        assert "gw-x" not in fleet.registry.nodes()


def test_models_and_devices_through_forms_the_editor_and_a_bind(fleet: Fleet) -> None:
    with session(fleet.registry, "admin") as pages:
        broken = pages.post("/editor", {"yaml": "kind: Device\nname: bad\nmodel: thermo\nprotocol: {name: virtual}\n"
                                                "properties:\n  - {name: t, collect_interval: soon}\n"})
        assert broken.status_code == 400
        assert "editor: document 1 (Device bad): $.properties[0].collect_interval" in broken.text
        assert pages.post("/editor", {"yaml": "kind: Route\nname: r\n"}).status_code == 400
        made = pages.post("/devices/edit", {"name": "boiler-2", "model": "thermo", "node": NODE, "protocol": "virtual",
                                            "rows": "1", "prop-0-name": "setpoint",
                                            "prop-0-visitor": "{generator: memory, initial: 20}"})
        assert made.status_code == 303

        def row() -> str:
            found = re.search(r'<tr data-device="default/boiler-2".*?</tr>', pages.get("/models").text, re.S)
            assert found
            return found.group(0)

        assert f"/nodes/{NODE}" in row()
        assert pages.post("/devices/default/boiler-2/bind", {"node": ""}).status_code == 303
        assert f"/nodes/{NODE}" not in row() and ">none<" in row()
        assert pages.post("/devices/default/boiler-2/bind", {"node": NODE}).status_code == 303
        assert f"/nodes/{NODE}" in row()
        bad_yaml = pages.post("/devices/edit", {"name": "boiler-3", "protocol": "virtual", "protocol_config": "{a: [",
                                                "rows": "0"})
        assert bad_yaml.status_code == 400 and "protocol config: invalid YAML" in bad_yaml.text
        editor = pages.get("/editor", params={"kind": "DeviceModel", "name": "thermo"}).text
        assert "name: thermo" in editor and "unit: degC" in editor


def test_a_batch_bundle_downloads_from_the_join_page(fleet: Fleet) -> None:
    import io
    import json
    import tarfile

    with session(fleet.registry, "admin") as pages:
        answer = pages.post("/join/bundle", {"name": "line-9", "count": "3", "ttl": "2d", "labels": "line=9",
                                             "prefix": "l9"})
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/gzip"
        assert answer.headers["content-disposition"] == 'attachment; filename="line-9.tar.gz"'
        with tarfile.open(fileobj=io.BytesIO(answer.content)) as tar:
            extracted = tar.extractfile("bundle.json")
            assert extracted is not None
            info = json.loads(extracted.read())
        assert info["registry"] == [fleet.registry.url] and info["labels"] == {"line": "9"}
        again = pages.post("/join/bundle", {"name": "line-9"})
        assert again.status_code == 400 and "batch line-9 exists already" in again.text
        assert 'data-batch="line-9"' in pages.get("/join/bundle").text
