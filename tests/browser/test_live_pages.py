"""Live pages in Chromium: a value on the local devices list, the node, app and device counts and the alerts on the
registry overview, and an upgrade task's rows change without a reload (server-sent events), and the plots are drawn
by the vendored uPlot."""

from __future__ import annotations

import json
import re
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.test_ui import log_in
from tests.registry.conftest import Registry
from tests.registry.test_access import cli, heartbeat, join, token
from tests.registry.test_pages import beat

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
    (tmp_path / "pump.yaml").write_text("kind: Workload\nname: pump\nnode: gw-live\ncommand: [sleep, '60']\n")
    cli(registry, "apply", "-f", str(tmp_path / "pump.yaml"))
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
    expect(page.locator("#apps-total")).to_have_text("1")  # pump, placed on gw-live, not reported yet
    expect(page.locator("#apps-running")).to_have_text("0")
    expect(page.locator("#devices-total")).to_have_text("0")
    page.evaluate(MARK)
    heartbeat(registry, node_dir)
    expect(healthy).to_have_text("1")
    expect(joined).to_have_text("0")
    # the node reports its app running and two devices, one of them online: the tiles follow without a reload
    beat(registry, node_dir, {
        "workloads": [{"workload": "default/pump", "status": "running", "replicas": 1, "ready": 1}],
        "twins": [{"device": "default/boiler-1", "state": "online", "properties": {}},
                  {"device": "default/meter-1", "state": "offline", "reason": "no answer"}],
        "twins_complete": True})
    expect(page.locator("#apps-running")).to_have_text("1")
    expect(page.locator("#devices-total")).to_have_text("2")
    expect(page.locator("#devices-online")).to_have_text("1")
    expect(page.locator("#devices-not-online")).to_have_text("1")
    # then the app fails: the count and a new alert row, linked to the workload, come without a reload
    beat(registry, node_dir, {"workloads": [{"workload": "default/pump", "status": "failed",
                                             "reason": "exited with code 3"}]})
    expect(page.locator("#apps-failed")).to_have_text("1")
    alert = page.locator('#alerts tr[data-alert="workload failed"]')
    expect(alert).to_contain_text("exited with code 3")
    expect(alert.get_by_role("link", name="default/pump on gw-live")).to_have_attribute("href",
                                                                                       "/workloads/default/pump")
    assert page.evaluate(STILL_THE_SAME)
    page.screenshot(path=str(artifacts / "live-registry-overview.png"), full_page=True)
    heartbeat(registry, node_dir)  # healthy again for the node list below

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


def test_an_upgrade_tasks_page_follows_its_node_without_reload(registry: Registry, console: Page, tmp_path: Path,
                                                               artifacts: Path) -> None:
    node_dir = tmp_path / "gw"
    assert join(registry, token(registry), node_dir, "--name", "gw-up").returncode == 0
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "fieldgate-9.9.0-py3-none-any.whl").write_bytes(b"")
    made = cli(registry, "upgrade", "create", "--version", "9.9.0", "--wheels", str(wheels), "--nodes", "gw-up",
               "--json").stdout
    task = json.loads(made)["id"]
    (tmp_path / "password").write_text(PASSWORD + "\n")
    cli(registry, "user", "add", "ops", "--role", "viewer", "--scope", "platform", "--password-file",
        str(tmp_path / "password"))
    page = console
    page.goto(f"{registry.url}/upgrades/{task}")
    page.get_by_label("User name").fill("ops")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    row = page.locator('tr[data-live-row="gw-up"]')
    expect(row.locator('[data-live-field="phase"]')).to_have_text("pending")
    expect(page.locator("[data-live-status]")).to_have_class(re.compile(r"\bon\b"))
    page.evaluate(MARK)
    assert beat(registry, node_dir, {})["upgrade"]["task"] == task  # healthy: the task is handed to the node
    expect(row).to_have_attribute("data-phase", "running")
    expect(row.locator("[data-status]")).to_have_text("assigned")
    expect(page.locator('#phase-counts [data-live-field="running"]')).to_have_text("1")
    beat(registry, node_dir, {"upgrade": {"task": task, "status": "succeeded", "reason": "version 9.9.0 healthy",
                                          "log": "switching to slot b and restarting"}})
    expect(row.locator('[data-live-field="phase"]')).to_have_text("done")
    expect(row).to_contain_text("version 9.9.0 healthy")
    expect(page.locator("h1 [data-status]")).to_have_text("succeeded")
    expect(page.locator("#task-finished")).to_have_text(re.compile(r"UTC$"))
    row.locator("summary").click()
    expect(row.locator("pre")).to_have_text("switching to slot b and restarting")
    assert page.evaluate(STILL_THE_SAME)
    page.screenshot(path=str(artifacts / "live-registry-upgrade.png"), full_page=True)
