"""The registry's pages in Chromium: a registry user logs in to a real TLS registry, sees a joined node's state,
opens the node, rolls a workload back to its first version, creates a join token and reads the audit log."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.registry.conftest import Registry
from tests.registry.test_access import cli, heartbeat, join, token

PASSWORD = "registry-browser-pass"


def test_a_registry_user_sees_a_joined_nodes_state(registry: Registry, console: Page, tmp_path: Path,
                                                  artifacts: Path) -> None:
    node_dir = tmp_path / "gw"
    assert join(registry, token(registry, "--labels", "site=north"), node_dir, "--name", "gw-7").returncode == 0
    (tmp_path / "password").write_text(PASSWORD + "\n")
    cli(registry, "user", "add", "ops", "--role", "admin", "--scope", "platform", "--password-file",
                 str(tmp_path / "password"))
    for version in ("v1", "v2"):  # two versions of a workload placed on the node
        (tmp_path / "app.yaml").write_text("kind: Workload\nname: app\nnode: gw-7\ncommand: [sleep, '60']\n"
                                           f"env: {{APP_VERSION: {version}}}\n")
        cli(registry, "apply", "-f", str(tmp_path / "app.yaml"))
    with heartbeats(registry, node_dir):
        see_the_pages(registry, console, artifacts)


@contextlib.contextmanager
def heartbeats(registry: Registry, node_dir: Path) -> Iterator[None]:
    """The node heartbeats every 0.5 s (the registry's interval is 1 s) while the block runs."""
    stopping = threading.Event()

    def beat() -> None:
        while not stopping.is_set():
            heartbeat(registry, node_dir, version="3.1.4")
            stopping.wait(0.5)

    heartbeat(registry, node_dir, version="3.1.4")
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopping.set()
        thread.join(timeout=15)


def see_the_pages(registry: Registry, page: Page, artifacts: Path) -> None:
    page.goto(f"{registry.url}/nodes/gw-7")
    assert re.search(r"/login\?next=/nodes/gw-7$", page.url)
    page.get_by_label("User name").fill("ops")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("Wrong user name or password")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("gw-7")
    expect(page.locator("dd").first).to_contain_text("healthy")
    expect(page.get_by_text("site=north").first).to_be_visible()
    expect(page.locator("#node-plots")).to_be_attached()
    page.screenshot(path=str(artifacts / "registry-node.png"), full_page=True)

    page.get_by_role("link", name="Nodes").click()
    row = page.locator('tr[data-node="gw-7"]')
    expect(row.locator("[data-status]")).to_have_text("healthy")
    expect(row).to_contain_text("3.1.4")
    expect(row).to_contain_text("last heartbeat")
    page.screenshot(path=str(artifacts / "registry-nodes.png"), full_page=True)

    page.get_by_role("link", name="Workloads").click()
    page.get_by_role("link", name="default/app").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("default/app")
    expect(page.locator('#versions tr[data-version="2"]')).to_contain_text("current")
    page.get_by_role("button", name="Rollback to 1").click()
    expect(page.get_by_role("status")).to_contain_text("rolled back to version 1: now version 3")
    expect(page.locator('#versions tr[data-version="3"]')).to_contain_text("rollback to version 1")
    page.screenshot(path=str(artifacts / "registry-workload.png"), full_page=True)

    page.get_by_role("link", name="Join tokens").click()
    page.get_by_label("Labels").fill("site=south")
    page.get_by_role("button", name="Create join token").click()
    expect(page.locator("#new-token")).to_have_text(re.compile(r"^[0-9a-f]{8}\.[\w-]+\.[0-9a-f]{64}$"))
    token_id = page.locator("#new-token").inner_text().split(".")[0]
    page.locator(f'tr[data-token="{token_id}"]').get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("status")).to_contain_text(f"Join token {token_id} revoked")
    expect(page.locator(f'tr[data-token="{token_id}"]')).to_contain_text("revoked")

    page.get_by_role("link", name="Audit log").click()
    audit = page.locator("tbody")
    expect(audit).to_contain_text("node.join")
    expect(audit).to_contain_text("join-token.revoke")
    expect(audit).to_contain_text("document.rollback")
    expect(audit).to_contain_text("user:ops")

    page.get_by_role("button", name="Log out").click()
    assert page.url.endswith("/login")
    page.goto(f"{registry.url}/")
    assert "/login" in page.url
