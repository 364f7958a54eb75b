"""The node's half of twins at the registry: reports coalesced and bounded in rate, kept until delivered, valid JSON
whatever the readings; desired values from the registry through the node's desired path, acknowledged with the
refusals, their version kept across restarts."""

from __future__ import annotations

from pathlib import Path
from typing import Any


async def test_the_node_coalesces_reports_keeps_undelivered_ones_and_applies_desired_values(
        start_gateway: Any, write_config: Any, tmp_path: Path) -> None:
    import asyncio

    import msgspec

    from gateway.uplink.twins import TwinSync
    from gateway.wire import MIN_REPORT_INTERVAL, DesiredValue, HeartbeatRequest

    gateway = await start_gateway(write_config("""\
        kind: Gateway
        name: gw-1
        eventbus: {url: none}
        ---
        kind: DeviceModel
        name: m
        properties:
          - {name: count, type: int, access: ReadOnly}
          - {name: sp, type: int, access: ReadWrite, maximum: 10}
          - {name: broken, type: float, access: ReadOnly}
        ---
        kind: Device
        name: d1
        model: m
        protocol: {name: virtual, config: {}}
        properties:
          - {name: count, collect_interval: 20ms, visitor: {generator: counter}}
          - {name: sp, collect_interval: 20ms, visitor: {generator: memory, initial: 1}}
          - {name: broken, collect_interval: 20ms, visitor: {generator: fault, value: nan}}
        """))
    state = tmp_path / "desired.json"
    sync = TwinSync(gateway.api, state)
    await asyncio.sleep(0.1)
    first = sync.outgoing()
    assert first["twins_complete"] and [t["device"] for t in first["twins"]] == ["default/d1"]
    # as the uplink sends it: a NaN reading is a bad reading, never reported: the heartbeat stays valid JSON
    decoded = msgspec.json.decode(msgspec.json.encode(first), type=HeartbeatRequest)
    assert decoded.twins is not None and decoded.twins[0].properties["broken"].reported is None
    sync.delivered()
    await asyncio.sleep(0.2)  # ten readings
    assert "twins" not in sync.outgoing()  # at most one report per MIN_REPORT_INTERVAL
    sync.delivered()
    await asyncio.sleep(MIN_REPORT_INTERVAL)
    body = sync.outgoing()
    [device] = body["twins"]
    assert not body["twins_complete"]
    assert device["properties"]["count"]["reported"] == gateway.devices.twins["default/d1"].properties["count"].reported
    sync.failed()  # not delivered: it goes with the next heartbeat, still at most one report per interval
    assert "twins" not in sync.outgoing()
    await asyncio.sleep(MIN_REPORT_INTERVAL)
    assert [t["device"] for t in sync.outgoing()["twins"]] == ["default/d1"]
    sync.delivered()

    await sync.apply_desired([DesiredValue(device="default/d1", property="sp", value=7, version=3),
                              DesiredValue(device="default/d1", property="sp", value=11, version=4),
                              DesiredValue(device="default/nope", property="x", value=1, version=4)])
    assert gateway.devices.twins["default/d1"].properties["sp"].desired == 7  # 11 is above the maximum
    body = sync.outgoing()
    assert body["desired_version"] == 4
    assert [(e["version"], e["device"]) for e in body["desired_ack"]["errors"]] == [(4, "default/d1"),
                                                                                   (4, "default/nope")]
    sync.delivered()
    assert "desired_ack" not in sync.outgoing()
    assert TwinSync(gateway.api, state).desired_version == 4  # survives a restart
    deadline = asyncio.get_running_loop().time() + 5
    while gateway.devices.twins["default/d1"].properties["sp"].reported != 7:
        assert asyncio.get_running_loop().time() < deadline, "the desired value was not written"
        await asyncio.sleep(0.05)


