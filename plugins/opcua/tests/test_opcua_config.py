"""The `opcua` config and visitor: bad ones are refused at load with their file, document and field; the plugin
loads without asyncua (it is imported when a device opens)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from fieldgate_opcua.browse import pattern_regex
from fieldgate_opcua.config import parse_browse_path, parse_node_id
from fieldgate_opcua.protocol import OpcuaProtocol

from gateway.errors import ResourceError
from gateway.resources.loader import check_documents, parse_yaml

MODEL = """\
kind: DeviceModel
name: m
properties:
  - {name: t, type: double}
  - {name: s, type: int, access: ReadWrite}
"""


def problems(config: str, visitor_t: str, visitor_s: str = '{node_id: "ns=2;s=S"}') -> list[str]:
    text = MODEL + f"""\
---
kind: Device
name: d
model: m
protocol: {{name: opcua, config: {config}}}
properties:
  - {{name: t, visitor: {visitor_t}}}
  - {{name: s, visitor: {visitor_s}}}
"""
    try:
        check_documents(parse_yaml(text, "plant.yaml"), {"opcua": OpcuaProtocol})
    except ResourceError as exc:
        return exc.problems
    return []


GOOD = '{endpoint: "opc.tcp://127.0.0.1:4840/x"}'


def test_a_good_device_loads() -> None:
    assert problems(GOOD, '{node_id: "ns=2;s=Line1.Temp", sampling_interval: 250ms, deadband: 0.5}',
                    '{browse_path: "2:Line1/2:Speed", mode: poll, data_type: UInt16}') == []
    secure = ('{endpoint: "opc.tcp://plc:4840", security_policy: Basic256Sha256, security_mode: Sign, '
              'server_certificate: /etc/plc.der, login: username, username: op, password_file: /etc/pw}')
    assert problems(secure, '{node_id: "i=2258"}', '{node_id: "nsu=urn:plc;g=72962B91-FA75-4AE6-8D28-B404DC7DAF63"}') \
        == []


@pytest.mark.parametrize(("config", "visitor", "expected"), [
    ('{endpoint: "http://plc"}', '{node_id: "i=1"}',
     "$.protocol.config: endpoint: expected opc.tcp://HOST[:PORT][/PATH], got 'http://plc'"),
    ('{endpoint: "opc.tcp://plc", security_mode: Sign}', '{node_id: "i=1"}',
     "$.protocol.config: security_mode: Sign needs a security_policy"),
    ('{endpoint: "opc.tcp://plc", security_policy: Basic256Sha256, security_mode: None}', '{node_id: "i=1"}',
     "security_mode: None does not go with security_policy Basic256Sha256"),
    ('{endpoint: "opc.tcp://plc", login: username}', '{node_id: "i=1"}',
     "$.protocol.config: username: login username needs a username"),
    ('{endpoint: "opc.tcp://plc", username: op}', '{node_id: "i=1"}',
     "username: applies to login: username, not login: anonymous"),
    ('{endpoint: "opc.tcp://plc", certificate: /a.der}', '{node_id: "i=1"}',
     "certificate: give certificate and private_key together"),
    ('{endpoint: "opc.tcp://plc", server_certificate: /a, trusted_certificates: /b}', '{node_id: "i=1"}',
     "server_certificate: pin one certificate or trust a folder, not both"),
    ('{endpoint: "opc.tcp://plc", timeout: 0}', '{node_id: "i=1"}', "$.protocol.config.timeout: Expected"),
    (GOOD, '{node_id: "ns=2;x=1"}', "$.properties[0].visitor: node_id: 'ns=2;x=1' is no NodeId"),
    (GOOD, '{node_id: "ns=70000;i=1"}', "node_id: 'ns=70000;i=1': the namespace index is above 65535"),
    (GOOD, '{node_id: "i=4294967296"}', "the numeric identifier is above 4294967295"),
    (GOOD, '{node_id: "i=1", browse_path: "2:a"}', "node_id: give either node_id or browse_path"),
    (GOOD, '{}', "node_id: give either node_id or browse_path"),
    (GOOD, '{browse_path: "2:a//b"}', "$.properties[0].visitor: browse_path: '2:a//b' is no browse path"),
    (GOOD, '{node_id: "i=1", mode: poll, sampling_interval: 1s}', "sampling_interval: applies to mode: subscription"),
    (GOOD, '{node_id: "i=1", deadband: -1}', "$.properties[0].visitor.deadband: Expected float >= 0"),
    (GOOD, '{node_id: "i=1", deadband: 101, deadband_type: percent}', "deadband: a percentage is at most 100"),
    (GOOD, '{node_id: "i=1", data_type: Boolean}', "the visitor gives boolean/int, which does not fit the model "
                                                   "type double of 't'"),
    (GOOD, '{node_id: "i=1", colour: red}', "$.properties[0].visitor: Object contains unknown field colour"),
])
def test_a_bad_config_or_visitor_is_refused_with_its_path(config: str, visitor: str, expected: str) -> None:
    found = problems(config, visitor)
    assert len(found) == 1, found
    assert found[0].startswith("plant.yaml: document 2 (Device d): "), found
    assert expected in found[0], found


def test_node_ids_and_browse_paths() -> None:
    assert parse_node_id("ns=2;s=Line1.Temp;with;semicolons").namespace_uri is None
    assert parse_node_id("nsu=urn:plc:ua;i=1001").namespace_uri == "urn:plc:ua"
    assert parse_browse_path("2:Line1/Motor/3:Current") == [(2, "Line1"), (0, "Motor"), (3, "Current")]
    for bad in ("", "s=", "ns=1;", "g=not-a-guid", "ns=1;b=@@"):
        with pytest.raises(ValueError):
            parse_node_id(bad)


def test_path_patterns_keep_to_one_level_unless_double_star() -> None:
    assert pattern_regex("Line1/*").fullmatch("Line1/Temp")
    assert not pattern_regex("Line1/*").fullmatch("Line1/Motor/Current")
    assert pattern_regex("Line1/**").fullmatch("Line1/Motor/Current")
    assert pattern_regex("*/Te?p").fullmatch("Line1/Temp")
    assert not pattern_regex("Line1.*").fullmatch("Line1/Temp")  # a dot is a dot


def test_the_plugin_loads_without_asyncua() -> None:
    """The gateway's start (and `fieldgate check`) does not pay for asyncua's import until a device opens."""
    code = ("import sys, fieldgate_opcua.plugin, fieldgate_opcua.protocol, fieldgate_opcua.cli; "
            "print('asyncua' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
