"""The Sparkplug B edge node on a real mosquitto with a real gateway, seen by an independent host: every payload is
decoded with Eclipse Tahu's generated protobuf classes (tahutils), not with the plugin's own codec."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import aiomqtt
import msgspec
import pytest
from fieldgate_modbus.sim import ModbusSimulator, SimUnit
from fieldgate_sparkplug.node import Session, _unless_lost
from fieldgate_sparkplug.plugin import edge_nodes
from tahutils.tahu import sparkplug_b_pb2 as tahu

from gateway.plugins import get_plugin_manager
from gateway.resources.schema import DeviceModel
from gateway.runtime import Gateway
from gateway.testing import Mosquitto

GROUP, EDGE = "plant-1", "gw-1"
CLIENT_ID = f"fieldgate-sparkplug-{GROUP}-{EDGE}"
Message = tuple[str, tahu.Payload]

BOILER_TYPES = {"temperature": tahu.Float, "count": tahu.Int64, "alarm": tahu.Boolean, "label": tahu.String,
                "setpoint": tahu.Double, "enabled": tahu.Boolean, "mode": tahu.Int64}


def config(port: int, extra: str = "") -> str:
    return f"""\
kind: Gateway
name: test-gw
eventbus: {{url: none}}
store: {{flush_interval: 50ms}}
---
kind: DeviceModel
name: boiler
properties:
  - {{name: temperature, type: float, unit: degC, minimum: -40, maximum: 125}}
  - {{name: count, type: int}}
  - {{name: alarm, type: boolean}}
  - {{name: label, type: string}}
  - {{name: setpoint, type: double, access: ReadWrite, unit: degC, minimum: 0, maximum: 50}}
  - {{name: enabled, type: boolean, access: ReadWrite}}
  - {{name: mode, type: int, access: ReadWrite, minimum: 0, maximum: 5}}
---
kind: Device
name: boiler-1
model: boiler
protocol: {{name: virtual}}
properties:
  - {{name: temperature, collect_interval: 100ms, visitor: {{generator: sine, amplitude: 5, period: 10s, offset: 20}}}}
  - {{name: count, collect_interval: 100ms, visitor: {{generator: counter, start: -1000}}}}
  - {{name: alarm, collect_interval: 100ms, visitor: {{generator: constant, value: false}}}}
  - {{name: label, collect_interval: 100ms, visitor: {{generator: constant, value: hall A}}}}
  - {{name: setpoint, collect_interval: 100ms, visitor: {{generator: memory, initial: 21.5}}}}
  - {{name: enabled, collect_interval: 100ms, visitor: {{generator: memory, initial: false}}}}
  - {{name: mode, collect_interval: 100ms, visitor: {{generator: memory, initial: 1}}}}
---
kind: Endpoint
name: scada
type: mqtt
properties: {{plugin: sparkplug, url: "mqtt://127.0.0.1:{port}", group_id: {GROUP}, edge_node_id: {EDGE}}}
{extra}"""


def kind(topic: str) -> str:
    return topic.split("/")[2]


def to_signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def by_name(payload: tahu.Payload) -> dict[str, Any]:
    return {m.name: m for m in payload.metrics}


class Host:
    """An independent Sparkplug host: subscribes to spBv1.0/# (reconnecting when the broker restarts) and keeps
    every message decoded with Tahu's classes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[Message] = []
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Host:
        self._task = asyncio.create_task(self._run())
        async with asyncio.timeout(10):
            await self._subscribed.wait()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", self.port, identifier="test-host", timeout=5) as client:
                    await client.subscribe("spBv1.0/#", qos=1)
                    self._subscribed.set()
                    async for message in client.messages:
                        payload = tahu.Payload()
                        if str(message.topic).startswith("spBv1.0/STATE/") or kind(str(message.topic)) in (
                                "NCMD", "DCMD"):
                            continue  # what hosts send, garbage included
                        assert isinstance(message.payload, bytes)
                        payload.ParseFromString(message.payload)
                        self.messages.append((str(message.topic), payload))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)

    async def wait_for(self, check: Callable[[str, tahu.Payload], bool], *, after: int = 0,
                       timeout: float = 10.0) -> tuple[int, str, tahu.Payload]:
        """(index, topic, payload) of the first message from index `after` on that passes `check`."""
        deadline = time.monotonic() + timeout
        while True:
            for index in range(after, len(self.messages)):
                topic, payload = self.messages[index]
                if check(topic, payload):
                    return index, topic, payload
            assert time.monotonic() < deadline, f"no such message in time; got {[t for t, _ in self.messages]}"
            await asyncio.sleep(0.02)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port, identifier="test-commander", timeout=5) as client:
            await client.publish(topic, payload, qos=1, retain=retain)


