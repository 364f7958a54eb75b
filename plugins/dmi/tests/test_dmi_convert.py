"""Devices and models as mappers get them: real KubeEdge manifests written as `dmi` documents convert to what edgecore
sends for them; reported text becomes typed values; `fieldgate check` accepts good `dmi` documents and refuses bad
ones with their paths."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
import yaml
from dmi_mapper import customized
from fieldgate_dmi.convert import device_message, model_message, reported_value

from gateway.errors import ValueRejected
from gateway.importers.kubeedge import cycle_seconds
from gateway.plugins import get_plugin_manager
from gateway.protocols.registry import protocol_registry
from gateway.resources.loader import Config, load_path
from gateway.resources.schema import PropertyModel
from gateway.sinks.registry import endpoint_registry

EXAMPLES = Path(__file__).resolve().parents[3].parent / "shared" / "kubeedge-examples"
MANIFESTS = [("kubeedge__examples__temperature-sensor-demo__crds__temperature-model.yaml",
              "kubeedge__examples__temperature-sensor-demo__crds__temperature-instance.yaml"),
             ("kubeedge__examples__sound-equipment-fault-detection__vled__resource__vled-model.yaml",
              "kubeedge__examples__sound-equipment-fault-detection__vled__resource__vled-instance.yaml")]


def as_dmi_documents(model: dict[str, Any], device: dict[str, Any]) -> str:
    """A KubeEdge DeviceModel and Device, written by hand as fieldgate documents for the `dmi` protocol."""
    spec = device["spec"]
    properties = []
    for prop in spec["properties"]:
        item: dict[str, Any] = {"name": prop["name"], "visitor": {"config_data": prop["visitors"]["configData"]}}
        if prop.get("collectCycle"):
            item["collect_interval"] = cycle_seconds(prop["collectCycle"])
        if prop.get("reportCycle"):
            item["report_interval"] = cycle_seconds(prop["reportCycle"])
        if prop.get("desired"):
            item["desired"] = prop["desired"]["value"]
        properties.append(item)
    documents = [
        {"kind": "DeviceModel", "name": model["metadata"]["name"], "protocol": model["spec"]["protocol"],
         "properties": [{"name": p["name"], "type": p["type"].lower(), "access": p["accessMode"],
                         **({"description": p["description"]} if p.get("description") else {})}
                        for p in model["spec"]["properties"]]},
        {"kind": "Device", "name": device["metadata"]["name"], "model": spec["deviceModelRef"]["name"],
         "protocol": {"name": "dmi", "config": {"mapper": spec["protocol"]["protocolName"],
                                                "config_data": spec["protocol"]["configData"]}},
         "properties": properties},
    ]
    return yaml.safe_dump_all(documents, sort_keys=False)


def load(path: Path) -> Config:
    pm = get_plugin_manager()
    return load_path(path, protocol_registry(pm), endpoint_registry(pm))


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="the shared KubeEdge examples are not present")
@pytest.mark.parametrize(("model_file", "device_file"), MANIFESTS, ids=["temperature", "vled"])
def test_kubeedge_manifests_reach_mappers_as_edgecore_sends_them(model_file: str, device_file: str,
                                                                 kubeedge: SimpleNamespace,
                                                                 write_config: Callable[..., Path]) -> None:
    model = yaml.safe_load((EXAMPLES / model_file).read_text())
    device = yaml.safe_load((EXAMPLES / device_file).read_text())
    config = load(write_config(as_dmi_documents(model, device)))
    (bound,) = config.devices.values()
    desired = {name: (prop.spec.desired, None) for name, prop in bound.properties.items()}
    sent = kubeedge.pb.Device.FromString(device_message(bound, desired).SerializeToString())

    spec = device["spec"]
    assert (sent.name, sent.namespace) == (device["metadata"]["name"], "default")
    assert sent.spec.deviceModelReference == spec["deviceModelRef"]["name"]
    assert sent.spec.protocol.protocolName == spec["protocol"]["protocolName"]
    assert customized(sent.spec.protocol.configData) == pytest.approx(spec["protocol"]["configData"])
    for theirs, ours in zip(spec["properties"], sent.spec.properties, strict=True):
        assert ours.name == theirs["name"]
        assert ours.visitors.protocolName == theirs["visitors"]["protocolName"]
        assert customized(ours.visitors.configData) == pytest.approx(theirs["visitors"]["configData"])
        assert ours.collectCycle == round(cycle_seconds(theirs["collectCycle"]) * 1000)
        assert ours.reportToCloud
        assert ours.desired.value == str(theirs.get("desired", {}).get("value", ""))

    doc = config.models[("default", model["metadata"]["name"])]
    sent_model = kubeedge.pb.DeviceModel.FromString(
        model_message(doc.name, doc.namespace, doc.properties).SerializeToString())
    assert [(p.name, p.type, p.accessMode) for p in sent_model.spec.properties] == [
        (p["name"], p["type"], p["accessMode"]) for p in model["spec"]["properties"]]


@pytest.mark.parametrize(("kind", "text", "value"), [
    ("float", "23.5", 23.5), ("double", "-1e-3", -0.001), ("int", "42", 42), ("int", "0x10", 16),
    ("boolean", "true", True), ("boolean", "0", False), ("string", "on", "on"), ("bytes", "AAE=", b"\x00\x01"),
])
def test_reported_text_becomes_the_model_type(kind: str, text: str, value: Any) -> None:
    model = PropertyModel(name="p", type=kind, minimum=0 if kind in ("int", "float", "double") else None)  # type: ignore[arg-type]
    assert reported_value(model, text) == value  # below the minimum too: the device says what it holds


@pytest.mark.parametrize(("kind", "text"), [("float", "hot"), ("float", "NaN"), ("int", "1.5"),
                                            ("boolean", "maybe"), ("bytes", "%%"), ("string", "x" * 1025)])
def test_reported_text_that_is_no_value_of_the_type_is_refused(kind: str, text: str) -> None:
    with pytest.raises(ValueRejected):
        reported_value(PropertyModel(name="p", type=kind), text)  # type: ignore[arg-type]


GOOD = """\
kind: Endpoint
name: dmi
type: dmi
properties: {socket: /run/kubeedge/dmi.sock}
---
kind: DeviceModel
name: vled
properties: [{name: status, type: int, access: ReadWrite}]
---
kind: Device
name: vled-1
model: vled
protocol: {name: dmi, config: {mapper: virtualProtocol, config_data: {deviceID: 2, serialPort: /dev/ttyS0}}}
properties:
  - {name: status, desired: 1, visitor: {config_data: {dataType: int}}}
