"""The registry's Apps pages against a real registry over TLS: Workloads and BatchWorkloads made and changed through
the form and the YAML editor (with the loader's problems), a BatchWorkload on two node groups with per-group
overrides as its nodes get it, the batch view with each node's state and failure reason, versions and a rollback,
ConfigItems and Secrets whose values never reach a browser, roles, workspaces and the audit log. The tests share
one registry with two joined nodes and build on it."""

from __future__ import annotations

import html
import json
import re
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.registry.store import ROLES
from tests.registry.conftest import Registry, stop
from tests.registry.test_access import add_user, cli, join, token
from tests.registry.test_pages import beat, session

SECRET_VALUE = "s3cret-Value-7f1d"  # must never appear in a page
NEW_SECRET_VALUE = "n3w-Secret-91ab"


class Apps:
    def __init__(self, registry: Registry, tmp_path: Path) -> None:
        self.registry = registry
        self.tmp_path = tmp_path
        self.nodes: dict[str, Path] = {}
        for node, site in (("gw-a", "north"), ("gw-b", "south")):
            self.nodes[node] = tmp_path / node
            assert join(registry, token(registry, "--labels", f"site={site}"), self.nodes[node], "--name",
                        node).returncode == 0
            beat(registry, self.nodes[node], {})
        cli(registry, "group", "create", "line-a", "--selector", "site=north")
        cli(registry, "group", "create", "line-b", "--selector", "site=south")
        cli(registry, "workspace", "create", "plant-b", "--folder", "east")
        for role in ROLES:
            add_user(registry, tmp_path, role, "--role", role, "--scope", "platform")
        add_user(registry, tmp_path, "east", "--role", "admin", "--scope", "workspace:plant-b")

    def documents(self, node: str) -> dict[tuple[str, str], dict[str, Any]]:
        """What a node gets with a heartbeat: (kind, name) → document."""
        answer = beat(self.registry, self.nodes[node], {})
        return {(d["kind"], d["name"]): d for d in answer.get("documents") or []}


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Apps]:
    tmp_path = tmp_path_factory.mktemp("registry-apps")
    registry = Registry(tmp_path / "registry")
    registry.start()
    try:
        yield Apps(registry, tmp_path)
    finally:
        if registry.process is not None:
            stop(registry.process)


def _config_and_secret(pages: Any) -> None:
    made = pages.post("/configs/edit", {"kind": "ConfigItem", "name": "settings", "is_new": "1", "rows": "2",
                                        "data-0-key": "mode", "data-0-value": "eco", "data-1-key": "level",
                                        "data-1-value": "3"})
    assert made.status_code == 303, made.text
    made = pages.post("/configs/edit", {"kind": "Secret", "name": "db", "is_new": "1", "rows": "1",
                                        "data-0-key": "password", "data-0-value": SECRET_VALUE})
    assert made.status_code == 303, made.text


WORKLOAD_FORM = {
    "kind": "Workload", "name": "meter-app", "is_new": "1", "runtime": "process", "command": "sleep\n600",
    "env": "GREETING=hello, world\nLEVEL=2", "replicas": "2", "restart": "on-failure",
    "ref_rows": "3", "ref-2-use": "env", "port-1-protocol": "tcp",  # the selects of empty rows are sent too
    "ref-0-use": "env", "ref-0-as": "DB_PASSWORD", "ref-0-from": "Secret/db", "ref-0-key": "password",
    "ref-1-use": "file", "ref-1-as": "conf/mode", "ref-1-from": "ConfigItem/settings", "ref-1-key": "mode",
    "port_rows": "2", "port-0-name": "http", "port-0-host_port": "0", "port-0-protocol": "tcp",
    "health_type": "tcp", "health_port": "http", "health_interval": "2s", "health_failure_threshold": "4",
    "limit_memory": "64Mi", "limit_cpu": "0.5", "node": "gw-a",
}