def command(*metrics: tuple[str | int, int, str, Any]) -> bytes:
    """A command payload built with Tahu's classes: (name or alias, datatype, value field, value) per metric."""
    payload = tahu.Payload()
    payload.timestamp = int(time.time() * 1000)
    for key, datatype, field, value in metrics:
        metric = payload.metrics.add()
        if isinstance(key, str):
            metric.name = key
        else:
            metric.alias = key
        metric.datatype = datatype
        setattr(metric, field, value)
    return bytes(payload.SerializeToString())


def check_seq(messages: list[Message]) -> None:
    """Every message of a session after its NBIRTH carries the next seq (mod 256); NDEATH has none."""
    expected = None
    for topic, payload in messages:
        if kind(topic) == "NBIRTH":
            expected = 0
        elif kind(topic) == "NDEATH":
            assert not payload.HasField("seq")
            expected = None
            continue
        assert expected is not None, f"{topic} before any NBIRTH"
        assert payload.seq == expected, f"{topic}: seq {payload.seq}, expected {expected}"
        expected = (expected + 1) % 256


def dbirth_topic(device: str) -> str:
    return f"spBv1.0/{GROUP}/DBIRTH/{EDGE}/{device}"


async def test_births_and_data_match_the_twins(mosquitto: Mosquitto, write_config: Any,
                                               start_gateway: Any) -> None:
    async with Host(mosquitto.port) as host:
        gw: Gateway = await start_gateway(write_config(config(mosquitto.port)))
        _, topic, nbirth = await host.wait_for(lambda t, p: kind(t) == "NBIRTH")
        assert topic == f"spBv1.0/{GROUP}/NBIRTH/{EDGE}" and nbirth.seq == 0 and nbirth.timestamp > 0
        node = by_name(nbirth)
        assert node["bdSeq"].datatype == tahu.UInt64 and node["bdSeq"].long_value == 0
        assert node["Node Control/Rebirth"].datatype == tahu.Boolean
        assert node["Node Control/Rebirth"].boolean_value is False

        born_at, _, dbirth = await host.wait_for(lambda t, p: t == dbirth_topic("boiler-1"))
        assert dbirth.seq == 1
        metrics = by_name(dbirth)
        assert {name: m.datatype for name, m in metrics.items()} == BOILER_TYPES
        aliases = [m.alias for m in dbirth.metrics] + [node["Node Control/Rebirth"].alias]
        assert len(set(aliases)) == len(aliases), "aliases must be unique across the edge node"
        twin = gw.api.twin("default/boiler-1").properties
        assert metrics["label"].string_value == twin["label"].reported == "hall A"
        assert metrics["alarm"].boolean_value is False and metrics["enabled"].boolean_value is False
        assert metrics["setpoint"].double_value == twin["setpoint"].reported == 21.5
        assert metrics["mode"].long_value == twin["mode"].reported == 1
        assert 15 <= metrics["temperature"].float_value <= 25
        born_count = to_signed(metrics["count"].long_value, 64)
        assert -1000 <= born_count < -900, "negative Int64 values travel as two's complement"
        for m in dbirth.metrics:
            assert m.timestamp > 0 and m.HasField("alias")
        props = metrics["temperature"].properties
        temperature_props = dict(zip(props.keys, props.values, strict=True))
        assert temperature_props["engUnit"].string_value == "degC"
        assert temperature_props["engLow"].double_value == -40 and temperature_props["engHigh"].double_value == 125
        assert temperature_props["readOnly"].boolean_value is True
        setpoint_props = dict(zip(metrics["setpoint"].properties.keys, metrics["setpoint"].properties.values,
                                  strict=True))
        assert setpoint_props["readOnly"].boolean_value is False

        ddata_topic = f"spBv1.0/{GROUP}/DDATA/{EDGE}/boiler-1"
        after = born_at + 1
        counts = [born_count]
        names = {m.alias: m.name for m in dbirth.metrics}
        for _ in range(5):
            after, _, ddata = await host.wait_for(lambda t, p: t == ddata_topic, after=after)
            after += 1
            for m in ddata.metrics:
                assert not m.name and not m.HasField("datatype") and m.timestamp > 0
                assert names[m.alias] in ("temperature", "count"), "only changed metrics are sent"
            values = {names[m.alias]: m for m in ddata.metrics}
            if "count" in values:
                counts.append(to_signed(values["count"].long_value, 64))
        assert counts == list(range(counts[0], counts[0] + len(counts))), counts
        assert len(counts) >= 5
        check_seq(host.messages)


