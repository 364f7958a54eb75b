"""`fieldgate browse mqtt`: listens on a broker and writes documents that `fieldgate check` accepts and a gateway
runs, one device per topic heard with a property per value."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from mqtt_helpers import fieldgate, publish

from gateway.testing import Mosquitto, wait_until


async def test_browse_writes_documents_a_gateway_runs(mosquitto: Mosquitto, tmp_path: Path,
                                                      start_gateway: Callable[..., Any]) -> None:
    port = mosquitto.port
    state = {"sensors": [{"temp": 21.5, "ok": True}], "mode": "eco", "count": 3, "nothing": None, "a/b": 1}
    await publish(port, "plant/boiler-1/state", json.dumps(state), retain=True)
    await publish(port, "plant/Meter_7/power", "1250.5", retain=True)
    await publish(port, "plant/odd{x}", "1", retain=True)
    await publish(port, "plant/binary", b"\xff\xfe", retain=True)
    await publish(port, "elsewhere/t", "1", retain=True)
    out = tmp_path / "found.yaml"
    code, _, stderr = await fieldgate("browse", "mqtt", mosquitto.url, "--topic", "plant/#", "--seconds", "1", "-o",
                                      str(out))
    assert code == 0, stderr
    assert "plant/odd{x}: left out" in stderr and "plant/binary: left out" in stderr
    assert "4 topics heard" in stderr and "2 devices written" in stderr

    documents = list(yaml.safe_load_all(out.read_text()))
    devices = {doc["name"]: doc for doc in documents if doc["kind"] == "Device"}
    assert sorted(devices) == ["plant-boiler-1-state", "plant-meter-7-power"]
    boiler = devices["plant-boiler-1-state"]
    assert boiler["protocol"] == {"name": "mqtt", "config": {"url": mosquitto.url}}
    assert [(p["name"], p["visitor"]) for p in boiler["properties"]] == [
        ("sensors_0_temp", {"topic": "plant/boiler-1/state", "json_pointer": "/sensors/0/temp"}),
        ("sensors_0_ok", {"topic": "plant/boiler-1/state", "json_pointer": "/sensors/0/ok"}),
        ("mode", {"topic": "plant/boiler-1/state", "json_pointer": "/mode"}),
        ("count", {"topic": "plant/boiler-1/state", "json_pointer": "/count"}),
        ("a_b", {"topic": "plant/boiler-1/state", "json_pointer": "/a~1b"}),
    ]
    models = {doc["name"]: doc for doc in documents if doc["kind"] == "DeviceModel"}
    assert [(p["name"], p["type"]) for p in models["plant-boiler-1-state"]["properties"]] == [
        ("sensors_0_temp", "double"), ("sensors_0_ok", "boolean"), ("mode", "string"), ("count", "int"),
        ("a_b", "int")]
    assert [(p["name"], p["type"]) for p in models["plant-meter-7-power"]["properties"]] == [("value", "double")]

    code, _, stderr = await fieldgate("check", str(out))
    assert code == 0, stderr

    config = tmp_path / "gateway.yaml"
    config.write_text("kind: Gateway\nname: gw\neventbus: {url: none}\n---\n" + out.read_text())
    gw = await start_gateway(config)
    boiler_twin = gw.api.twin("default/plant-boiler-1-state")
    meter_twin = gw.api.twin("default/plant-meter-7-power")
    await wait_until(lambda: boiler_twin.state == "online" and meter_twin.state == "online")  # retained values
    assert {name: p.reported for name, p in boiler_twin.properties.items()} == {
        "sensors_0_temp": 21.5, "sensors_0_ok": True, "mode": "eco", "count": 3, "a_b": 1}
    assert meter_twin.properties["value"].reported == 1250.5


def test_browse_refuses_bad_arguments_with_one_line() -> None:
    for args, message in ((["http://x"], "expected mqtt://host:port"),
                          (["mqtt://127.0.0.1:1", "--topic", "a/#/b"], "--topic: 'a/#/b': '#' must be a whole level"),
                          (["mqtt://127.0.0.1:1", "--seconds", "0"], "--seconds: expected more than 0")):
        result = subprocess.run([sys.executable, "-m", "gateway", "browse", "mqtt", *args], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