def test_a_workload_through_the_form_and_the_editor(apps: Apps) -> None:
    with session(apps.registry, "admin") as pages:
        _config_and_secret(pages)
        assert "Secret/db" in pages.get("/apps/edit?kind=Workload").text  # offered as a source
        saved = pages.post("/apps/edit", WORKLOAD_FORM)
        assert saved.status_code == 303 and saved.headers["location"] == "/workloads/default/meter-app"
        workload = apps.documents("gw-a")[("Workload", "meter-app")]
        assert workload["command"] == ["sleep", "600"] and workload["env"] == {"GREETING": "hello, world",
                                                                                "LEVEL": "2"}
        assert workload["env_from"] == [{"name": "DB_PASSWORD", "secret": "db", "key": "password"}]
        assert workload["files"] == [{"path": "conf/mode", "config_item": "settings", "key": "mode"}]
        assert workload["ports"] == [{"name": "http"}] and workload["replicas"] == 2
        assert workload["health"]["type"] == "tcp" and workload["health"]["failure_threshold"] == 4
        assert workload["limits"] == {"memory": 64 << 20, "cpu": 0.5} and workload["restart"] == "on-failure"
        assert ("Workload", "meter-app") not in apps.documents("gw-b")
        # the edit form shows what is stored; the editor adds a field the form has not, and the form keeps it
        form = pages.get("/apps/edit", params={"kind": "Workload", "name": "meter-app"}).text
        assert "GREETING=hello, world" in form and 'value="67108864"' in form and "readonly" in form
        yaml_text = pages.get("/editor", params={"kind": "Workload", "name": "meter-app"}).text
        assert "name: meter-app" in yaml_text and "DB_PASSWORD" in yaml_text
        edited = pages.post("/editor", {"yaml": "kind: Workload\nname: meter-app\nnode: gw-a\ncommand: [sleep, '600']\n"
                                                "working_dir: /tmp\n"})
        assert edited.status_code == 303 and edited.headers["location"] == "/apps"
        again = pages.post("/apps/edit", {**WORKLOAD_FORM, "is_new": "0", "replicas": "3"})
        assert again.status_code == 303, again.text
        workload = apps.documents("gw-a")[("Workload", "meter-app")]
        assert workload["replicas"] == 3 and workload["working_dir"] == "/tmp"
        # a bad field is answered with the loader's problem naming the document and the field; nothing is saved
        bad = pages.post("/apps/edit", {**WORKLOAD_FORM, "is_new": "0", "port-0-host_port": "99999"})
        assert bad.status_code == 400
        assert "app form: document 1 (Workload meter-app): $.ports[0].host_port" in bad.text
        assert apps.documents("gw-a")[("Workload", "meter-app")]["ports"] == [{"name": "http"}]
        taken = pages.post("/apps/edit", WORKLOAD_FORM)
        assert taken.status_code == 400 and "exists already" in taken.text
        listed = pages.get("/apps").text
        assert 'data-app="Workload/default/meter-app"' in listed and "/nodes/gw-a" in listed


def test_the_editor_takes_app_documents_with_the_loaders_problems(apps: Apps) -> None:
    with session(apps.registry, "admin") as pages:
        broken = pages.post("/editor", {"yaml": "kind: ConfigItem\nname: c1\ndata: {a: b}\n---\nkind: BatchWorkload\n"
                                                "name: b1\ntemplate: {command: [x]}\ngroups:\n  - {group: line-a, "
                                                "replicas: many}\n"})
        assert broken.status_code == 400
        assert "editor: document 2 (BatchWorkload b1): $.groups[0].replicas" in broken.text
        missing = pages.post("/editor", {"yaml": "kind: Workload\nname: w1\ncommand: [x]\nenv_from: [{name: A, "
                                                 "config_item: nowhere, key: k}]\n"})
        assert missing.status_code == 400 and "ConfigItem default/nowhere is not at the registry" in missing.text
        assert pages.post("/editor", {"yaml": "kind: ConfigItem\nname: c1\ndata: {a: b}\n"}).status_code == 303
        assert "a: b" in pages.get("/editor", params={"kind": "ConfigItem", "name": "c1"}).text


