"""The console's Apps pages in Chromium against a real registry and two real gateways: a BatchWorkload made with the
form for a node group, with the group's override of the replicas and env, runs on both nodes, and the batch view
shows each node's instance running with the override's replica count."""

from __future__ import annotations

import subprocess
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.test_registry_console import Node, nav, reload_until
from tests.conftest import FIELDGATE
from tests.registry.conftest import Registry, join

PASSWORD = "apps-admin-password"


def test_a_batch_workload_with_a_group_override_runs_on_both_nodes(registry: Registry, console: Page,
                                                                   tmp_path: Path, artifacts: Path) -> None:
    page = console
    added = subprocess.run([*FIELDGATE, "registry", "user", "add", "admin", "--role", "admin", "--scope", "platform",
                            "--password-stdin", "--data-dir", str(registry.data_dir)], input=PASSWORD + "\n",
                           capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    token = registry.token("--labels", "line=a", "--max-uses", "2")
    nodes = [Node(tmp_path, "gw-1"), Node(tmp_path, "gw-2")]
    for node in nodes:
        joined = join(registry, token, node.data_dir, "--name", node.name)
        assert joined.returncode == 0, joined.stderr
    registry.cli("group", "create", "line-a", "--selector", "line=a")
    try:
        for node in nodes:
            node.start()
        page.goto(registry.url + "/")
        page.get_by_label("User name").fill("admin")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Overview")

        nav(page, "Apps")
        page.get_by_role("link", name="New batch workload").click()
        page.get_by_label("Name", exact=True).fill("ticker")
        page.locator('textarea[name="command"]').fill("sleep\n600")
        page.locator('textarea[name="env"]').fill("MODE=template")
        page.get_by_label("group 1", exact=True).select_option("line-a")
        page.get_by_label("group 1 replicas").fill("2")
        page.get_by_label("group 1 env").fill("MODE=fast")
        page.screenshot(path=str(artifacts / "registry-apps-batch-form.png"), full_page=True)
        page.get_by_role("button", name="Save batch workload").click()
        expect(page.get_by_role("status")).to_contain_text("BatchWorkload default/ticker saved")
        expect(page.locator('[data-group="line-a"] [data-override="env"]')).to_contain_text("MODE")

        for node in nodes:
            row = f'.batch-group[data-group="line-a"] tr[data-node="{node.name}"]'
            reload_until(page, lambda r=row: page.locator(f'{r}[data-status="running"]'), timeout=60)
            expect(page.locator(row)).to_contain_text("2/2")
        page.screenshot(path=str(artifacts / "registry-apps-batch-running.png"), full_page=True)

        nav(page, "Apps")
        expect(page.locator('tr[data-app="BatchWorkload/default/ticker"]')).to_contain_text("line-a")
        page.screenshot(path=str(artifacts / "registry-apps-list.png"), full_page=True)
    finally:
        for node in nodes:
            node.stop()
