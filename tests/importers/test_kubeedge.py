"""KubeEdge import: the real example manifests, our own fixtures in their format, and loader validation."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from gateway.importers import kubeedge
from gateway.importers.cli import write
from gateway.plugins import get_plugin_manager
from gateway.protocols.base import Protocol
from gateway.protocols.registry import protocol_registry
from gateway.resources.loader import load_path

EXAMPLES = Path(__file__).resolve().parents[2] / ".." / "shared" / "kubeedge-examples"
REAL = sorted(EXAMPLES.glob("*.yaml"))


def protocols() -> Mapping[str, type[Protocol]]:
    return protocol_registry(get_plugin_manager())


@pytest.mark.skipif(not REAL, reason="the shared KubeEdge examples are not present")
def test_real_examples_import_and_pass_validation(tmp_path: Path) -> None:
    pytest.importorskip("fieldgate_modbus")
    result = kubeedge.import_files(REAL)
    kinds = sorted((d["kind"], d["name"]) for d in result.all_documents())
    assert kinds == [
        ("Device", "modbusrtu-device"),
        ("Device", "temperature-instance"),
        ("DeviceModel", "modbus-sample-model"),
        ("DeviceModel", "temperature-model"),
    ]
    write(result, tmp_path)
    config = load_path(tmp_path, protocols())
    tcp = config.devices["default/temperature-instance"]
    assert tcp.config.host == "10.244.1.13" and tcp.config.port == 5502 and tcp.config.unit == 1
    temperature = tcp.properties["temperature"]
    assert temperature.visitor.kind == "HoldingRegister" and temperature.visitor.scale == 0.1
    assert temperature.collect_interval == 10.0  # 10000 ms
    assert tcp.properties["temperature-switch"].visitor.kind == "Coil"
    rtu = config.devices["default/modbusrtu-device"]
    assert (rtu.config.port, rtu.config.baudrate, rtu.config.parity) == ("/dev/ttyS0", 9600, "E")
    assert rtu.properties["temperature-enable"].visitor.kind == "Coil"
    # what did not carry over is said, one line each, naming the file, the document and the field
    joined = "\n".join(result.warnings)
    assert "onvif-device-01" in joined and "'onvif' is not supported" in joined
    assert "virtualProtocol" in joined
    assert "$.spec.methods" in joined and "$.spec.nodeSelector" in joined
    assert all(": document " in w for w in result.warnings)


def test_own_fixtures_swaps_nanoseconds_rules(tmp_path: Path) -> None:
    pytest.importorskip("fieldgate_modbus")
    source = tmp_path / "plant.yaml"
    source.write_text(
        textwrap.dedent("""\
        apiVersion: devices.kubeedge.io/v1beta1
        kind: DeviceModel
        metadata: {name: meter-model}
        spec:
          protocol: modbus
          properties:
            - {name: power, type: FLOAT, accessMode: ReadOnly, unit: W}
            - {name: label, type: STRING, accessMode: ReadOnly}
            - {name: video, type: STREAM, accessMode: ReadOnly}
        ---
        apiVersion: devices.kubeedge.io/v1beta1
        kind: Device
        metadata: {name: meter-1, namespace: plant}
        spec:
          deviceModelRef: {name: meter-model}
          protocol:
            protocolName: modbus
            configData: {communicateMode: TCP, ip: 127.0.0.1, port: "1502", slaveID: 7}
          properties:
            - name: power
              collectCycle: 2000000000
              reportCycle: 500
              visitors:
                protocolName: modbus
                configData: {register: InputRegister, offset: 4, limit: 2, dataType: float,
                             isSwap: true, isRegisterSwap: true, scale: 1}
            - name: label
              visitors:
                protocolName: modbus
                configData: {register: HoldingRegister, offset: 10, limit: 5, dataType: string}
        ---
        apiVersion: rules.kubeedge.io/v1
        kind: RuleEndpoint
        metadata: {name: my-rest, namespace: plant}
        spec: {ruleEndpointType: rest, properties: {service_port: "9000"}}
        ---
        apiVersion: rules.kubeedge.io/v1
        kind: RuleEndpoint
        metadata: {name: my-eventbus, namespace: plant}
        spec: {ruleEndpointType: eventbus, properties: {}}
        ---
        apiVersion: rules.kubeedge.io/v1
        kind: Rule
        metadata: {name: rest-to-bus, namespace: plant}
        spec:
          source: my-rest
          sourceResource: {path: /a}
          target: my-eventbus
          targetResource: {topic: test}
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: unrelated}
        """)
    )
    result = kubeedge.import_files([source])
    by_name = {d["name"]: d for d in result.all_documents()}
    device = by_name["meter-1"]
    assert device["namespace"] == "plant" and device["protocol"]["config"] == {
        "host": "127.0.0.1",
        "port": 1502,
        "unit": 7,
    }
    power = device["properties"][0]
    assert power["visitor"] == {
        "register": "InputRegister",
        "offset": 4,
        "type": "float32",
        "byte_order": "little",
        "word_order": "little",
    }
    assert power["collect_interval"] == "2s" and power["report_interval"] == "2s"
    assert any("reportCycle" in w for w in result.warnings)
    assert device["properties"][1]["visitor"] == {
        "register": "HoldingRegister",
        "offset": 10,
        "type": "string",
        "length": 5,
    }
    assert by_name["rest-to-bus"] == {
        "kind": "Route",
        "name": "rest-to-bus",
        "namespace": "plant",
        "source": "my-rest",
        "source_resource": {"path": "/a"},
        "target": "my-eventbus",
        "target_resource": {"topic": "test"},
    }
    assert by_name["my-rest"]["type"] == "rest"
    assert any("'STREAM'" in w and "$.spec.properties[2].type" in w for w in result.warnings)
    assert any("ConfigMap" in w for w in result.warnings)
    # the model lives in the default namespace, the device in plant: put the model beside the device
    by_name["meter-model"]["namespace"] = "plant"
    write(result, tmp_path / "out")
    config = load_path(tmp_path / "out", protocols())
    assert config.devices["plant/meter-1"].properties["power"].visitor.wire_type == "float32"
    assert ("plant", "rest-to-bus") in config.routes


def test_cycles_in_milliseconds_and_nanoseconds() -> None:
    assert kubeedge.cycle_seconds(10000) == 10.0
    assert kubeedge.cycle_seconds(1_000_000_000) == 1.0
    assert kubeedge.cycle_seconds("250") == 0.25


@pytest.mark.skipif(not REAL, reason="the shared KubeEdge examples are not present")
def test_command_writes_files_and_warns_on_stderr(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "import", "kubeedge", *map(str, REAL), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert len(list(out.glob("*.yaml"))) == 4
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) >= 5
    bad = subprocess.run(
        [sys.executable, "-m", "gateway", "import", "kubeedge", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