def _batch_form(**extra: str) -> dict[str, str]:
    return {"kind": "BatchWorkload", "name": "pump", "is_new": "1", "runtime": "process", "command": "sleep\n600",
            "env": "MODE=template", "group_rows": "2", "group-0-group": "line-a", "group-0-env": "MODE=fast",
            "group-0-replicas": "2", "group-1-group": "line-b", "group-1-command": "sleep 300",
            "group-1-args": "--port 8080 --name 'line b'", "args": "--port\n80",
            "failover_after": "30s", "failover_move_back": "1", **extra}


def test_a_batch_workload_on_two_groups_with_overrides_its_view_and_rollback(apps: Apps) -> None:
    with session(apps.registry, "admin") as pages:
        made = pages.post("/apps/edit", _batch_form())
        assert made.status_code == 303 and made.headers["location"] == "/apps/batch/default/pump"
        a, b = apps.documents("gw-a")[("Workload", "pump.gw-a")], apps.documents("gw-b")[("Workload", "pump.gw-b")]
        assert a["env"] == {"MODE": "fast"} and a["replicas"] == 2 and a["command"] == ["sleep", "600"]
        assert b["env"] == {"MODE": "template"} and b["command"] == ["sleep", "300"] and "replicas" not in b
        assert a["args"] == ["--port", "80"]  # the template's
        assert b["args"] == ["--port", "8080", "--name", "line b"]  # line-b's override
        form = pages.get("/apps/edit", params={"kind": "BatchWorkload", "name": "pump"}).text
        assert 'value="MODE=fast"' in form and 'value="sleep 300"' in form
        assert 'name="group-1-args" value="--port 8080 --name &#39;line b&#39;"' in form
        unclosed = pages.post("/apps/edit", _batch_form(is_new="0", **{"group-1-args": "--name 'line b"}))
        assert unclosed.status_code == 400 and "group line-b: args: No closing quotation" in unclosed.text
        # the nodes report: one runs, one failed with its reason
        beat(apps.registry, apps.nodes["gw-a"], {"workloads": [{"workload": "default/pump.gw-a", "status": "running",
                                                                "replicas": 2, "ready": 2}]})
        beat(apps.registry, apps.nodes["gw-b"], {"workloads": [{"workload": "default/pump.gw-b", "status": "failed",
                                                                "reason": "exited with code 3", "replicas": 1}]})
        view = pages.get("/apps/batch/default/pump").text
        row_a = re.search(r'<tr data-node="gw-a" data-status="running">.*?</tr>', view, re.S)
        row_b = re.search(r'<tr data-node="gw-b" data-status="failed">.*?</tr>', view, re.S)
        assert row_a and "2/2" in row_a.group(0)
        assert row_b and "exited with code 3" in row_b.group(0)
        assert 'id="batch-failures"' in view and 'data-override="env"' in view and 'data-override="args"' in view
        assert 'data-group="line-a"' in view and 'data-group="line-b"' in view
        # version 2 changes line-a's override; a rollback to version 1 brings it back
        assert pages.post("/apps/edit", _batch_form(is_new="0", **{"group-0-env": "MODE=slow"})).status_code == 303
        assert apps.documents("gw-a")[("Workload", "pump.gw-a")]["env"] == {"MODE": "slow"}
        assert 'data-version="2" class="current"' in pages.get("/apps/batch/default/pump").text
    with session(apps.registry, "operator") as pages:
        done = pages.post("/apps/batch/default/pump/rollback", {"version": "1"})
        assert done.status_code == 303
        assert "rolled back to version 1: now version 3" in pages.get(done.headers["location"]).text
        assert apps.documents("gw-a")[("Workload", "pump.gw-a")]["env"] == {"MODE": "fast"}
        missing = pages.post("/apps/batch/default/pump/rollback", {"version": "40"})
        assert "has no version 40" in pages.get(missing.headers["location"]).text
    audit = cli(apps.registry, "audit", "--limit", "200").stdout
    assert "document.rollback" in audit and "BatchWorkload/default/pump" in audit


