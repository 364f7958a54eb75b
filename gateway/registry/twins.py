"""Device twins between the nodes and the registry.

Up: a node's reported values and device states ride its heartbeat, coalesced (the latest value of every property
of the devices that changed since the last delivered report, one report per heartbeat at most) and kept until a
heartbeat gets through, so the latest values arrive after the registry was unreachable. A heartbeat carries at most
TWINS_BUDGET bytes of reports, the devices reported longest ago first; the others go with the next ones (a node's
whole set that does not fit names the others by state only, which leaves their stored properties as they were).
The registry keeps only the latest reported twin per device, no history.

Down: a desired value set at the registry (`PUT /api/v1/devices/<ns>/<name>/desired`, `fieldgate registry
set-desired`) is stored with a per-node version; a heartbeat that carries a lower `desired_version` is answered
with the newer values, which the node puts through its normal desired path (type, minimum and maximum checked,
written to the device, confirmed by reading back) and acknowledges with the next heartbeat, with the reason for
any it refused. The registry shows desired against reported. The node's half is gateway.uplink.twins.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import msgspec
from litestar import get, put
from litestar.exceptions import HTTPException
from litestar.params import FromPath, JSONBody

from gateway.errors import ConfigError, NotFound, ValueRejected
from gateway.registry import access
from gateway.registry.auth import AnyRequest, store_of
from gateway.registry.store import RegistryStore
from gateway.resources.names import split_namespaced
from gateway.resources.schema import VALUE_MAX_LENGTH, PropertyModel
from gateway.resources.values import coerce, same_value
from gateway.webkit.units import scale_decimals
from gateway.wire import MIN_REPORT_INTERVAL, DesiredAck, DesiredValue, DeviceDescription, DeviceReport

MAX_UNCHECKED_TEXT = VALUE_MAX_LENGTH * 4 // 3 + 4  # the longest value any property may take (bytes as base64)
MAX_DESIRED_BODY = 1 << 20  # a PUT of desired values: many properties at once, each within its max_length


class DesiredRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    desired: dict[str, Any]



def _split(device: str) -> tuple[str, str]:
    return split_namespaced(device, "device")


async def sync(store: RegistryStore, node: str, reports: list[DeviceReport] | None, complete: bool,
               desired_version: int, ack: DesiredAck | None,
               described: list[DeviceDescription] | None = None, *,
               newest: int | None = None) -> list[DesiredValue] | None:
    """Record a heartbeat's twins, the descriptions of its devices and its acknowledgement; the desired values
    newer than the node's version (none without a look when `newest`, the node's newest desired version as the
    heartbeat's write read it, is not newer)."""
    rows = None if reports is None else [
        (*_split(report.device), report.state, report.reason, msgspec.json.encode(report.properties).decode())
        for report in reports]
    refused = [(*_split(error.device), error.property, error.version, error.error[:500])
               for error in (ack.errors if ack is not None else [])]
    descriptions = [(*_split(item.device), item.model, msgspec.json.encode(item.units).decode())
                    for item in described or []]
    await store.twins.record(node, rows, complete, ack.version if ack is not None else None, refused, time.time(),
                             descriptions)
    if newest is not None and newest <= desired_version:
        return None
    return [DesiredValue(device=f"{ns}/{name}", property=prop, value=value, version=version)
            for ns, name, prop, value, version in await store.twins.desired_after(node, desired_version)] or None


def check_report_rate(state: Any, node: str) -> None:
    """Refuse (429) a node's twin report that comes sooner than half MIN_REPORT_INTERVAL after its last one (as
    this registry process saw them): a node that keeps to the interval never meets this."""
    last: dict[str, float] = state.setdefault("twin_reports", {})
    now = time.monotonic()
    if now - last.get(node, -MIN_REPORT_INTERVAL) < MIN_REPORT_INTERVAL / 2:
        raise HTTPException(status_code=429, detail=f"twin reports more often than every {MIN_REPORT_INTERVAL:g}s")
    last[node] = now


async def _model_property(store: RegistryStore, namespace: str, name: str, prop: str) -> PropertyModel | None:
    """The model entry of a property of a Device applied at the registry; None when the registry has no model."""
    device = await store.documents.get("Device", namespace, name)
    model = json.loads(device).get("model") if device else None
    if not model:
        return None
    document = await store.documents.get("DeviceModel", namespace, model)
    if not document:
        return None
    for entry in json.loads(document).get("properties", []):
        if entry.get("name") == prop:
            return msgspec.convert(entry, PropertyModel)
    raise NotFound(f"device {namespace}/{name} has no property {prop!r}")


