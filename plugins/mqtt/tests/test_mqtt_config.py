"""Bad MQTT device documents are refused when a file loads, each with its file, document and field path."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest
from fieldgate_mqtt.config import MqttConfig, MqttVisitor

BAD = """\
kind: DeviceModel
name: m
properties:
  - {name: t, type: float}
  - {name: sp, type: float, access: ReadWrite}
---
kind: Device
name: d1
model: m
protocol: {name: mqtt, config: {url: "mqtt://127.0.0.1:1883", eventbus: true}}
properties:
  - {name: t, visitor: {topic: "a/#/b"}}
  - {name: sp, visitor: {topic: "a/{device}"}}
---
kind: Device
name: d2
model: m
protocol: {name: mqtt, config: {url: "http://x"}}
properties:
  - {name: t, visitor: {topic: "a", regex: "(a)(b)"}}
  - {name: sp, visitor: {topic: "a/{dev}"}}
---
kind: Device
name: d3
model: m
protocol: {name: mqtt, config: {url: "mqtt://h:1883", ca_file: /x}}
properties:
  - {name: t, visitor: {topic: "a", json_pointer: "/a", regex: "(x)"}}
  - {name: sp, visitor: {topic: "a/+", command_topic: "a/{property}"}}
---
kind: Device
name: d4
model: m
protocol: {name: mqtt, config: {eventbus: true, password: x}}
properties:
  - {name: t, visitor: {topic: "a", json_pointer: "x", qos: 3}}
  - {name: sp, visitor: {topic: "s", command_topic: "c/+", command_template: '{"v": {value}x}'}}
---
kind: Device
name: d5
model: m
protocol: {name: mqtt, config: {url: "mqtt://h:99999", max_message: 0}}
properties:
  - {name: t, visitor: {topic: "a", command_template: "{foo}"}}
  - {name: sp, visitor: {topic: "s", command_topic: "c", command_template: '{"v": {value}x}'}}