def test_secrets_are_masked_kept_and_never_sent_to_a_browser(apps: Apps) -> None:
    pages_seen: list[str] = []
    with session(apps.registry, "admin") as pages:
        if ("Secret", "db") not in apps.documents("gw-a"):
            _config_and_secret(pages)
            pages.post("/apps/edit", WORKLOAD_FORM)
        for path in ("/configs", "/configs/edit?kind=Secret&name=db", "/editor?kind=Secret&name=db", "/apps",
                     "/workloads", "/workloads/default/meter-app", "/audit"):
            answer = pages.get(path)
            assert answer.status_code == 200, path
            pages_seen.append(answer.text)
        assert "(kept)" in pages_seen[2] and "password" in pages_seen[0]
        # an empty value keeps the stored one; a typed one replaces it; a failed save does not echo it
        kept = pages.post("/configs/edit", {"kind": "Secret", "name": "db", "rows": "2", "data-0-key": "password",
                                            "data-0-was": "password", "data-0-value": "", "data-1-key": "user",
                                            "data-1-value": "pump"})
        assert kept.status_code == 303, kept.text
        assert apps.documents("gw-a")[("Secret", "db")]["data"] == {"password": SECRET_VALUE, "user": "pump"}
        refused = pages.post("/configs/edit", {"kind": "Secret", "name": "db", "rows": "2",
                                               "data-0-key": "password", "data-0-was": "password",
                                               "data-0-value": NEW_SECRET_VALUE, "data-1-key": "bad key!",
                                               "data-1-value": "x"})
        assert refused.status_code == 400 and "secret form: document 1 (Secret db): $: " in refused.text
        assert "at key in $.data" in refused.text
        pages_seen.append(refused.text)
        through_editor = pages.post("/editor", {"yaml": "kind: Secret\nname: db\ndata: {password: (kept), user: "
                                                        "pump, extra: plain}\n"})
        assert through_editor.status_code == 303, through_editor.text
        assert apps.documents("gw-a")[("Secret", "db")]["data"] == {"password": SECRET_VALUE, "user": "pump",
                                                                     "extra": "plain"}
        quoted = pages.post("/configs/edit", {"kind": "Secret", "name": "short", "is_new": "1", "rows": "2",
                                              "data-0-key": "pin", "data-0-value": "Zq9", "data-1-key": "bad key!",
                                              "data-1-value": "x"})
        assert quoted.status_code == 400 and "********" in quoted.text and "Zq9" not in quoted.text
        unknown = pages.post("/editor", {"yaml": "kind: Secret\nname: db\ndata: {nokey: (kept)}\n"})
        assert unknown.status_code == 400 and "$.data.nokey: (kept) keeps a stored value" in unknown.text
        pages_seen.append(unknown.text)
        replaced = pages.post("/configs/edit", {"kind": "Secret", "name": "db", "rows": "1", "data-0-key": "password",
                                                "data-0-was": "password", "data-0-value": NEW_SECRET_VALUE})
        assert replaced.status_code == 303
        assert apps.documents("gw-a")[("Secret", "db")]["data"] == {"password": NEW_SECRET_VALUE}
        for path in ("/configs", "/configs/edit?kind=Secret&name=db", "/editor?kind=Secret&name=db"):
            pages_seen.append(pages.get(path).text)
        listed = pages.get("/configs").text
        assert 'data-configitem="default/settings"' in listed and "mode=eco" in listed
        assert "Workload meter-app" in listed  # the apps that use it
    for text in pages_seen:
        assert SECRET_VALUE not in text and NEW_SECRET_VALUE not in text