async def test_a_node_never_builds_a_heartbeat_over_the_registry_limit(
        start_gateway: Any, write_config: Any, tmp_path: Path) -> None:
    """Before, the twins of every changed device went into one heartbeat whatever their size: long values on many
    devices made it larger than the registry takes (413), again and again."""
    import asyncio

    import msgspec

    from gateway.uplink.twins import TwinSync
    from gateway.wire import MIN_REPORT_INTERVAL, TWINS_BUDGET, HeartbeatRequest

    props = [f"s{i}" for i in range(8)]
    model = "".join(f"\n  - {{name: {p}, type: string, max_length: 65536}}" for p in props)
    devices = "".join(
        f"---\nkind: Device\nname: d{n}\nmodel: m\nprotocol: {{name: virtual}}\nproperties:\n"
        + "".join(f"  - {{name: {p}, collect_interval: 1s, visitor: {{generator: constant, value: "
                  + ('&v "' + "x" * 60000 + '"' if i == 0 else "*v") + "}}\n" for i, p in enumerate(props))
        for n in range(12))
    gateway = await start_gateway(write_config(f"kind: Gateway\nname: gw-1\neventbus: {{url: none}}\n---\n"
                                               f"kind: DeviceModel\nname: m\nproperties:{model}\n{devices}"))
    twins = [gateway.api.twin(f"default/d{n}") for n in range(12)]
    deadline = asyncio.get_running_loop().time() + 10
    while not all(t.properties["s7"].reported for t in twins):
        assert asyncio.get_running_loop().time() < deadline, "the devices were not read"
        await asyncio.sleep(0.05)
    sync = TwinSync(gateway.api, tmp_path / "desired.json")
    everything = {f"default/d{n}" for n in range(12)}
    full: set[str] = set()
    for beat in range(2):  # 12 devices x 480 kB: two heartbeats, each within the budget
        body = sync.outgoing()
        assert len(msgspec.json.encode(body)) <= TWINS_BUDGET + (8 << 10)
        decoded = msgspec.json.decode(msgspec.json.encode(body), type=HeartbeatRequest)
        assert decoded.twins is not None and decoded.twins[0].properties["s0"].reported == "x" * 60000
        carried = {t.device for t in decoded.twins if t.properties}
        assert 0 < len(carried) < 12
        if beat == 0:  # the whole set, as the first report must be: the others by name and state
            assert body["twins_complete"] and {t.device for t in decoded.twins} == everything
        full |= carried
        sync.delivered()
        await asyncio.sleep(MIN_REPORT_INTERVAL)
    assert full == everything  # every device's properties went, none waits behind the others


def test_a_device_too_large_for_any_heartbeat_goes_without_its_long_values() -> None:
    from gateway.uplink.twins import fit_reports
    from gateway.wire import DeviceReport, PropertyReport

    def device(name: str, count: int, length: int) -> DeviceReport:
        return DeviceReport(device=f"default/{name}", state="online", properties={
            f"p{i}": PropertyReport(reported="y" * length, quality="good") for i in range(count)})

    [huge, *_] = fit_reports([device("huge", 10, 5000), device("next", 1, 10)], budget=8 << 10)
    assert huge["device"] == "default/huge" and huge["properties"]["p0"]["quality"] == "good"
    assert "reported" not in huge["properties"]["p0"]  # left out: null is the default, omitted
    assert huge["properties"]["p0"]["error"] == "reported value longer than 1024 characters: kept on the node"
    [many] = fit_reports([device("many", 2000, 10)], budget=8 << 10)
    assert 0 < len(many["properties"]) < 2000
    assert many["reason"].endswith("properties not reported: too many for a heartbeat)")
    assert len(fit_reports([device(f"d{i}", 1, 3000) for i in range(10)], budget=8 << 10)) == 2


async def test_a_devices_model_and_units_go_up_once_until_the_registry_may_have_lost_them(
        start_gateway: Any, write_config: Any, tmp_path: Path) -> None:
    import asyncio

    import msgspec

    from gateway.uplink.twins import TwinSync
    from gateway.wire import MIN_REPORT_INTERVAL, HeartbeatRequest

    gateway = await start_gateway(write_config("""\
        kind: Gateway
        name: gw-1
        eventbus: {url: none}
        ---
        kind: DeviceModel
        name: meter
        properties:
          - {name: power, type: float, access: ReadOnly, unit: kW}
          - {name: count, type: int, access: ReadOnly}
        ---
        kind: Device
        name: m1
        model: meter
        protocol: {name: virtual, config: {}}
        properties:
          - {name: power, collect_interval: 20ms, visitor: {generator: constant, value: 2.5}}
          - {name: count, collect_interval: 20ms, visitor: {generator: counter}}
        """))
    sync = TwinSync(gateway.api, tmp_path / "desired.json")
    await asyncio.sleep(0.1)
    first = sync.outgoing()
    assert first["described"] == [{"device": "default/m1", "model": "meter", "units": {"power": "kW"}}]
    assert msgspec.json.decode(msgspec.json.encode(first), type=HeartbeatRequest).described is not None
    sync.failed()  # not taken: described again with the next report
    await asyncio.sleep(MIN_REPORT_INTERVAL)
    assert sync.outgoing()["described"][0]["model"] == "meter"
    sync.delivered()
    await asyncio.sleep(MIN_REPORT_INTERVAL)
    later = sync.outgoing()
    assert later["twins"] and "described" not in later  # the values changed, the description did not
    sync.delivered()
    sync.complete = True  # the registry may have forgotten the node's devices (a resync): describe them again
    await asyncio.sleep(MIN_REPORT_INTERVAL)
    assert sync.outgoing()["described"][0]["units"] == {"power": "kW"}