def unchecked_value(prop: str, value: Any) -> Any:
    """A desired value for a property whose model the registry does not have: the node checks its type and limits,
    but nothing that no property can hold is stored and sent (NaN, an infinity, a list, a map, a huge string)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueRejected(f"{prop}: expected a finite number, got {value!r}")
    if isinstance(value, dict | list) or value is None:
        raise ValueRejected(f"{prop}: expected a number, a boolean or a string, got {type(value).__name__}")
    if isinstance(value, str) and len(value) > MAX_UNCHECKED_TEXT:
        raise ValueRejected(f"{prop}: {len(value)} characters, longer than any property holds")
    return value


async def device_node(store: RegistryStore, namespace: str, name: str, node: str | None) -> str:
    """The node a device is on: the one its registry document names, or the one that reports it."""
    assigned = [placed for placed, _, _ in await store.documents.placed_devices(namespace=namespace, name=name)]
    reporting = await store.twins.reporting_nodes(namespace, name)
    candidates = list(dict.fromkeys(assigned + reporting))
    if node is not None:
        if node not in candidates:
            raise NotFound(f"node {node} has no device {namespace}/{name}")
        return node
    if not candidates:
        raise NotFound(f"no device {namespace}/{name}")
    if assigned:
        return str(assigned[0])
    if len(candidates) > 1:
        raise ConfigError(f"device {namespace}/{name} is on nodes {', '.join(candidates)}: say which with ?node= "
                          "(--node)")
    return str(candidates[0])


async def set_desired(store: RegistryStore, namespace: str, name: str, values: dict[str, Any],
                      node: str | None = None) -> dict[str, Any]:
    """Store desired values for a device (checked against its model when the registry has it); the device view."""
    if not values:
        raise ConfigError("desired: expected at least one property")
    node = await device_node(store, namespace, name, node)
    if not await store.node_exists(node):
        raise ConfigError(f"node {node} has not joined yet")
    known = await store.twins.reported_properties(node, namespace, name)
    converted = {}
    for prop, value in values.items():
        model = await _model_property(store, namespace, name, prop)
        if model is None:
            if known is not None and prop not in known:
                raise NotFound(f"device {namespace}/{name} has no property {prop!r}")
            converted[prop] = unchecked_value(prop, value)
            continue
        if model.access != "ReadWrite":
            raise ValueRejected(f"{prop}: the property is {model.access}")
        converted[prop] = coerce(model, value)
    await store.twins.set_desired(node, namespace, name, converted, time.time())
    return (await device_views(store, node=node, namespace=namespace, name=name))[0]


async def device_views(store: RegistryStore, *, node: str | None = None, namespace: str | None = None,
                       name: str | None = None) -> list[dict[str, Any]]:
    """Devices with their twin, desired against reported: those the nodes report, have desired values for, or
    were applied at the registry for a node."""
    views: dict[tuple[str, str, str], dict[str, Any]] = {}

    def view(key: tuple[str, str, str]) -> dict[str, Any]:
        return views.setdefault(key, {"node": key[0], "namespace": key[1], "name": key[2], "state": "unknown",
                                      "state_reason": "not reported yet", "reported_at": None,
                                      "applied_at_registry": False, "model": "", "units": {}, "twin": {}})

    for key in await store.documents.placed_devices(node, namespace, name):
        view(key)["applied_at_registry"] = True
    for key, (model, units) in (await store.twins.descriptions(node, namespace, name)).items():
        view(key).update(model=model, units=units)
    for row_node, ns, row_name, state, reason, properties, reported_at in await store.twins.reports(node, namespace,
                                                                                                     name):
        entry = view((row_node, ns, row_name))
        entry.update(state=state, state_reason=reason, reported_at=reported_at)
        for prop, report in properties.items():
            entry["twin"][prop] = {"desired": None, "desired_status": None, "reported": report.get("reported"),
                                   "reported_at": report.get("reported_at"), "quality": report.get("quality"),
                                   "node_desired": report.get("desired"),
                                   **({"error": report["error"]} if report.get("error") else {})}
    for row_node, ns, row_name, prop, desired, version, set_at, delivered_at, error in await store.twins.desired(
            node, namespace, name):
        twin = view((row_node, ns, row_name))["twin"].setdefault(prop, {"reported": None, "reported_at": None,
                                                                        "quality": "unknown", "node_desired": None})
        status = ("rejected" if error else "in sync" if same_value(desired, twin["reported"])
                  else "delivered" if delivered_at else "pending")
        twin.update(desired=desired, desired_version=version, desired_at=set_at, desired_status=status,
                    **({"desired_error": error} if error else {}))
    if namespace is not None and name is not None and not views:
        raise NotFound(f"no device {namespace}/{name}" + (f" on node {node}" if node else ""))
    await _describe_from_documents(store, [v for v in views.values() if v["applied_at_registry"] and not v["model"]])
    return [views[key] for key in sorted(views)]


async def _describe_from_documents(store: RegistryStore, views: list[dict[str, Any]]) -> None:
    """The model and units of devices applied at the registry that their node has not described (yet, or a node
    of a version before descriptions), from the registry's own Device and DeviceModel documents."""
    for entry in views:
        device = await store.documents.get("Device", entry["namespace"], entry["name"])
        model = str(json.loads(device).get("model") or "") if device else ""
        document = await store.documents.get("DeviceModel", entry["namespace"], model) if model else None
        properties = json.loads(document).get("properties", []) if document else []
        entry.update(model=model, units={p["name"]: p["unit"] for p in properties if p.get("unit")})


