"""Devices and their twins: GET /api/v1/devices, GET/PUT of one device's twin, history of a property."""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, put
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from gateway.api import GatewayAPI
from gateway.errors import NotFound
from gateway.pipeline.poller import PollStats
from gateway.pipeline.twin import TwinProperty
from gateway.web.security import BODY_VALUE, requires

LabelFilter = Annotated[str, msgspec.Meta(pattern=r"^[^=]+=", description="k=v: the label k has the value v")]


class DesiredValue(msgspec.Struct, forbid_unknown_fields=True):
    desired: Any


class TwinValue(msgspec.Struct):
    desired: Any
    reported: Any
    reported_at: str | None
    quality: str
    error: str | None = None


class DeviceSummary(msgspec.Struct):
    id: str
    namespace: str
    name: str
    model: str | None
    profile: str | None
    protocol: str
    labels: dict[str, str]
    state: str
    state_reason: str


class DeviceDetail(DeviceSummary):
    state_since: str
    twin: dict[str, TwinValue]
    stats: dict[str, Any]


class HistoryPoint(msgspec.Struct, array_like=True):
    ts: float
    value: Any


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def twin_value(prop: TwinProperty) -> TwinValue:
    return TwinValue(prop.desired, prop.reported, iso(prop.reported_at), prop.quality, prop.error)


def summary(gateway: GatewayAPI, device_id: str) -> DeviceSummary:
    device = gateway.device(device_id)
    twin = gateway.twin(device_id)
    return DeviceSummary(device_id, device.namespace, device.name, device.model, device.profile,
                         device.protocol.name, device.labels, twin.state, twin.state_reason)


class DeviceController(Controller):
    path = "/api/v1/devices"
    tags = ["devices"]

    @get("/", guards=[requires("viewer")], summary="List devices")
    async def list_devices(
        self, request: Request[Any, Any, Any],
        label: Annotated[list[LabelFilter] | None, QueryParameter(description="k=v; repeat for several")] = None,
        device_state: Annotated[str | None, QueryParameter(name="state")] = None,
        model: FromQuery[str | None] = None,
        q: Annotated[str | None, QueryParameter(description="part of the device id")] = None,
    ) -> list[DeviceSummary]:
        gateway: GatewayAPI = request.app.state.gateway
        wanted = dict(item.partition("=")[::2] for item in label or [])
        result = []
        for device_id in sorted(gateway.devices()):
            item = summary(gateway, device_id)
            if (device_state and item.state != device_state) or (model and item.model != model):
                continue
            if q and q.lower() not in device_id.lower():
                continue
            if any(item.labels.get(k) != v for k, v in wanted.items()):
                continue
            result.append(item)
        return result

    @get("/{namespace:str}/{name:str}", guards=[requires("viewer")], summary="One device with its twin")
    async def get_device(self, request: Request[Any, Any, Any], namespace: FromPath[str], name: FromPath[str]
                         ) -> DeviceDetail:
        gateway: GatewayAPI = request.app.state.gateway
        device_id = f"{namespace}/{name}"
        base = summary(gateway, device_id)
        twin = gateway.twin(device_id)
        stats = gateway.poll_stats(device_id) or PollStats()
        return DeviceDetail(
            **msgspec.structs.asdict(base),
            state_since=iso(twin.state_since) or "",
            twin={p: twin_value(v) for p, v in twin.properties.items()},
            stats={"cycles": stats.cycles, "read_errors": stats.read_errors, "writes": stats.writes,
                   "write_errors": stats.write_errors, "missed_cycles": stats.missed},
        )

    @put("/{namespace:str}/{name:str}/twin/{prop:str}", guards=[requires("operator")],
         summary="Set the desired value of a property", request_max_body_size=BODY_VALUE)
    async def set_desired(self, request: Request[Any, Any, Any], namespace: FromPath[str], name: FromPath[str],
                          prop: FromPath[str], data: JSONBody[DesiredValue]) -> TwinValue:
        gateway: GatewayAPI = request.app.state.gateway
        client = request.client.host if request.client else ""
        twin_prop = await gateway.set_desired(f"{namespace}/{name}", prop, data.desired,
                                              actor=request.user.name, address=client)
        return twin_value(twin_prop)

    @get("/{namespace:str}/{name:str}/history/{prop:str}", guards=[requires("viewer")],
         summary="Reported values of a property over a window")
    async def history(self, request: Request[Any, Any, Any], namespace: FromPath[str], name: FromPath[str],
                      prop: FromPath[str],
                      window: Annotated[float, QueryParameter(gt=0, le=366 * 86400, description="seconds")] = 3600,
                      limit: Annotated[int, QueryParameter(gt=0, le=100_000)] = 10_000) -> list[HistoryPoint]:
        gateway: GatewayAPI = request.app.state.gateway
        device_id = f"{namespace}/{name}"
        if prop not in gateway.twin(device_id).properties:
            raise NotFound(f"device {device_id} has no property {prop!r}")
        now = time.time()
        rows = await gateway.store.history.values(device_id, prop, now - window, now, limit)
        return [HistoryPoint(ts, value) for ts, value in rows]
