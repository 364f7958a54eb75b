"""Live pages in Chromium: a value on the local devices list and a count on the registry overview change without a
reload (server-sent events), and the plots are drawn by the vendored uPlot."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.test_ui import log_in
from tests.registry.conftest import Registry
from tests.registry.test_access import cli, heartbeat, join, token

PASSWORD = "registry-live-pass"
# set on the page's window once: a reload would lose it
MARK = "window.fieldgateNoReload = 'still the same page'"
STILL_THE_SAME = "() => window.fieldgateNoReload === 'still the same page'"


def test_a_value_on_the_devices_list_changes_without_reload(page: Page, gateway_url: str, artifacts: Path) -> None:
    log_in(page, gateway_url, "/devices")
    expect(page).to_have_url(gateway_url + "/devices")
    expect(page.locator("[data-live-status]")).to_have_class(re.compile(r"\bon\b"))
    value = page.locator('tr[data-live-row="default/boiler-1"] [data-live-field="value:temperature"]')
    expect(value).to_have_text(re.compile(r"^-?\d+(\.\d+)? °C$"))  # the model's degC as people write it
    page.evaluate(MARK)
    first = value.inner_text()
    expect(value).not_to_have_text(first)  # the sine generator moved it; the stream brought it
    assert page.evaluate(STILL_THE_SAME)
    expect(value).to_have_text(re.compile(r" °C$"))
    page.screenshot(path=str(artifacts / "live-devices.png"), full_page=True)


def test_a_device_plot_is_drawn_with_uplot(page: Page, gateway_url: str, artifacts: Path) -> None:
    log_in(page, gateway_url, "/devices/default/boiler-1?plot=temperature&window=15m")
    plot = page.locator("#plot-area")
    expect(plot.locator("canvas")).to_be_visible()  # uPlot drew over the SVG
    expect(plot.locator(".u-axis").first).to_be_attached()  # with its axes
    expect(plot).to_have_attribute("data-points", re.compile(r"^[1-9]"))
    page.screenshot(path=str(artifacts / "live-device-plot.png"), full_page=True)


def test_a_count_on_the_registry_overview_changes_without_reload(registry: Registry, console: Page,
                                                                 tmp_path: Path, artifacts: Path) -> None:
    node_dir = tmp_path / "gw"
    assert join(registry, token(registry), node_dir, "--name", "gw-live").returncode == 0
    (tmp_path / "password").write_text(PASSWORD + "\n")
    cli(registry, "user", "add", "ops", "--role", "admin", "--scope", "platform", "--password-file",
        str(tmp_path / "password"))
    page = console
    page.goto(f"{registry.url}/")
    page.get_by_label("User name").fill("ops")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Overview")
    healthy, joined = page.locator("#nodes-healthy"), page.locator("#nodes-joined")
    expect(healthy).to_have_text("0")
    expect(joined).to_have_text("1")  # joined, never called in
    expect(page.locator("[data-live-status]")).to_have_class(re.compile(r"\bon\b"))
    page.evaluate(MARK)
    heartbeat(registry, node_dir)
    expect(healthy).to_have_text("1")
    expect(joined).to_have_text("0")
    assert page.evaluate(STILL_THE_SAME)
    page.screenshot(path=str(artifacts / "live-registry-overview.png"), full_page=True)

    page.get_by_role("link", name="Nodes").first.click()
    row = page.locator('tr[data-live-row="gw-live"]')
    expect(row.locator("[data-status]")).to_have_text("healthy")
    version = row.locator('[data-live-field="version"]')
    expect(version).to_have_text("9.9.9")
    page.evaluate(MARK)
    heartbeat(registry, node_dir, version="5.0.1")
    expect(version).to_have_text("5.0.1")
    assert page.evaluate(STILL_THE_SAME)
    page.screenshot(path=str(artifacts / "live-registry-nodes.png"), full_page=True)
