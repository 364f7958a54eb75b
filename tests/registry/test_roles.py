"""Roles as permission sets and folders of workspaces against a real registry over TLS: a custom role holds exactly its
permissions in the API and on the pages, a folder grant covers the folder's workspaces (one moved in later too) and
no other, the roles and folders API with its limits and refusals (each naming the field or the permission), least
privilege when granting, and every change in the audit log; the migration that brings roles and folders on SQLite
and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError
from gateway.registry import access, admin, roles
from gateway.registry.access import Caller, Scope
from gateway.registry.permissions import ADMIN, BUILTIN_ROLES, OPERATOR, PERMISSIONS, VIEWER, check_permissions
from gateway.registry.store import RegistryStore
from gateway.registry.store import db as registry_db
from tests.registry.conftest import Registry, stop
from tests.registry.test_access import add_user, api, cli, join, token
from tests.registry.test_pages import DOCUMENTS, NODE, TWINS, beat, session

DEVICE_HANDS = ["devices.read", "devices.write"]  # a custom role: reads devices and sets desired values, nothing more
WORKLOAD = {"kind": "Workload", "name": "sneaky", "node": NODE, "command": ["sleep", "60"]}


class Site:
    """A registry with node gw-a (workspace default) reporting boiler-1, workspaces east and west in folder plant,
    bench in folder lab, a platform admin token and user, and the custom role device-hands."""

    def __init__(self, registry: Registry, tmp_path: Path) -> None:
        self.registry = registry
        self.tmp_path = tmp_path
        assert join(registry, token(registry), tmp_path / NODE, "--name", NODE).returncode == 0
        (tmp_path / "docs.yaml").write_text(DOCUMENTS)
        cli(registry, "apply", "-f", str(tmp_path / "docs.yaml"))
        beat(registry, tmp_path / NODE, TWINS)
        for workspace, folder in (("east", "plant"), ("west", "plant"), ("bench", "lab")):
            cli(registry, "workspace", "create", workspace, "--folder", folder)
        self.admin = cli(registry, "token", "create", "--role", "admin", "--scope", "platform").stdout.strip()
        add_user(registry, tmp_path, "root", "--role", "admin", "--scope", "platform")
        with api(registry, self.admin) as client:
            made = client.post("/api/v1/roles", json={"name": "device-hands", "permissions": DEVICE_HANDS,
                                                      "description": "reads devices, sets desired values"})
            assert made.status_code == 201, made.text


def _audit(registry: Registry) -> list[dict[str, Any]]:
    return [json.loads(line) for line in cli(registry, "audit", "--json", "--limit", "1000").stdout.splitlines()]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp_path = tmp_path_factory.mktemp("registry-roles")
    registry = Registry(tmp_path / "registry")
    registry.start()
    try:
        yield Site(registry, tmp_path)
    finally:
        if registry.process is not None:
            stop(registry.process)


# --- the catalogue and the built-in roles (no registry needed) ----------------------------------------------------


def test_built_in_roles_are_the_permission_sets_of_the_old_ranks() -> None:
    assert VIEWER < OPERATOR < ADMIN == frozenset(PERMISSIONS)
    assert all(name.endswith(".read") for name in VIEWER)
    assert {"devices.write", "apps.operate", "messages.send", "files.write"} == OPERATOR - VIEWER
    assert all(text and len(text) < 120 for text in PERMISSIONS.values())
    viewer = Caller("user:v", "viewer", Scope("platform"), None)
    assert viewer.can("nodes.read") and not viewer.can("devices.write") and viewer.can_any("audit.read", "apps.read")
    with pytest.raises(ValueError, match="unknown permission 'admin'"):
        viewer.can("admin")  # a check that still asks for a rank fails loudly
    with pytest.raises(ValueError, match="unknown permission 'operator'"):
        check_permissions(["nodes.read", "operator"])
    assert "admin can (it needs audit.read)" in access.refusal(viewer, ("audit.read",))
    assert "operator or admin can" in access.refusal(viewer, ("devices.write",), "set desired values")


def test_a_role_set_is_checked_with_each_problem_named() -> None:
    assert roles.check_permission_set(DEVICE_HANDS) == frozenset(DEVICE_HANDS)
    for permissions, reason in (([], "at least one permission"), (["devices.write"], "devices.write needs "
                                                                                     "devices.read"),
                                (["nodes.read", "root.everything"], "unknown permission 'root.everything'"),
                                (["nodes.read"] * (len(PERMISSIONS) + 1), f"at most {len(PERMISSIONS)}")):
        with pytest.raises(ConfigError, match=re.escape(reason)):
            roles.check_permission_set(permissions)
    for name, reason in (("Bad_Name", "name 'Bad_Name'"), ("x" * 64, "use 1-63"), ("admin", "built-in role admin")):
        with pytest.raises(ConfigError, match=re.escape(reason)):
            roles.check_name(name)
    listed = [roles.Role("tiny", "", frozenset({"nodes.read"}), False), *roles.BUILTIN]
    assert roles.smallest_covering(listed, {"nodes.read"}).name == "tiny"  # type: ignore[union-attr]
    assert roles.smallest_covering(listed, {"devices.write"}).name == "operator"  # type: ignore[union-attr]
    assert roles.smallest_covering(listed, {"audit.read"}).name == "admin"  # type: ignore[union-attr]


# --- a custom role in the API and on the pages ----------------------------------------------------------------


def test_a_custom_role_with_device_permissions_sets_desired_values_and_nothing_more(site: Site) -> None:
    with api(site.registry, site.admin) as root:
        made = root.post("/api/v1/roles", json={"name": "too-much", "permissions": ["devices.read"]})
        assert made.status_code == 201
        assert root.delete("/api/v1/roles/too-much").status_code == 200
    hands = cli(site.registry, "token", "create", "--role", "device-hands", "--scope", "platform").stdout.strip()
    with api(site.registry, hands) as client:
        assert client.get("/api/v1/devices").status_code == 200
        answer = client.put("/api/v1/devices/default/boiler-1/desired", json={"desired": {"setpoint": 22.5}})
        assert answer.status_code == 200, answer.text
        deploy = client.post("/api/v1/documents", json=[WORKLOAD])
        assert deploy.status_code == 403
        assert deploy.json()["detail"] == ("the device-hands role cannot do this; admin can (it needs devices.manage "
                                           "or apps.deploy or configs.write or routes.write)")
        for path in ("/api/v1/nodes", "/api/v1/workloads", "/api/v1/audit", "/api/v1/roles", "/api/v1/upgrades"):
            assert client.get(path).status_code == 403, path
        assert client.post("/api/v1/workloads/default/app/restart").status_code == 403
        # the documents it may read, and no others
        assert {d["kind"] for d in client.get("/api/v1/documents").json()} == {"DeviceModel", "Device"}
    assert "sneaky" not in cli(site.registry, "nodes", "--json").stdout
    add_user(site.registry, site.tmp_path, "hanna", "--role", "device-hands", "--scope", "workspace:default")
    with session(site.registry, "hanna") as pages:
        home = pages.get("/")
        assert home.status_code == 200 and "device-hands, workspace:default" in home.text
        nav = re.findall(r'<nav>(.*?)</nav>', home.text, re.S)[0]
        assert re.findall(r'href="([^"]+)"', nav) == ["/", "/devices"]
        device = pages.get("/devices/default/boiler-1")
        assert device.status_code == 200 and 'class="set-desired"' in device.text and "/devices/edit" not in device.text
        assert pages.post("/devices/default/boiler-1/desired", {"property": "setpoint", "value": "23"}
                          ).status_code == 303
        for path in ("/users", "/apps", "/apps/edit", "/nodes", "/roles", "/editor", "/audit"):
            refused = pages.get(path)
            assert refused.status_code == 403, path
        assert "the device-hands role cannot see this page; admin can (it needs users.manage)" in (
            pages.get("/users").text)
        deploy = pages.post("/apps/edit", {"kind": "Workload", "name": "sneaky", "command": "sleep\n60",
                                           "node": NODE})
        assert deploy.status_code == 403 and "cannot change apps" in deploy.text
    desired = [e for e in _audit(site.registry) if e["action"] == "device.set-desired" and e["outcome"] == "ok"]
    assert {e["actor"] for e in desired} >= {f"token:{hands.split('.')[0]}", "user:hanna"}


def test_a_folder_grant_covers_the_folders_workspaces_and_no_other(site: Site) -> None:
    plant = cli(site.registry, "token", "create", "--role", "viewer", "--scope", "folder:plant").stdout.strip()

    def seen() -> set[str]:
        with api(site.registry, plant) as client:
            return {w["name"] for w in client.get("/api/v1/workspaces").json()}

    assert seen() == {"east", "west"}
    with api(site.registry, plant) as client:
        assert [n["name"] for n in client.get("/api/v1/nodes").json()] == []  # gw-a lies in default
        assert client.get(f"/api/v1/nodes/{NODE}").status_code == 404
    cli(site.registry, "workspace", "create", "north", "--folder", "plant")  # added to the folder later: covered
    assert seen() == {"east", "west", "north"}
    with api(site.registry, site.admin) as root:
        moved = root.patch("/api/v1/workspaces/north", json={"folder": "lab"})
        assert moved.status_code == 200 and moved.json() == {"name": "north", "folder": "lab"}
        assert seen() == {"east", "west"}  # moved out: no longer covered
        assert root.patch("/api/v1/workspaces/north", json={"folder": "nowhere"}).status_code == 400
        assert root.patch("/api/v1/workspaces/nothing", json={"folder": "lab"}).status_code == 404
        assert root.patch("/api/v1/workspaces/north", json={"folder": "plant"}).status_code == 200
        assert seen() == {"east", "west", "north"}
        # a node moved into a workspace of the folder comes into view
        assert root.patch(f"/api/v1/nodes/{NODE}", json={"workspace": "east"}).status_code == 200
        with api(site.registry, plant) as client:
            assert [n["name"] for n in client.get("/api/v1/nodes").json()] == [NODE]
        assert root.patch(f"/api/v1/nodes/{NODE}", json={"workspace": "default"}).status_code == 200


def test_roles_api_creates_changes_and_deletes_with_limits_and_refusals(site: Site) -> None:
    with api(site.registry, site.admin) as root:
        listed = root.get("/api/v1/roles").json()
        assert [r["name"] for r in listed][:2] == ["device-hands", "viewer"]  # least privileged first
        assert {r["name"]: r["builtin"] for r in listed}["admin"] is True
        assert [p["name"] for p in root.get("/api/v1/permissions").json()] == list(PERMISSIONS)
        made = root.post("/api/v1/roles", json={"name": "line-lead", "description": "runs line 1",
                                                "permissions": ["apps.read", "apps.operate", "nodes.read"]})
        assert made.status_code == 201
        assert made.json()["permissions"] == ["nodes.read", "apps.read", "apps.operate"]  # catalogue order
        for body, status, detail in (
                ({"name": "line-lead", "permissions": ["nodes.read"]}, 400, "name line-lead: a role of that name "
                                                                            "exists already"),
                ({"name": "x", "permissions": ["nodes.read", "everything"]}, 400, "permissions: unknown permission "
                                                                                  "'everything'"),
                ({"name": "viewer", "permissions": ["nodes.read"]}, 400, "the built-in role viewer has that name"),
                ({"name": "Bad Name", "permissions": ["nodes.read"]}, 400, "name 'Bad Name'"),
                ({"name": "x", "permissions": []}, 400, "at least one permission"),
                ({"name": "x", "permissions": ["apps.deploy"]}, 400, "apps.deploy needs apps.read")):
            answer = root.post("/api/v1/roles", json=body)
            assert answer.status_code == status and detail in answer.json()["detail"], (body, answer.text)
        # hostile sizes: refused by the schema, never stored
        for body in ({"name": "y" * 10_000, "permissions": ["nodes.read"]},
                     {"name": "y", "description": "d" * 201, "permissions": ["nodes.read"]},
                     {"name": "y", "permissions": ["nodes.read"] * 1000},
                     {"name": "y", "permissions": ["n" * 100_000]},
                     {"name": "y", "permissions": "nodes.read"}, {"name": "y", "permissions": ["nodes.read"],
                                                                   "root": True}):
            answer = root.post("/api/v1/roles", json=body)
            assert answer.status_code == 400, (str(body)[:80], answer.text[:300])
        assert "y" not in {r["name"] for r in root.get("/api/v1/roles").json()}

        changed = root.put("/api/v1/roles/line-lead", json={"permissions": ["nodes.read", "apps.read"]})
        assert changed.status_code == 200 and changed.json()["permissions"] == ["nodes.read", "apps.read"]
        assert changed.json()["description"] == "runs line 1"
        builtin = root.put("/api/v1/roles/viewer", json={"permissions": ["nodes.read"]})
        assert builtin.status_code == 400 and "built in: it cannot be changed (duplicate it" in builtin.json()["detail"]
        assert root.delete("/api/v1/roles/admin").status_code == 400
        assert root.put("/api/v1/roles/nothing", json={"description": ""}).status_code == 404
        assert root.get("/api/v1/roles/nothing").status_code == 404

        # held: not deleted, the holders named; a revoked token holds nothing
        add_user(site.registry, site.tmp_path, "lee", "--role", "line-lead", "--scope", "workspace:east")
        held = cli(site.registry, "token", "create", "--role", "line-lead").stdout.strip()
        refused = root.delete("/api/v1/roles/line-lead")
        assert refused.status_code == 400 and refused.json()["detail"] == (
            f"role line-lead is held by user lee, API token {held.split('.')[0]}: give them another role first")
        # the holder has the new set at once
        with api(site.registry, held) as client:
            assert client.get("/api/v1/workloads").status_code == 200
            assert client.post("/api/v1/workloads/default/app/restart").status_code == 403
        cli(site.registry, "token", "revoke", held.split(".")[0])
        cli(site.registry, "user", "remove", "lee")
        assert root.delete("/api/v1/roles/line-lead").status_code == 200
        assert root.delete("/api/v1/roles/line-lead").status_code == 404
        assert cli(site.registry, "token", "create", "--role", "line-lead", check=False).returncode == 2

    # roles are the platform's: an admin of a folder reads them but does not make them
    folder_admin = cli(site.registry, "token", "create", "--role", "admin", "--scope", "folder:plant").stdout.strip()
    with api(site.registry, folder_admin) as plant:
        assert plant.get("/api/v1/roles").status_code == 200
        answer = plant.post("/api/v1/roles", json={"name": "z", "permissions": ["nodes.read"]})
        assert answer.status_code == 400 and "roles are the platform's" in answer.json()["detail"]
    actions = [(e["action"], e["object"], e["outcome"].split(":")[0]) for e in _audit(site.registry)
               if e["action"].startswith("role.")]
    for expected in (("role.create", "role/line-lead", "ok"), ("role.change", "role/line-lead", "ok"),
                     ("role.delete", "role/line-lead", "ok"), ("role.delete", "role/line-lead", "refused"),
                     ("role.create", "role/x", "refused"), ("role.change", "role/viewer", "refused"),
                     ("role.create", "role/z", "refused")):
        assert expected in actions, expected
    changed_entry = next(e for e in _audit(site.registry) if e["action"] == "role.change" and e["outcome"] == "ok")
    assert json.loads(changed_entry["detail"]) == {"added": [], "removed": ["apps.operate"]}


def test_nobody_grants_or_builds_a_role_with_permissions_it_lacks(site: Site) -> None:
    # an operator-like custom role with roles.manage, users.manage and tokens.manage at platform
    with api(site.registry, site.admin) as root:
        made = root.post("/api/v1/roles", json={"name": "desk", "permissions": sorted(
            VIEWER | {"users.manage", "tokens.manage", "roles.manage"})})
        assert made.status_code == 201
    desk = cli(site.registry, "token", "create", "--role", "desk", "--scope", "platform").stdout.strip()
    with api(site.registry, desk) as client:
        wider = client.post("/api/v1/roles", json={"name": "wider", "permissions": ["nodes.read", "nodes.manage"]})
        assert wider.status_code == 400 and wider.json()["detail"] == (
            "permissions: the role would carry nodes.manage, which you do not hold (the desk role grants only what "
            "it holds)")
        narrower = client.post("/api/v1/roles", json={"name": "narrower", "permissions": ["nodes.read"]})
        assert narrower.status_code == 201
        # it may change a role it could have made, not the one of the admins
        assert client.put("/api/v1/roles/device-hands", json={"description": "x"}).status_code == 400
    add_user(site.registry, site.tmp_path, "dee", "--role", "desk", "--scope", "platform")
    with session(site.registry, "dee") as pages:
        form = pages.get("/users").text
        offered = re.findall(r'name="role" value="([^"]+)"', form)
        assert offered == ["narrower", "viewer", "desk"]  # not operator, admin nor device-hands
        assert re.search(r'value="narrower" checked', form)
        refused = pages.post("/users", {"name": "opal", "role": "operator", "scope": "workspace:default",
                                        "password": "opal-pass-12"})
        shown = pages.get(refused.headers["location"]).text
        assert ("User opal not added: role operator: it carries permissions you do not hold (devices.write, "
                "apps.operate, messages.send, files.write)") in shown.replace("&#39;", "'")
        made = pages.post("/users", {"name": "opal", "role": "narrower", "scope": "workspace:default",
                                     "password": "opal-pass-12"})
        assert "User opal added as narrower in workspace:default." in pages.get(made.headers["location"]).text
        # it does not see (nor change) users whose role it could not grant
        listed = re.findall(r'<tr data-user="([^"]+)">', pages.get("/users").text)
        assert "opal" in listed and "dee" in listed and "root" not in listed and "hanna" not in listed

    async def grants() -> None:
        async with RegistryStore(site.registry.data_dir) as store:
            caller = await access.resolve(store, "user:dee", "desk", "platform")
            assert caller.permissions == VIEWER | {"users.manage", "tokens.manage", "roles.manage"}
            assert [r.name for r in await admin.grantable_roles(store, caller)] == ["narrower", "viewer", "desk"]
            with pytest.raises(ConfigError, match=r"role admin: it carries permissions you do not hold"):
                await admin.check_grant(store, caller, "admin", "workspace:default")

    asyncio.run(grants())


def test_roles_pages_list_copy_create_change_and_delete(site: Site) -> None:
    with session(site.registry, "root") as pages:
        listing = pages.get("/roles", params=[("need", "devices.read"), ("need", "devices.write")])
        assert listing.status_code == 200
        covering = re.search(r'<p id="covering"[^>]*>(.*?)</p>', listing.text, re.S)
        assert covering and "<strong><a href=\"/roles/device-hands\">device-hands</a></strong>" in covering.group(1)
        for role in BUILTIN_ROLES:
            row = re.search(rf'<tr data-role="{role}">.*?</tr>', listing.text, re.S)
            assert row and f'href="/roles/new?from={role}">Duplicate as custom role' in row.group(0)
            assert f'action="/roles/{role}/delete"' not in listing.text
        held = re.findall(r'<td data-role="viewer">(.*?)</td>', listing.text)
        assert sum("✓" in cell for cell in held) == len(VIEWER)
        copy = pages.get("/roles/new", params={"from": "operator"}).text
        assert 'value="operator-copy"' in copy
        assert set(re.findall(r'name="perm-([^"]+)" value="on" checked', copy)) == OPERATOR
        built_in = pages.get("/roles/viewer").text
        assert "stays as it is" in built_in and 'type="submit">Save role' not in built_in
        assert pages.get("/roles/nothing").status_code == 404
        made = pages.post("/roles", {"name": "night-shift", "description": "watches",
                                     **{f"perm-{p}": "on" for p in VIEWER}})
        assert made.status_code == 303
        assert f"Role night-shift created with {len(VIEWER)} permissions." in pages.get("/roles").text
        bad = pages.post("/roles", {"name": "bad", "perm-devices.manage": "on"})
        assert bad.status_code == 400 and "devices.manage needs devices.read" in bad.text
        assert 'name="perm-devices.manage" value="on" checked' in bad.text  # the form keeps what was ticked
        changed = pages.post("/roles/night-shift", {"description": "watches nodes", "perm-nodes.read": "on"})
        assert changed.status_code == 303
        form = pages.get("/roles/night-shift").text
        assert re.findall(r'name="perm-([^"]+)" value="on" checked', form) == ["nodes.read"]
        assert pages.post("/roles/viewer", {"perm-nodes.read": "on"}).status_code == 400
        deleted = pages.post("/roles/night-shift/delete")
        assert "Role night-shift deleted." in pages.get(deleted.headers["location"]).text
        kept = pages.post("/roles/device-hands/delete")
        assert "is held by user hanna" in pages.get(kept.headers["location"]).text.replace("&#39;", "'")


def test_folders_are_made_granted_and_deleted_only_when_empty_and_ungranted(site: Site) -> None:
    with api(site.registry, site.admin) as root:
        made = root.post("/api/v1/folders", json={"name": "yard", "description": "outdoor sites"})
        assert made.status_code == 201
        folders = {f["name"]: f for f in root.get("/api/v1/folders").json()}
        assert folders["yard"] == {"name": "yard", "description": "outdoor sites", "workspaces": []}
        assert folders["plant"]["workspaces"] == ["east", "north", "west"]
        for body, detail in (({"name": "yard"}, "folder yard exists already"),
                             ({"name": "Bad_Folder"}, "name 'Bad_Folder'")):
            answer = root.post("/api/v1/folders", json=body)
            assert answer.status_code == 400 and detail in answer.json()["detail"], answer.text
        assert root.post("/api/v1/folders", json={"name": "y", "description": "d" * 201}).status_code == 400
    # an empty folder can be granted: its workspaces come with it
    watcher = cli(site.registry, "token", "create", "--scope", "folder:yard").stdout.strip()
    with api(site.registry, watcher) as client:
        assert client.get("/api/v1/workspaces").json() == []
    with api(site.registry, site.admin) as root:
        refused = root.delete("/api/v1/folders/yard")
        assert refused.status_code == 400 and "granted to API token" in refused.json()["detail"]
        cli(site.registry, "token", "revoke", watcher.split(".")[0])
        cli(site.registry, "workspace", "create", "pond", "--folder", "yard")
        refused = root.delete("/api/v1/folders/yard")
        assert refused.status_code == 400 and "holds workspaces pond" in refused.json()["detail"]
        assert root.patch("/api/v1/workspaces/pond", json={"folder": "lab"}).status_code == 200
        assert root.delete("/api/v1/folders/yard").status_code == 200
        assert root.delete("/api/v1/folders/yard").status_code == 404
    folder_admin = cli(site.registry, "token", "create", "--role", "admin", "--scope", "folder:plant").stdout.strip()
    with api(site.registry, folder_admin) as plant:
        assert [f["name"] for f in plant.get("/api/v1/folders").json()] == ["plant"]
        assert plant.post("/api/v1/folders", json={"name": "mine"}).status_code == 400
        assert plant.patch("/api/v1/workspaces/east", json={"folder": "lab"}).status_code == 400
        assert plant.delete("/api/v1/folders/lab").status_code == 404
    with session(site.registry, "root") as pages:
        page = pages.get("/workspaces").text
        assert 'id="create-folder"' in page and 'action="/workspaces/east/folder"' in page
        made = pages.post("/folders", {"name": "dock"})
        assert "Folder dock created." in pages.get(made.headers["location"]).text
        assert 'action="/folders/dock/delete"' in pages.get("/workspaces").text
        gone = pages.post("/folders/dock/delete")
        assert "Folder dock deleted." in pages.get(gone.headers["location"]).text
    actions = {(e["action"], e["object"], e["outcome"].split(":")[0]) for e in _audit(site.registry)}
    assert {("folder.create", "folder/yard", "ok"), ("folder.delete", "folder/yard", "refused"),
            ("folder.delete", "folder/yard", "ok"), ("workspace.move", "workspace/pond", "ok"),
            ("folder.create", "folder/dock", "ok")} <= actions


def test_roles_from_the_command_line(site: Site) -> None:
    made = cli(site.registry, "role", "create", "auditor", "--permissions", "audit.read, nodes.read",
               "--description", "reads the log")
    assert made.stdout.strip() == "role auditor: nodes.read, audit.read"
    listed = {r["name"]: r for r in map(json.loads, cli(site.registry, "role", "list", "--json").stdout.splitlines())}
    assert listed["auditor"]["permissions"] == ["nodes.read", "audit.read"] and not listed["auditor"]["builtin"]
    assert listed["viewer"]["builtin"] and listed["admin"]["permissions"] == list(PERMISSIONS)
    bad = cli(site.registry, "role", "create", "x", "--permissions", "nodes.read,root", check=False)
    assert bad.returncode == 2 and "permissions: unknown permission 'root'" in bad.stderr
    add_user(site.registry, site.tmp_path, "aud", "--role", "auditor", "--scope", "folder:plant")
    held = cli(site.registry, "role", "delete", "auditor", check=False)
    assert held.returncode == 2 and "role auditor is held by user aud" in held.stderr
    cli(site.registry, "user", "remove", "aud")
    assert cli(site.registry, "role", "delete", "auditor").stdout.strip() == "role auditor deleted"


# --- the migration on both databases --------------------------------------------------------------------------



async def test_migration_12_keeps_the_folders_workspaces_were_in(db_url: str | None, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    before = [m for m in registry_db.MIGRATIONS if m[0] < 12]
    monkeypatch.setattr(registry_db, "MIGRATIONS", before)
    async with RegistryStore(tmp_path, db_url) as store:
        await store.database.write("INSERT INTO workspaces (name, folder, created_at) VALUES ('east', 'plant', 1)")
    monkeypatch.undo()
    async with RegistryStore(tmp_path, db_url) as store:
        assert list(await store.access.folders()) == ["default", "plant"]
        await store.access.add_role("hands", "", json.dumps(DEVICE_HANDS), 2.0)
        caller = await access.resolve(store, "user:h", "hands", "folder:plant")
        assert caller.permissions == frozenset(DEVICE_HANDS) and caller.workspaces == frozenset({"east"})
        assert await store.access.delete_role("hands")
        gone = await access.resolve(store, "user:h", "hands", "platform")  # a role that is gone grants nothing
        assert gone.permissions == frozenset()
