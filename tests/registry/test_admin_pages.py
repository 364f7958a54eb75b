"""Administration pages against a real registry over TLS: users added in the browser with a role and a scope and
held to them when they log in, admins of a folder granting only within it, API tokens shown once and revoked for
the API too, the audit log filtered and paged, and forms without the session's CSRF token refused. The tests share
one registry and build on it."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Iterator

import httpx
import pytest

from gateway.errors import ConfigError
from gateway.registry import admin
from gateway.registry.access import Caller, Scope
from gateway.registry.permissions import BUILTIN_ROLES
from gateway.registry.store import RegistryStore
from tests.registry.conftest import Registry, stop
from tests.registry.test_access import PASSWORD, add_user, api, cli
from tests.registry.test_pages import Session, session


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    tmp_path = tmp_path_factory.mktemp("registry-admin")
    registry = Registry(tmp_path / "registry")
    registry.start()
    try:
        cli(registry, "workspace", "create", "east", "--folder", "plant")
        cli(registry, "workspace", "create", "west", "--folder", "plant")
        cli(registry, "workspace", "create", "bench", "--folder", "lab")
        add_user(registry, tmp_path, "root", "--role", "admin", "--scope", "platform")
        add_user(registry, tmp_path, "plant-admin", "--role", "admin", "--scope", "folder:plant")
        yield registry
    finally:
        if registry.process is not None:
            stop(registry.process)


def flashes(page: Session, location: str) -> list[str]:
    shown = page.get(location)
    assert shown.status_code == 200, shown.text[-400:]
    return [html.unescape(m) for m in re.findall(r'class="flash (?:ok|error)"[^>]*>([^<]*)', shown.text)]


def log_in(page: Session, user: str, password: str) -> httpx.Response:
    csrf = re.search(r'name="_csrf" value="([^"]+)"', page.get("/login").text)
    assert csrf
    return page.client.post("/login", data={"_csrf": csrf.group(1), "username": user, "password": password,
                                            "next": "/"})


def rows(text: str, attribute: str) -> dict[str, str]:
    """The table rows of a page by their data attribute: `data-user="ann"` → the row's HTML."""
    return dict(re.findall(rf'<tr {attribute}="([^"]+)">(.*?)</tr>', text, re.S))


def options(text: str, name: str) -> list[str]:
    """The choices of a form's first field `name` (radio buttons or a select)."""
    radios = re.findall(rf'name="{name}" value="([^"]+)"', text)
    if radios:
        return radios
    select = re.search(rf'<select name="{name}"[^>]*>(.*?)</select>', text, re.S)
    assert select, name
    return re.findall(r"<option[^>]*>([^<]*)</option>", select.group(1))


