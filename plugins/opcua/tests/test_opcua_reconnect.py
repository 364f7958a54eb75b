"""The node-opcua server restarted mid-run: the device goes offline and online, the gateway subscribes again and
values flow, and a desired value set during the outage is written when the server is back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from opcua_helpers import OpcuaServer, plant

from gateway.messages import DeviceStateChange, Report
from gateway.runtime import Gateway
from gateway.testing import wait_until


async def test_a_restarted_server_is_subscribed_again(opcua_server: Callable[..., OpcuaServer],
                                                      write_config: Callable[[str], Path],
                                                      start_gateway: Callable[..., Any]) -> None:
    server = opcua_server(tick=20)
    gw: Gateway = await start_gateway(write_config(plant(server.url, [
        ("temp", "double", "ReadOnly", '{node_id: "ns=1;s=Line1.Temp", sampling_interval: 100ms}'),
        ("setpoint", "double", "ReadWrite", '{node_id: "ns=1;s=Line1.Setpoint"}'),
    ])))
    device = "default/line-1"
    states: list[str] = []
    reports: list[Report] = []
    gw.api.subscribe("devices/+/+/state", lambda topic, change: states.append(change.state)
                     if isinstance(change, DeviceStateChange) else None)
    gw.api.subscribe("devices/+/+/telemetry", lambda topic, report: reports.append(report))
    twin = gw.api.twin(device)
    await wait_until(lambda: twin.state == "online" and len(reports) >= 3, timeout=20)

    server.stop()
    await wait_until(lambda: twin.state == "offline", timeout=15)
    assert twin.state_reason.startswith(f"lost the connection to {server.url}"), twin.state_reason
    assert twin.properties["temp"].quality == "bad"
    await gw.api.set_desired(device, "setpoint", 33.25)  # waits for the server

    server.start()  # the same port and certificate, a new process: nothing of the old session is left
    await wait_until(lambda: twin.state == "online", timeout=30)
    after = len(reports)
    await wait_until(lambda: len(reports) >= after + 3, timeout=15)  # subscribed again: changes keep coming
    temps = [r.values["temp"] for r in reports[after:] if "temp" in r.values]
    assert len(set(temps)) >= 2, temps
    await wait_until(lambda: twin.properties["setpoint"].reported == 33.25, timeout=15)
    assert twin.properties["temp"].quality == "good"
    assert states[-3:] == ["online", "offline", "online"], states
    stats = gw.api.poll_stats(device)
    assert stats is not None and stats.writes >= 1