async def test_dcmd_sets_desired_values_and_bad_commands_are_logged(
        mosquitto: Mosquitto, write_config: Any, start_gateway: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with Host(mosquitto.port) as host:
        gw: Gateway = await start_gateway(write_config(config(mosquitto.port)))
        _, _, dbirth = await host.wait_for(lambda t, p: t == dbirth_topic("boiler-1"))
        aliases = {m.name: m.alias for m in dbirth.metrics}
        dcmd = f"spBv1.0/{GROUP}/DCMD/{EDGE}/boiler-1"
        twin = gw.api.twin("default/boiler-1").properties

        await host.publish(dcmd, command(("setpoint", tahu.Double, "double_value", 30.5),
                                         (aliases["mode"], tahu.Int64, "long_value", 3)))
        deadline = time.monotonic() + 10
        while twin["setpoint"].reported != 30.5 or twin["mode"].reported != 3:
            assert time.monotonic() < deadline, "the DCMD did not reach the device"
            await asyncio.sleep(0.05)
        assert twin["setpoint"].desired == 30.5 and twin["mode"].desired == 3
        audit = [(e["actor"], e["action"], e["target"]) for e in reversed(await gw.store.audit.recent(10_000))]
        assert ("sparkplug", "set-desired", "default/boiler-1/setpoint") in [tuple(row) for row in audit]
        setpoint_alias = aliases["setpoint"]
        await host.wait_for(lambda t, p: kind(t) == "DDATA" and any(
            m.alias == setpoint_alias and m.double_value == 30.5 for m in p.metrics))

        bad = [
            (dcmd, b"\xff\xff\xff\xff", "truncated varint"),
            (f"spBv1.0/{GROUP}/NCMD/{EDGE}", b"\x12\x09\x0a", "NCMD"),
            (dcmd, command(("setpoint", tahu.String, "string_value", "hot")), "String value cannot set"),
            (dcmd, command(("setpoint", tahu.Double, "double_value", 99.0)), "above the maximum"),
            (dcmd, command(("temperature", tahu.Float, "float_value", 1.0)), "ReadOnly"),
            (dcmd, command(("nothing", tahu.Float, "float_value", 1.0)), "'nothing' is not a metric"),
            (dcmd, command(("setpoint", tahu.Double, "float_value", 1.0)), "carries its value in double_value"),
            (f"spBv1.0/{GROUP}/DCMD/{EDGE}/ghost", command(("x", tahu.Float, "float_value", 1.0)), "no device"),
            (dcmd, command(("mode", tahu.Int64, "long_value", 2), ("enabled", tahu.Boolean, "boolean_value", 1),
                           ("mode", tahu.Int64, "long_value", 9)), "above the maximum"),
        ]
        for topic, payload, reason in bad:
            caplog.clear()
            await host.publish(topic, payload)
            deadline = time.monotonic() + 5
            while not any(reason in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records):
                assert time.monotonic() < deadline, f"no error logged for {reason!r}: {caplog.text}"
                await asyncio.sleep(0.02)
            record = next(r for r in caplog.records if reason in r.getMessage())
            assert topic in record.getMessage(), "the error names where the command came from"
        assert twin["setpoint"].desired == 30.5 and twin["mode"].desired == 3, "rejected commands set nothing"
        assert twin["enabled"].desired is None, "a command is applied whole or not at all"

        seen = len(host.messages)
        await host.wait_for(lambda t, p: kind(t) == "DDATA", after=seen)  # still publishing
        assert gw.supervisor.status["sparkplug default/scada"].restarts == 0
        (node,) = edge_nodes(gw.api)
        described = node.describe()
        assert described["connected"] and described["bd_seq"] == 0 and described["born_devices"] == 1
        assert described["rejected_commands"] == len(bad)
        assert described["published"]["NBIRTH"] == 1 and described["published"]["DDATA"] >= 1
        check_seq(host.messages)


async def test_rebirth_request_republishes_every_birth(mosquitto: Mosquitto, write_config: Any,
                                                       start_gateway: Any) -> None:
    async with Host(mosquitto.port) as host:
        await start_gateway(write_config(config(mosquitto.port)))
        await host.wait_for(lambda t, p: t == dbirth_topic("boiler-1"))
        _, _, first = await host.wait_for(lambda t, p: kind(t) == "NBIRTH")
        mark = len(host.messages)
        await host.wait_for(lambda t, p: kind(t) == "DDATA", after=mark)
        await host.publish(f"spBv1.0/{GROUP}/NCMD/{EDGE}",
                           command(("Node Control/Rebirth", tahu.Boolean, "boolean_value", True)))
        at, _, nbirth = await host.wait_for(lambda t, p: kind(t) == "NBIRTH", after=mark)
        assert nbirth.seq == 0
        assert by_name(nbirth)["bdSeq"].long_value == by_name(first)["bdSeq"].long_value, "same MQTT session"
        _, _, dbirth = await host.wait_for(lambda t, p: t == dbirth_topic("boiler-1"), after=at)
        assert dbirth.seq == 1 and set(by_name(dbirth)) == set(BOILER_TYPES)
        await host.wait_for(lambda t, p: kind(t) == "DDATA", after=at)
        # a rebirth asked for by alias, as hosts that use aliases send it
        alias = by_name(nbirth)["Node Control/Rebirth"].alias
        mark = len(host.messages)
        await host.publish(f"spBv1.0/{GROUP}/NCMD/{EDGE}", command((alias, tahu.Boolean, "boolean_value", True)))
        await host.wait_for(lambda t, p: kind(t) == "NBIRTH", after=mark)
        check_seq(host.messages)


async def test_bdseq_grows_with_every_connection_and_survives_restarts(
        mosquitto: Mosquitto, write_config: Any, start_gateway: Any, tmp_path: Path) -> None:
    path = write_config(config(mosquitto.port))
    data_dir = tmp_path / "data"

    def bd_seq(payload: tahu.Payload) -> int:
        return int(by_name(payload)["bdSeq"].long_value)

    async with Host(mosquitto.port) as host:
        gw = Gateway.from_path(path, data_dir, pm=get_plugin_manager())
        await gw.start()
        try:
            _, _, nbirth = await host.wait_for(lambda t, p: kind(t) == "NBIRTH")
            assert bd_seq(nbirth) == 0
            # Another client with the edge node's id takes the session over: the broker sends the will.
            mark = len(host.messages)
            async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier=CLIENT_ID, timeout=5):
                pass
            _, _, ndeath = await host.wait_for(lambda t, p: kind(t) == "NDEATH", after=mark)
            assert bd_seq(ndeath) == 0 and by_name(ndeath)["bdSeq"].datatype == tahu.UInt64
            # the reconnect: after a backoff of 0.5 s, a new bdSeq stored with fsync (seconds on a busy box)
            _, _, nbirth = await host.wait_for(lambda t, p: kind(t) == "NBIRTH", after=mark, timeout=30)
            assert bd_seq(nbirth) == 1 and nbirth.seq == 0
            await host.wait_for(lambda t, p: t == dbirth_topic("boiler-1"), after=mark)

            # The broker restarts on the same port: a new connection, a new bdSeq.
            mark = len(host.messages)
            mosquitto.stop()
            mosquitto.start()
            _, _, nbirth = await host.wait_for(lambda t, p: kind(t) == "NBIRTH", after=mark, timeout=30)
            assert bd_seq(nbirth) == 2
            await host.wait_for(lambda t, p: t == dbirth_topic("boiler-1"), after=mark)
            mark = len(host.messages)
        finally:
            await gw.stop()
        # A clean shutdown publishes the NDEATH itself (a DISCONNECT does not release the will).
        _, _, ndeath = await host.wait_for(lambda t, p: kind(t) == "NDEATH", after=mark)
        assert bd_seq(ndeath) == 2
        assert (data_dir / "sparkplug" / f"{GROUP}--{EDGE}.bdseq").read_text().strip() == "2"

        mark = len(host.messages)
        await start_gateway(path, data_dir)
        _, _, nbirth = await host.wait_for(lambda t, p: kind(t) == "NBIRTH", after=mark)
        assert bd_seq(nbirth) == 3, "bdSeq is kept in the data dir across restarts"
        for session_start in [i for i, (t, _) in enumerate(host.messages) if kind(t) == "NBIRTH"]:
            assert host.messages[session_start][1].seq == 0


