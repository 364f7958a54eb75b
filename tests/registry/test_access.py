"""Scopes at the registry: tokens and users bound to platform, a folder or a workspace see and change only what lies
there (lists filtered, single objects outside the scope 404), least privilege by default."""

from __future__ import annotations

import contextlib
import io
import json
import re
import ssl
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from gateway.cli import main
from tests.registry.conftest import Registry

PASSWORD = "registry-pass-1"
METER = """\
kind: DeviceModel
name: meter
properties: [{name: power, type: float, access: ReadOnly}]
---
kind: Device
name: meter-b
model: meter
node: b
protocol: {name: virtual}
properties: [{name: power, visitor: {generator: memory, initial: 1.0}}]
"""


def cli(registry: Registry, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`fieldgate registry ARGS --data-dir D` run in this process (the same code as the command, without the
    interpreter's start-up time); exit code, stdout and stderr as from a subprocess."""
    return run(["registry", *args, "--data-dir", str(registry.data_dir), *registry.db_args], check=check)


def run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    out, err = io.StringIO(), io.StringIO()

    def command() -> int:
        try:
            return main(argv)
        except SystemExit as exc:  # argparse's exit on bad arguments
            return int(exc.code or 0)

    # in a thread of its own: the command runs its own event loop, and Playwright's may be running in this one
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), ThreadPoolExecutor(1) as pool:
        code = pool.submit(command).result(timeout=60)
    if check and code != 0:
        raise AssertionError(f"fieldgate {' '.join(argv)}: exit {code}: {err.getvalue()}")
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def token(registry: Registry, *args: str) -> str:
    """A new join token."""
    return cli(registry, "join-token", "create", *args).stdout.strip()


def join(registry: Registry, join_token: str, data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`fieldgate join` of a node with its own data dir, over TLS to the registry."""
    return run(["join", "--registry", registry.url, "--token", join_token, "--data-dir", str(data_dir), *extra],
               check=False)


def api(registry: Registry, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=registry.url, verify=trust(registry), headers=headers, timeout=10)


def trust(registry: Registry) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(registry.data_dir / "ca.pem"))


def heartbeat(registry: Registry, node_dir: Path, version: str = "9.9.9") -> None:
    """A node's heartbeat over mutual TLS with the certificate it got at join."""
    directory = node_dir / "registry"
    context = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    context.load_cert_chain(directory / "node.pem", directory / "node.key")
    with httpx.Client(base_url=registry.url, verify=context, timeout=10) as node:
        assert node.post("/api/v1/heartbeat", json={"info": {"version": version}}).status_code == 200


def two_workspaces(registry: Registry, tmp_path: Path) -> None:
    """Node `a` in workspace default (folder default), node `b` in workspace plant-b (folder east)."""
    cli(registry, "workspace", "create", "plant-b", "--folder", "east")
    assert join(registry, token(registry, "--labels", "site=a"), tmp_path / "a", "--name", "a").returncode == 0
    token_b = token(registry, "--workspace", "plant-b", "--labels", "site=b")
    assert join(registry, token_b, tmp_path / "b", "--name", "b").returncode == 0


@contextlib.contextmanager
def login(registry: Registry, user: str, password: str = PASSWORD) -> Iterator[httpx.Client]:
    """A page session of a registry user (login form with its CSRF cookie)."""
    with httpx.Client(base_url=registry.url, verify=trust(registry), timeout=10) as client:
        form = client.get("/login")
        csrf = re.search(r'name="_csrf" value="([^"]+)"', form.text)
        assert form.status_code == 200 and csrf
        done = client.post("/login", data={"_csrf": csrf.group(1), "username": user, "password": password,
                                           "next": "/"})
        assert done.status_code == 303 and done.headers["location"] == "/", done.text
        yield client


def add_user(registry: Registry, tmp_path: Path, name: str, *args: str) -> None:
    secret = tmp_path / f"{name}.password"
    secret.write_text(PASSWORD + "\n")
    cli(registry, "user", "add", name, "--password-file", str(secret), *args)


def test_scoped_tokens_see_and_change_only_their_workspaces(registry: Registry, tmp_path: Path) -> None:
    two_workspaces(registry, tmp_path)
    default_admin = cli(registry, "token", "create", "--role", "admin").stdout.strip()  # scope workspace:default
    east_viewer = cli(registry, "token", "create", "--scope", "folder:east").stdout.strip()  # role viewer
    platform = cli(registry, "token", "create", "--role", "operator", "--scope", "platform").stdout.strip()

    with api(registry, default_admin) as admin, api(registry, east_viewer) as east, api(registry, platform) as root:
        assert [n["name"] for n in admin.get("/api/v1/nodes").json()] == ["a"]
        assert [n["name"] for n in east.get("/api/v1/nodes").json()] == ["b"]
        assert [n["name"] for n in root.get("/api/v1/nodes").json()] == ["a", "b"]
        assert root.get("/api/v1/nodes/b").json()["workspace"] == "plant-b"

        # outside the scope is indistinguishable from missing
        hidden, missing = admin.get("/api/v1/nodes/b"), admin.get("/api/v1/nodes/zz")
        assert (hidden.status_code, hidden.json()["detail"]) == (404, "no node b")
        assert missing.status_code == 404
        assert admin.post("/api/v1/messages/b/plant/alarms", content=b"{}").status_code == 404
        assert admin.patch("/api/v1/nodes/b", json={"labels": {"x": "1"}}).status_code == 404
        assert admin.delete("/api/v1/nodes/b").status_code == 404
        assert root.post("/api/v1/messages/b/plant/alarms", content=b"{}").status_code == 202

        # the lowest role by default: a viewer may not post or change
        assert east.post("/api/v1/messages/b/plant/alarms", content=b"{}").status_code == 403
        assert east.patch("/api/v1/nodes/b", json={"labels": {}}).status_code == 403

        # groups and join tokens: made in the admin's workspace only, listed by scope
        made = admin.post("/api/v1/groups", json={"name": "line-a", "selector": {"site": "a"}})
        assert made.status_code == 201 and made.json()["nodes"] == ["a"]
        foreign = admin.post("/api/v1/groups", json={"name": "line-b", "nodes": ["b"], "workspace": "plant-b"})
        assert foreign.status_code == 400 and foreign.json()["detail"] == "workspace 'plant-b': no such workspace"
        assert [g["name"] for g in east.get("/api/v1/groups").json()] == []
        assert [g["name"] for g in root.get("/api/v1/groups").json()] == ["line-a"]
        created = admin.post("/api/v1/join-tokens", json={"max_uses": 2, "labels": {"site": "a"}})
        assert created.status_code == 201 and created.json()["token"].count(".") == 2
        tokens = admin.get("/api/v1/join-tokens").json()
        assert {t["workspace"] for t in tokens} == {"default"} and len(tokens) == 2
        b_token = token(registry, "--workspace", "plant-b").split(".")[0]
        assert admin.delete(f"/api/v1/join-tokens/{b_token}").status_code == 404
        assert admin.post("/api/v1/join-tokens", json={"max_uses": 0}).status_code == 400

        # an admin moves its node only into a workspace it covers
        assert admin.patch("/api/v1/nodes/a", json={"workspace": "plant-b"}).status_code == 400
        changed = admin.patch("/api/v1/nodes/a", json={"labels": {"site": "a", "rack": "2"}})
        assert changed.status_code == 200 and changed.json()["labels"] == {"site": "a", "rack": "2"}
        assert admin.patch("/api/v1/nodes/a", json={"colour": "red"}).status_code == 400

    # a revoked token is refused at once
    token_id = default_admin.split(".")[0]
    cli(registry, "token", "revoke", token_id)
    with api(registry, default_admin) as admin:
        assert admin.get("/api/v1/nodes").status_code == 401
    listed = {t["id"]: t for t in map(json.loads, cli(registry, "token", "list", "--json").stdout.splitlines())}
    assert listed[token_id]["revoked_at"] is not None
    assert listed[east_viewer.split(".")[0]] | {"created_at": 0} == {
        "id": east_viewer.split(".")[0], "role": "viewer", "scope": "folder:east", "description": "",
        "created_at": 0, "revoked_at": None}


def test_token_and_user_defaults_and_bad_input(registry: Registry, tmp_path: Path) -> None:
    plain = cli(registry, "token", "create").stdout.strip()
    listed = json.loads(cli(registry, "token", "list", "--json").stdout.splitlines()[0])
    assert (listed["id"], listed["role"], listed["scope"]) == (plain.split(".")[0], "viewer", "workspace:default")
    for args, reason in [(("--scope", "workspace:nowhere"), "--scope workspace:nowhere: no workspace nowhere"),
                         (("--scope", "folder:east"), "--scope folder:east: no folder east (`fieldgate registry "
                                                      "workspace create W --folder east` makes one)"),
                         (("--scope", "galaxy"), "scope 'galaxy': expected platform, folder:NAME or workspace:NAME")]:
        refused = cli(registry, "token", "create", *args, check=False)
        assert refused.returncode == 2 and refused.stderr.strip() == f"fieldgate registry: {reason}"
    assert cli(registry, "token", "create", "--role", "root", check=False).returncode == 2
    assert cli(registry, "token", "revoke", "ffff", check=False).stderr.strip() == (
        "fieldgate registry: no API token ffff")
    assert cli(registry, "join-token", "create", "--workspace", "nowhere", check=False).returncode == 2
    short = tmp_path / "short"
    short.write_text("abc\n")
    too_short = cli(registry, "user", "add", "eve", "--password-file", str(short), check=False)
    assert too_short.returncode == 2 and "at least 8 characters" in too_short.stderr
    add_user(registry, tmp_path, "olga")
    assert cli(registry, "user", "list").stdout.split() == ["olga", "viewer", "workspace:default"]


def test_a_workspace_user_does_not_see_another_workspaces_node_on_the_pages(registry: Registry,
                                                                           tmp_path: Path) -> None:
    two_workspaces(registry, tmp_path)
    (tmp_path / "meter.yaml").write_text(METER)
    cli(registry, "apply", "-f", str(tmp_path / "meter.yaml"), "--workspace", "plant-b")
    elsewhere = cli(registry, "apply", "-f", str(tmp_path / "meter.yaml"), check=False)
    assert elsewhere.returncode == 2 and elsewhere.stderr.splitlines() == [
        "DeviceModel default/meter: workspace plant-b holds it", "Device default/meter-b: workspace plant-b holds it",
        "Device default/meter-b: node b is in workspace plant-b, not default"]
    cli(registry, "group", "create", "line-b", "--nodes", "b", "--workspace", "plant-b")
    add_user(registry, tmp_path, "bea", "--role", "admin", "--scope", "workspace:plant-b")
    with httpx.Client(base_url=registry.url, verify=trust(registry), timeout=10) as anonymous:
        first = anonymous.get("/nodes/b")
        assert first.status_code == 303 and first.headers["location"] == "/login?next=/nodes/b"
    with login(registry, "bea") as pages:
        heartbeat(registry, tmp_path / "b", version="2.0.1")
        nodes = pages.get("/nodes")
        assert nodes.status_code == 200
        assert 'data-node="b"' in nodes.text and 'data-node="a"' not in nodes.text
        assert "healthy" in nodes.text and "2.0.1" in nodes.text
        node_b = pages.get("/nodes/b")
        assert node_b.status_code == 200 and "default/meter-b" in node_b.text and "line-b" in node_b.text
        assert "default/meter-b" in pages.get("/devices").text and "line-b" in pages.get("/groups").text
        hidden = pages.get("/nodes/a")
        assert hidden.status_code == 404 and "no node a" in hidden.text
        # a form without the session's CSRF token is refused; with it, the token is made in the user's workspace
        assert pages.post("/join-tokens", data={"workspace": "plant-b"}).status_code == 403
        csrf = re.search(r'action="/join-tokens">\s*<input type="hidden" name="_csrf" value="([^"]+)"',
                         pages.get("/join-tokens").text)
        assert csrf
        made = pages.post("/join-tokens", data={"_csrf": csrf.group(1), "workspace": "default"})
        assert made.status_code == 400 and "no such workspace" in made.text
        made = pages.post("/join-tokens", data={"_csrf": csrf.group(1), "workspace": "plant-b", "max_uses": "2"})
        assert made.status_code == 200 and 'id="new-token"' in made.text
    add_user(registry, tmp_path, "vic")  # viewer of workspace default
    with login(registry, "vic") as pages:
        assert 'data-node="a"' in pages.get("/nodes").text
        assert pages.get("/audit").status_code == 403
        assert pages.get("/nodes/b").status_code == 404
        assert "meter-b" not in pages.get("/devices").text and "line-b" not in pages.get("/groups").text
        cli(registry, "user", "remove", "vic")  # a removed user's session ends at once
        assert pages.get("/").headers["location"] == "/login"
