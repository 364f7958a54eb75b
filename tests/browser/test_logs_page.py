"""The Logs page in Chromium: log in, filter by a device, see only that device's lines, and new ones appear
without a reload when the gateway logs them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import CHROMIUM
from tests.conftest import FIELDGATE, REPO, free_port
from tests.plants import LOGS_PLANT

PASSWORD = "logs-page-password"


class LoggingGateway:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port, self.closed = free_port(), free_port()
        self.config = directory / "config.yaml"
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def write_config(self, amplitude: int) -> None:
        plant = LOGS_PLANT.format(name="logs-gw", port=self.port, closed=self.closed, amplitude=amplitude)
        self.config.write_text(plant, encoding="utf-8")

    def reload(self) -> None:
        """SIGHUP to the gateway this test started: boiler-1 restarts with its new configuration and logs so."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGHUP)


@pytest.fixture(scope="module")
def logging_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoggingGateway]:
    if not Path(CHROMIUM).exists():
        pytest.skip("no chromium: apt-get install -y chromium")
    gateway = LoggingGateway(tmp_path_factory.mktemp("logs-gw"))
    gateway.write_config(amplitude=8)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    data = str(gateway.directory / "data")
    subprocess.run([*FIELDGATE, "user", "add", "watcher", "--role", "viewer", "--password-stdin", "--data-dir",
                    data], input=PASSWORD, text=True, check=True, env=env, timeout=60, capture_output=True)
    gateway.process = subprocess.Popen([*FIELDGATE, "run", "-c", str(gateway.config), "--data-dir", data],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{gateway.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if gateway.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.1)
        yield gateway
    finally:
        gateway.process.terminate()
        try:
            gateway.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            gateway.process.kill()
            gateway.process.wait(timeout=5)


def test_logs_page_filters_by_device_and_follows(page: Page, logging_gateway: LoggingGateway,
                                                 artifacts: Path) -> None:
    url = logging_gateway.url
    page.goto(url + "/logs")
    expect(page).to_have_url(re.compile(r"/login"))
    page.get_by_label("User name").fill("watcher")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(url + "/logs")
    expect(page.locator("#live")).to_have_class(re.compile(r"\bon\b"))  # following new lines
    expect(page.locator('tr.log-line[data-device="default/meter-down"]').first).to_be_visible()
    expect(page.locator('tr.log-line[data-device="default/boiler-1"]').first).to_be_visible()

    page.get_by_label("Device").select_option("default/boiler-1")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"device=default%2Fboiler-1"))
    rows = page.locator("tr.log-line")
    expect(rows.first).to_be_visible()
    online = rows.filter(has_text="default/boiler-1 is online")
    before = online.count()
    assert before >= 1
    assert set(rows.evaluate_all("rows => rows.map(r => r.dataset.device)")) == {"default/boiler-1"}

    logging_gateway.write_config(amplitude=9)
    logging_gateway.reload()
    expect(online).to_have_count(before + 1, timeout=15_000)  # appended by polling, no reload
    expect(rows.last.locator("td.message")).to_contain_text("default/boiler-1 is online")
    # the failing device kept logging all along; none of its lines may show up here
    assert set(rows.evaluate_all("rows => rows.map(r => r.dataset.device)")) == {"default/boiler-1"}
    page.screenshot(path=str(artifacts / "logs.png"), full_page=True)