def test_an_admin_adds_a_user_who_meets_the_limits_of_its_role_and_scope(registry: Registry) -> None:
    with session(registry, "root") as root:
        form = root.get("/users")
        assert form.status_code == 200
        # least privilege: every role with the permissions it carries, the smallest checked and marked, the
        # narrowest scope selected
        assert options(form.text, "role") == ["viewer", "operator", "admin"]
        assert re.search(r'value="viewer" checked', form.text) and not re.search(r'value="admin" checked', form.text)
        for role, permissions in BUILTIN_ROLES.items():
            shown = re.search(rf'<label class="role-choice" data-role="{role}">.*?</label>', form.text, re.S)
            assert shown and set(re.findall(r'data-permission="([^"]+)"', shown.group(0))) == permissions, role
        least = re.search(r'data-role="([^"]+)"><input[^>]*>\s*<span><strong>[^<]*</strong> <span[^>]*'
                          r'data-least-privilege', form.text)
        assert least and least.group(1) == "viewer"
        assert 'selected>workspace:default</option>' in form.text
        assert {"workspace:east", "folder:plant", "platform"} <= set(options(form.text, "scope"))

        added = root.post("/users", {"name": "ann", "role": "operator", "scope": "workspace:east",
                                     "password": PASSWORD})
        assert added.status_code == 303
        assert flashes(root, added.headers["location"]) == ["User ann added as operator in workspace:east."]
        listed = rows(root.get("/users").text, "data-user")
        assert '">operator</td>' in listed["ann"]
        assert "workspace:east" in listed["ann"]
        again = root.post("/users", {"name": "ann", "role": "viewer", "scope": "workspace:east",
                                     "password": PASSWORD})
        assert flashes(root, again.headers["location"]) == ["User ann not added: user ann exists already"]
        short = root.post("/users", {"name": "bob", "role": "viewer", "scope": "workspace:east", "password": "short"})
        assert "at least 8 characters" in flashes(root, short.headers["location"])[0]
        assert "bob" not in rows(root.get("/users").text, "data-user")

    with session(registry, "ann") as ann:
        home = ann.get("/")
        assert home.status_code == 200
        assert "operator, workspace:east" in home.text
        # no way in to administration: no link, no button, and 403 for the pages and their forms
        assert 'href="/users"' not in home.text and 'href="/audit"' not in home.text
        assert 'href="/groups/new"' not in ann.get("/groups").text
        assert 'class="button" href="/join"' not in ann.get("/nodes").text
        for path in ("/users", "/api-tokens", "/workspaces", "/audit"):
            refused = ann.get(path)
            assert refused.status_code == 403 and "the operator role cannot see this page" in refused.text, path
        refused = ann.post("/users", {"name": "eve", "role": "admin", "scope": "platform", "password": PASSWORD})
        assert refused.status_code == 403 and "the operator role cannot add users; admin can" in refused.text
        assert ann.post("/api-tokens", {"role": "admin", "scope": "platform"}).status_code == 403
        # what an operator may do stays allowed
        assert ann.get("/workloads").status_code == 200

    with session(registry, "root") as root:
        assert root.post("/users/ann", {"role": "viewer", "scope": "workspace:west"}).status_code == 303
        assert "workspace:west" in rows(root.get("/users").text, "data-user")["ann"]
        reset = root.post("/users/ann/password", {"password": "ann-second-pass"})
        assert flashes(root, reset.headers["location"]) == ["User ann has a new password."]
    with session(registry, None) as anonymous:
        assert log_in(anonymous, "ann", PASSWORD).status_code != 303  # the old password no longer logs in
        assert log_in(anonymous, "ann", "ann-second-pass").status_code == 303
        assert "viewer, workspace:west" in anonymous.get("/").text
    audit = cli(registry, "audit", "--json").stdout
    for action in ("user.add", "user.change", "user.password"):
        assert re.search(rf'"action": "{re.escape(action)}".*"object": "user/ann"', audit), action


