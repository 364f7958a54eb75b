"""The main job, as the README's first line runs it: `fieldgate demo` serves its simulated devices, its UI and its API
with the credentials it prints."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.conftest import FIELDGATE, free_port
from tests.store.test_store import api_get, wait_healthy


def test_the_demo_runs_its_devices_and_serves_the_ui_with_the_printed_credentials(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*FIELDGATE, "demo", "--data-dir", str(tmp_path / "demo"), "--listen",
                                 f"127.0.0.1:{port}"], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(port, proc)
        printed = log.read_text()
        token = re.search(r"API token \(admin\): (\S+)", printed)
        password = re.search(r"user admin, password (\S+)", printed)
        assert token and password, printed
        deadline = time.monotonic() + 20
        while True:
            devices = api_get(port, "/api/v1/devices", token.group(1))
            if (len(devices) == 6 and all(d["state"] == "online" for d in devices)) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(devices) == 6 and all(d["state"] == "online" for d in devices), devices
        twin = api_get(port, f"/api/v1/devices/{devices[0]['id']}", token.group(1))["twin"]
        assert any(prop["reported"] is not None for prop in twin.values()), twin
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as browser:
            page = browser.get("/login")
            csrf = re.search(r'name="_csrf" value="([^"]+)"', page.text)
            assert page.status_code == 200 and csrf, page.text[:500]
            answer = browser.post("/login", data={"username": "admin", "password": password.group(1),
                                                  "_csrf": csrf.group(1)})
            assert answer.status_code in (200, 303), answer.text[:500]
            assert browser.get("/").status_code == 200  # the dashboard, logged in
            listed = browser.get("/devices")
            assert listed.status_code == 200 and all(d["name"] in listed.text for d in devices)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
