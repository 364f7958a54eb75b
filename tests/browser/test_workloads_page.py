"""The Workloads pages in Chromium: an admin opens a running process workload, sees its events and its log
(followed without a reload), rolls it back to version 1 and sees the version change."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import APIRequestContext, Browser, Page, expect

from tests.browser.test_ui import log_in

APP = "import os, time\nwhile True:\n    print('tick', os.environ['GREETING'], flush=True)\n    time.sleep(0.3)\n"


def ticker(greeting: str, name: str = "ticker") -> dict[str, Any]:
    return {"name": name, "command": [sys.executable, "-c", APP], "env": {"GREETING": greeting},
            "restart_delay": "0.2s", "stop_grace": "2s"}


def csrf_header(page: Page) -> dict[str, str]:
    """The session's CSRF token, as every page carries it, for REST calls made with the page's session."""
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    assert token
    return {"x-csrf-token": token}


@pytest.fixture
def api(page: Page, gateway_url: str) -> Iterator[APIRequestContext]:
    """The REST API with the page's admin session; the tests' workloads are deleted at the end."""
    log_in(page, gateway_url, "/workloads")
    expect(page).to_have_url(gateway_url + "/workloads")
    headers = csrf_header(page)
    yield page.request
    for name in ("ticker", "plain"):
        page.request.delete(f"{gateway_url}/api/v1/workloads/default/{name}", headers=headers)


def test_admin_sees_events_logs_and_rolls_back(page: Page, gateway_url: str, api: APIRequestContext,
                                               artifacts: Path) -> None:
    expect(page.get_by_role("link", name="Workloads")).to_be_visible()
    for greeting in ("one", "two"):
        response = api.post(f"{gateway_url}/api/v1/workloads", data=ticker(greeting), headers=csrf_header(page))
        assert response.status == 201, response.text()

    deadline = time.monotonic() + 15
    while api.get(f"{gateway_url}/api/v1/workloads/default/ticker").json()["status"] != "running":
        assert time.monotonic() < deadline, "the workload did not start"
        time.sleep(0.1)

    page.goto(gateway_url + "/workloads")
    row = page.locator('tr[data-workload="default/ticker"]')
    expect(row.locator("td.version")).to_have_text("2")
    expect(row).to_contain_text("running")
    expect(row.locator("td.ready")).to_have_text("1/1")
    row.get_by_role("link", name="default/ticker").click()

    expect(page).to_have_url(gateway_url + "/workloads/default/ticker")
    expect(page.locator("#workload-version")).to_have_text("2")
    events = page.locator("#events td.event-name")
    expect(events.filter(has_text=re.compile(r"^scheduled$")).first).to_be_visible()
    expect(events.filter(has_text=re.compile(r"^started$")).first).to_be_visible()
    log_lines = page.locator("#workload-log tbody tr")
    shown = log_lines.count()
    expect(log_lines.filter(has_text="tick two").last).to_be_visible()
    expect(log_lines).not_to_have_count(shown)  # new lines arrive by polling, no reload
    page.screenshot(path=str(artifacts / "workload-page.png"), full_page=True)

    versions = page.locator("#versions tbody tr")
    expect(versions).to_have_count(2)
    page.locator('tr[data-version="1"]').get_by_role("button", name="Roll back to 1").click()

    expect(page.locator(".flash.ok")).to_have_text("rolled back to version 1: now version 3")
    expect(page.locator("#workload-version")).to_have_text("3")
    current = page.locator("#versions tr.current")
    expect(current).to_have_attribute("data-version", "3")
    expect(current).to_contain_text("rollback to version 1")
    expect(current.locator("pre")).to_contain_text('"GREETING": "one"')
    expect(page.locator("#workload-log tbody tr").filter(has_text="tick one").last).to_be_visible(timeout=15_000)

    page.get_by_role("button", name="Stop", exact=True).click()
    expect(page.locator(".flash.ok")).to_have_text("default/ticker stopped")
    for _ in range(100):  # bounded: the page as of its making, reloaded until the instance is gone
        if page.locator("#workload-status").inner_text() == "stopped":
            break
        time.sleep(0.1)
        page.reload()
    expect(page.locator("#workload-status")).to_have_text("stopped")
    page.get_by_role("button", name="Start", exact=True).click()  # a stopped workload offers Start instead of Stop
    expect(page.locator(".flash.ok")).to_have_text("default/ticker starting")
    for _ in range(150):
        if page.locator("#workload-status").inner_text() == "running":
            break
        time.sleep(0.1)
        page.reload()
    expect(page.locator("#workload-status")).to_have_text("running")
    expect(page.get_by_role("button", name="Stop", exact=True)).to_be_visible()


def test_the_pages_show_everything_without_javascript(chromium: Browser, gateway_url: str,
                                                      api: APIRequestContext, page: Page) -> None:
    response = api.post(f"{gateway_url}/api/v1/workloads", data=ticker("plain", "plain"), headers=csrf_header(page))
    assert response.status == 201, response.text()
    context = chromium.new_context(java_script_enabled=False)
    try:
        plain = context.new_page()
        log_in(plain, gateway_url, "/workloads/default/plain")
        expect(plain).to_have_url(gateway_url + "/workloads/default/plain")
        expect(plain.locator("#events td.event-name").filter(has_text=re.compile(r"^scheduled$"))).to_be_visible()
        expect(plain.locator('#versions tr[data-version="1"]')).to_contain_text("current")
        for _ in range(50):  # the log as of the page's making: reload until the app has written
            if plain.locator("#workload-log tbody tr").filter(has_text="tick plain").count():
                break
            time.sleep(0.1)
            plain.reload()
        expect(plain.locator("#workload-log tbody tr").filter(has_text="tick plain").first).to_be_visible()
    finally:
        context.close()



def test_an_apps_page_shows_its_figures_and_draws_their_plots(page: Page, gateway_url: str, api: APIRequestContext,
                                                              artifacts: Path) -> None:
    response = api.post(f"{gateway_url}/api/v1/workloads", data=ticker("figures"), headers=csrf_header(page))
    assert response.status == 201, response.text()

    def figures() -> dict[str, Any] | None:
        found = api.get(f"{gateway_url}/api/v1/workloads/default/ticker").json()["instances"]
        latest = found[0].get("figures") if found else None
        return latest if latest and latest["cpu_percent"] is not None else None

    deadline = time.monotonic() + 60  # the node samples every 10 s; a CPU figure needs two samples
    while (latest := figures()) is None:
        assert time.monotonic() < deadline, "no figures of the ticker"
        time.sleep(1)
    assert latest["memory_bytes"] > 1 << 20

    page.goto(gateway_url + "/workloads/default/ticker")
    row = page.locator("#app-figures tr[data-instance]")
    expect(row).to_have_count(1)
    expect(row.locator('td[data-figure="memory_bytes"]')).to_have_text(re.compile(r"^\d+(\.\d)? MiB$"))
    expect(row.locator('td[data-figure="cpu_percent"]')).to_have_text(re.compile(r"^\d+(\.\d)? %$"))
    plots = page.locator('#app-figures figure[data-plot-src="/plots/workloads/default/ticker"]')
    expect(plots).to_have_count(3)  # no network plot: a process on the host's network has no figures of its own
    expect(plots.first.locator("canvas")).to_be_visible()  # uPlot drew over the SVG
    page.locator('#app-figures [data-window="1h"]').click()
    expect(page.locator('#app-figures [data-window="1h"]')).to_have_class(re.compile("active"))
    expect(plots.nth(1).locator("canvas")).to_be_visible()
    page.screenshot(path=str(artifacts / "workload-figures.png"), full_page=True)
