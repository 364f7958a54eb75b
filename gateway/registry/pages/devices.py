"""Devices across the fleet: every device every node reports (and those applied at the registry for a node), with
its model, node, state and latest values with units; one device with, per property, the desired value set at the
registry against the reported one and how its delivery went (pending, delivered, applied, refused with the node's
reason), and a form to set a desired value (operators)."""

from __future__ import annotations

import collections
import json
from typing import Any
from urllib.parse import quote

from litestar import Response, get, post
from litestar.params import FromPath
from litestar.response import Template

from gateway.errors import ConfigError, NotFound
from gateway.registry import access, twins
from gateway.registry.access import AnyRequest
from gateway.registry.pages.common import caller_of, flash, page, show, store_of
from gateway.webkit.pages import form_fields, see_other

DEVICE_STATES = ("online", "unhealthy", "offline", "unknown")
# how the pages name the API's desired statuses (gateway.registry.twins.device_views)
DELIVERY = {"pending": "pending", "delivered": "delivered", "in sync": "applied", "rejected": "refused"}


def delivery(status: str | None) -> str:
    """A desired value's delivery as the pages say it: pending, delivered, applied or refused."""
    return DELIVERY.get(status or "", status or "")


def _matches(view: dict[str, Any], filters: dict[str, str]) -> bool:
    state = filters.get("state", "")
    if (state == "not-online" and view["state"] == "online") or (state not in ("", "not-online") and \
            view["state"] != state):
        return False
    for key in ("node", "model"):
        if filters.get(key) and view[key] != filters[key]:
            return False
    wanted = filters.get("delivery", "")
    if wanted and not any(delivery(t.get("desired_status")) == wanted for t in view["twin"].values()):
        return False
    text = filters.get("q", "").strip().lower()
    return not text or text in f"{view['namespace']}/{view['name']} {view['node']} {view['model']}".lower()


@get("/devices", summary="Devices every node reports, with their latest values (?q=, ?state=, ?node=, ?model=, "
     "?delivery=pending, refused, …)", **page("devices.read"))
async def devices_page(request: AnyRequest) -> Template:
    store, caller = store_of(request), caller_of(request)
    every = await twins.visible(store, caller, await twins.device_views(store))
    filters = {key: request.query_params.get(key, "") for key in ("q", "state", "node", "model", "delivery")}
    status = {node["name"]: node["status"] for node in await access.visible_nodes(store, caller)}
    shown = [{**view, "deliveries": collections.Counter(delivery(t["desired_status"]) for t in view["twin"].values()
                                                        if t.get("desired_status"))}
             for view in every if _matches(view, filters)]
    await twins.declared_decimals(store, shown)
    return show(request, "devices.html", devices=shown, total=len(every),
                filters=filters, status=status, states=DEVICE_STATES, delivery=delivery,
                nodes=sorted({v["node"] for v in every}), models=sorted({v["model"] for v in every if v["model"]}))


@get("/devices/{namespace:str}/{name:str}", summary="One device: desired against reported per property, delivery "
     "of desired values, its registry document (?node= when several nodes have it)", **page("devices.read"))
async def device_page(request: AnyRequest, namespace: FromPath[str], name: FromPath[str]) -> Template:
    store, caller = store_of(request), caller_of(request)
    node = await twins.scoped_device_node(store, caller, namespace, name, request.query_params.get("node") or None)
    [view] = await twins.device_views(store, node=node, namespace=namespace, name=name)
    await twins.declared_decimals(store, [view])
    document = await store.documents.get("Device", namespace, name)
    applied = json.loads(document) if document else None
    others = [n for n in await store.twins.reporting_nodes(namespace, name) if n != node]
    nodes = [n["name"] for n in await access.visible_nodes(store, caller)]
    return show(request, "device.html", device=view, node=node, document=applied, delivery=delivery,
                other_nodes=[n for n in others if n in nodes], nodes=nodes)


def parse_value(text: str) -> Any:
    """A value typed in a form: a number, true/false or null as JSON reads them, anything else as text (the node
    converts it to the property's type, as it does a value an MQTT app sends)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@post("/devices/{namespace:str}/{name:str}/desired", summary="Set a desired value; the node applies it with its "
      "next heartbeat and says whether it took it", status_code=303,
      **page("devices.write", action="set desired values"))
async def device_desired(request: AnyRequest, namespace: FromPath[str], name: FromPath[str]) -> Response[Any]:
    fields = await form_fields(request)
    store, caller = store_of(request), caller_of(request)
    prop, text = fields.get("property", "").strip(), fields.get("value", "").strip()
    node = await twins.scoped_device_node(store, caller, namespace, name, fields.get("node") or None)
    back = f"/devices/{quote(namespace)}/{quote(name)}?node={quote(node)}"
    try:
        if not prop or not text:
            raise ConfigError("desired value: pick a property and type a value")
        await twins.set_desired_as(store, caller, namespace, name, {prop: parse_value(text)}, node)
    except (ConfigError, NotFound) as exc:
        flash(request, "error", f"{prop}: not set: {exc}")
        return see_other(back)
    flash(request, "ok", f"Desired {prop}={text} set for {namespace}/{name} on {node}: the node applies it with its "
                         "next heartbeat.")
    return see_other(back)


ROUTE_HANDLERS = [devices_page, device_page, device_desired]
