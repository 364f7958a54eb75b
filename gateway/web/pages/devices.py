"""The device list (filters, search), the device page (live twin by SSE, setpoints, history plots)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Response, get, post
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import Redirect, ServerSentEvent, ServerSentEventMessage, Template

from gateway.api import GatewayAPI
from gateway.errors import NotFound, ValueRejected
from gateway.messages import DeviceStateChange, state_topic, telemetry_topic
from gateway.pipeline.twin import Twin
from gateway.protocols.base import BoundDevice
from gateway.web.monitor import recent_errors, state_history
from gateway.web.pages.common import AnyRequest, actor, flash, gateway_of, principal, render, wants_json
from gateway.web.security import BODY_FORM_VALUE, requires
from gateway.webkit.pages import form_fields, see_other

viewer = [requires("viewer")]
PAGE_SIZE = 100
PLOT_WINDOWS = {"15m": 900, "1h": 3600, "24h": 86400}
SSE_QUEUE = 64
KEEPALIVE = 15.0


def _bound(gateway: GatewayAPI, namespace: str, name: str) -> BoundDevice:
    bound = gateway.config.devices.get(f"{namespace}/{name}")
    if bound is None:
        raise NotFound(f"no device {namespace}/{name}")
    return bound


def twin_snapshot(twin: Twin) -> dict[str, Any]:
    return {
        "state": twin.state,
        "reason": twin.state_reason,
        "twin": {name: {"desired": p.desired, "reported": p.reported, "reported_at": p.reported_at,
                        "quality": p.quality, "error": p.error, "in_sync": p.in_sync()}
                 for name, p in twin.properties.items()},
    }


@get("/devices", guards=viewer, summary="Devices: filter by label, state and model; search", include_in_schema=False)
async def device_list(
    request: AnyRequest,
    label: FromQuery[str] = "",
    device_state: Annotated[str, QueryParameter(name="state")] = "",
    model: FromQuery[str] = "",
    q: FromQuery[str] = "",
    page: Annotated[int, QueryParameter(ge=1)] = 1,
) -> Template:
    gateway = gateway_of(request)
    key, _, value = label.partition("=")
    label_keys: dict[str, set[str]] = {}
    models: set[str] = set()
    matches = []
    for device_id in sorted(gateway.config.devices):
        bound = gateway.config.devices[device_id]
        device = bound.resource
        twin = gateway.twins().get(device_id)
        if twin is None:  # being restarted with a new configuration this very moment
            continue
        for k, v in device.labels.items():
            label_keys.setdefault(k, set()).add(v)
        if device.model:
            models.add(device.model)
        if device_state and twin.state != device_state:
            continue
        if model and device.model != model:
            continue
        if label and device.labels.get(key.strip()) != value.strip():
            continue
        if q and q.lower() not in device_id.lower() and q.lower() not in device.description.lower():
            continue
        matches.append((device_id, device, twin))
    pages = max((len(matches) + PAGE_SIZE - 1) // PAGE_SIZE, 1)
    page = min(page, pages)
    shown = matches[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    label_options = sorted(f"{k}={v}" for k, values in label_keys.items() for v in values)
    return render(request, "devices.html", devices=shown, total=len(matches), all_total=len(gateway.config.devices),
                  page=page, pages=pages, label=label, state=device_state, model=model, q=q,
                  label_options=label_options, model_options=sorted(models),
                  state_options=("online", "unhealthy", "offline", "unknown"))


@get("/devices/{namespace:str}/{name:str}", guards=viewer, summary="One device: live twin, setpoints, history",
     include_in_schema=False)
async def device_page(request: AnyRequest, namespace: FromPath[str], name: FromPath[str]) -> Template:
    gateway = gateway_of(request)
    bound = _bound(gateway, namespace, name)
    device_id = bound.id
    twin = gateway.twin(device_id)
    stats = gateway.poll_stats(device_id)
    return render(
        request, "device.html",
        device=bound.resource, device_id=device_id, bound=bound, twin=twin,
        can_write=principal(request).can("operator"), can_edit=principal(request).can("admin"),
        stats=stats, windows=list(PLOT_WINDOWS),
        state_changes=state_history(gateway).of(device_id),
        errors=recent_errors().mentioning(device_id),
    )


@get("/devices/{namespace:str}/{name:str}/events", guards=viewer, summary="Live twin of one device (SSE)",
     include_in_schema=False)
async def device_events(request: AnyRequest, namespace: FromPath[str], name: FromPath[str]) -> ServerSentEvent:
    gateway = gateway_of(request)
    device_id = _bound(gateway, namespace, name).id
    gateway.twin(device_id)
    queue: asyncio.Queue[Any] = asyncio.Queue(SSE_QUEUE)

    def deliver(topic: str, message: Any) -> None:
        if queue.full():  # a slow browser loses the oldest updates, never slows the bus
            queue.get_nowait()
        queue.put_nowait(message)

    async def events() -> AsyncIterator[ServerSentEventMessage]:
        subscriptions = [gateway.subscribe(telemetry_topic(device_id), deliver),
                         gateway.subscribe(state_topic(device_id), deliver)]
        def snapshot() -> str | None:
            twin = gateway.twins().get(device_id)  # looked up each time: editing the device gives it a new twin
            return None if twin is None else msgspec.json.encode(twin_snapshot(twin)).decode()

        try:
            yield ServerSentEventMessage(event="twin", data=snapshot(), retry=3000)
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE):
                        message = await queue.get()
                except TimeoutError:
                    if device_id not in gateway.twins():
                        return
                    yield ServerSentEventMessage(comment="keepalive", data=None)
                    continue
                while not queue.empty():  # one snapshot covers everything queued meanwhile
                    message = queue.get_nowait()
                data = snapshot()
                if data is None:  # the device was deleted
                    return
                event = "state" if isinstance(message, DeviceStateChange) else "twin"
                yield ServerSentEventMessage(event=event, data=data)
        finally:
            for sub_id in subscriptions:
                gateway.unsubscribe(sub_id)

    return ServerSentEvent(events(), headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@get("/devices/{namespace:str}/{name:str}/plot/{prop:str}", guards=viewer,
     summary="History of a property for the plot: [time, min, max, mean] per bucket", include_in_schema=False)
async def device_plot(request: AnyRequest, namespace: FromPath[str], name: FromPath[str], prop: FromPath[str],
                      window: FromQuery[str] = "15m") -> dict[str, Any]:
    gateway = gateway_of(request)
    bound = _bound(gateway, namespace, name)
    if prop not in bound.properties:
        raise NotFound(f"device {bound.id} has no property {prop!r}")
    seconds = PLOT_WINDOWS.get(window)
    if seconds is None:
        raise ValueRejected(f"window: one of {', '.join(PLOT_WINDOWS)}")
    now = time.time()
    points = await gateway.store.history.buckets(bound.id, prop, now - seconds, now)
    return {"property": prop, "unit": bound.properties[prop].model.unit, "since": now - seconds, "until": now,
            "points": points}


@post("/devices/{namespace:str}/{name:str}/desired", guards=[requires("operator")],
      summary="Set the desired value of a property (form)", include_in_schema=False, status_code=303,
      request_max_body_size=BODY_FORM_VALUE)
async def set_desired(request: AnyRequest, namespace: FromPath[str], name: FromPath[str]) -> Response[Any] | Redirect:
    gateway = gateway_of(request)
    bound = _bound(gateway, namespace, name)
    fields = await form_fields(request)
    prop = fields.get("property", "")
    raw = fields.get("value", "")
    who, address = actor(request)
    try:
        twin_prop = await gateway.set_desired(bound.id, prop, raw, actor=who, address=address)
    except (ValueRejected, NotFound) as exc:
        if wants_json(request):
            return Response({"ok": False, "error": str(exc)}, status_code=400 if isinstance(exc, ValueRejected)
                            else 404)
        flash(request, "error", f"{prop}: {exc}")
        return see_other(f"/devices/{namespace}/{name}")
    if wants_json(request):
        return Response({"ok": True, "property": prop, "desired": twin_prop.desired}, status_code=200)
    flash(request, "ok", f"{prop}: desired value set to {twin_prop.desired}")
    return see_other(f"/devices/{namespace}/{name}")
