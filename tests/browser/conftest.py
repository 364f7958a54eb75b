"""A real gateway (`fieldgate run` on a free loopback port, virtual devices) and Debian's headless Chromium."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import FIELDGATE, REPO, free_port
from tests.registry.conftest import Registry, stop

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
ADMIN_PASSWORD = "browser-test-password"

CONFIG = """\
kind: Gateway
name: browser-gw
http: {{listen: "127.0.0.1:{port}"}}
eventbus: {{url: none}}
store: {{flush_interval: 100ms}}
---
kind: DeviceModel
name: thermostat
properties:
  - {{name: temperature, type: float, access: ReadOnly, unit: degC, minimum: -40, maximum: 125}}
  - {{name: setpoint, type: float, access: ReadWrite, unit: degC, minimum: 5, maximum: 90}}
---
kind: Device
name: boiler-1
model: thermostat
labels: {{line: "1"}}
protocol: {{name: virtual}}
properties:
  - name: temperature
    collect_interval: 200ms
    visitor: {{generator: sine, amplitude: 8, period: 20s, offset: 60}}
  - name: setpoint
    collect_interval: 200ms
    visitor: {{generator: memory, initial: 20.0}}
"""


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, launched once per module and closed with it.

    Playwright's sync API runs an event loop on this thread while it is open; closing it with the module (not
    the session, as pytest-playwright's fixtures do) keeps the asyncio tests collected later working.
    """
    if not Path(CHROMIUM).exists():
        pytest.skip("no chromium: apt-get install -y chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Browser) -> Iterator[Page]:
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()


@pytest.fixture(scope="session")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`fieldgate run` in a subprocess with an admin user; stopped by its PID at the end."""
    directory = tmp_path_factory.mktemp("browser-gw")
    port = free_port()
    (directory / "config.yaml").write_text(CONFIG.format(port=port), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    data = str(directory / "data")
    subprocess.run([*FIELDGATE, "user", "add", "admin", "--role", "admin", "--password-stdin", "--data-dir", data],
                   input=ADMIN_PASSWORD, text=True, check=True, env=env, timeout=60, capture_output=True)
    log = (directory / "gateway.log").open("w")
    process = subprocess.Popen([*FIELDGATE, "run", "-c", str(directory / "config.yaml"), "--data-dir", data],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start: {(directory / 'gateway.log').read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A registry server of the test's own, on loopback."""
    server = Registry(tmp_path / "registry")
    server.start()
    yield server
    if server.process is not None:
        stop(server.process)


@pytest.fixture
def console(chromium: Browser) -> Iterator[Page]:
    """A page of its own browser context, for the registry's console."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, ignore_https_errors=True)
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()