FLOAT_REGISTERS = ("float32", "float64")


async def declared_decimals(store: RegistryStore, views: list[dict[str, Any]]) -> None:
    """Give each view `decimals`: per property, the decimals its readings show with, as the registry's own Device
    and DeviceModel documents declare them (an `int` property 0, an integer register with a scale of 0.1 one);
    empty for a device only its node knows (the pages then show up to three decimals)."""
    declared: dict[tuple[str, str], dict[str, int]] = {}
    for entry in views:
        key = (entry["namespace"], entry["name"])
        if key not in declared:
            declared[key] = await _decimals_of(store, *key) if entry.get("applied_at_registry") else {}
        entry["decimals"] = declared[key]


async def _decimals_of(store: RegistryStore, namespace: str, name: str) -> dict[str, int]:
    device = await store.documents.get("Device", namespace, name)
    if device is None:
        return {}
    raw = json.loads(device)
    model = await store.documents.get("DeviceModel", namespace, str(raw.get("model") or "")) if raw.get("model") \
        else None
    types = {p.get("name"): p.get("type") for p in (json.loads(model).get("properties") or [])} if model else {}
    decimals: dict[str, int] = {name: 0 for name, kind in types.items() if kind == "int" and isinstance(name, str)}
    for prop in raw.get("properties") or []:
        visitor = prop.get("visitor") if isinstance(prop, dict) else None
        if not isinstance(visitor, dict) or prop.get("name") in decimals or visitor.get("type") in FLOAT_REGISTERS:
            continue
        found = scale_decimals(visitor.get("scale"))
        if found is not None:
            decimals[str(prop.get("name"))] = found
    return decimals


async def visible(store: RegistryStore, caller: access.Caller, views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The views of devices on nodes within the caller's scope."""
    workspaces = await store.node_workspaces()
    return [view for view in views if view["node"] in workspaces and caller.sees(workspaces[view["node"]])]


async def _scoped_node(request: AnyRequest, caller: access.Caller, namespace: str, name: str) -> str:
    """The node of a device within the caller's scope (NotFound, as for no device, outside it)."""
    return await scoped_device_node(store_of(request), caller, namespace, name, request.query_params.get("node"))


@get("/api/v1/devices", summary="Devices of every node with their twins (desired against reported); ?node=")
async def list_devices(request: AnyRequest) -> list[dict[str, Any]]:
    caller = await access.require_caller(request, "devices.read")
    store = store_of(request)
    return await visible(store, caller, await device_views(store, node=request.query_params.get("node")))


@get("/api/v1/nodes/{node:str}/devices", summary="A node's devices with their twins")
async def node_devices(request: AnyRequest, node: FromPath[str]) -> list[dict[str, Any]]:
    caller = await access.require_caller(request, "devices.read")
    store = store_of(request)
    await access.check_node_in_scope(store, caller, node)
    return await device_views(store, node=node)


@get("/api/v1/devices/{namespace:str}/{name:str}", summary="One device's twin: desired against reported")
async def device(request: AnyRequest, namespace: FromPath[str], name: FromPath[str]) -> dict[str, Any]:
    caller = await access.require_caller(request, "devices.read")
    node = await _scoped_node(request, caller, namespace, name)
    return (await device_views(store_of(request), node=node, namespace=namespace, name=name))[0]


@put("/api/v1/devices/{namespace:str}/{name:str}/desired", summary="Set desired values (operator); the node "
     "applies them with its next heartbeat", status_code=200, request_max_body_size=MAX_DESIRED_BODY)
async def put_desired(request: AnyRequest, namespace: FromPath[str], name: FromPath[str],
                      data: JSONBody[DesiredRequest]) -> dict[str, Any]:
    caller = await access.require_caller(request, "devices.write")
    return await set_desired_as(store_of(request), caller, namespace, name, data.desired,
                                await _scoped_node(request, caller, namespace, name))


async def scoped_device_node(store: RegistryStore, caller: access.Caller, namespace: str, name: str,
                             node: str | None) -> str:
    """The node of a device (the one named, if several have it) within the caller's scope; NotFound, as for no
    device, outside it."""
    found = await device_node(store, namespace, name, node)
    try:
        await access.check_node_in_scope(store, caller, found)
    except NotFound:
        raise NotFound(f"no device {namespace}/{name}") from None
    return found


async def set_desired_as(store: RegistryStore, caller: access.Caller, namespace: str, name: str,
                         values: dict[str, Any], node: str) -> dict[str, Any]:
    """Set desired values of a device on a node (audited); the device view."""
    scope = access.workspace_scope(await access.node_workspace(store, node))
    async with access.audited(store, caller, "device.set-desired", f"device/{namespace}/{name}", scope) as entry:
        entry.detail = {"node": node, "desired": values}
        return await set_desired(store, namespace, name, values, node)


ROUTE_HANDLERS = [list_devices, node_devices, device, put_desired]