async def test_devices_die_when_offline_or_removed_and_are_born_again(
        mosquitto: Mosquitto, write_config: Any, start_gateway: Any) -> None:
    model = msgspec.convert({"name": "meter", "properties": [{"name": "power", "type": "int"},
                                                             {"name": "energy", "type": "int"}]}, DeviceModel)
    unit = SimUnit.from_model(1, model, {"power": {"register": "HoldingRegister", "offset": 0, "type": "int16"},
                                         "energy": {"register": "HoldingRegister", "offset": 2, "type": "uint32"}},
                              animate=False)
    sim = ModbusSimulator([unit])
    port = await sim.start_tcp("127.0.0.1", 0)
    sim.set_value(1, "power", -5)
    sim.set_value(1, "energy", 3_000_000_000)
    meter = f"""\
---
kind: DeviceModel
name: meter
namespace: plant
properties:
  - {{name: power, type: int, unit: W}}
  - {{name: energy, type: int, unit: Wh}}
---
kind: Device
name: meter
namespace: plant
model: meter
protocol: {{name: modbus-tcp, config: {{host: 127.0.0.1, port: {port}, unit: 1, timeout: 0.3}}}}
timeout: 0.5s
properties:
  - {{name: power, collect_interval: 100ms, visitor: {{register: HoldingRegister, offset: 0, type: int16}}}}
  - {{name: energy, collect_interval: 100ms, visitor: {{register: HoldingRegister, offset: 2, type: uint32}}}}
"""
    try:
        async with Host(mosquitto.port) as host:
            gw: Gateway = await start_gateway(write_config(config(mosquitto.port, meter)))
            _, _, dbirth = await host.wait_for(lambda t, p: t == dbirth_topic("plant:meter"))
            metrics = by_name(dbirth)
            assert metrics["power"].datatype == tahu.Int16 and to_signed(metrics["power"].int_value, 16) == -5
            assert metrics["energy"].datatype == tahu.UInt32 and metrics["energy"].int_value == 3_000_000_000
            engunit = dict(zip(metrics["power"].properties.keys, metrics["power"].properties.values, strict=True))
            assert engunit["engUnit"].string_value == "W"

            mark = len(host.messages)
            await sim.stop()
            _, _, ddeath = await host.wait_for(lambda t, p: t == f"spBv1.0/{GROUP}/DDEATH/{EDGE}/plant:meter",
                                               after=mark)
            assert not ddeath.metrics and ddeath.timestamp > 0
            assert gw.api.twin("plant/meter").state == "offline"

            mark = len(host.messages)
            sim.set_value(1, "power", 7)
            await sim.start_tcp("127.0.0.1", port)
            _, _, dbirth = await host.wait_for(lambda t, p: t == dbirth_topic("plant:meter"), after=mark,
                                               timeout=15)
            assert by_name(dbirth)["power"].int_value == 7

            # A device added through the API is born; deleted, it dies.
            mark = len(host.messages)
            await gw.configuration.apply_documents(
                "kind: Device\nname: extra\nmodel: boiler\nprotocol: {name: virtual}\n"
                "properties:\n  - {name: label, visitor: {generator: constant, value: x}}\n", actor="test")
            _, _, dbirth = await host.wait_for(lambda t, p: t == dbirth_topic("extra"), after=mark)
            assert by_name(dbirth)["label"].string_value == "x"
            mark = len(host.messages)
            await gw.configuration.delete_resource("Device", "default", "extra", actor="test")
            await host.wait_for(lambda t, p: t == f"spBv1.0/{GROUP}/DDEATH/{EDGE}/extra", after=mark)
            check_seq(host.messages)
    finally:
        await sim.stop()


