"""bacnet-ip configs and visitors are checked when a file loads: bad ones are refused with their path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from fieldgate_bacnet.config import BacnetConfig, BacnetVisitor, model_types, parse_address
from fieldgate_bacnet.protocol import BacnetIp

from gateway.errors import ResourceError
from gateway.resources.loader import check_documents, parse_yaml

DOCS = """\
kind: DeviceModel
name: room
properties:
  - {{name: temp, type: {type}}}
---
kind: Device
name: room-1
model: room
protocol:
  name: bacnet-ip
  config: {config}
properties:
  - name: temp
    visitor: {visitor}
"""
GOOD_CONFIG = '{address: "192.0.2.10", device_instance: 1200}'
GOOD_VISITOR = "{object_type: analog-input, instance: 3}"


def problems(*, type: str = "double", config: str = GOOD_CONFIG, visitor: str = GOOD_VISITOR) -> str:
    """What loading the documents says ("" when they load)."""
    text = DOCS.format(type=type, config=config, visitor=visitor)
    try:
        check_documents(parse_yaml(text, "plant.yaml"), {"bacnet-ip": BacnetIp})
    except ResourceError as exc:
        return "\n".join(exc.problems)
    return ""


def test_a_good_file_passes_fieldgate_check(tmp_path: Path) -> None:
    path = tmp_path / "plant.yaml"
    path.write_text(DOCS.format(type="double", config=GOOD_CONFIG, visitor=GOOD_VISITOR), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "gateway", "check", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(("field", "value", "message"), [
    ("config", '{address: "192.0.2.10:99999", device_instance: 1}',
     "$.protocol.config: address: '192.0.2.10:99999': the UDP port must be 1 to 65535"),
    ("config", '{address: "boiler.plant", device_instance: 1}', "'boiler.plant' is not an IPv4 address"),
    ("config", '{address: "192.0.2.10", device_instance: 4194303}', "$.protocol.config.device_instance"),
    ("config", '{address: "192.0.2.10", device_instance: 1, cov_lifetime: 1}', "$.protocol.config.cov_lifetime"),
    ("config", '{address: "192.0.2.10", device_instance: 1, local_address: "10.0.0.1/24"}',
     "local_address: '10.0.0.1/24': expected IP[:port] without a network prefix"),
    ("config", '{address: "192.0.2.10", device_instance: 1, colour: red}', "colour"),
    ("visitor", "{object_type: analogue-input, instance: 3}", "object_type: unknown object type 'analogue-input'"),
    ("visitor", "{object_type: analog-input, instance: -1}", "instance"),
    ("visitor", "{object_type: analog-input, instance: 3, property: present-valu}",
     "property: unknown property 'present-valu'"),
    ("visitor", "{object_type: analog-value, instance: 3, priority: 17}", "priority"),
    ("visitor", "{object_type: analog-value, instance: 3, property: units, priority: 8}",
     "priority: only a present-value is written with a priority"),
    ("type", "boolean", "temp"),  # an analog present-value is a number
])
def test_bad_documents_are_refused_with_their_path(field: str, value: str, message: str) -> None:
    said = problems(**{field: value})
    assert said.startswith("plant.yaml: document 2 (Device room-1)"), said
    assert message in said


def test_names_and_numbers_mean_the_same() -> None:
    by_number = msgspec.convert({"object_type": 19, "instance": 1, "property": "85"}, BacnetVisitor)
    by_name = msgspec.convert({"object_type": "multiStateValue", "instance": 1}, BacnetVisitor)
    assert by_number.object_id == by_name.object_id == "multi-state-value,1"
    assert by_number.property == by_name.property == "present-value"
    assert model_types(by_name) == {"int"}
    assert by_name.write_priority == 16
    proprietary = msgspec.convert({"object_type": "600", "instance": 2, "property": 3000}, BacnetVisitor)
    assert proprietary.describe() == "600,2 3000"
    assert proprietary.write_priority is None


def test_addresses() -> None:
    assert parse_address("10.1.2.3") == ("10.1.2.3", 47808, None)
    assert parse_address("10.1.2.3/24:47809", prefix=True) == ("10.1.2.3", 47809, 24)
    config = msgspec.convert({"address": "10.1.2.3:47810", "device_instance": 5}, BacnetConfig)
    assert config.device_address == ("10.1.2.3", 47810) and config.endpoint == ("0.0.0.0", 47808)
