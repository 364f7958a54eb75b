"""Local editing from the UI: model and device forms, the YAML editor, deletes, CSV/YAML import with a preview."""

from __future__ import annotations

import asyncio
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.runtime import Gateway
from tests.conftest import FIELDGATE, REPO
from tests.test_runtime import wait_for

PUMP_MODEL = {
    "name": "pump", "namespace": "default", "description": "a pump", "labels": "site=test", "rows": "3",
    "prop-0-name": "flow", "prop-0-type": "float", "prop-0-access": "ReadOnly", "prop-0-unit": "l/min",
    "prop-0-minimum": "0", "prop-0-maximum": "500",
    "prop-1-name": "speed", "prop-1-type": "int", "prop-1-access": "ReadWrite", "prop-1-maximum": "3000",
    "prop-2-name": "",
}
PUMP_DEVICE = {
    "name": "p1", "namespace": "default", "model": "pump", "labels": "line=9", "protocol": "virtual",
    "protocol_config": "{seed: 1}", "rows": "3",
    "prop-0-name": "flow", "prop-0-collect_interval": "100ms",
    "prop-0-visitor": "{generator: random, minimum: 10, maximum: 20}",
    "prop-1-name": "speed", "prop-1-collect_interval": "100ms", "prop-1-desired": "1200",
    "prop-1-visitor": "{generator: memory, initial: 0}",
}
BAD_YAML = """\
kind: DeviceModel
name: bad-model
properties:
  - {name: x, type: float}
---
kind: Device
name: bad-device
model: bad-model
protocol: {name: virtual}
properties:
  - {name: x, collect_interval: 1s, visitor: {generator: sine, period: -5}}
  - {name: y, visitor: {generator: constant, value: 1}}
"""


async def test_file_resources_are_read_only(web_gateway: Gateway, open_browser: Callable[..., Any]) -> None:
    admin = await open_browser("admin")
    form = await admin.client.get("/models/edit", params={"name": "m"})
    assert form.status_code == 200
    assert "Read-only" in form.text and "configuration file" in form.text and "<fieldset disabled>" in form.text
    editor = await admin.client.get("/editor", params={"kind": "Device", "name": "d1"})
    assert "Read-only" in editor.text and "readonly" in editor.text and "name: d1" in editor.text
    response = await admin.post("/editor", {"yaml": editor.text.split("aria-label=\"YAML\" readonly>")[1]
                                            .split("</textarea>")[0].replace("&#39;", "'"), "action": "apply"})
    assert response.status_code == 400 and "owned by" in response.text
    response = await admin.post("/resources/delete", {"kind": "Device", "namespace": "default", "name": "d1"})
    assert response.status_code == 303
    assert "default/d1" in web_gateway.config.devices
    page = await admin.client.get(response.headers["location"])
    assert "owned by" in page.text


async def test_operators_cannot_edit_resources(web_gateway: Gateway, open_browser: Callable[..., Any]) -> None:
    operator = await open_browser("operator")
    assert (await operator.post("/models/edit", PUMP_MODEL)).status_code == 403
    assert (await operator.post("/editor", {"yaml": BAD_YAML, "action": "apply"})).status_code == 403
    assert (await operator.client.get("/editor")).status_code == 403
    assert ("default", "pump") not in web_gateway.config.models


async def test_create_edit_and_delete_through_forms(web_gateway: Gateway, open_browser: Callable[..., Any]) -> None:
    admin = await open_browser("admin")
    response = await admin.post("/models/edit", {**PUMP_MODEL, "prop-0-minimum": "low"})
    assert response.status_code == 400 and "is not a number" in response.text
    response = await admin.post("/models/edit", PUMP_MODEL)
    assert response.status_code == 303, response.text
    model = web_gateway.config.models[("default", "pump")]
    assert [(p.name, p.type, p.access, p.maximum) for p in model.properties] == [
        ("flow", "float", "ReadOnly", 500), ("speed", "int", "ReadWrite", 3000)]

    response = await admin.post("/devices/edit", {**PUMP_DEVICE, "prop-1-desired": "9000"})
    assert response.status_code == 400 and "above the maximum" in response.text
    assert "default/p1" not in web_gateway.config.devices
    response = await admin.post("/devices/edit", PUMP_DEVICE)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/devices/default/p1"
    await wait_for(lambda: web_gateway.api.twin("default/p1").properties["speed"].reported == 1200)
    assert web_gateway.configuration.resource_owner("Device", "default", "p1") == "local"

    form = await admin.client.get("/devices/edit", params={"name": "p1"})
    assert "Read-only" not in form.text and "generator: random" in form.text and "100ms" in form.text
    response = await admin.post("/devices/edit", {**PUMP_DEVICE, "labels": "line=10"})
    assert response.status_code == 303
    assert web_gateway.config.devices["default/p1"].resource.labels == {"line": "10"}

    response = await admin.post("/resources/delete", {"kind": "DeviceModel", "namespace": "default",
                                                      "name": "pump"})
    assert ("default", "pump") in web_gateway.config.models  # still used by p1
    response = await admin.post("/resources/delete", {"kind": "Device", "namespace": "default", "name": "p1"})
    assert response.status_code == 303
    assert "default/p1" not in web_gateway.config.devices
    applied = [row for row in await web_gateway.store.audit.recent() if row["actor"] == "admin"]
    assert {"apply", "delete"} <= {row["action"] for row in applied}
    assert all(row["address"] == "127.0.0.9" for row in applied)