def test_a_folder_admin_grants_only_within_its_folder_and_role(registry: Registry) -> None:
    with session(registry, "root") as root:
        root.post("/users", {"name": "lab-viewer", "role": "viewer", "scope": "workspace:bench",
                             "password": PASSWORD})
        assert "lab-viewer" in rows(root.get("/users").text, "data-user")
    with session(registry, "plant-admin") as plant:
        form = plant.get("/users").text
        assert set(options(form, "scope")) == {"workspace:east", "workspace:west", "folder:plant"}
        listed = rows(form, "data-user")
        assert "plant-admin" in listed and "root" not in listed and "lab-viewer" not in listed
        for scope in ("platform", "folder:lab", "workspace:bench"):
            answer = plant.post("/users", {"name": "carl", "role": "viewer", "scope": scope, "password": PASSWORD})
            assert flashes(plant, answer.headers["location"]) == [
                f"User carl not added: scope {scope}: outside your scope folder:plant"], scope
        assert "carl" not in rows(plant.get("/users").text, "data-user")
        # users of other scopes are not there for a folder admin, as any object outside a scope
        for path, fields in (("/users/root", {"role": "viewer", "scope": "workspace:east"}),
                             ("/users/lab-viewer/password", {"password": "taken-over-1"}),
                             ("/users/root/remove", {})):
            answer = plant.post(path, fields)
            assert "no registry user" in flashes(plant, answer.headers["location"])[0], path
        # nor may it lift itself out of its folder
        answer = plant.post("/users/plant-admin", {"role": "admin", "scope": "platform"})
        assert "outside your scope" in flashes(plant, answer.headers["location"])[0]
        answer = plant.post("/users/plant-admin/remove", {})
        assert "you cannot remove yourself" in flashes(plant, answer.headers["location"])[0]
        # within the folder it grants what it holds
        answer = plant.post("/users", {"name": "dora", "role": "admin", "scope": "workspace:west",
                                       "password": PASSWORD})
        assert flashes(plant, answer.headers["location"]) == ["User dora added as admin in workspace:west."]
        # a workspace in its folder, but no new folder
        made = plant.post("/workspaces", {"name": "north", "folder": "plant"})
        assert flashes(plant, made.headers["location"]) == ["Workspace north created in folder plant."]
        refused = plant.post("/workspaces", {"name": "south", "new_folder": "yard"})
        assert "outside your scope" in flashes(plant, refused.headers["location"])[0]
        page = plant.get("/workspaces").text
        assert 'name="new_folder"' not in page
        assert set(rows(page, "data-folder")) == {"plant"} and 'data-workspace="north"' in page
    with session(registry, "root") as root:
        assert 'name="new_folder"' in root.get("/workspaces").text
        made = root.post("/workspaces", {"name": "south", "new_folder": "yard"})
        assert flashes(root, made.headers["location"]) == ["Workspace south created in folder yard."]
        assert set(rows(root.get("/workspaces").text, "data-folder")) == {"default", "lab", "plant", "yard"}
    # a role never above the granter's own: what the picker offers and what is accepted
    east = Caller("user:op", "operator", Scope("workspace", "east"), frozenset({"east"}))

    async def granting() -> None:
        async with RegistryStore(registry.data_dir) as store:
            assert [r.name for r in await admin.grantable_roles(store, east)] == ["viewer", "operator"]
            with pytest.raises(ConfigError, match=r"role admin: it carries permissions you do not hold \(nodes"):
                await admin.check_role_grant(store, east, "admin")

    asyncio.run(granting())


def test_an_api_token_is_shown_once_and_revoked_for_the_api(registry: Registry) -> None:
    with session(registry, "root") as root:
        created = root.post("/api-tokens", {"role": "viewer", "scope": "folder:plant", "description": "dashboards"})
        assert created.status_code == 200
        found = re.search(r'<pre id="new-api-token">([^<]+)</pre>', created.text)
        assert found
        token = found.group(1)
        token_id, secret = token.split(".")
        listing = root.get("/api-tokens").text
        assert secret not in listing and "new-api-token" not in listing
        assert "dashboards" in rows(listing, "data-token")[token_id]
        with api(registry, token) as client:
            answer = client.get("/api/v1/workspaces")
            assert answer.status_code == 200
            assert {w["name"] for w in answer.json()} == {"east", "west", "north"}
            assert client.post("/api/v1/groups", json={"name": "g", "workspace": "east"}).status_code == 403
        with session(registry, "plant-admin") as plant:
            # a platform admin's token is not the folder admin's to see or revoke
            platform = root.post("/api-tokens", {"role": "admin", "scope": "platform"})
            match = re.search(r'<pre id="new-api-token">([^.]+)\.', platform.text)
            assert match
            assert match.group(1) not in rows(plant.get("/api-tokens").text, "data-token")
            answer = plant.post(f"/api-tokens/{match.group(1)}/revoke")
            assert "no API token" in flashes(plant, answer.headers["location"])[0]
            refused = plant.post("/api-tokens", {"role": "viewer", "scope": "platform"})
            assert refused.status_code == 400 and "outside your scope" in refused.text
            # the folder admin revokes the folder's token
            revoked = plant.post(f"/api-tokens/{token_id}/revoke")
            assert flashes(plant, revoked.headers["location"]) == [f"API token {token_id} revoked."]
        assert "revoked" in rows(root.get("/api-tokens").text, "data-token")[token_id]
        with api(registry, token) as client:
            assert client.get("/api/v1/workspaces").status_code == 401


