"""MQTT devices end to end, against a real mosquitto with its own clients (`mosquitto_pub`, `mosquitto_sub`) as the
devices: values by JSON pointer, regex and whole payload; a desired value set through the REST API published as a
command and confirmed by the device's next message; offline after the silence and back with the next message; bad
messages mark their property bad and the device keeps working; a broker that restarts."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fieldgate_mqtt import link as links
from mqtt_helpers import Subscriber, make_token, publish

from gateway.testing import Mosquitto, free_port, wait_until

MODEL = """\
kind: DeviceModel
name: boiler
properties:
  - {name: temperature, type: float}
  - {name: humidity, type: int}
  - {name: status, type: string}
  - {name: alarm, type: boolean}
  - {name: setpoint, type: float, access: ReadWrite, minimum: 0, maximum: 90}
  - {name: mode, type: string, access: ReadWrite}
"""


def gateway_doc(*, http_port: int | None = None, eventbus: str = "{url: none}") -> str:
    http = f"http: {{listen: '127.0.0.1:{http_port}'}}\n" if http_port else ""
    return f"kind: Gateway\nname: gw\n{http}eventbus: {eventbus}\nstore: {{flush_interval: 50ms}}\n---\n"


def device_doc(name: str, config: str, *, timeout: str = "30s", max_message: int | None = None) -> str:
    extra = f", max_message: {max_message}" if max_message else ""
    return f"""\
---
kind: Device
name: {name}
model: boiler
timeout: {timeout}
protocol: {{name: mqtt, config: {{{config}{extra}}}}}
properties:
  - name: temperature
    collect_interval: 100ms
    visitor: {{topic: "plant/{{device}}/state", json_pointer: /sensors/0/temp}}
  - name: humidity
    collect_interval: 100ms
    visitor: {{topic: "plant/{{device}}/state", json_pointer: /hum}}
  - name: status
    collect_interval: 100ms
    visitor: {{topic: "plant/{{device}}/log", regex: 'status=(\\w+)'}}
  - name: alarm
    collect_interval: 100ms
    visitor: {{topic: "plant/+/alarm/{{device}}"}}
  - name: setpoint
    collect_interval: 100ms
    visitor:
      topic: "plant/{{device}}/state"
      json_pointer: /setpoint
      command_topic: "plant/{{device}}/set"
      command_template: '{{"setpoint": {{value}}, "device": "{{device}}"}}'
  - name: mode
    collect_interval: 100ms
    visitor:
      topic: "plant/{{device}}/mode"
      command_topic: "plant/{{device}}/{{property}}/set"
      command_template: '{{"mode": "{{value}}"}}'
      command_retain: true