def test_roles_workspaces_and_the_audit_log(apps: Apps) -> None:
    with session(apps.registry, "viewer") as pages:
        assert pages.get("/apps").status_code == 200 and pages.get("/configs").status_code == 200
        assert pages.get("/apps/edit").status_code == 403
        assert pages.post("/apps/edit", _batch_form(name="nope")).status_code == 403
        assert pages.post("/configs/edit", {"kind": "ConfigItem", "name": "nope", "rows": "0"}).status_code == 403
        assert pages.post("/apps/batch/default/pump/rollback", {"version": "1"}).status_code == 403
        assert "Rollback to" not in pages.get("/apps/batch/default/pump").text
    with session(apps.registry, "operator") as pages:
        assert pages.post("/apps/edit", _batch_form(name="nope")).status_code == 403
        assert pages.get("/configs/edit?kind=Secret").status_code == 403
        assert pages.client.post("/apps/batch/default/pump/rollback", data={"version": "1"}).status_code == 403
    with session(apps.registry, "east") as pages:  # an admin of workspace plant-b sees none of default's apps
        assert "meter-app" not in pages.get("/apps").text
        assert 'data-configitem="default/settings"' not in pages.get("/configs").text
        assert pages.get("/apps/batch/default/pump").status_code == 404
        assert pages.get("/apps/edit", params={"kind": "Workload", "name": "meter-app"}).status_code == 404
        assert pages.get("/configs/edit", params={"kind": "Secret", "name": "db"}).status_code == 404
        made = pages.post("/configs/edit", {"kind": "ConfigItem", "name": "east-conf", "is_new": "1",
                                            "workspace": "plant-b", "rows": "1", "data-0-key": "k",
                                            "data-0-value": "v"})
        assert made.status_code == 303, made.text
        foreign = pages.post("/configs/edit", {"kind": "ConfigItem", "name": "x", "is_new": "1",
                                               "workspace": "default", "rows": "0"})
        assert foreign.status_code == 400 and "no such workspace" in foreign.text
        # the batch's nodes are in default: a batch here would not see them, and neither can it take default's
        taken = pages.post("/apps/edit", _batch_form(workspace="plant-b"))
        assert taken.status_code == 400
    with session(apps.registry, "admin") as pages:
        assert "east-conf" in pages.get("/configs").text
    audit = cli(apps.registry, "audit", "--limit", "400", "--json").stdout
    entries = [json.loads(line) for line in audit.splitlines()]
    for actor, target in (("user:admin", "ConfigItem/default/settings"), ("user:admin", "Secret/default/db"),
                          ("user:admin", "Workload/default/meter-app"), ("user:admin", "BatchWorkload/default/pump"),
                          ("user:east", "ConfigItem/default/east-conf")):
        assert any(e["action"] == "document.apply" and e["actor"] == actor and e["outcome"] == "ok"
                   and target in str(e["detail"]) for e in entries), target
    assert any(e["action"] == "document.rollback" and e["actor"] == "user:operator" for e in entries)
    assert SECRET_VALUE not in audit and NEW_SECRET_VALUE not in audit


def flashes(page: Any, kind: str) -> list[str]:
    return [re.sub(r"\s+", " ", html.unescape(text)).strip()
            for text in re.findall(rf'class="flash {kind}"[^>]*>([^<]*)', page.text)]


