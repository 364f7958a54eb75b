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

    from gateway.uplink.twins import MIN_REPORT_INTERVAL, TwinSync
    from gateway.wire import DesiredValue, HeartbeatRequest

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
          - {name: broken, collect_interval: 20ms, visitor: {generator: constant, value: .nan}}
        """))
    state = tmp_path / "desired.json"
    sync = TwinSync(gateway.api, state)
    await asyncio.sleep(0.1)
    first = sync.outgoing()
    assert first["twins_complete"] and [t["device"] for t in first["twins"]] == ["default/d1"]
    # as the uplink sends it: a NaN reading goes as null, the heartbeat stays valid JSON for the registry
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
