"""The UI in Chromium against a running gateway: log in, live values, a setpoint, a history plot, a CSV import."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.conftest import ADMIN_PASSWORD

TIMEOUT = 10_000


def log_in(page: Page, url: str, path: str = "/") -> None:
    page.set_default_timeout(TIMEOUT)
    page.goto(url + path)
    expect(page).to_have_url(re.compile(r"/login"))
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Log in").click()


def test_live_values_setpoint_and_history(page: Page, gateway_url: str, artifacts: Path) -> None:
    log_in(page, gateway_url, "/devices/default/boiler-1")
    expect(page).to_have_url(gateway_url + "/devices/default/boiler-1")
    expect(page.locator("#live")).to_have_class(re.compile(r"\bon\b"))
    temperature = page.locator('tr[data-prop="temperature"] td.reported')
    expect(temperature).not_to_have_text("\u2013")
    first = temperature.inner_text()
    expect(temperature).not_to_have_text(first)  # pushed by SSE, no reload

    form = page.locator("form.set-desired").filter(has=page.locator('input[value="setpoint"]'))
    form.locator('input[name="value"]').fill("95")
    form.get_by_role("button", name="Set").click()
    expect(form.locator(".error")).to_contain_text("above the maximum 90")
    form.locator('input[name="value"]').fill("42.5")
    form.get_by_role("button", name="Set").click()
    expect(page.locator('tr[data-prop="setpoint"] td.desired')).to_have_text("42.5")
    expect(page.locator('tr[data-prop="setpoint"] td.reported')).to_have_text("42.5")

    page.locator('a.plot-open[data-prop="temperature"]').click()
    expect(page).to_have_url(gateway_url + "/devices/default/boiler-1")  # opened in place (plots: test_live_pages)
    plot = page.locator("#plot-area canvas")
    expect(plot).to_be_visible()
    expect(page.locator("#plot-area")).to_have_attribute("data-points", re.compile(r"^[1-9]"))
    page.locator('a.plot-window[data-window="1h"]').click()
    expect(page.locator('a.plot-window[data-window="1h"]')).to_have_class(re.compile("active"))
    expect(plot).to_be_visible()
    page.screenshot(path=str(artifacts / "device.png"), full_page=True)

    page.goto(gateway_url + "/")
    expect(page.locator("#uplink")).to_contain_text("not joined")
    page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)


def test_csv_import(page: Page, gateway_url: str, artifacts: Path, tmp_path: Path) -> None:
    csv_file = tmp_path / "meters.csv"
    csv_file.write_text("name,profile,address,unit,labels\n"
                        "meter-a,eastron/sdm120,127.0.0.1:1,1,line=7\n"
                        "meter-b,eastron/sdm120,127.0.0.1:1,2,line=7\n", encoding="utf-8")
    log_in(page, gateway_url, "/import")
    page.get_by_label("File").set_input_files(str(csv_file))
    page.get_by_role("button", name="Preview").click()
    preview = page.locator("#preview")
    expect(preview).to_contain_text("default/meter-a")
    expect(preview).to_contain_text("create")
    page.screenshot(path=str(artifacts / "import-preview.png"), full_page=True)
    page.get_by_role("button", name=re.compile("Apply 2 resources")).click()
    expect(page).to_have_url(gateway_url + "/devices")
    expect(page.locator("table.devices")).to_contain_text("default/meter-b")
    page.goto(gateway_url + "/devices?label=line%3D7")
    expect(page.locator("table.devices tbody tr")).to_have_count(2)
    page.screenshot(path=str(artifacts / "devices.png"), full_page=True)


def test_a_disabled_save_button_looks_disabled(page: Page, gateway_url: str, artifacts: Path) -> None:
    log_in(page, gateway_url, "/devices/edit?name=boiler-1")  # defined in the config file: read-only here
    save = page.get_by_role("button", name="Save device")
    expect(save).to_be_disabled()
    looks = save.evaluate("b => { const s = getComputedStyle(b); return [s.opacity, s.backgroundColor, s.cursor]; }")
    page.goto(gateway_url + "/import")
    enabled = page.get_by_role("button", name="Preview").evaluate(
        "b => { const s = getComputedStyle(b); return [s.opacity, s.backgroundColor, s.cursor]; }")
    assert float(looks[0]) < 0.7 and looks[1] != enabled[1] and looks[2] == "not-allowed", (looks, enabled)
    page.goto(gateway_url + "/devices/edit?name=boiler-1")
    page.screenshot(path=str(artifacts / "read-only-device-form.png"), full_page=True)