def test_apps_config_items_and_secrets_are_deleted_from_their_lists(apps: Apps) -> None:
    with session(apps.registry, "admin") as pages:
        pages.post("/configs/edit", {"kind": "ConfigItem", "name": "doomed-conf", "is_new": "1", "rows": "1",
                                     "data-0-key": "k", "data-0-value": "v"})
        pages.post("/configs/edit", {"kind": "Secret", "name": "doomed-secret", "is_new": "1", "rows": "1",
                                     "data-0-key": "k", "data-0-value": "v"})
        app = {**WORKLOAD_FORM, "name": "doomed-app", "ref_rows": "2", "ref-0-from": "Secret/doomed-secret",
               "ref-0-key": "k", "ref-1-from": "ConfigItem/doomed-conf", "ref-1-key": "k"}
        assert pages.post("/apps/edit", app).status_code == 303
        batch = _batch_form(name="doomed-batch")
        assert pages.post("/apps/edit", batch).status_code == 303
        listed = pages.get("/apps").text
        assert re.search(r'action="/apps/delete" class="inline" data-confirm="Delete Workload default/doomed-app\?',
                         listed)
        assert 'aria-label="delete BatchWorkload default/doomed-batch"' in listed
        configs = pages.get("/configs").text
        assert 'data-confirm="Delete Secret default/doomed-secret? It is used by Workload doomed-app' in configs

        # still used by the workload: refused, the workload named, nothing deleted
        for kind, name in (("Secret", "doomed-secret"), ("ConfigItem", "doomed-conf")):
            refused = pages.post("/configs/delete", {"kind": kind, "name": name})
            assert refused.status_code == 303 and refused.headers["location"] == "/configs"
            assert flashes(pages.get("/configs"), "error") == [
                f"Not deleted: {kind} default/{name} is used by Workload default/doomed-app"]
            assert (kind, name) in apps.documents("gw-a")
        # bad fields: named, never a 500
        for fields, message in (({"kind": "Device", "name": "x"}, "kind: expected ConfigItem or Secret"),
                                ({"kind": "Secret", "name": "Not A Name"}, "name 'Not A Name': not a document's"),
                                ({"kind": "Secret", "name": "x" * 10_000}, "not a document's name"),
                                ({"kind": "Secret", "name": "nothing"}, "no Secret default/nothing")):
            answer = pages.post("/configs/delete", fields)
            assert answer.status_code == 303, answer.text
            shown = flashes(pages.get("/configs"), "error")
            assert len(shown) == 1 and message in shown[0] and len(shown[0]) < 200, (fields, shown)

        # the workload goes, then the secret and the config item it used
        gone = pages.post("/apps/delete", {"kind": "Workload", "name": "doomed-app"})
        assert gone.status_code == 303 and gone.headers["location"] == "/apps"
        listed_page = pages.get("/apps")
        assert flashes(listed_page, "ok") == [
            "Workload default/doomed-app deleted: its nodes drop it with their next heartbeat."]
        assert 'data-app="Workload/default/doomed-app"' not in listed_page.text
        assert ("Workload", "doomed-app") not in apps.documents("gw-a")
        for kind, name in (("Secret", "doomed-secret"), ("ConfigItem", "doomed-conf")):
            assert pages.post("/configs/delete", {"kind": kind, "name": name}).status_code == 303
            assert flashes(pages.get("/configs"), "ok") == [
                f"{kind} default/{name} deleted: its nodes drop it with their next heartbeat."]
        assert pages.post("/apps/delete", {"kind": "BatchWorkload", "name": "doomed-batch"}).status_code == 303
        assert ("Workload", "doomed-batch.gw-a") not in apps.documents("gw-a")
        assert 'data-app="BatchWorkload/default/doomed-batch"' not in pages.get("/apps").text
        assert "doomed" not in pages.get("/configs").text.split("</h1>", 1)[1]
        # no CSRF token: refused
        assert pages.client.post("/apps/delete", data={"kind": "Workload", "name": "meter-app"}).status_code == 403
    for role in ("viewer", "operator"):
        with session(apps.registry, role) as pages:
            assert 'action="/apps/delete"' not in pages.get("/apps").text
            assert 'action="/configs/delete"' not in pages.get("/configs").text
            refused = pages.post("/apps/delete", {"kind": "Workload", "name": "meter-app"})
            assert refused.status_code == 403 and f"the {role} role cannot delete apps; admin can" in refused.text
            refused = pages.post("/configs/delete", {"kind": "ConfigItem", "name": "settings"})
            assert refused.status_code == 403
    with session(apps.registry, "east") as pages:  # another workspace's admin: as if it were not there
        pages.post("/apps/delete", {"kind": "Workload", "name": "meter-app"})
        assert flashes(pages.get("/apps"), "error") == ["Not deleted: no Workload default/meter-app at the registry"]
    assert ("Workload", "meter-app") in apps.documents("gw-a")
    entries = [json.loads(line) for line in cli(apps.registry, "audit", "--limit", "400", "--json").stdout.splitlines()]
    deletes = [(e["actor"], e["object"], e["outcome"]) for e in entries if e["action"] == "document.delete"]
    assert ("user:admin", "Secret/default/doomed-secret",
            "refused: Secret default/doomed-secret is used by Workload default/doomed-app") in deletes
    for target in ("Workload/default/doomed-app", "Secret/default/doomed-secret", "ConfigItem/default/doomed-conf",
                   "BatchWorkload/default/doomed-batch"):
        assert ("user:admin", target, "ok") in deletes, target


