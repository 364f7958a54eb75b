"""Home Assistant discovery on a real mosquitto: retained configs, templates that work, commands that set values."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiomqtt
import jinja2
from ha_schema import problems

from gateway.runtime import Gateway
from gateway.testing import Mosquitto

PREFIX = "homeassistant"


def config_for(url: str, *, discovery: bool = True) -> str:
    endpoint = """\
---
kind: Endpoint
name: homeassistant
type: eventbus
properties: {plugin: homeassistant}
""" if discovery else ""
    return f"""\
kind: Gateway
name: test-gw
eventbus: {{url: "{url}"}}
store: {{flush_interval: 50ms}}
---
kind: DeviceModel
name: thermo
properties:
  - {{name: temperature, type: float, unit: degC, minimum: -40, maximum: 125}}
  - {{name: energy, type: float, unit: kWh}}
  - {{name: humidity, type: float, unit: "%RH"}}
  - {{name: count, type: int}}
  - {{name: alarm, type: boolean}}
  - {{name: setpoint, type: float, access: ReadWrite, unit: degC, minimum: 0, maximum: 50}}
  - {{name: enabled, type: boolean, access: ReadWrite}}
---
kind: Device
name: boiler.1
model: thermo
labels: {{manufacturer: Acme, model: TX-9}}
protocol: {{name: virtual}}
properties:
  - {{name: temperature, collect_interval: 100ms, visitor: {{generator: sine, amplitude: 5, period: 10s}}}}
  - {{name: energy, collect_interval: 100ms, visitor: {{generator: counter, start: 100, step: 0.5}}}}
  - {{name: humidity, collect_interval: 100ms, visitor: {{generator: constant, value: 40.5}}}}
  - {{name: count, collect_interval: 100ms, visitor: {{generator: counter}}}}
  - {{name: alarm, collect_interval: 100ms, visitor: {{generator: constant, value: false}}}}
  - {{name: setpoint, collect_interval: 100ms, visitor: {{generator: memory, initial: 10.0}}}}
  - {{name: enabled, collect_interval: 100ms, visitor: {{generator: memory, initial: false}}}}
{endpoint}"""


SECOND_DEVICE = """\
kind: Device
name: boiler-2
model: thermo
protocol: {name: virtual}
properties:
  - {name: temperature, collect_interval: 100ms, visitor: {generator: constant, value: 20.0}}
