"""End to end against a mapper made from KubeEdge's api.proto: it registers and gets its devices, its twins show in
the REST API, documents applied and removed reach it, a desired value reaches it as edgecore sends one, and
malformed reports are refused while the server goes on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import httpx
import pytest
from dmi_mapper import Mapper, customized, wait_for_call

from gateway.runtime import Gateway
from gateway.testing import free_port, wait_until
from gateway.web.auth import create_token

MODEL = """\
kind: DeviceModel
name: thermo
properties:
  - {name: temperature, type: float, unit: degC, minimum: -40, maximum: 125, description: boiler water}
  - {name: setpoint, type: float, access: ReadWrite, unit: degC, minimum: 0, maximum: 90}
  - {name: running, type: boolean, access: ReadWrite}
"""


def device(name: str, offset: int = 0, desired: str = "") -> str:
    return f"""\
kind: Device
name: {name}
model: thermo
timeout: 2s
protocol:
  name: dmi
  config: {{mapper: modbus, config_data: {{ip: 10.0.0.5, port: 5502, slaveID: 1, communicateMode: TCP}}}}
properties:
  - name: temperature
    collect_interval: 100ms
    report_interval: 1s
    visitor: {{config_data: {{register: HoldingRegister, offset: {offset}, limit: 1, scale: 0.1, isSwap: false}}}}
  - name: setpoint{desired}
    collect_interval: 100ms
    visitor: {{config_data: {{register: HoldingRegister, offset: 10, limit: 1}}}}
  - name: running
    collect_interval: 100ms
    visitor: {{config_data: {{register: CoilRegister, offset: 0}}}}
"""


class Node(SimpleNamespace):
    gateway: Gateway
    api: httpx.AsyncClient
    socket: Path
    mapper: Mapper


@pytest.fixture
async def node(kubeedge: SimpleNamespace, short_dir: Path, write_config: Callable[..., Path],
               start_gateway: Callable[..., Any]) -> AsyncIterator[Node]:
    port = free_port()
    socket = short_dir / "dmi.sock"
    config = write_config(f"""\
