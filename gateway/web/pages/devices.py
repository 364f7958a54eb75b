"""The device list (filters, search), the device page (live twin by SSE, setpoints, history plots)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Response, get, post
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import Redirect, ServerSentEvent, ServerSentEventMessage, Template
from markupsafe import Markup

from gateway.api import GatewayAPI
from gateway.errors import NotFound, ValueRejected
from gateway.messages import DeviceStateChange, state_topic, telemetry_topic
from gateway.pipeline.poller import PollStats
from gateway.pipeline.twin import Twin
from gateway.protocols.base import BoundDevice
from gateway.web.monitor import recent_errors, state_history
from gateway.web.pages.common import AnyRequest, actor, flash, gateway_of, principal, render, wants_json
from gateway.web.pages.live import device_row, respond
from gateway.web.security import BODY_FORM_VALUE, requires
from gateway.webkit.live import SSE_OPT, Mailbox, Update
from gateway.webkit.pages import form_fields, see_other
from gateway.webkit.plots import Line, line_plot

viewer = [requires("viewer")]
PAGE_SIZE = 100
PLOT_WINDOWS = {"15m": 900, "1h": 3600, "24h": 86400, "7d": 7 * 86400}  # 24 h and 7 d from the per-minute rollups
PLOT_BUCKETS = 240
SSE_QUEUE = 64
TICK = 1.0  # seconds between the checks of a quiet stream (the device still there, the session still open)


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
    shown = [(device_id, device, twin, device_row(gateway.config.devices[device_id], twin))
             for device_id, device, twin in matches[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]]
    label_options = sorted(f"{k}={v}" for k, values in label_keys.items() for v in values)
    return render(request, "devices.html", devices=shown, total=len(matches), all_total=len(gateway.config.devices),
                  live_ids=",".join(device_id for device_id, *_ in shown),
                  page=page, pages=pages, label=label, state=device_state, model=model, q=q,
                  label_options=label_options, model_options=sorted(models),
                  state_options=("online", "unhealthy", "offline", "unknown"))


@get("/devices/{namespace:str}/{name:str}", guards=viewer, summary="One device: live twin, setpoints, history",
     include_in_schema=False)
async def device_page(request: AnyRequest, namespace: FromPath[str], name: FromPath[str], plot: FromQuery[str] = "",
                      window: FromQuery[str] = "15m") -> Template:
    """`?plot=<property>&window=<w>` opens that property's history (drawn here as SVG; the page's script redraws it
    with uPlot from device_plot)."""
    gateway = gateway_of(request)
    bound = _bound(gateway, namespace, name)
    device_id = bound.id
    twin = gateway.twin(device_id)
    stats = gateway.poll_stats(device_id)
    window = window if window in PLOT_WINDOWS else "15m"
    fallback = await _history_svg(gateway, bound, plot, window) if plot in bound.properties else ""
    return render(
        request, "device.html",
        device=bound.resource, device_id=device_id, bound=bound, twin=twin,
        can_write=principal(request).can("operator"), can_edit=principal(request).can("admin"),
        stats=stats, poll=poll_counters(stats), windows=list(PLOT_WINDOWS), plot=plot if fallback else "",
        plot_window=window, plot_svg=Markup(fallback),
        state_changes=state_history(gateway).of(device_id),
        errors=recent_errors().mentioning(device_id),
    )


async def _history_svg(gateway: GatewayAPI, bound: BoundDevice, prop: str, window: str) -> str:
    """The mean of each bucket of a property's history over `window`, as the SVG a page shows without script."""
    now = time.time()
    seconds = PLOT_WINDOWS[window]
    points = await gateway.store.history.buckets(bound.id, prop, now - seconds, now, PLOT_BUCKETS)
    unit = bound.properties[prop].model.unit
    return line_plot(prop, [Line("mean", [(ts, mean) for ts, _, _, mean in points])], start=now - seconds, end=now,
                     step=seconds / PLOT_BUCKETS, unit=unit or "count")


@get("/devices/{namespace:str}/{name:str}/events", guards=viewer, summary="Live twin of one device (SSE)",
     include_in_schema=False, opt=SSE_OPT)
async def device_events(request: AnyRequest, namespace: FromPath[str], name: FromPath[str]) -> ServerSentEvent:
    """Event `twin` (or `state` when the device's state changed) with the twin and its poll counters whenever the
    device reports; the bus hands its messages to a bounded mailbox, so a slow browser never slows it."""
    gateway = gateway_of(request)
    device_id = _bound(gateway, namespace, name).id
    gateway.twin(device_id)
    mailbox: Mailbox[Any] = Mailbox(SSE_QUEUE)

    def snapshot() -> str | None:
        twin = gateway.twins().get(device_id)  # looked up each time: editing the device gives it a new twin
        if twin is None:
            return None
        return msgspec.json.encode({**twin_snapshot(twin), "poll": poll_counters(gateway.poll_stats(device_id))}
                                   ).decode()

    async def updates() -> AsyncIterator[Update]:
        subscriptions = [gateway.subscribe(telemetry_topic(device_id), lambda _, message: mailbox.put(message)),
                         gateway.subscribe(state_topic(device_id), lambda _, message: mailbox.put(message))]
        try:
            data = snapshot()
            if data is None:
                return
            yield ServerSentEventMessage(event="twin", data=data)
            while True:
                messages = await mailbox.take(TICK)  # everything queued meanwhile: one snapshot covers it
                if not messages:
                    if device_id not in gateway.twins():
                        return
                    yield None
                    continue
                data = snapshot()
                if data is None:  # the device was deleted
                    return
                changed = any(isinstance(message, DeviceStateChange) for message in messages)
                yield ServerSentEventMessage(event="state" if changed else "twin", data=data)
        finally:
            for sub_id in subscriptions:
                gateway.unsubscribe(sub_id)

    return respond(request, updates())


def poll_counters(stats: PollStats | None) -> dict[str, Any]:
    """A device's poll counters as its page shows them (the `poll` record of its stream)."""
    if stats is None:
        return {}
    return {"cycles": stats.cycles, "missed": stats.missed, "read_errors": stats.read_errors,
            "writes": stats.writes, "write_errors": stats.write_errors}


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
    points = await gateway.store.history.buckets(bound.id, prop, now - seconds, now, PLOT_BUCKETS)
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