"""


class Collector:
    """An independent MQTT client (Home Assistant's side) keeping the last payload per topic."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.last: dict[str, bytes] = {}

    async def wait(self, predicate: Callable[[dict[str, bytes]], Any], timeout: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if result := predicate(self.last):
                return result
            await asyncio.sleep(0.02)
        raise AssertionError(f"condition not met in time; have {sorted(self.last)}")


@asynccontextmanager
async def collector(broker: Mosquitto, *topics: str) -> AsyncIterator[Collector]:
    async with aiomqtt.Client("127.0.0.1", broker.port, timeout=5) as client:
        seen = Collector(client)
        for topic in topics:
            await client.subscribe(topic, qos=1)

        async def collect() -> None:
            async for message in client.messages:
                seen.last[str(message.topic)] = bytes(message.payload)  # type: ignore[arg-type,unused-ignore]

        task = asyncio.create_task(collect())
        try:
            yield seen
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def configs(last: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    return {topic: json.loads(payload) for topic, payload in last.items()
            if topic.startswith(f"{PREFIX}/") and payload}


def render(template: str, **variables: Any) -> str:
    """Render as Home Assistant does (Jinja2, `value`/`value_json`/`this`)."""
    return jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(template).render(**variables)


async def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_discovery_is_retained_and_valid(mosquitto: Mosquitto, write_config: Callable[[str], Path],
                                               start_gateway: Callable[..., Any]) -> None:
    gw: Gateway = await start_gateway(write_config(config_for(mosquitto.url)))
    await wait_for(lambda: gw.eventbus is not None and gw.eventbus.client is not None)
    telemetry = "fieldgate/test-gw/default/boiler.1/telemetry"
    async with collector(mosquitto, f"{PREFIX}/#", "$hw/events/device/+/+/state/update", telemetry) as ha:
        found = await ha.wait(lambda last: len(configs(last)) == 7 and telemetry in last
                              and b'"online"' in last.get("$hw/events/device/default/boiler.1/state/update", b"")
                              and last)
    entities = configs(found)
    node = "test-gw_default_boiler_1"
    assert set(entities) == {f"{PREFIX}/sensor/{node}/temperature/config", f"{PREFIX}/sensor/{node}/energy/config",
                             f"{PREFIX}/sensor/{node}/humidity/config", f"{PREFIX}/sensor/{node}/count/config",
                             f"{PREFIX}/binary_sensor/{node}/alarm/config", f"{PREFIX}/number/{node}/setpoint/config",
                             f"{PREFIX}/switch/{node}/enabled/config"}
    for topic, config in entities.items():
        assert problems(topic.split("/")[1], config) == [], topic
        assert config["state_topic"] == telemetry
        assert config["device"] == {"identifiers": ["fieldgate_test-gw_default_boiler_1"], "name": "boiler.1",
                                    "manufacturer": "Acme", "model": "TX-9"}
    assert len({c["unique_id"] for c in entities.values()}) == 7
    temperature = entities[f"{PREFIX}/sensor/{node}/temperature/config"]
    assert (temperature["unit_of_measurement"], temperature["device_class"], temperature["state_class"]) == \
        ("°C", "temperature", "measurement")
    energy = entities[f"{PREFIX}/sensor/{node}/energy/config"]
    assert (energy["device_class"], energy["state_class"]) == ("energy", "total_increasing")
    humidity = entities[f"{PREFIX}/sensor/{node}/humidity/config"]
    assert (humidity["unit_of_measurement"], humidity["device_class"]) == ("%", "humidity")
    setpoint = entities[f"{PREFIX}/number/{node}/setpoint/config"]
    assert (setpoint["min"], setpoint["max"], setpoint["command_topic"]) == \
        (0, 50, "$hw/events/device/default/boiler.1/twin/update")

    # The templates work on what the gateway really publishes.
    report = json.loads(found[telemetry])
    this = SimpleNamespace(state="unknown")
    for name, config in (("temperature", temperature), ("count", entities[f"{PREFIX}/sensor/{node}/count/config"])):
        assert render(config["value_template"], value_json=report, this=this) == str(report["values"][name])
    alarm = entities[f"{PREFIX}/binary_sensor/{node}/alarm/config"]
    assert render(alarm["value_template"], value_json=report, this=this) == alarm["payload_off"]
    assert render(temperature["value_template"], value_json={"ts": 1, "values": {}}, this=this) == "unknown"
    state_topic = temperature["availability"][0]["topic"]
    assert state_topic == "$hw/events/device/default/boiler.1/state/update"
    state = json.loads(found[state_topic])  # retained, so Home Assistant knows it after its own restart
    assert render(temperature["availability"][0]["value_template"], value_json=state) == "online"
    assert render(temperature["availability"][0]["value_template"], value_json={"state": "offline"}) == "offline"


async def test_commands_from_home_assistant_set_desired_values(mosquitto: Mosquitto,
                                                               write_config: Callable[[str], Path],
                                                               start_gateway: Callable[..., Any]) -> None:
    gw: Gateway = await start_gateway(write_config(config_for(mosquitto.url)))
    twin = gw.api.twin("default/boiler.1")
    async with collector(mosquitto, f"{PREFIX}/#") as ha:
        found = configs(await ha.wait(lambda last: len(configs(last)) == 7 and last))
        number = found[f"{PREFIX}/number/test-gw_default_boiler_1/setpoint/config"]
        switch = found[f"{PREFIX}/switch/test-gw_default_boiler_1/enabled/config"]
        await ha.client.publish(number["command_topic"], render(number["command_template"], value=22.5), qos=1)
        await wait_for(lambda: twin.properties["setpoint"].reported == 22.5)
        await ha.client.publish(switch["command_topic"],
                                render(switch["command_template"], value=switch["payload_on"]), qos=1)
        await wait_for(lambda: twin.properties["enabled"].reported is True)
    assert twin.properties["setpoint"].desired == 22.5 and twin.properties["enabled"].desired is True
    audit = await gw.store.audit.recent()
    assert {entry["target"] for entry in audit if entry["action"] == "set-desired"} >= \
        {"default/boiler.1/setpoint", "default/boiler.1/enabled"}


async def test_discovery_follows_devices_and_broker_restarts(mosquitto: Mosquitto,
                                                             write_config: Callable[[str], Path],
                                                             start_gateway: Callable[..., Any]) -> None:
    gw: Gateway = await start_gateway(write_config(config_for(mosquitto.url)))
    added = f"{PREFIX}/sensor/test-gw_default_boiler-2/temperature/config"
    async with collector(mosquitto, f"{PREFIX}/#") as ha:
        await ha.wait(lambda last: len(configs(last)) == 7)
        await gw.configuration.apply_documents(SECOND_DEVICE, actor="test")
        await ha.wait(lambda last: added in configs(last))
        await gw.configuration.delete_resource("Device", "default", "boiler-2", actor="test")
        await ha.wait(lambda last: last.get(added) == b"")  # an empty retained config removes the entity
    mosquitto.stop()  # no persistence: the broker forgets every retained message
    await wait_for(lambda: gw.eventbus is not None and gw.eventbus.client is None)
    mosquitto.start()
    async with collector(mosquitto, f"{PREFIX}/#") as ha:
        again = await ha.wait(lambda last: len(configs(last)) == 7 and last, timeout=10)
    assert added not in again


async def test_nothing_is_published_without_the_endpoint(mosquitto: Mosquitto,
                                                         write_config: Callable[[str], Path],
                                                         start_gateway: Callable[..., Any]) -> None:
    gw: Gateway = await start_gateway(write_config(config_for(mosquitto.url, discovery=False)))
    await wait_for(lambda: gw.eventbus is not None and gw.eventbus.client is not None)
    async with collector(mosquitto, f"{PREFIX}/#") as ha:
        await asyncio.sleep(0.5)
    assert ha.last == {}
