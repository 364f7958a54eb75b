"""Hypothesis-drawn messages on the KubeEdge twin topics against a real mosquitto and a polling gateway: every one
is answered on its result topic, none with an internal error, the eventbus task never restarts, polling goes on
and nothing committed (history, outbox rows) is lost."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from hypothesis import strategies as st

from gateway.runtime import Gateway
from gateway.testing import committed_rows, free_port, generated_examples, polling_cycles
from tests.conftest import Mosquitto
from tests.eventbus.test_eventbus import config_for, wait_connected
from tests.test_runtime import virtual_device, wait_for

pytestmark = pytest.mark.timeout(120)
EXAMPLES = 200
DEVICE = "$hw/events/device/default/d1"
TOPICS = [f"{DEVICE}/twin/update", f"{DEVICE}/twin/get", "$hw/events/device/default/ghost/twin/update",
          "$hw/events/device/other/d1/twin/get", "$hw/events/node/test-gw/membership/get"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
    | st.sampled_from(["12", "49.5", "nan", "-inf", "1e400", "true", "0x10", ""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12)
twin_entry = st.fixed_dictionaries({}, optional={
    "expected": st.fixed_dictionaries({}, optional={"value": json_values}) | json_values,
    "actual": json_values, "metadata": json_values, "optional": json_values})
twin_update = st.fixed_dictionaries({}, optional={
    "event_id": st.text(max_size=12) | json_values, "timestamp": st.integers() | json_values,
    "twin": st.dictionaries(st.sampled_from(["count", "level", "setpoint", "enabled"]) | st.text(max_size=8),
                            twin_entry, max_size=4) | json_values,
    "extra": json_values})
deep = st.integers(0, 4000)
payloads = st.one_of(
    twin_update.map(lambda doc: json.dumps(doc).encode()),  # NaN and Infinity included, as some JSON writers do
    json_values.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=200),
    deep.map(lambda n: b"[" * n + b"]" * n),
    deep.map(lambda n: b'{"event_id": "e", "twin": {"setpoint": {"expected": {"value": ' + b"[" * n + b"]" * n
             + b"}}}}"),
    deep.map(lambda n: b'{"twin": ' * n),
)
messages = st.tuples(st.sampled_from(TOPICS), payloads)


async def test_drawn_twin_messages_are_all_answered_and_lose_nothing(
        mosquitto: Mosquitto, write_config: Callable[[str], Path], start_gateway: Callable[..., Any],
        caplog: pytest.LogCaptureFixture) -> None:
    undeliverable = f"""\
---
kind: Endpoint
name: bus
type: bus
---
kind: Endpoint
name: down
type: mqtt
properties: {{url: "mqtt://127.0.0.1:{free_port()}"}}
---
kind: Route
name: to-down
source: bus
source_resource: {{topic: "devices/+/+/telemetry"}}
target: down
target_resource: {{topic: "out/{{device}}"}}
"""
    devices = virtual_device("d1", interval="50ms") + virtual_device("d2", interval="50ms")
    drawn = generated_examples(messages, EXAMPLES)  # before the gateway runs: drawing blocks the event loop
    gw: Gateway = await start_gateway(write_config(config_for(mosquitto.url, devices + undeliverable)))
    await wait_connected(gw)
    await wait_for(lambda: any(depth for sink, depth in gw.store.outboxes.depth.items() if sink != "eventbus"))
    history_before, outbox_before = await committed_rows(gw)
    assert history_before and outbox_before
    cycles_before = polling_cycles(gw)
    results: list[dict[str, Any]] = []
    gc.collect()  # what earlier tests left behind is reported now, not as this test's error
    with caplog.at_level(logging.ERROR):
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, timeout=10) as app:
            await app.subscribe("$hw/events/device/+/+/twin/+/result", qos=1)
            await app.subscribe("$hw/events/node/+/membership/get/result", qos=1)

            async def collect() -> None:
                async for message in app.messages:
                    results.append(json.loads(bytes(message.payload)))  # type: ignore[arg-type]

            collector = asyncio.create_task(collect())
            try:
                for topic, payload in drawn:
                    await app.publish(topic, payload, qos=1)
                await wait_for(lambda: len(results) >= len(drawn), timeout=60)
            finally:
                collector.cancel()
        await asyncio.sleep(0.3)  # polling goes on meanwhile
        history_after, outbox_after = await committed_rows(gw)
    assert len(results) == len(drawn)
    assert not [r for r in results if r.get("code", 200) >= 500], "no message may meet an internal error"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert all(status.restarts == 0 for status in gw.supervisor.status.values()), gw.supervisor.status
    assert polling_cycles(gw) > cycles_before
    assert history_before <= history_after and len(history_after) > len(history_before)
    assert outbox_before <= outbox_after
    assert gw.eventbus is not None and gw.eventbus.rejected > 0