"""

EXPECTED = [
    "document 2 (Device d1): $.protocol.config: url: give the broker's url or 'eventbus: true', one of them",
    "document 2 (Device d1): $.properties[0].visitor: topic: 'a/#/b': '#' must be a whole level, and the last one",
    "document 2 (Device d1): $.properties[1].visitor: 'sp' is ReadWrite: give the command_topic its desired values "
    "are published on",
    "document 3 (Device d2): $.protocol.config: url: 'http://x': expected mqtt://host:port or mqtts://host:port",
    "document 3 (Device d2): $.properties[0].visitor: regex: needs exactly one group, the value; '(a)(b)' has 2",
    "document 3 (Device d2): $.properties[1].visitor: topic: unknown placeholder {dev} in 'a/{dev}'",
    "document 4 (Device d3): $.protocol.config: ca_file: TLS files need an mqtts:// url",
    "document 4 (Device d3): $.properties[0].visitor: regex: give json_pointer or regex",
    "document 4 (Device d3): $.properties[1].visitor: the command_topic 'a/{property}' is one the topic 'a/+' "
    "reads",
    "document 5 (Device d4): $.protocol.config: username: a password needs a username",
    "document 5 (Device d4): $.properties[0].visitor.qos: Invalid enum value 3",
    "document 5 (Device d4): $.properties[1].visitor: command_topic: 'c/+': '+' and '#' are for subscriptions",
    "document 6 (Device d5): $.protocol.config.max_message: Expected int >= 16, got 0",
    "document 6 (Device d5): $.properties[0].visitor: command_template: unknown placeholder {foo}",
    "document 6 (Device d5): $.properties[1].visitor: command_template: a template that begins with { or [ is "
    "JSON, and this one is not once filled in",
]


def test_bad_documents_are_refused_with_their_paths(tmp_path: Path) -> None:
    path = tmp_path / "plant.yaml"
    path.write_text(BAD)
    result = subprocess.run([sys.executable, "-m", "gateway", "check", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    for expected in EXPECTED:
        assert any(line.startswith(f"{path}: {expected}") or line.startswith(f"plant.yaml: {expected}")
                   or f": {expected}" in line for line in lines), (expected, lines)
    assert len(lines) == len(EXPECTED), lines


def test_a_good_document_passes(tmp_path: Path) -> None:
    path = tmp_path / "plant.yaml"
    path.write_text(textwrap.dedent("""\
        kind: DeviceModel
        name: m
        properties:
          - {name: t, type: float}
          - {name: sp, type: float, access: ReadWrite}
        ---
        kind: Device
        name: d1
        model: m
        timeout: 5m
        protocol: {name: mqtt, config: {url: "mqtts://broker.plant:8883", username: gw, password_file: /etc/pw}}
        properties:
          - {name: t, visitor: {topic: "plant/{namespace}/{device}/#", json_pointer: "/a~1b/0"}}
          - name: sp
            visitor: {topic: "s/{device}", regex: 'sp=(\\d+)', command_topic: "s/{device}/{property}/set",
                      command_template: '[{"sp": {value}, "by": "{device}"}]', command_qos: 2, command_retain: true}
        """))
    result = subprocess.run([sys.executable, "-m", "gateway", "check", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("config", "message"), [
    ({"url": "mqtt://h", "key_file": "/k"}, "key_file: TLS files need an mqtts:// url"),
    ({"url": "mqtts://h", "key_file": "/k"}, "key_file: a client key needs its cert_file"),
    ({"eventbus": True, "ca_file": "/ca"}, "ca_file: the eventbus settings give the TLS files"),
    ({"url": "mqtt://user:pw@h"}, "url: give the login as username and password, not in the url"),
    ({"url": "mqtt://h", "username": "u", "password": "p", "password_file": "/p"},
     "password_file: give password or password_file, not both"),
    ({"url": "mqtt://h", "username": "u", "password_file": "p"}, "password_file: 'p' is not an absolute path"),
    ({"url": "mqtt://h", "client_id": "with space"}, "client_id: 'with space': printable ASCII characters, no spaces"),
    ({"url": "mqtt://h/path"}, "url: 'mqtt://h/path': expected mqtt://host:port"),
    ({"url": "mqtt://"}, "url: 'mqtt://' names no host"),
    ({"url": "mqtt://h", "keepalive": 1}, "Expected int >= 5"),
    ({"url": "mqtt://h", "port": 1883}, "Object contains unknown field port"),
])
def test_config_checks(config: dict[str, object], message: str) -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.convert(config, MqttConfig)
    assert message in str(caught.value).replace("`", "")


@pytest.mark.parametrize(("visitor", "message"), [
    ({"topic": ""}, "Expected str of length >= 1"),
    ({"topic": "a\0b"}, "a topic has no NUL character"),
    ({"topic": "a+/b"}, "'+' must be a whole level"),
    ({"topic": "a", "json_pointer": "/a~"}, "'~' is written '~0'"),
    ({"topic": "a", "regex": "no group"}, "needs exactly one group"),
    ({"topic": "a", "regex": "(?P<a>x)(?:y)"}, None),
    ({"topic": "a", "command_topic": "c/{value}"}, "unknown placeholder {value} in 'c/{value}'"),
    ({"topic": "a", "command_template": '{"a": "{value}"'}, "not once filled in"),
    ({"topic": "a", "command_template": "{value} is a {property} of {device} in {namespace}"}, None),
    ({"topic": "a", "command_template": '{"v": {value}, "at": "{device}/{property}"}'}, None),
    ({"topic": "a", "command_qos": 3}, "Invalid enum value 3"),
    ({"topic": "a", "extra": 1}, "Object contains unknown field extra"),
])
def test_visitor_checks(visitor: dict[str, object], message: str | None) -> None:
    if message is None:
        msgspec.convert(visitor, MqttVisitor)
        return
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.convert(visitor, MqttVisitor)
    assert message in str(caught.value).replace("`", "")