async def test_births_wait_for_the_primary_host(mosquitto: Mosquitto, write_config: Any, start_gateway: Any,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    text = config(mosquitto.port).replace("edge_node_id: gw-1}", "edge_node_id: gw-1, primary_host_id: scada-host}")
    state = "spBv1.0/STATE/scada-host"
    stamp = int(time.time() * 1000)

    def host_state(online: bool, offset: int) -> bytes:
        return json.dumps({"online": online, "timestamp": stamp + offset}).encode()

    async with Host(mosquitto.port) as host:
        await start_gateway(write_config(text))
        deadline = time.monotonic() + 5
        while "plant-1/gw-1: connected to" not in caplog.text:
            assert time.monotonic() < deadline, "the edge node did not connect"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        assert host.messages == [], "no births before the primary host is online"

        await host.publish(state, host_state(True, 0), retain=True)
        _, _, nbirth = await host.wait_for(lambda t, p: kind(t) == "NBIRTH")
        assert by_name(nbirth)["bdSeq"].long_value == 0
        await host.wait_for(lambda t, p: t == dbirth_topic("boiler-1"))

        caplog.clear()
        await host.publish(state, b"online!")
        mark = len(host.messages)
        await host.wait_for(lambda t, p: kind(t) == "DDATA", after=mark)
        assert f"ignored STATE on {state}: STATE is not JSON" in caplog.text
        caplog.clear()
        await host.publish(state, b'{"online": ' + b"[" * 3000 + b"]" * 3000 + b"}")
        mark = len(host.messages)
        await host.wait_for(lambda t, p: kind(t) == "DDATA", after=mark)
        assert not [r for r in caplog.records if r.exc_info], "refused as not JSON (logged once a minute), no error"

        mark = len(host.messages)
        await host.publish(state, host_state(False, 1), retain=True)
        _, _, ndeath = await host.wait_for(lambda t, p: kind(t) == "NDEATH", after=mark)
        assert by_name(ndeath)["bdSeq"].long_value == 0
        await asyncio.sleep(1.0)  # reconnected by now, and waiting again
        assert not [t for t, _ in host.messages[mark:] if kind(t) == "NBIRTH"]

        await host.publish(state, host_state(True, 2), retain=True)
        _, _, nbirth = await host.wait_for(lambda t, p: kind(t) == "NBIRTH", after=mark)
        assert by_name(nbirth)["bdSeq"].long_value == 1 and nbirth.seq == 0
        check_seq(host.messages)
        await host.publish(state, b"", retain=True)  # clear the retained STATE


def test_seq_wraps_from_255_to_0() -> None:
    session = Session(cast(aiomqtt.Client, None), bd_seq=0)
    assert [session.next_seq() for _ in range(257)][-3:] == [255, 0, 1]


async def test_a_publish_waiting_for_its_puback_ends_when_the_connection_is_lost() -> None:
    """A QoS 1 publish in flight when the broker hands the session to another client never gets its PUBACK: the node
    stops waiting as soon as its reader sees the connection end, not after the publish timeout."""
    session = Session(cast(aiomqtt.Client, None), 0)
    never_acknowledged = asyncio.Event()
    waiting = asyncio.ensure_future(_unless_lost(session, never_acknowledged.wait()))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    session.lost.set()
    started = time.monotonic()
    with pytest.raises(aiomqtt.MqttError, match="connection was lost"):
        await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - started < 1

    acknowledged = Session(cast(aiomqtt.Client, None), 1)  # a publish that completes returns normally
    await _unless_lost(acknowledged, asyncio.sleep(0))
    assert not acknowledged.lost.is_set()
