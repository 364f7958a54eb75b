"""The eventbus against a real mosquitto: telemetry, the KubeEdge twin topics, bad input."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.runtime import Gateway
from tests.conftest import Mosquitto
from tests.test_runtime import MODEL, virtual_device, wait_for


def config_for(broker_url: str, devices: str) -> str:
    return MODEL.replace("eventbus: {url: none}", f"eventbus: {{url: \"{broker_url}\"}}") + devices


@asynccontextmanager
async def mqtt_client(broker: Mosquitto, *topics: str) -> AsyncIterator[tuple[aiomqtt.Client, Inbox]]:
    """An independent MQTT client (the app's side), collecting messages of `topics` into a queue."""
    queue = Inbox()
    async with aiomqtt.Client("127.0.0.1", broker.port, timeout=5) as client:
        for topic in topics:
            await client.subscribe(topic, qos=1)

        async def collect() -> None:
            async for message in client.messages:
                payload = bytes(message.payload)  # type: ignore[arg-type]
                try:
                    data = json.loads(payload)
                except ValueError:
                    data = payload
                queue.put_nowait((str(message.topic), data))

        task = asyncio.create_task(collect())
        try:
            yield client, queue
        finally:
            task.cancel()


class Inbox(asyncio.Queue[tuple[str, Any]]):
    """Messages received by a test client; those skipped by next_on wait in `held`."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[str, Any]] = []


async def next_on(queue: Inbox, topic: str, timeout: float = 5.0) -> Any:
    """The next message on `topic`; messages on other topics are kept for later calls, in order."""
    held = queue.held
    for i, (got_topic, data) in enumerate(held):
        if got_topic == topic:
            del held[i]
            return data
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"nothing on {topic}")
        try:
            got_topic, data = await asyncio.wait_for(queue.get(), remaining)
        except TimeoutError:
            raise AssertionError(f"nothing on {topic} within {timeout}s") from None
        if got_topic == topic:
            return data
        held.append((got_topic, data))


async def wait_connected(gw: Gateway) -> None:
    await wait_for(lambda: gw.eventbus is not None and gw.eventbus.client is not None)


async def test_telemetry_topic_and_payload(mosquitto: Mosquitto, write_config: Callable[[str], Path],
                                           start_gateway: Callable[..., Any]) -> None:
    async with mqtt_client(mosquitto, "fieldgate/#") as (_, queue):
        gw: Gateway = await start_gateway(write_config(config_for(mosquitto.url, virtual_device("d1"))))
        first = await next_on(queue, "fieldgate/test-gw/default/d1/telemetry")
        second = await next_on(queue, "fieldgate/test-gw/default/d1/telemetry")
    assert set(first) == {"ts", "values"}
    assert isinstance(first["ts"], int) and abs(first["ts"] / 1000 - time.time()) < 10
    assert set(first["values"]) == {"count", "level", "setpoint", "enabled"}  # one message per report
    assert second["values"]["count"] == first["values"]["count"] + 1
    assert gw.status()["eventbus"]["connected"] is True


async def test_twin_update_reaches_device_and_returns_reported(
        mosquitto: Mosquitto, write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> None:
    gw: Gateway = await start_gateway(write_config(config_for(mosquitto.url, virtual_device("d1", interval="1s"))))
    await wait_connected(gw)
    base = "$hw/events/device/default/d1/twin"
    async with mqtt_client(mosquitto, f"{base}/update/result", f"{base}/update/delta", f"{base}/update/document",
                           f"{base}/get/result") as (client, queue):
        update = {"event_id": "e-1", "timestamp": 1, "twin": {"setpoint": {"expected": {"value": "42.5"}}}}
        await client.publish(f"{base}/update", json.dumps(update), qos=1)
        result = await next_on(queue, f"{base}/update/result")
        assert result["event_id"] == "e-1"
        assert result["twin"]["setpoint"]["expected"]["value"] == "42.5"
        document = await next_on(queue, f"{base}/update/document")
        assert document["twin"]["setpoint"]["current"]["expected"]["value"] == "42.5"
        assert "expected" not in document["twin"]["setpoint"]["last"]
        await wait_for(lambda: gw.api.twin("default/d1").properties["setpoint"].reported == 42.5)
        await wait_for(lambda: gw.api.twin("default/d1").properties["count"].reported is not None)
        await client.publish(f"{base}/get", json.dumps({"event_id": "g-1", "timestamp": 2}), qos=1)
        got = await next_on(queue, f"{base}/get/result")
    assert got["event_id"] == "g-1"
    assert got["twin"]["setpoint"]["actual"]["value"] == "42.5"
    assert got["twin"]["setpoint"]["metadata"]["type"] == "float"
    assert got["twin"]["count"]["actual"]["value"].isdigit()


async def test_delta_is_published_when_desired_differs(
        mosquitto: Mosquitto, write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> None:
    gw: Gateway = await start_gateway(write_config(config_for(mosquitto.url, virtual_device("d1", interval="1s"))))
    await wait_connected(gw)
    base = "$hw/events/device/default/d1/twin"
    async with mqtt_client(mosquitto, f"{base}/update/delta") as (_, queue):
        await gw.api.set_desired("default/d1", "setpoint", 7)
        delta = await next_on(queue, f"{base}/update/delta")
    assert delta["delta"] == {"setpoint": "7.0"}


@pytest.mark.parametrize(("topic", "payload", "code", "reason"), [
    ("default/d1/twin/update", b"not json", 400, "invalid message"),
    ("default/d1/twin/update", b'{"twin": 5}', 400, "invalid message"),
    ("default/d1/twin/update", b'{"event_id": "x", "twin": {"setpoint": {"expected": {"value": "999"}}}}', 400,
     "above the maximum 50"),
    ("default/d1/twin/update", b'{"event_id": "x", "twin": {"setpoint": {"expected": {"value": "warm"}}}}', 400,
     "expected a number"),
    ("default/d1/twin/update", b'{"event_id": "x", "twin": {"count": {"expected": {"value": "1"}}}}', 400,
     "ReadOnly"),
    ("default/d1/twin/update", b'{"event_id": "x", "twin": {"nope": {"expected": {"value": "1"}}}}', 404,
     "no property"),
    ("default/d1/twin/update", b'{"event_id": "x", "twin": {"setpoint": {"actual": {"value": "1"}}}}', 400,
     "only expected values"),
    ("default/zz/twin/update", b'{"event_id": "x", "twin": {"setpoint": {"expected": {"value": "1"}}}}', 404,
     "no device default/zz"),
    ("default/zz/twin/get", b'{"event_id": "x"}', 404, "no device"),
    ("default/d1/twin/get", b"\xff\xfe", 400, "invalid message"),
])
async def test_bad_input_gets_a_result_with_the_reason(
        mosquitto: Mosquitto, write_config: Callable[[str], Path], start_gateway: Callable[..., Any],
        topic: str, payload: bytes, code: int, reason: str) -> None:
    gw: Gateway = await start_gateway(write_config(config_for(mosquitto.url, virtual_device("d1"))))
    await wait_connected(gw)
    full = f"$hw/events/device/{topic}"
    async with mqtt_client(mosquitto, f"{full}/result", "fieldgate/#") as (client, queue):
        await client.publish(full, payload, qos=1)
        result = await next_on(queue, f"{full}/result")
        assert result["code"] == code
        assert reason in result["reason"]
        if b'"event_id": "x"' in payload:
            assert result["event_id"] == "x"
        # the bus keeps flowing
        await next_on(queue, "fieldgate/test-gw/default/d1/telemetry")
    assert gw.api.twin("default/d1").properties["setpoint"].desired is None
    assert gw.eventbus is not None and gw.eventbus.rejected == 1


async def test_nan_and_infinities_on_the_twin_topic_are_refused(
        mosquitto: Mosquitto, write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> None:
    """Before, "nan" on a property without both bounds was taken: null in the store, NaN on the device."""
    text = config_for(mosquitto.url, virtual_device("d1")).replace("access: ReadWrite, minimum: 0, maximum: 50",
                                                                   "access: ReadWrite")
    gw: Gateway = await start_gateway(write_config(text))
    await wait_connected(gw)
    topic = "$hw/events/device/default/d1/twin/update"
    async with mqtt_client(mosquitto, f"{topic}/result") as (client, queue):
        for value in ("nan", "Infinity", "-inf"):
            update = {"event_id": value, "twin": {"setpoint": {"expected": {"value": value}}}}
            await client.publish(topic, json.dumps(update), qos=1)
            result = await next_on(queue, f"{topic}/result")
            assert (result["event_id"], result["code"]) == (value, 400)
            assert "setpoint: expected a finite number" in result["reason"]
    assert gw.api.twin("default/d1").properties["setpoint"].desired is None
    assert gw.eventbus is not None and gw.eventbus.rejected == 3


ROUTED = """\
---
kind: Endpoint
name: apps
type: eventbus
---
kind: Route
name: alarms
source: apps
source_resource: {topic: "apps/+/alarm"}
target: apps
target_resource: {topic: routed/alarm}
"""


async def test_messages_larger_than_a_topic_takes_are_refused_unread(
        mosquitto: Mosquitto, write_config: Callable[[str], Path], start_gateway: Callable[..., Any],
        caplog: pytest.LogCaptureFixture) -> None:
    """Before, the gateway took any payload: a 9 MB desired value, or a 9 MB message into a route's outbox."""
    from gateway.eventbus.link import ROUTE_MESSAGE_MAX, TWIN_MESSAGE_MAX

    gw: Gateway = await start_gateway(write_config(config_for(mosquitto.url, virtual_device("d1") + ROUTED)))
    await wait_connected(gw)
    topic = "$hw/events/device/default/d1/twin/update"
    async with mqtt_client(mosquitto, f"{topic}/result", "routed/alarm") as (client, queue):
        huge = {"event_id": "big", "twin": {"setpoint": {"expected": {"value": "1" + " " * TWIN_MESSAGE_MAX}}}}
        await client.publish(topic, json.dumps(huge), qos=1)
        result = await next_on(queue, f"{topic}/result")
        assert result["code"] == 413 and f"more than the {TWIN_MESSAGE_MAX} this topic takes" in result["reason"]
        await client.publish("apps/a1/alarm", bytes(ROUTE_MESSAGE_MAX + 1), qos=1)
        await client.publish("apps/a1/alarm", b'{"level": "high"}', qos=1)
        assert await next_on(queue, "routed/alarm") == {"level": "high"}  # the large one never went anywhere
        for _ in range(3):  # the same again is counted, not logged again
            await client.publish("apps/a1/alarm", bytes(ROUTE_MESSAGE_MAX + 1), qos=1)
        await client.publish("apps/a1/alarm", b'{"level": "low"}', qos=1)
        assert await next_on(queue, "routed/alarm") == {"level": "low"}
    assert gw.api.twin("default/d1").properties["setpoint"].desired is None
    described = gw.status()["eventbus"]
    assert described["too_large"] == 5 and described["rejected"] == 5
    assert [r["accepted"] for r in gw.status()["routes"]] == [2]
    dropped = [r for r in caplog.records if "dropped a message on apps/a1/alarm" in r.getMessage()]
    assert len(dropped) == 1 and "more than the 1048576 this topic takes" in dropped[0].getMessage()
DEEP = b"[" * 3000 + b"]" * 3000


@pytest.mark.parametrize(("topic", "payload"), [
    ("$hw/events/device/default/d1/twin/update", b'{"event_id": "deep", "twin": {"setpoint": {"expected": '
                                                 b'{"value": ' + DEEP + b"}}}}"),
    ("$hw/events/device/default/d1/twin/update", DEEP),
    ("$hw/events/device/default/d1/twin/get", b'{"event_id": "deep", "x": ' + DEEP + b"}"),
    ("$hw/events/node/test-gw/membership/get", DEEP),
])
async def test_a_too_deep_message_is_refused_and_the_eventbus_task_keeps_running(
        mosquitto: Mosquitto, write_config: Callable[[str], Path], start_gateway: Callable[..., Any],
        topic: str, payload: bytes) -> None:
    gw: Gateway = await start_gateway(write_config(config_for(mosquitto.url, virtual_device("d1", interval="1s"))))
    await wait_connected(gw)
    update = "$hw/events/device/default/d1/twin/update"
    async with mqtt_client(mosquitto, f"{topic}/result", f"{update}/result") as (client, queue):
        await client.publish(topic, payload, qos=1)
        result = await next_on(queue, f"{topic}/result")
        assert result["code"] == 400 and "nests deeper than" in result["reason"], result
        good = {"event_id": "next", "twin": {"setpoint": {"expected": {"value": "12"}}}}
        await client.publish(update, json.dumps(good), qos=1)
        answer = await next_on(queue, f"{update}/result")
    assert answer["event_id"] == "next" and answer["twin"]["setpoint"]["expected"]["value"] == "12.0"
    assert gw.supervisor.status["eventbus"].restarts == 0
    assert gw.eventbus is not None and gw.eventbus.rejected == 1


async def test_membership_get(mosquitto: Mosquitto, write_config: Callable[[str], Path],
                              start_gateway: Callable[..., Any]) -> None:
    gw: Gateway = await start_gateway(write_config(config_for(mosquitto.url, virtual_device("d1")
                                                              + virtual_device("d2"))))
    await wait_connected(gw)
    await wait_for(lambda: gw.api.twin("default/d1").state == "online")
    topic = "$hw/events/node/test-gw/membership/get"
    async with mqtt_client(mosquitto, f"{topic}/result") as (client, queue):
        await client.publish(topic, json.dumps({"event_id": "m-1"}), qos=1)
        result = await next_on(queue, f"{topic}/result")
    assert result["event_id"] == "m-1"
    assert [d["id"] for d in result["devices"]] == ["default/d1", "default/d2"]
    assert result["devices"][0]["state"] == "online"


async def test_telemetry_waits_in_the_outbox_while_the_broker_is_down(
        mosquitto: Mosquitto, write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> None:
    """A short outage: everything read meanwhile arrives afterwards, in order (the long one is in test_outage)."""
    gw: Gateway = await start_gateway(write_config(config_for(mosquitto.url, virtual_device("d1", "50ms"))))
    await wait_connected(gw)
    mosquitto.stop()
    await asyncio.sleep(1.5)
    assert gw.store.outboxes.depth.get("eventbus", 0) >= 15
    assert gw.sinks.runners["eventbus"].stats.state == "failing"
    mosquitto.start()
    async with mqtt_client(mosquitto, "fieldgate/#") as (_, queue):
        counts = []
        while len(counts) < 40:
            data = await next_on(queue, "fieldgate/test-gw/default/d1/telemetry", timeout=20)
            counts.append(data["values"]["count"])
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    assert counts[0] <= 5  # the backlog from before the outage came first
    assert counts == list(range(counts[0], counts[0] + 40))


async def test_embedded_broker(tmp_path: Path, write_config: Callable[[str], Path],
                               start_gateway: Callable[..., Any]) -> None:
    from tests.conftest import free_port

    port = free_port()
    text = MODEL.replace("eventbus: {url: none}", f"eventbus: {{url: embedded, embedded_listen: \"127.0.0.1:{port}\"}}")
    gw: Gateway = await start_gateway(write_config(text + virtual_device("d1")))
    broker = Mosquitto(tmp_path)
    broker.port = port
    await wait_connected(gw)
    async with mqtt_client(broker, "fieldgate/#") as (_, queue):
        data = await next_on(queue, "fieldgate/test-gw/default/d1/telemetry")
    assert "count" in data["values"]