"""


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "check", str(path)], capture_output=True, text=True,
                          timeout=60, check=False)


def test_fieldgate_check_takes_dmi_documents_and_refuses_bad_ones(write_config: Callable[..., Path]) -> None:
    done = check(write_config(GOOD))
    assert done.returncode == 0, done.stderr
    bad = (GOOD.replace("/run/kubeedge/dmi.sock", "dmi.sock")
           .replace("deviceID: 2", "deviceID: {nested: 1}")
           .replace("config_data: {dataType: int}", "config_data: {dataType: int}, register: 1"))
    done = check(write_config(bad, "bad.yaml"))
    assert done.returncode == 2
    problems = done.stderr
    assert "document 1 (Endpoint dmi): $.properties.socket: expected an absolute path, got 'dmi.sock'" in problems
    assert ("document 3 (Device vled-1): $.protocol.config: config_data.deviceID: expected a string, a number or a "
            "boolean (mappers take one scalar per key), got dict") in problems
    assert "document 3 (Device vled-1): $.properties[0].visitor: Object contains unknown field register" in problems


def test_the_endpoint_refuses_a_socket_path_too_long_for_unix() -> None:
    from fieldgate_dmi.config import DmiProperties

    with pytest.raises(msgspec.ValidationError, match="socket"):
        msgspec.convert({"socket": "/" + "s" * 120}, DmiProperties)
