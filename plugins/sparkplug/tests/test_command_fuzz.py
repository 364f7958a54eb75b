"""Hypothesis-drawn host commands (NCMD, DCMD: Tahu-built payloads and raw bytes) against the edge node on a real
mosquitto: none meets an internal error, the edge node's task never restarts, the gateway keeps polling and
publishing, and nothing committed (history, outbox rows) is lost."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiomqtt
import pytest
from fieldgate_sparkplug.plugin import edge_nodes
from hypothesis import strategies as st
from tahutils.tahu import sparkplug_b_pb2 as tahu
from test_edge_node import EDGE, GROUP, Host, command, config, dbirth_topic, kind

from gateway.runtime import Gateway
from gateway.testing import Mosquitto, committed_rows, free_port, generated_examples, polling_cycles

pytestmark = pytest.mark.timeout(120)
EXAMPLES = 200
NCMD, DCMD = f"spBv1.0/{GROUP}/NCMD/{EDGE}", f"spBv1.0/{GROUP}/DCMD/{EDGE}/boiler-1"
TOPICS = [NCMD, DCMD, f"spBv1.0/{GROUP}/DCMD/{EDGE}/ghost", f"spBv1.0/{GROUP}/DCMD/{EDGE}", f"spBv1.0/{GROUP}/NCMD"]
NAMES = ["setpoint", "enabled", "mode", "temperature", "label", "Node Control/Rebirth", "Node Control/Reboot"]
VALUES: dict[str, Any] = {
    "int_value": st.integers(0, 2**32 - 1), "long_value": st.integers(0, 2**64 - 1),
    "float_value": st.floats(width=32), "double_value": st.floats(), "boolean_value": st.booleans(),
    "string_value": st.text(max_size=20), "bytes_value": st.binary(max_size=20),
}
metrics = st.lists(st.tuples(
    st.sampled_from(NAMES) | st.text(max_size=10) | st.integers(0, 2**64 - 1),  # a name or an alias
    st.integers(0, 40),  # Tahu data types, unknown ones included
    st.sampled_from(sorted(VALUES)).flatmap(lambda field: st.tuples(st.just(field), VALUES[field])),
), max_size=4)
payloads = st.one_of(
    metrics.map(lambda drawn: command(*((key, datatype, field, value) for key, datatype, (field, value) in drawn))),
    st.binary(max_size=200),
    st.integers(0, 3000).map(lambda n: b"\x12\x02" * n),  # metrics that announce more bytes than they hold
)
messages = st.tuples(st.sampled_from(TOPICS), payloads)


async def test_drawn_commands_meet_no_internal_error_and_lose_nothing(
        mosquitto: Mosquitto, write_config: Any, start_gateway: Any, caplog: pytest.LogCaptureFixture) -> None:
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
    drawn = generated_examples(messages, EXAMPLES)
    async with Host(mosquitto.port) as host:
        gw: Gateway = await start_gateway(write_config(config(mosquitto.port, undeliverable)))
        await host.wait_for(lambda t, p: t == dbirth_topic("boiler-1"))
        await asyncio.sleep(0.3)  # something committed to look after
        history_before, outbox_before = await committed_rows(gw)
        assert history_before and outbox_before
        cycles_before = polling_cycles(gw)
        (node,) = edge_nodes(gw.api)
        with caplog.at_level(logging.INFO):
            async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="fuzzing-host", timeout=10) as client:
                for topic, payload in drawn:
                    await client.publish(topic, payload, qos=1)
                # the same session, so after all of the above: a command that must still be served
                await client.publish(DCMD, command(("setpoint", tahu.Double, "double_value", 42.25)), qos=1)
            twin = gw.api.twin("default/boiler-1").properties
            deadline = asyncio.get_running_loop().time() + 60
            while twin["setpoint"].desired != 42.25:
                assert asyncio.get_running_loop().time() < deadline, "the last command was not served"
                await asyncio.sleep(0.05)
            seen = len(host.messages)
            await host.wait_for(lambda t, p: kind(t) == "DDATA", after=seen)  # still publishing
            history_after, outbox_after = await committed_rows(gw)
    internal = [r for r in caplog.records if r.exc_info is not None or "internal error" in r.getMessage()]
    assert not internal, "\n".join(r.getMessage() for r in internal)
    assert node.describe()["rejected_commands"] > 0
    assert all(status.restarts == 0 for status in gw.supervisor.status.values()), gw.supervisor.status
    assert polling_cycles(gw) > cycles_before
    assert history_before <= history_after and len(history_after) > len(history_before)
    assert outbox_before <= outbox_after
