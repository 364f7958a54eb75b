"""Endpoint properties typed by their endpoint type and checked at load; the older `properties.plugin` form."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest
from msgspec import Meta

from gateway.errors import ResourceError
from gateway.resources.endpoints import (
    BUILTIN_ENDPOINT_TYPES,
    EndpointType,
    HttpProperties,
    ImpliedRoute,
    MqttProperties,
    ServicebusProperties,
)
from gateway.resources.loader import check_documents, parse_yaml
from tests.conftest import FIELDGATE
from tests.resources.test_loader import PROTOCOLS

ENDPOINTS = """\
kind: Endpoint
name: bus
type: bus
---
kind: Endpoint
name: broker
type: mqtt
properties: {url: "mqtt://10.0.0.5:1883", qos: "0", batch: "20"}
---
kind: Endpoint
name: app
type: servicebus
properties: {service_port: "9000"}
---
kind: Endpoint
name: collector
type: http
properties: {url: "https://collect.example/in", header.X-Key: abc, headers: {X-Tenant: plant}, mode: each}
"""


def problems(text: str, types: dict[str, EndpointType] | None = None, file: str = "plant.yaml") -> list[str]:
    with pytest.raises(ResourceError) as info:
        check_documents(parse_yaml(text, file), PROTOCOLS, types)
    return info.value.problems


def test_properties_are_converted_to_their_type() -> None:
    config = check_documents(parse_yaml(ENDPOINTS, "plant.yaml"), PROTOCOLS)
    properties = config.endpoint_properties
    assert properties[("default", "broker")] == MqttProperties(url="mqtt://10.0.0.5:1883", qos=0, batch=20)
    assert properties[("default", "app")] == ServicebusProperties(service_port=9000)
    assert properties[("default", "collector")] == HttpProperties(
        url="https://collect.example/in", mode="each", headers={"X-Key": "abc", "X-Tenant": "plant"})
    assert config.endpoint_types == {("default", "bus"): "bus", ("default", "broker"): "mqtt",
                                     ("default", "app"): "servicebus", ("default", "collector"): "http"}
    assert list(config.endpoints_of("mqtt")) == [("default", "broker")]
    assert not config.implied_routes and not config.older_forms


@pytest.mark.parametrize(("document", "expected"), [
    ("name: cloud\ntype: mqtt\nproperties: {url: 'mqtt://x:1883', qos: 2}",
     "plant.yaml: document 1 (Endpoint cloud): $.properties.qos: Expected int <= 1, got 2"),
    ("name: cloud\ntype: mqtt\nproperties: {qos: '1'}",
     "plant.yaml: document 1 (Endpoint cloud): $.properties.url: a mqtt endpoint needs `url`"),
    ("name: cloud\ntype: mqtt\nproperties: {url: 'http://x'}",
     "plant.yaml: document 1 (Endpoint cloud): $.properties.url: 'http://x': expected mqtt://host:port or "
     "mqtts://host:port"),
    ("name: cloud\ntype: mqtt\nproperties: {url: 'mqtt://x', retain: true}",
     "plant.yaml: document 1 (Endpoint cloud): $.properties.retain: not a property of a mqtt endpoint (it takes: "
     "url, qos, batch, username, password, ca_file)"),
    ("name: app\ntype: servicebus\nproperties: {service_port: '70000'}",
     "plant.yaml: document 1 (Endpoint app): $.properties.service_port: Expected int <= 65535, got '70000'"),
    ("name: out\ntype: http\nproperties: {url: 'https://x', headers: {X-A: [1]}}",
     "plant.yaml: document 1 (Endpoint out): $.properties.headers[...]: Expected str, got array"),
    ("name: in\ntype: bus\nproperties: {topic: x}",
     "plant.yaml: document 1 (Endpoint in): $.properties.topic: not a property of a bus endpoint (it takes none)"),
    ("name: in\ntype: kafka",
     "plant.yaml: document 1 (Endpoint in): $.type: unknown endpoint type 'kafka' (known: bus, eventbus, http, "
     "mqtt, rest, servicebus)"),
    ("name: in\ntype: http\nproperties: {plugin: influxdb, url: 'http://x'}",
     "plant.yaml: document 1 (Endpoint in): $.properties.plugin: no installed plugin serves 'influxdb'"),
])
def test_bad_properties_are_named_with_their_field(document: str, expected: str) -> None:
    found = problems("kind: Endpoint\n" + document)
    assert len(found) == 1 and found[0].startswith(expected), found


class SinkProperties(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: str
    retries: Annotated[int, Meta(ge=0)] = 3


OLDER_TYPES = {**BUILTIN_ENDPOINT_TYPES,
               "tsdb": EndpointType("tsdb", SinkProperties, target_resource="", older_form=True),
               "panel": EndpointType("panel", SinkProperties, older_form=True)}


def test_the_older_form_is_read_as_the_type_it_names_with_an_implied_route() -> None:
    text = """\