def test_the_audit_log_is_filtered_by_who_what_workspace_and_time_and_paged(registry: Registry) -> None:
    with session(registry, "root") as root:
        for n in range(55):  # refused changes are audited too
            root.post("/workspaces", {"name": f"Bad_{n}", "folder": "default"})
        log = root.get("/audit", params={"actor": "user:root", "action": "workspace."})
        assert log.status_code == 200
        first = re.findall(r'<tr data-action="([^"]+)"><td>[^<]*</td><td>([^<]*)</td>', log.text)
        assert len(first) == 50 and all(a.startswith("workspace.") and who == "user:root" for a, who in first)
        older = re.search(r'<a href="([^"]+)" rel="next">Older</a>', log.text)
        assert older
        second = root.get(html.unescape(older.group(1)))
        assert 'rel="prev"' in second.text and 'rel="next"' not in second.text
        assert len(re.findall(r"<tr data-action=", second.text)) == 6  # 55 refused and workspace south
        assert "workspace/Bad_54<" in log.text and "workspace/Bad_0<" in second.text
        assert "workspace/Bad_0<" not in log.text and "workspace/Bad_54<" not in second.text
        users = root.get("/audit", params={"action": "user.", "actor": "user:plant-admin"}).text
        actions = re.findall(r'<tr data-action="([^"]+)">', users)
        assert actions and set(actions) <= {"user.login", "user.logout", "user.add", "user.change", "user.password",
                                             "user.remove"}
        assert "user/dora" in users and "user/ann" not in users
        east = root.get("/audit", params={"workspace": "west"}).text
        scopes = re.findall(r"<tr data-action=[^>]*><td>[^<]*</td><td>[^<]*</td><td>([^<]*)</td>", east)
        assert scopes and set(scopes) == {"workspace:west"}
        assert "Nothing matches" in root.get("/audit", params={"since": "2001-01-01", "until": "2001-01-02"}).text
        assert "<tr data-action=" in root.get("/audit", params={"since": "2001-01-01T00:00"}).text
        bad = root.get("/audit", params={"since": "yesterday"})
        assert bad.status_code == 400 and "expected a date" in bad.text
    with session(registry, "plant-admin") as plant:
        # a folder admin reads its folder's entries only
        scopes = set(re.findall(r"<tr data-action=[^>]*><td>[^<]*</td><td>[^<]*</td><td>([^<]*)</td>",
                                plant.get("/audit").text))
        assert scopes and scopes <= {"folder:plant", "workspace:east", "workspace:west", "workspace:north"}
        assert "<tr data-action=" not in plant.get("/audit", params={"workspace": "bench"}).text


def test_forms_without_the_session_csrf_token_are_refused(registry: Registry) -> None:
    with session(registry, "root") as root:
        for path, fields in (("/users", {"name": "mallory", "role": "admin", "scope": "platform",
                                         "password": PASSWORD}),
                             ("/users/ann/remove", {}), ("/users/ann/password", {"password": "mallory-pass"}),
                             ("/api-tokens", {"role": "admin", "scope": "platform"}),
                             ("/workspaces", {"name": "mallory", "folder": "default"})):
            for csrf in ({}, {"_csrf": "not-the-token"}):
                answer = root.client.post(path, data={**fields, **csrf})
                assert answer.status_code == 403, (path, csrf)
        users = rows(root.get("/users").text, "data-user")
        assert "mallory" not in users and "ann" in users
        assert 'data-workspace="mallory"' not in root.get("/workspaces").text