POD_APP = """\
kind: Workload
name: shop
node: gw-a
runtime: container
containers:
  - {name: web, image: "localhost/web:1", ports: [{name: http, container_port: 8080}]}
  - {name: sidecar, image: "localhost/agent:1"}
"""


def test_the_containers_of_a_pod_and_their_state_on_the_workload_page(apps: Apps) -> None:
    with session(apps.registry, "admin") as pages:
        assert pages.post("/editor", {"yaml": POD_APP}).status_code == 303
        assert [c["name"] for c in apps.documents("gw-a")[("Workload", "shop")]["containers"]] == ["web", "sidecar"]
        instance = {"id": "shop-1-0", "state": "ready", "ready": True, "restarts": 0, "ports": {"http": 40001},
                    "containers": [{"name": "web", "state": "running"},
                                   {"name": "sidecar", "state": "restarting", "restarts": 2,
                                    "last_exit": "exited with code 1"}]}
        beat(apps.registry, apps.nodes["gw-a"], {"workloads": [{"workload": "default/shop", "status": "running",
                                                                "replicas": 1, "ready": 1,
                                                                "instances": [instance]}]})
        page = pages.get("/workloads/default/shop").text
        row = re.search(r'<li data-container="sidecar">.*?</li>', page, re.S)
        assert row and "restarting" in row.group(0) and "2 restarts" in row.group(0)
        assert "exited with code 1" in row.group(0) and '<li data-container="web">' in page
        assert "instance=shop-1-0&amp;container=sidecar#logs" in page  # the log of one container, asked of the node
    hostile = {**instance, "containers": [{"name": f"c{i}", "state": "running"} for i in range(17)]}
    directory = apps.nodes["gw-a"] / "registry"
    context = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    context.load_cert_chain(directory / "node.pem", directory / "node.key")
    with httpx.Client(base_url=apps.registry.url, verify=context, timeout=10) as node:
        refused = node.post("/api/v1/heartbeat", json={"info": {"version": "4.2.0"}, "workloads": [
            {"workload": "default/shop", "status": "running", "instances": [hostile]}]})
    assert refused.status_code == 400 and "containers" in refused.text, refused.text


def test_a_batch_workload_of_a_pod_takes_no_image_override(apps: Apps) -> None:
    batch = ("kind: BatchWorkload\nname: shops\ntemplate:\n  runtime: container\n  containers: [{name: web, image: "
             "'localhost/web:1'}]\ngroups:\n  - {group: line-a, image: 'localhost/web:2'}\n  - {group: line-b, "
             "env: {SITE: b}}\n")
    with session(apps.registry, "admin") as pages:
        refused = pages.post("/editor", {"yaml": batch})
        assert refused.status_code == 400
        assert ("$.groups[0].image: the template&#39;s containers each have their own (a group overrides env and "
                "replicas of a pod)") in refused.text
        fine = batch.replace(", image: 'localhost/web:2'", "")
        assert pages.post("/editor", {"yaml": fine}).status_code == 303
        assert apps.documents("gw-b")[("Workload", "shops.gw-b")]["containers"][0]["name"] == "web"