"""


def reported(gw: Any, device: str, prop: str) -> Any:
    return gw.api.twin(f"default/{device}").properties[prop].reported


def link_of(port: int) -> links.Link:
    (link,) = [link for link in links.links() if link.login.port == port]
    return link


async def listening(port: int, devices: int = 1) -> links.Link:
    """The link to the broker on `port`, once it has subscribed to the topics of `devices` devices (a message
    published before would go to nobody, as it would for any subscriber that is not there yet)."""
    await wait_until(lambda: [link for link in links.links() if link.login.port == port])
    link = link_of(port)
    await wait_until(lambda: len(link.feeds) == devices and link.subscribed == set(link.wanted()))
    return link


async def test_values_by_json_pointer_regex_and_whole_payload_arrive(
        mosquitto: Mosquitto, write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> None:
    config = gateway_doc() + MODEL + "".join(device_doc(name, f"url: '{mosquitto.url}'") for name in ("b1", "b2"))
    gw = await start_gateway(write_config(config))
    port = mosquitto.port
    link = await listening(port, devices=2)

    await publish(port, "plant/b1/state", json.dumps({"sensors": [{"temp": 21.5}], "hum": 40.6, "setpoint": 20}))
    await publish(port, "plant/b1/log", "12:00:01 boiler started, status=running, pressure ok")
    await publish(port, "plant/hall-2/alarm/b1", "true")
    await publish(port, "plant/b2/state", json.dumps({"sensors": [{"temp": "19.25"}], "hum": 7, "setpoint": 1}))
    await wait_until(lambda: reported(gw, "b1", "alarm") is True and reported(gw, "b2", "humidity") == 7)

    twin = gw.api.twin("default/b1")
    assert {name: p.reported for name, p in twin.properties.items()} == {
        "temperature": 21.5, "humidity": 41, "status": "running", "alarm": True, "setpoint": 20.0, "mode": None}
    assert {name: p.quality for name, p in twin.properties.items() if name != "mode"} == dict.fromkeys(
        ("temperature", "humidity", "status", "alarm", "setpoint"), "good")
    assert twin.state == "online"
    assert reported(gw, "b2", "temperature") == 19.25  # a number sent as a JSON string converts like any input
    assert reported(gw, "b2", "alarm") is None  # b1's alarm topic is not b2's

    # the two devices of one broker and login share one session
    assert len(link.feeds) == 2 and link.sessions == 1


async def test_a_desired_value_from_the_rest_api_is_published_and_confirmed_by_the_next_message(
        mosquitto: Mosquitto, write_config: Callable[[str], Path], start_gateway: Callable[..., Any],
        tmp_path: Path) -> None:
    http_port = free_port()
    config = gateway_doc(http_port=http_port) + MODEL + device_doc("b1", f"url: '{mosquitto.url}'")
    gw = await start_gateway(write_config(config), serve_http=True)
    port = mosquitto.port
    await listening(port)
    await publish(port, "plant/b1/state", json.dumps({"sensors": [{"temp": 50}], "hum": 30, "setpoint": 20.0}))
    await wait_until(lambda: reported(gw, "b1", "setpoint") == 20.0)
    token = await make_token(tmp_path / "data")

    async with Subscriber(port, "plant/b1/#") as commands, httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{http_port}", headers={"Authorization": f"Bearer {token}"},
            timeout=30) as api:
        await commands.wait_subscribed(port, "plant/b1/probe")
        answer = await api.put("/api/v1/devices/default/b1/twin/setpoint", json={"desired": 22.5})
        assert answer.status_code == 200, answer.text
        payload = await commands.next_on("plant/b1/set")
        assert json.loads(payload) == {"setpoint": 22.5, "device": "b1"}

        # written but not confirmed: the device has not said it holds the new value yet
        twin = (await api.get("/api/v1/devices/default/b1")).json()["twin"]["setpoint"]
        assert (twin["desired"], twin["reported"]) == (22.5, 20.0)

        await publish(port, "plant/b1/state", json.dumps({"sensors": [{"temp": 50}], "hum": 30, "setpoint": 22.5}))

        async def confirmed() -> bool:
            twin = (await api.get("/api/v1/devices/default/b1")).json()["twin"]["setpoint"]
            return bool(twin["reported"] == twin["desired"] == 22.5 and twin["quality"] == "good")

        await wait_until(confirmed)
        assert not gw.api.twin("default/b1").properties["setpoint"].pending

        # a string goes into a JSON template escaped, retained as the visitor asks
        text = 'eco "night" \\ mode\n'
        answer = await api.put("/api/v1/devices/default/b1/twin/mode", json={"desired": text})
        assert answer.status_code == 200, answer.text
        assert json.loads(await commands.next_on("plant/b1/mode/set")) == {"mode": text}

    async with Subscriber(port, "plant/b1/mode/set") as late:  # retained: a subscriber that comes later gets it
        assert json.loads(await late.next_on("plant/b1/mode/set")) == {"mode": text}

    # refused before anything is published: above the model's maximum
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}",
                                 headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
        answer = await api.put("/api/v1/devices/default/b1/twin/setpoint", json={"desired": 95})
        assert answer.status_code == 400 and "maximum" in answer.text


async def test_a_device_goes_offline_after_the_silence_and_online_with_the_next_message(
        mosquitto: Mosquitto, write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> None:
    config = gateway_doc() + MODEL + device_doc("b1", f"url: '{mosquitto.url}'", timeout="1s")
    gw = await start_gateway(write_config(config))
    twin = gw.api.twin("default/b1")
    states: list[str] = []
    gw.api.subscribe("devices/+/+/state", lambda topic, change: states.append(change.state))
    port = mosquitto.port
    link = await listening(port)

    await publish(port, "plant/b1/state", json.dumps({"sensors": [{"temp": 30}], "hum": 30, "setpoint": 20}))
    await wait_until(lambda: twin.state == "online")
    await wait_until(lambda: twin.state == "offline")
    assert twin.state_reason.startswith("no message on plant/+/alarm/b1, plant/b1/log, plant/b1/mode and 1 more "
                                        "for "), twin.state_reason
    assert twin.properties["temperature"].quality == "bad" and twin.properties["temperature"].reported == 30.0

    await publish(port, "plant/b1/log", "status=idle")  # any of its topics: the device is there
    await wait_until(lambda: twin.state == "online")
    assert twin.properties["status"].reported == "idle" and twin.properties["status"].quality == "good"
    assert states[:3] == ["online", "offline", "online"]
    assert link.sessions == 1  # offline and back without a new session: the connection stayed


async def test_bad_messages_mark_their_property_bad_and_the_device_keeps_working(
        mosquitto: Mosquitto, write_config: Callable[[str], Path], start_gateway: Callable[..., Any],
        caplog: pytest.LogCaptureFixture) -> None:
    config = gateway_doc() + MODEL + device_doc("b1", f"url: '{mosquitto.url}'", max_message=1024)
    gw = await start_gateway(write_config(config))
    twin = gw.api.twin("default/b1")
    props = twin.properties
    port = mosquitto.port
    link = await listening(port)
    good = json.dumps({"sensors": [{"temp": 21.0}], "hum": 40, "setpoint": 20})
    await publish(port, "plant/b1/state", good)
    await wait_until(lambda: props["temperature"].reported == 21.0)
    caplog.set_level(logging.WARNING, logger="fieldgate_mqtt")

    cases = [
        (b"not json at all", "not JSON"),
        (json.dumps({"sensors": [], "hum": 1}).encode(), "/sensors/0/temp: the message has no /sensors/0 (the "
                                                         "array holds 0)"),
        (json.dumps({"sensors": [{"temp": "warm"}], "hum": 1}).encode(), "expected a number, got 'warm'"),
        (json.dumps({"sensors": [{"temp": {"c": 1}}], "hum": 1}).encode(), "the value is an object, not a float"),
        (b"[" * 5000 + b"]" * 5000, "the message has 10000 bytes, more than max_message 1024"),
        (b"\xff\xfe" + b"{" * 600, "not JSON"),
        (b"[" * 1000, "the JSON nests too deep"),
    ]
    for payload, reason in cases:
        await publish(port, "plant/b1/state", payload)
        await wait_until(lambda: props["temperature"].quality == "bad")
        assert reason in (props["temperature"].error or ""), (reason, props["temperature"].error)
        assert "(on plant/b1/state)" in (props["temperature"].error or "")
        assert props["temperature"].reported == 21.0  # the last good value stays
        assert twin.state == "unhealthy"
        # the device keeps working: its other topics, and the next good message on this one
        await publish(port, "plant/b1/log", "status=ok")
        await publish(port, "plant/b1/state", good)
        await wait_until(lambda: props["temperature"].quality == "good" and twin.state == "online")

    for _ in range(20):  # a flood of the same bad message is logged once a minute per property, not per message
        await publish(port, "plant/b1/log", "no status here", qos=0)
    await publish(port, "plant/b1/log", "status=done")
    await wait_until(lambda: props["status"].reported == "done")
    lines = [r.getMessage() for r in caplog.records if "status: a message gave no value" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "does not match" in lines[0]
    feed = next(iter(link.feeds))
    assert feed.too_large == 1 and feed.bad >= len(cases) + 20


async def test_the_broker_restarts_the_device_goes_offline_and_comes_back(
        mosquitto: Mosquitto, write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> None:
    config = gateway_doc() + MODEL + device_doc("b1", f"url: '{mosquitto.url}'", timeout="1s")
    gw = await start_gateway(write_config(config))
    twin = gw.api.twin("default/b1")
    port = mosquitto.port
    link = await listening(port)
    await publish(port, "plant/b1/log", "status=one")
    await wait_until(lambda: twin.state == "online")

    mosquitto.stop()
    await wait_until(lambda: twin.state == "offline")
    await wait_until(lambda: "is not connected" in twin.state_reason)
    assert f"mqtt://127.0.0.1:{port}" in twin.state_reason

    mosquitto.start()  # the same port: the link reconnects and subscribes again
    await wait_until(lambda: link.sessions == 2 and link.subscribed == set(link.wanted()), timeout=30)
    await publish(port, "plant/b1/log", "status=two")
    await wait_until(lambda: twin.state == "online" and twin.properties["status"].reported == "two")