async def test_yaml_editor_reports_what_fieldgate_check_reports(web_gateway: Gateway, tmp_path: Path,
                                                                open_browser: Callable[..., Any]) -> None:
    admin = await open_browser("admin")
    response = await admin.post("/editor", {"yaml": BAD_YAML, "action": "check"})
    assert response.status_code == 400
    shown = [line.replace("&#39;", "'").replace("&quot;", '"').replace("&gt;", ">").replace("&lt;", "<")
             for line in _between_all(response.text, "<li><code>", "</code></li>")]
    (tmp_path / "editor").write_text(BAD_YAML)
    check = await asyncio.to_thread(
        subprocess.run, [*FIELDGATE, "check", "editor"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert check.returncode == 2
    assert shown and shown == check.stderr.strip().splitlines()

    good = textwrap.dedent("""\
        kind: DeviceModel
        name: tank
        properties:
          - {name: level, type: float, minimum: 0, maximum: 100}
        """)
    response = await admin.post("/editor", {"yaml": good, "action": "check"})
    assert response.status_code == 200 and "DeviceModel default/tank: create" in response.text
    assert ("default", "tank") not in web_gateway.config.models
    response = await admin.post("/editor", {"yaml": good, "action": "apply"})
    assert response.status_code == 303
    assert ("default", "tank") in web_gateway.config.models
    editor = await admin.client.get("/editor", params={"kind": "DeviceModel", "name": "tank"})
    assert "Read-only" not in editor.text and "name: tank" in editor.text


async def test_csv_import_with_preview(web_gateway: Gateway, open_browser: Callable[..., Any]) -> None:
    admin = await open_browser("admin")
    bad = "name,profile,address,unit\nmeter-a,eastron/sdm120,127.0.0.1:1,1\nmeter-b,eastron/sdm120,127.0.0.1:1,two\n"
    response = await admin.post("/import/preview", files={"file": ("meters.csv", bad.encode(), "text/csv")})
    assert response.status_code == 400 and "meters.csv: line 3: unit: &#39;two&#39; is not a number" in response.text
    assert "fieldgate-upload-" not in response.text

    csv_text = ("name,profile,address,unit,labels\n"
                "meter-a,eastron/sdm120,127.0.0.1:1,1,line=7\n"
                "meter-b,eastron/sdm120,127.0.0.1:1,2,line=7\n")
    preview = await admin.post("/import/preview", files={"file": ("meters.csv", csv_text.encode(), "text/csv")})
    assert preview.status_code == 200, preview.text
    assert "default/meter-a</td><td>create" in preview.text and "default/meter-b</td><td>create" in preview.text
    assert "default/meter-a" not in web_gateway.config.devices
    yaml_text = _between_all(preview.text, 'aria-hidden="true">', "</textarea>")[0]
    response = await admin.post("/import/apply", {"yaml": yaml_text.replace("&#34;", '"').replace("&#39;", "'")})
    assert response.status_code == 303, response.text
    assert {"default/meter-a", "default/meter-b"} <= set(web_gateway.config.devices)
    assert web_gateway.config.devices["default/meter-a"].resource.labels == {"line": "7"}

    again = await admin.post("/import/preview", files={"file": ("meters.csv", csv_text.encode(), "text/csv")})
    assert "default/meter-a</td><td>update" in again.text
    yaml_upload = b"kind: Device\nname: d1\nmodel: m\nprotocol: {name: virtual}\n"
    response = await admin.post("/import/preview", files={"file": ("d1.yaml", yaml_upload, "application/yaml")})
    assert response.status_code == 400 and "owned by" in response.text


def _between_all(text: str, start: str, end: str) -> list[str]:
    return [part.split(end, 1)[0] for part in text.split(start)[1:]]


@pytest.mark.parametrize("filename", ["m" * 300 + ".csv", "..", "../.csv", "a/b/c.csv", "a\\b.csv", "m\x01e.csv",
                                      "é" * 200 + ".csv", "m" * 300 + ".yaml"])
async def test_an_odd_or_overlong_upload_name_gets_400_naming_the_file(open_browser: Callable[..., Any],
                                                                       filename: str) -> None:
    admin = await open_browser("admin")
    bad = b"name,profile,address,unit\nmeter-b,eastron/sdm120,127.0.0.1:1,two\n"
    response = await admin.post("/import/preview", files={"file": (filename, bad, "text/csv")})
    assert response.status_code == 400, response.text
    assert "line 2: unit: &#39;two&#39; is not a number" in response.text or "document 1" in response.text
    assert "fieldgate-upload-" not in response.text and "m" * 101 not in response.text


async def test_form_titles_name_the_namespace_of_a_document_written_without_one(
        open_browser: Callable[..., Any]) -> None:
    admin = await open_browser("admin")
    for path, title in (("/devices/edit", "Device default/d1"), ("/models/edit", "Model default/m")):
        name = title.rsplit("/", 1)[1]
        form = (await admin.client.get(path, params={"name": name})).text
        assert f"<title>{title} \u00b7" in form and f"<h1>{title}</h1>" in form, path
        assert "/" + name + "</h1>" in form and " /" + name not in form
