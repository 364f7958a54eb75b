"""An upgrade in Chromium against a real registry and a real gateway node in A/B slots: an admin uploads the next
version's wheels on the Upgrades page for the node, starts the task and watches the node's row go to done, with the
node's log of the switch, without a reload; the node then runs the new version from its other slot."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.test_registry_console import nav
from tests.registry.conftest import Registry, wait_until
from tests.registry.test_access import PASSWORD, add_user
from tests.registry.test_upgrade_task import start_node
from tests.test_upgrade import build_plugins, build_wheels


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("wheelhouses")
    plugins = build_plugins(base / "plugins")
    return {version: build_wheels(base / "src", base, version, plugins) for version in ("9.0.0", "9.1.0")}


@pytest.fixture
def real_node(registry: Registry, tmp_path: Path, two_versions: dict[str, Path],
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    node = start_node(registry, tmp_path / "n1", "n1", "9.0.0", two_versions["9.0.0"], monkeypatch)
    try:
        yield node
    finally:
        node.restart_script.unlink(missing_ok=True)  # an upgrade still running cannot start it again
        node.stop()


@pytest.mark.slow
def test_an_upgrade_started_in_the_browser_is_watched_to_the_end(registry: Registry, console: Page, tmp_path: Path,
                                                                 real_node: Any, two_versions: dict[str, Path],
                                                                 artifacts: Path) -> None:
    page = console
    add_user(registry, tmp_path, "admin", "--role", "admin", "--scope", "platform")
    wait_until(lambda: registry.nodes().get("n1", {}).get("version") == "9.0.0", what="n1's version at the registry")
    page.goto(registry.url + "/")
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Overview")

    nav(page, "Upgrades")
    page.get_by_role("link", name="New upgrade").click()
    page.get_by_label("Wheel files").set_input_files(sorted(two_versions["9.1.0"].glob("*.whl")))
    page.get_by_label("n1", exact=True).check()
    page.get_by_label("Deadline per node, seconds").fill("60")
    page.screenshot(path=str(artifacts / "registry-upgrade-form.png"), full_page=True)
    page.get_by_role("button", name="Start upgrade").click()
    expect(page).to_have_url(re.compile(r"/upgrades/up-[0-9a-f]+$"))

    # the page follows the task without a reload: the node's row goes running, then done, with its log
    page.evaluate("window.fieldgateNoReload = 'still the same page'")
    expect(page.locator('[data-node="n1"][data-phase="done"]')).to_be_visible(timeout=150_000)
    expect(page.locator('[data-node="n1"] pre')).to_contain_text("switching to slot b and restarting")
    assert page.evaluate("() => window.fieldgateNoReload === 'still the same page'")
    expect(page.locator("h1 [data-status]")).to_have_text("succeeded")
    page.screenshot(path=str(artifacts / "registry-upgrade-done.png"), full_page=True)
    assert real_node.current() == "b" and real_node.status()["version"] == "9.1.0"