kind: Endpoint
name: db
type: http
properties: {plugin: tsdb, url: "http://db:8086", retries: "5"}
---
kind: Endpoint
name: alarms-db
namespace: plant
type: http
properties: {plugin: tsdb, url: "http://db:8086", topic: "devices/plant/+/telemetry"}
---
kind: Endpoint
name: panel
type: eventbus
properties: {plugin: panel, url: "x"}
"""
    config = check_documents(parse_yaml(text, "old.yaml"), PROTOCOLS, OLDER_TYPES)
    assert config.endpoint_types[("default", "db")] == "tsdb"
    assert config.endpoint_properties[("default", "db")] == SinkProperties(url="http://db:8086", retries=5)
    assert config.implied_routes == {
        ("default", "db"): ImpliedRoute("default", "db", "tsdb", "devices/+/+/telemetry"),
        ("plant", "alarms-db"): ImpliedRoute("plant", "alarms-db", "tsdb", "devices/plant/+/telemetry"),
    }
    assert config.implied_routes[("default", "db")].outbox == "tsdb:default/db"
    assert config.endpoint_types[("default", "panel")] == "panel" and ("default", "panel") not in config.implied_routes
    assert config.older_forms[("default", "db")] == (
        "old.yaml: document 1 (Endpoint db): Endpoint default/db has the older form (`type: http` with "
        "`properties.plugin: tsdb`): read as `type: tsdb` with a Route from the bus topic 'devices/+/+/telemetry' "
        "(outbox tsdb:default/db)")
    assert len(config.older_forms) == 3
    bad = text.replace('retries: "5"', "retries: -1").replace("devices/plant/+/telemetry", "devices/#/x")
    assert problems(bad, OLDER_TYPES, "old.yaml") == [
        "old.yaml: document 1 (Endpoint db): $.properties.retries: Expected int >= 0, got -1",
        "old.yaml: document 2 (Endpoint alarms-db): $.properties.topic: topic filter 'devices/#/x': '#' must be "
        "alone in the last level",
    ]


def test_a_route_to_an_endpoint_with_bad_properties_is_not_reported_twice() -> None:
    text = ENDPOINTS.replace('qos: "0"', "qos: 7") + """\
---
kind: Route
name: out
source: bus
source_resource: {topic: "devices/#"}
target: broker
target_resource: {topic: "plant/{device}"}
"""
    assert problems(text) == ["plant.yaml: document 2 (Endpoint broker): $.properties.qos: Expected int <= 1, got 7"]


def test_check_refuses_bad_properties(write_config: Callable[[str, str], Path]) -> None:
    path = write_config(ENDPOINTS.replace('batch: "20"', "batch: 0"), "plant.yaml")
    result = subprocess.run([*FIELDGATE, "check", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"{path}: document 2 (Endpoint broker): $.properties.batch: Expected int >= 1, got 0" in result.stderr


def test_every_builtin_type_documents_its_properties() -> None:
    for endpoint_type in BUILTIN_ENDPOINT_TYPES.values():
        info: Any = msgspec.inspect.type_info(endpoint_type.properties)
        assert endpoint_type.properties.__doc__, endpoint_type.name
        assert all(field.name for field in info.fields)
