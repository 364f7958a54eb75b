"""bacnet-ip against a device of another implementation (@bacnet-js/client) on loopback: reads, COV, writes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from bacnet_helpers import bind, gateway_config

from gateway.errors import DeviceTimeout, ProtocolError
from gateway.protocols.base import ReadResult
from gateway.testing import wait_until

VISITORS = {
    "setpoint": {"object_type": "analog-value", "instance": 1},
    "fan": {"object_type": "binary-value", "instance": 1},
    "mode": {"object_type": "multi-state-value", "instance": 1},
    "humidity": {"object_type": "analog-input", "instance": 1},
    "setpoint_units": {"object_type": "analog-value", "instance": 1, "property": "units"},
    "name": {"object_type": "analogValue", "instance": 1, "property": "object-name"},
    "states": {"object_type": "multi-state-value", "instance": 1, "property": "state-text", "index": 2},
}
TYPES = {"fan": "boolean", "mode": "int", "setpoint_units": "int", "name": "string", "states": "string"}


async def test_reads_values_with_read_property_multiple(bacnet_device: Any) -> None:
    device = await bacnet_device()
    protocol = bind(gateway_config(device, cov=False), VISITORS, TYPES)
    await protocol.open()
    try:
        result = await protocol.read(protocol.plan(list(protocol.device.properties.values())))
    finally:
        await protocol.close()
    assert result.errors == {}
    assert result.values == {"setpoint": 20.0, "fan": 0, "mode": 1, "humidity": 10.5, "setpoint_units": 62,
                             "name": "zone-setpoint", "states": "comfort"}
    stats = (await device.dump())["stats"]
    assert stats["rpm"] == 1 and stats["oversized"] == 0


async def test_read_property_when_the_device_has_no_read_property_multiple(bacnet_device: Any) -> None:
    device = await bacnet_device(rpm=False)
    protocol = bind(gateway_config(device, cov=False), VISITORS, TYPES)
    await protocol.open()
    try:
        result = await protocol.read(protocol.plan(list(protocol.device.properties.values())))
    finally:
        await protocol.close()
    assert result.errors == {}
    assert result.values["humidity"] == 10.5 and result.values["states"] == "comfort"
    stats = (await device.dump())["stats"]
    assert stats["rpm"] == 0 and stats["rp"] >= len(VISITORS)


async def test_answers_fit_a_device_that_cannot_segment(bacnet_device: Any) -> None:
    # 40 inputs of 3 properties each: far more than one 128-byte APDU holds
    device = await bacnet_device(inputs=40, maxApdu=128)
    visitors = {f"{prop}{i}": {"object_type": "analog-input", "instance": i, "property": prop}
                for i in range(1, 41) for prop in ("present-value", "status-flags", "units")}
    kinds = {name: "string" if name.startswith("status") else "double" for name in visitors}
    protocol = bind(gateway_config(device, cov=False), visitors, kinds)
    await protocol.open()
    try:
        plan = protocol.plan(list(protocol.device.properties.values()))
        result = await protocol.read(plan)
    finally:
        await protocol.close()
    assert result.errors == {}
    assert result.values["present-value40"] == 400.5
    assert result.values["status-flags7"] == "0000"
    dump = await device.dump()
    assert dump["stats"]["oversized"] == 0, dump["stats"]
    assert dump["stats"]["maxApdu"] <= 128
    assert dump["stats"]["rpm"] == len(plan.requests) > 1
    assert sum(dump["stats"]["rpmRefs"]) == 120


async def test_unknown_objects_and_properties_get_bad_quality_with_the_reason(bacnet_device: Any) -> None:
    device = await bacnet_device()
    visitors = {
        "good": {"object_type": "analog-input", "instance": 1},
        "no_object": {"object_type": "analog-value", "instance": 77},
        "no_property": {"object_type": "binary-value", "instance": 1, "property": "units"},
        "bad_index": {"object_type": "multi-state-value", "instance": 1, "property": "state-text", "index": 9},
    }
    protocol = bind(gateway_config(device, cov=False), visitors, {"no_property": "int", "bad_index": "string"})
    await protocol.open()
    try:
        multiple = await protocol.read(protocol.plan(list(protocol.device.properties.values())))
        single = await protocol.read(protocol.plan([protocol.device.properties["no_object"]]))
    finally:
        await protocol.close()
    assert multiple.values == {"good": 10.5}
    assert multiple.errors == {
        "no_object": "analog-value,77 present-value: object: unknown-object",
        "no_property": "binary-value,1 units: property: unknown-property",
        "bad_index": "multi-state-value,1 state-text[9]: property: invalid-array-index",
    }
    assert single.errors == {"no_object": "analog-value,77 present-value: object: unknown-object"}


async def test_write_with_priority_lands_in_the_priority_array(bacnet_device: Any) -> None:
    device = await bacnet_device()
    visitors = {
        "setpoint": {"object_type": "analog-value", "instance": 1, "priority": 8},
        "fan": {"object_type": "binary-value", "instance": 1},
        "mode": {"object_type": "multi-state-value", "instance": 1, "priority": 12},
    }
    protocol = bind(gateway_config(device, cov=False), visitors, {"fan": "boolean", "mode": "int"})
    await protocol.open()
    props = protocol.device.properties
    try:
        await protocol.write(props["setpoint"], 23.5)
        await protocol.write(props["fan"], True)
        await protocol.write(props["mode"], 3)
        back = await protocol.read(protocol.plan(list(props.values())))
        state = (await device.dump())["objects"]
        await protocol.relinquish(props["setpoint"])
        after = await protocol.read(protocol.plan([props["setpoint"]]))
    finally:
        await protocol.close()
    assert state["2:1"]["priorityArray"][7] == 23.5  # priority 8
    assert state["5:1"]["priorityArray"][15] == 1  # the default, 16
    assert state["19:1"]["priorityArray"][11] == 3
    assert back.values == {"setpoint": 23.5, "fan": 1, "mode": 3}
    assert after.values == {"setpoint": 20.0}  # relinquished: back to the relinquish-default
    assert (await device.dump())["objects"]["2:1"]["priorityArray"][7] is None


async def test_refused_writes_raise_with_the_devices_reason(bacnet_device: Any) -> None:
    device = await bacnet_device()
    visitors = {
        "humidity": {"object_type": "analog-input", "instance": 1},
        "mode": {"object_type": "multi-state-value", "instance": 1},
    }
    protocol = bind(gateway_config(device, cov=False), visitors, {"mode": "int"})
    await protocol.open()
    props = protocol.device.properties
    try:
        with pytest.raises(ProtocolError, match=r"analog-input,1 present-value.*property: write-access-denied"):
            await protocol.write(props["humidity"], 50.0)
        with pytest.raises(ProtocolError, match="value-out-of-range"):
            await protocol.write(props["mode"], 9)
        with pytest.raises(ProtocolError, match="1 or more"):
            await protocol.write(props["mode"], 0)
    finally:
        await protocol.close()


async def test_values_arrive_by_change_of_value(bacnet_device: Any) -> None:
    device = await bacnet_device()
    visitors = {"humidity": {"object_type": "analog-input", "instance": 2},
                "polled": {"object_type": "analog-input", "instance": 3, "cov": False}}
    protocol = bind(gateway_config(device, cov_lifetime=60), visitors)
    pushed: list[ReadResult] = []
    protocol.on_push(pushed.append)
    await protocol.open()
    try:
        first = await protocol.read(protocol.plan(list(protocol.device.properties.values())))
        assert first.values == {"humidity": 20.5, "polled": 30.5}
        await wait_until(lambda: pushed, timeout=5)  # the initial notification
        await device.set_input("0:2", 55.25)
        await wait_until(lambda: any(p.values.get("humidity") == 55.25 for p in pushed), timeout=5)
        dump = await device.dump()
        assert [(s["object"], s["lifetime"], s["confirmed"]) for s in dump["subscriptions"]] == [("0:2", 60, False)]
        reads = dump["stats"]["rp"] + dump["stats"]["rpm"]
        # while the subscription stands, its value is not asked for again
        again = await protocol.read(protocol.plan([protocol.device.properties["humidity"]]))
        assert again.values == {"humidity": 55.25}
        dump = await device.dump()
        assert dump["stats"]["rp"] + dump["stats"]["rpm"] == reads
    finally:
        await protocol.close()
    assert (await device.dump())["subscriptions"] == []  # cancelled on close
    assert all(set(p.values) == {"humidity"} for p in pushed)


async def test_confirmed_notifications_are_acknowledged(bacnet_device: Any) -> None:
    device = await bacnet_device()
    protocol = bind(gateway_config(device, cov_confirmed=True), {"h": {"object_type": "analog-input", "instance": 1}})
    pushed: list[ReadResult] = []
    protocol.on_push(pushed.append)
    await protocol.open()
    try:
        await protocol.read(protocol.plan(list(protocol.device.properties.values())))
        await device.set_input("0:1", 12.0)
        await wait_until(lambda: any(p.values.get("h") == 12.0 for p in pushed), timeout=5)
        assert (await device.dump())["subscriptions"][0]["confirmed"] is True
    finally:
        await protocol.close()


async def test_polls_where_the_device_offers_no_cov(bacnet_device: Any) -> None:
    device = await bacnet_device(cov=False)
    protocol = bind(gateway_config(device), {"h": {"object_type": "analog-input", "instance": 1}})
    await protocol.open()
    try:
        for value in (1.5, 2.5):
            await device.set_input("0:1", value)
            assert (await protocol.read(protocol.plan(list(protocol.device.properties.values())))).values == {
                "h": value}
    finally:
        await protocol.close()
    assert (await device.dump())["stats"]["cov"] == 0  # it said so in protocol-services-supported: never asked


async def test_a_silent_device_times_out_and_a_wrong_instance_is_named(bacnet_device: Any) -> None:
    device = await bacnet_device()
    visitors = {"h": {"object_type": "analog-input", "instance": 1}}
    wrong = bind({**gateway_config(device), "device_instance": 99}, visitors)
    with pytest.raises(ProtocolError, match=r"no device object device,99 there \(object: unknown-object\)"):
        await wrong.open()
    await wrong.close()
    protocol = bind(gateway_config(device, timeout=0.3, retries=0, cov=False),
                    {"h": {"object_type": "analog-input", "instance": 1}})
    await protocol.open()
    try:
        await device.command(cmd="silent", on=True)
        with pytest.raises(DeviceTimeout, match=r"no answer within 0\.3s"):
            await protocol.read(protocol.plan(list(protocol.device.properties.values())))
        await device.command(cmd="silent", on=False)
        result = await protocol.read(protocol.plan(list(protocol.device.properties.values())))
        assert result.values == {"h": 10.5}
    finally:
        await protocol.close()


async def test_devices_share_the_gateways_endpoint(bacnet_device: Any) -> None:
    first, second = await bacnet_device(instance=11), await bacnet_device(instance=22)
    config = gateway_config(first, cov=False)
    one = bind(config, {"h": {"object_type": "analog-input", "instance": 1}}, name="one")
    two = bind({**config, "address": second.address, "device_instance": 22},
               {"h": {"object_type": "analog-input", "instance": 2}}, name="two")
    clash = bind({**config, "local_instance": 7}, {"h": {"object_type": "analog-input", "instance": 1}}, name="x")
    await one.open()
    await two.open()
    try:
        assert one._endpoint is two._endpoint
        results = await asyncio.gather(one.read(one.plan(list(one.device.properties.values()))),
                                       two.read(two.plan(list(two.device.properties.values()))))
        assert [r.values for r in results] == [{"h": 10.5}, {"h": 20.5}]
        with pytest.raises(ProtocolError, match="disagree on local_instance"):
            await clash.open()
    finally:
        await one.close()
        await two.close()
    with pytest.raises(ProtocolError, match="cannot bind"):
        taken = bind({**config, "local_address": first.address}, {"h": {"object_type": "analog-input",
                                                                          "instance": 1}})
        await taken.open()
    await taken.close()


async def test_a_device_answering_wrong_types_spoils_only_those_properties(bacnet_device: Any) -> None:
    device = await bacnet_device()
    visitors = {f"h{i}": {"object_type": "analog-input", "instance": i} for i in range(1, 5)}
    protocol = bind(gateway_config(device, cov=False), visitors)
    await device.command(cmd="put", object="0:1", tag=7, value="not a number")  # a character string
    await device.command(cmd="put", object="0:2", tag=5, value=1e308)  # a double where a real belongs
    await device.command(cmd="put", object="0:3", tag=4, value=3.4e38)  # the largest real there is
    await protocol.open()
    try:
        together = await protocol.read(protocol.plan(list(protocol.device.properties.values())))
        alone = [await protocol.read(protocol.plan([p])) for p in protocol.device.properties.values()]
    finally:
        await protocol.close()
    expected_errors = {
        "h1": "analog-input,1 present-value: not a Real: real application tag expected, saw 7",
        "h2": "analog-input,2 present-value: not a Real: real application tag expected, saw 5",
    }
    assert together.errors == expected_errors
    assert together.values == {"h3": pytest.approx(3.4e38), "h4": 40.5}
    assert [r.errors for r in alone[:2]] == [{"h1": expected_errors["h1"]}, {"h2": expected_errors["h2"]}]
    assert [r.values for r in alone[2:]] == [{"h3": pytest.approx(3.4e38)}, {"h4": 40.5}]


async def test_subscriptions_are_renewed_at_half_their_lifetime(bacnet_device: Any) -> None:
    device = await bacnet_device()
    protocol = bind(gateway_config(device, cov_lifetime=40), {"h": {"object_type": "analog-input", "instance": 1}})
    await protocol.open()
    plan = protocol.plan(list(protocol.device.properties.values()))
    try:
        await protocol.read(plan)
        sub = protocol._subscriptions["analog-input,1"]
        loop = asyncio.get_running_loop()
        assert 19 < sub.renew_at - loop.time() <= 20 and 39 < sub.active_until - loop.time() <= 40
        await protocol.read(plan)
        assert (await device.dump())["stats"]["cov"] == 1  # not due yet
        sub.renew_at = loop.time() - 1  # as 20 s later
        await protocol.read(plan)
        dump = await device.dump()
        assert dump["stats"]["cov"] == 2
        assert [(s["object"], s["pid"]) for s in dump["subscriptions"]] == [("0:1", sub.process_id)]
        await device.command(cmd="silent", on=True)
        sub.renew_at = loop.time() - 1
        with pytest.raises(DeviceTimeout):  # an unanswered renewal: the subscription no longer stands
            await protocol.read(plan)
        assert sub.active_until == 0
    finally:
        await protocol.close()