kind: Gateway
name: edge-1
http: {{listen: "127.0.0.1:{port}"}}
eventbus: {{url: none}}
store: {{flush_interval: 50ms}}
---
kind: Endpoint
name: dmi
type: dmi
properties: {{socket: {socket}, call_timeout: 5s}}
---
{MODEL}---
{device("boiler-1", desired=chr(10) + "    desired: 21.5")}""")
    gateway: Gateway = await start_gateway(config, serve_http=True)
    await wait_until(socket.exists, timeout=10)
    mapper = Mapper(kubeedge, socket, short_dir / "modbus.sock")
    await mapper.serve()
    token = await create_token(gateway.store, "admin")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10,
                                 headers={"Authorization": f"Bearer {token}"}) as api:
        yield Node(gateway=gateway, api=api, socket=socket, mapper=mapper)
    await mapper.stop()


async def twin(node: Node, name: str = "boiler-1") -> dict[str, Any]:
    response = await node.api.get(f"/api/v1/devices/default/{name}")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_a_mapper_registers_and_gets_its_devices_and_models(node: Node) -> None:
    response = await node.mapper.register()
    (model,) = response.modelList
    assert (model.name, model.namespace) == ("thermo", "default")
    assert [(p.name, p.type, p.accessMode, p.minimum, p.maximum, p.unit) for p in model.spec.properties] == [
        ("temperature", "FLOAT", "ReadOnly", "-40", "125", "degC"),
        ("setpoint", "FLOAT", "ReadWrite", "0", "90", "degC"),
        ("running", "BOOLEAN", "ReadWrite", "", "", "")]
    (boiler,) = response.deviceList
    assert (boiler.name, boiler.namespace, boiler.spec.deviceModelReference) == ("boiler-1", "default", "thermo")
    assert boiler.spec.protocol.protocolName == "modbus"
    assert customized(boiler.spec.protocol.configData) == {"ip": "10.0.0.5", "port": 5502, "slaveID": 1,
                                                           "communicateMode": "TCP"}
    temperature, setpoint, running = boiler.spec.properties
    assert (temperature.name, temperature.collectCycle, temperature.reportCycle, temperature.reportToCloud) == (
        "temperature", 100, 1000, True)
    assert temperature.visitors.protocolName == "modbus"
    assert customized(temperature.visitors.configData) == {"register": "HoldingRegister", "offset": 0, "limit": 1,
                                                           "scale": pytest.approx(0.1), "isSwap": False}
    # edgecore's conversion always gives a desired value (empty when none) and visitors: mappers read both blindly
    assert temperature.HasField("desired") and temperature.desired.value == ""
    assert setpoint.desired.value == "21.5" and setpoint.desired.metadata["type"] == "float"
    assert running.HasField("desired") and customized(running.visitors.configData) == {"register": "CoilRegister",
                                                                                         "offset": 0}
    assert boiler.status.reportToCloud and boiler.status.reportCycle == 5000


async def test_reported_twins_show_in_the_rest_api(node: Node) -> None:
    await node.mapper.register()
    assert (await twin(node))["state"] == "unknown"  # registered, nothing reported yet
    await node.mapper.report("boiler-1", {"temperature": "23.5", "running": "true"})

    async def reported() -> dict[str, Any] | None:
        detail = await twin(node)
        return detail if detail["twin"]["temperature"]["reported"] == 23.5 else None

    detail = await wait_until(reported, timeout=10)
    assert detail["twin"]["temperature"]["quality"] == "good"
    assert detail["twin"]["running"]["reported"] is True
    assert detail["state"] == "online"

    async def in_history() -> bool:
        points = (await node.api.get("/api/v1/devices/default/boiler-1/history/temperature")).json()
        return bool(points) and {value for _, value in points} == {23.5}

    await wait_until(in_history, timeout=10)

    await node.mapper.report_state("boiler-1", "unhealthy")
    detail = await wait_until(lambda: node.gateway.api.twin("default/boiler-1").state == "unhealthy", timeout=10)
    assert detail
    assert "unhealthy" in (await twin(node))["state_reason"]
    await node.mapper.report_state("boiler-1", "disconnected")
    await wait_until(lambda: node.gateway.api.twin("default/boiler-1").state == "offline", timeout=10)
    assert "the mapper reports the device disconnected" in (await twin(node))["state_reason"]


async def test_documents_applied_and_removed_reach_the_mapper(node: Node) -> None:
    await node.mapper.register()
    resources = node.gateway.api.resources
    tank = MODEL.replace("name: thermo", "name: tank")
    await resources.apply_documents(tank + "---\n" + device("tank-1", offset=4).replace("model: thermo", "model: tank"),
                                    actor="test")
    (registered,) = await wait_for_call(node.mapper, "RegisterDevice")
    assert registered.device.name == "tank-1"
    assert customized(registered.device.spec.properties[0].visitors.configData)["offset"] == 4
    assert [name for name, _ in node.mapper.calls] == ["CreateDeviceModel", "RegisterDevice"]  # the model first

    await resources.apply_documents(device("tank-1", offset=6).replace("model: thermo", "model: tank"), actor="test")
    (updated,) = await wait_for_call(node.mapper, "UpdateDevice")
    assert updated.device.name == "tank-1"
    assert customized(updated.device.spec.properties[0].visitors.configData)["offset"] == 6

    await resources.apply_documents(tank.replace("unit: degC, minimum: -40", "unit: K, minimum: -40"), actor="test")
    (model,) = await wait_for_call(node.mapper, "UpdateDeviceModel")
    assert model.model.name == "tank" and model.model.spec.properties[0].unit == "K"

    await resources.delete_resource("Device", "default", "tank-1", actor="test")
    (removed,) = await wait_for_call(node.mapper, "RemoveDevice")
    assert (removed.deviceName, removed.deviceNamespace) == ("tank-1", "default")
    (unused,) = await wait_for_call(node.mapper, "RemoveDeviceModel")  # no device of the mapper uses it now
    assert (unused.modelName, unused.modelNamespace) == ("tank", "default")
    assert set(node.mapper.devices) == {"default/boiler-1"} and set(node.mapper.models) == {"default/thermo"}


async def test_a_desired_value_reaches_the_mapper_as_edgecore_sends_it(node: Node) -> None:
    """edgecore delivers desired values in the device: an UpdateDevice whose property carries `desired.value`."""
    await node.mapper.register()
    await node.mapper.report("boiler-1", {"temperature": "20", "setpoint": "21.5"})
    await wait_until(lambda: node.gateway.api.twin("default/boiler-1").state == "online", timeout=10)
    response = await node.api.put("/api/v1/devices/default/boiler-1/twin/setpoint", json={"desired": 30})
    assert response.status_code == 200, response.text
    (update,) = await wait_for_call(node.mapper, "UpdateDevice")
    setpoint = {p.name: p for p in update.device.spec.properties}["setpoint"]
    assert setpoint.desired.value == "30.0"
    assert setpoint.desired.metadata["type"] == "float" and setpoint.desired.metadata["timestamp"]
    await node.mapper.report("boiler-1", {"setpoint": "30"})

    async def confirmed() -> bool:
        prop = (await twin(node))["twin"]["setpoint"]
        return bool(prop["desired"] == 30 and prop["reported"] == 30)

    await wait_until(confirmed, timeout=10)
    assert len(node.mapper.calls_of("UpdateDevice")) == 1  # what the mapper holds is not sent again


async def test_malformed_reports_are_refused_and_the_server_goes_on(node: Node) -> None:
    await node.mapper.register()
    refusals = {
        "unknown device": (node.mapper.report("no-such-boiler", {"temperature": "1"}), grpc.StatusCode.NOT_FOUND),
        "wrong type": (node.mapper.report("boiler-1", {"temperature": "hot", "setpoint": "1"}),
                       grpc.StatusCode.INVALID_ARGUMENT),
        "unknown property": (node.mapper.report("boiler-1", {"pressure": "1"}), grpc.StatusCode.INVALID_ARGUMENT),
        "no twins": (node.mapper.report("boiler-1", {}), grpc.StatusCode.INVALID_ARGUMENT),
        "oversized": (node.mapper.report("boiler-1", {"temperature": "9" * (2 << 20)}),
                      grpc.StatusCode.RESOURCE_EXHAUSTED),
        "empty state": (node.mapper.report_state("boiler-1", ""), grpc.StatusCode.INVALID_ARGUMENT),
    }
    for what, (call, code) in refusals.items():
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == code, what
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await node.mapper.report("boiler-1", {"temperature": "hot"})
    assert "temperature: expected a number, got 'hot'" in str(refused.value.details())
    bad_register = node.mapper.pb.MapperRegisterRequest(mapper=node.mapper.pb.MapperInfo(protocol="", address=b"x"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await node.mapper.manager().MapperRegister(bad_register, timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    node.mapper.manager()
    garbage = node.mapper.channel.unary_unary("/v1beta1.DeviceManagerService/ReportDeviceStatus")  # bytes as they are
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await garbage(b"\x0a\xff\xff\xff\xff\x0f", timeout=5)  # not a ReportDeviceStatusRequest
    assert refused.value.code() != grpc.StatusCode.OK

    assert (await twin(node))["twin"]["setpoint"]["reported"] is None  # the refused report kept nothing
    await node.mapper.report("boiler-1", {"temperature": "19.5"})
    await wait_until(lambda: node.gateway.api.twin("default/boiler-1").properties["temperature"].reported == 19.5,
                     timeout=10)
    assert node.gateway.api.tasks()["dmi server"].state == "running"
