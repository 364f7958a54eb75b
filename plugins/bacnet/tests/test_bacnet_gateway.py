"""A gateway with bacnet-ip devices of another implementation (@bacnet-js/client) on loopback: values by COV and
by polling, a desired value written at priority 8, an unknown object shown with its reason."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bacnet_helpers import free_udp_port

from gateway.runtime import Gateway
from gateway.testing import wait_until


def config(device: Any, local_port: int) -> str:
    return f"""\
kind: Gateway
name: test-gw
eventbus: {{url: none}}
store: {{flush_interval: 50ms}}
---
kind: DeviceModel
name: room
protocol: bacnet-ip
properties:
  - {{name: humidity, type: double, unit: percent-relative-humidity}}
  - {{name: outdoor, type: double}}
  - {{name: setpoint, type: double, access: ReadWrite, minimum: 5, maximum: 35}}
  - {{name: fan, type: boolean, access: ReadWrite}}
  - {{name: mode, type: int, access: ReadWrite}}
  - {{name: missing, type: double}}
---
kind: Device
name: room-1
model: room
protocol:
  name: bacnet-ip
  config: {{address: "{device.address}", device_instance: {device.instance}, local_address: "127.0.0.1:{local_port}",
            timeout: 1.0, cov_lifetime: 60}}
properties:
  - {{name: humidity, collect_interval: 1h, visitor: {{object_type: analog-input, instance: 1}}}}
  - {{name: outdoor, collect_interval: 200ms, visitor: {{object_type: analog-input, instance: 2, cov: false}}}}
  - {{name: setpoint, collect_interval: 1h, visitor: {{object_type: analog-value, instance: 1, priority: 8}}}}
  - {{name: fan, visitor: {{object_type: binary-value, instance: 1}}}}
  - {{name: mode, visitor: {{object_type: multi-state-value, instance: 1}}}}
  - {{name: missing, visitor: {{object_type: analog-value, instance: 99}}}}
"""


async def test_values_by_cov_and_polling_and_a_write_at_priority_8(
        bacnet_device: Any, write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> None:
    device = await bacnet_device()
    gw: Gateway = await start_gateway(write_config(config(device, free_udp_port())))
    twin = gw.api.twin("default/room-1")
    await wait_until(lambda: twin.properties["humidity"].reported == 10.5, timeout=10)
    assert twin.properties["mode"].reported == 1 and twin.properties["fan"].reported is False
    await wait_until(lambda: twin.properties["missing"].quality != "unknown", timeout=10)  # read after the others
    missing = twin.properties["missing"]
    assert missing.quality == "bad" and missing.error == "analog-value,99 present-value: object: unknown-object"
    await wait_until(lambda: twin.state == "unhealthy", timeout=5)  # in the reads that hold the unknown object

    async def subscribed() -> bool:
        return any(s["object"] == "0:1" for s in (await device.dump())["subscriptions"])

    await wait_until(subscribed, timeout=10)
    # humidity is read once an hour: a new value within seconds came by COV
    await device.set_input("0:1", 61.5)
    await wait_until(lambda: twin.properties["humidity"].reported == 61.5, timeout=5)
    # outdoor has no subscription: polled every 200 ms
    await device.set_input("0:2", -3.5)
    await wait_until(lambda: twin.properties["outdoor"].reported == -3.5, timeout=5)
    assert not any(s["object"] == "0:2" for s in (await device.dump())["subscriptions"])
    assert gw.api.poll_stats("default/room-1").pushes >= 1

    await gw.api.set_desired("default/room-1", "setpoint", 24.5)
    await wait_until(lambda: twin.properties["setpoint"].reported == 24.5 and not twin.properties[
        "setpoint"].pending, timeout=10)
    state = (await device.dump())["objects"]["2:1"]
    assert state["priorityArray"][7] == 24.5  # priority 8, read back from the device itself
    assert state["presentValue"] == 24.5
    await gw.api.set_desired("default/room-1", "fan", True)
    await gw.api.set_desired("default/room-1", "mode", 3)
    await wait_until(lambda: twin.properties["mode"].reported == 3 and twin.properties["fan"].reported is True,
                     timeout=10)
    objects = (await device.dump())["objects"]
    assert objects["5:1"]["priorityArray"][15] == 1 and objects["19:1"]["priorityArray"][15] == 3


async def test_device_that_stops_answering_goes_offline_and_comes_back(
        bacnet_device: Any, write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> None:
    device, other = await bacnet_device(), await bacnet_device(instance=2000)
    text = config(device, free_udp_port()).replace("timeout: 1.0", "timeout: 0.3, retries: 0")
    text = text.replace("kind: Device\nname: room-1\n", "kind: Device\nname: room-1\ntimeout: 1s\n")
    # a second device behind the same endpoint, polled every 100 ms: the silent one must not hold it up
    second = text[text.index("kind: Device\n"):].replace("name: room-1", "name: room-2").replace(
        device.address, other.address).replace(f"device_instance: {device.instance}", "device_instance: 2000")
    second = second.replace("collect_interval: 200ms", "collect_interval: 100ms")
    gw: Gateway = await start_gateway(write_config(text + "---\n" + second))
    twin, twin2 = gw.api.twin("default/room-1"), gw.api.twin("default/room-2")
    # up: each of them read (their state goes between online and unhealthy, as the schedule read has the unknown
    # object or not)
    await wait_until(lambda: twin.properties["outdoor"].reported == twin2.properties["outdoor"].reported == 20.5,
                     timeout=10)
    await device.command(cmd="silent", on=True)
    await wait_until(lambda: twin.state == "offline", timeout=10)
    assert "no answer" in twin.state_reason
    cycles = gw.api.poll_stats("default/room-2").cycles
    for value in (1.5, 2.5, 3.5):
        await other.set_input("0:2", value)
        await wait_until(lambda v=value: twin2.properties["outdoor"].reported == v, timeout=5)
    assert gw.api.poll_stats("default/room-2").cycles > cycles and twin2.state != "offline"
    await device.command(cmd="silent", on=False)
    await wait_until(lambda: twin.state != "offline", timeout=20)
    await device.set_input("0:2", 7.5)
    await wait_until(lambda: twin.properties["outdoor"].reported == 7.5, timeout=5)
