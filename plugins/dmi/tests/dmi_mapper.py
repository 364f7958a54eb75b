"""A KubeEdge mapper for the tests, written against the code grpcio-tools generates from KubeEdge's api.proto (no
fieldgate code): it registers with the gateway's DMI socket, serves DeviceMapperService on its own socket as
mapper-framework does (a device needs its model first), records every call, and reports twins and states."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
from google.protobuf import wrappers_pb2

WRAPPERS = {f"type.googleapis.com/google.protobuf.{name}": getattr(wrappers_pb2, name)
            for name in ("StringValue", "Int32Value", "Int64Value", "FloatValue", "BoolValue")}


def decode_any(value: Any) -> Any:
    """A customized value as mapper-framework's DecodeAnyValue reads it: one of the wrappers it knows."""
    return WRAPPERS[value.type_url].FromString(value.value).value


def customized(data: Any) -> dict[str, Any]:
    return {key: decode_any(value) for key, value in data.data.items()}


class Mapper:
    """One mapper process's worth of DMI: a server on `address` and a client of the gateway's socket."""

    def __init__(self, kubeedge: SimpleNamespace, gateway_socket: Path, address: Path, protocol: str = "modbus",
                 name: str = "test-mapper") -> None:
        self.pb = kubeedge.pb
        self.stubs = kubeedge.grpc
        self.gateway_socket = gateway_socket
        self.address = address
        self.protocol = protocol
        self.name = name
        self.models: dict[str, Any] = {}
        self.devices: dict[str, Any] = {}
        self.calls: list[tuple[str, Any]] = []
        self.server: grpc.aio.Server | None = None
        self.channel: grpc.aio.Channel | None = None

    # --- the mapper's own server ------------------------------------------------------------------------------

    async def serve(self) -> None:
        mapper = self

        class Servicer(self.stubs.DeviceMapperServiceServicer):  # type: ignore[misc, name-defined]
            async def RegisterDevice(self, request: Any, context: Any) -> Any:
                return await mapper.register_device(request, context)

            async def UpdateDevice(self, request: Any, context: Any) -> Any:
                return await mapper.update_device(request, context)

            async def RemoveDevice(self, request: Any, context: Any) -> Any:
                mapper.record("RemoveDevice", request)
                mapper.devices.pop(f"{request.deviceNamespace}/{request.deviceName}", None)
                return mapper.pb.RemoveDeviceResponse()

            async def CreateDeviceModel(self, request: Any, context: Any) -> Any:
                mapper.record("CreateDeviceModel", request)
                mapper.models[f"{request.model.namespace}/{request.model.name}"] = request.model
                return mapper.pb.CreateDeviceModelResponse(deviceModelName=request.model.name)

            async def UpdateDeviceModel(self, request: Any, context: Any) -> Any:
                mapper.record("UpdateDeviceModel", request)
                mapper.models[f"{request.model.namespace}/{request.model.name}"] = request.model
                return mapper.pb.UpdateDeviceModelResponse()

            async def RemoveDeviceModel(self, request: Any, context: Any) -> Any:
                mapper.record("RemoveDeviceModel", request)
                mapper.models.pop(f"{request.modelNamespace}/{request.modelName}", None)
                return mapper.pb.RemoveDeviceModelResponse()

        self.server = grpc.aio.server()
        self.stubs.add_DeviceMapperServiceServicer_to_server(Servicer(), self.server)
        self.server.add_insecure_port(f"unix:{self.address}")
        await self.server.start()

    def record(self, method: str, request: Any) -> None:
        self.calls.append((method, request))

    async def register_device(self, request: Any, context: Any) -> Any:
        self.record("RegisterDevice", request)
        device = request.device
        model = f"{device.namespace}/{device.spec.deviceModelReference}"
        if model not in self.models:  # as mapper-framework: a device needs its model
            await context.abort(grpc.StatusCode.UNKNOWN, f"deviceModel {model} not found")
        self.devices[f"{device.namespace}/{device.name}"] = device
        return self.pb.RegisterDeviceResponse(deviceName=device.name, deviceNamespace=device.namespace)

    async def update_device(self, request: Any, context: Any) -> Any:
        self.record("UpdateDevice", request)
        device = request.device
        self.devices[f"{device.namespace}/{device.name}"] = device
        return self.pb.UpdateDeviceResponse()

    def calls_of(self, method: str) -> list[Any]:
        return [request for name, request in self.calls if name == method]

    # --- the client of the gateway -------------------------------------------------------------------------------

    def manager(self) -> Any:
        if self.channel is None:
            self.channel = grpc.aio.insecure_channel(f"unix:{self.gateway_socket}")
        return self.stubs.DeviceManagerServiceStub(self.channel)

    async def register(self, with_data: bool = True) -> Any:
        info = self.pb.MapperInfo(name=self.name, version="v1.0.0", api_version="v1beta1", protocol=self.protocol,
                                  address=str(self.address).encode(), state="ok")
        response = await self.manager().MapperRegister(self.pb.MapperRegisterRequest(withData=with_data,
                                                                                     mapper=info), timeout=5)
        for model in response.modelList:
            self.models[f"{model.namespace}/{model.name}"] = model
        for device in response.deviceList:
            self.devices[f"{device.namespace}/{device.name}"] = device
        return response

    async def report(self, device: str, values: dict[str, str], namespace: str = "default") -> Any:
        """ReportDeviceStatus as mapper-framework's TwinData sends it: one twin per property."""
        now = str(int(time.time() * 1000))
        twins = [self.pb.Twin(propertyName=name,
                              observedDesired=self.pb.TwinProperty(value="", metadata={"type": "", "timestamp": now}),
                              reported=self.pb.TwinProperty(value=value, metadata={"type": "", "timestamp": now}))
                 for name, value in values.items()]
        request = self.pb.ReportDeviceStatusRequest(deviceName=device, deviceNamespace=namespace,
                                                    reportedDevice=self.pb.DeviceStatus(twins=twins))
        return await self.manager().ReportDeviceStatus(request, timeout=5)

    async def report_state(self, device: str, state: str, namespace: str = "default") -> Any:
        request = self.pb.ReportDeviceStatesRequest(deviceName=device, deviceNamespace=namespace, state=state)
        return await self.manager().ReportDeviceStates(request, timeout=5)

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
        if self.server is not None:
            await self.server.stop(0)
            self.server = None


async def wait_for_call(mapper: Mapper, method: str, count: int = 1, timeout: float = 10.0) -> list[Any]:
    """The mapper's calls of a method once there are `count` of them."""
    deadline = time.monotonic() + timeout
    while len(mapper.calls_of(method)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{method} called {len(mapper.calls_of(method))} times, expected {count}; calls: "
                                 f"{[name for name, _ in mapper.calls]}")
        await asyncio.sleep(0.02)
    return mapper.calls_of(method)
