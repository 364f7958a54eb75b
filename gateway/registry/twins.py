"""Device twins between the nodes and the registry.

Up: a node's reported values and device states ride its heartbeat, coalesced (the latest value of every property
of the devices that changed since the last delivered report, one report per heartbeat at most) and kept until a
heartbeat gets through, so the latest values arrive after the registry was unreachable. The registry keeps only
the latest reported twin per device, no history.

Down: a desired value set at the registry (`PUT /api/v1/devices/<ns>/<name>/desired`, `fieldgate registry
set-desired`) is stored with a per-node version; a heartbeat that carries a lower `desired_version` is answered
with the newer values, which the node puts through its normal desired path (type, minimum and maximum checked,
written to the device, confirmed by reading back) and acknowledges with the next heartbeat, with the reason for
any it refused. The registry shows desired against reported. The node's half is gateway.uplink.twins.
"""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec
from litestar import get, put
from litestar.exceptions import HTTPException
from litestar.params import FromPath, JSONBody

from gateway.errors import ConfigError, NotFound, ValueRejected
from gateway.pipeline.values import coerce, same_value
from gateway.registry import access
from gateway.registry.auth import AnyRequest, store_of
from gateway.registry.store import RegistryStore
from gateway.resources.schema import PropertyModel
from gateway.wire import MIN_REPORT_INTERVAL, DesiredAck, DesiredValue, DeviceReport


class DesiredRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    desired: dict[str, Any]



def _split(device: str) -> tuple[str, str]:
    namespace, sep, name = device.partition("/")
    if not sep or not namespace or not name:
        raise ConfigError(f"device {device!r}: expected <namespace>/<name>")
    return namespace, name


async def sync(store: RegistryStore, node: str, reports: list[DeviceReport] | None, complete: bool,
               desired_version: int, ack: DesiredAck | None) -> list[DesiredValue] | None:
    """Record a heartbeat's twins and acknowledgement; the desired values newer than the node's version."""
    database = store.database
    statements: list[tuple[str, tuple[Any, ...]]] = []
    now = time.time()
    if reports is not None:
        seen = set()
        for report in reports:
            namespace, name = _split(report.device)
            seen.add((namespace, name))
            statements.append((
                "INSERT INTO device_twins VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (node, namespace, name) DO UPDATE "
                "SET state=excluded.state, state_reason=excluded.state_reason, properties=excluded.properties, "
                "reported_at=excluded.reported_at",
                (node, namespace, name, report.state, report.reason,
                 msgspec.json.encode(report.properties).decode(), now)))
        if complete:  # the node's whole set: forget the devices it no longer has
            for namespace, name in await database.rows(
                    "SELECT namespace, name FROM device_twins WHERE node=?", node):
                if (namespace, name) not in seen:
                    statements.append(("DELETE FROM device_twins WHERE node=? AND namespace=? AND name=?",
                                       (node, namespace, name)))
    if ack is not None:
        statements.append(("UPDATE device_desired SET delivered_at=? WHERE node=? AND version<=? AND "
                           "delivered_at IS NULL", (now, node, ack.version)))
        for refused in ack.errors:
            namespace, name = _split(refused.device)
            statements.append(("UPDATE device_desired SET error=? WHERE node=? AND namespace=? AND name=? AND "
                               "property=? AND version=?", (refused.error[:500], node, namespace, name,
                                                            refused.property, refused.version)))
    if statements:
        await database.transaction(statements)
    rows = await database.rows("SELECT namespace, name, property, value, version FROM device_desired WHERE node=? "
                               "AND version>? ORDER BY version, namespace, name, property", node, desired_version)
    return [DesiredValue(device=f"{ns}/{name}", property=prop, value=json.loads(value), version=version)
            for ns, name, prop, value, version in rows] or None


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
    rows = await store.database.rows("SELECT document FROM documents WHERE kind='Device' AND namespace=? AND name=?",
                                     namespace, name)
    model = json.loads(rows[0][0]).get("model") if rows else None
    if not model:
        return None
    rows = await store.database.rows(
        "SELECT document FROM documents WHERE kind='DeviceModel' AND namespace=? AND name=?", namespace, model)
    if not rows:
        return None
    for entry in json.loads(rows[0][0]).get("properties", []):
        if entry.get("name") == prop:
            return msgspec.convert(entry, PropertyModel)
    raise NotFound(f"device {namespace}/{name} has no property {prop!r}")


async def device_node(store: RegistryStore, namespace: str, name: str, node: str | None) -> str:
    """The node a device is on: the one its registry document names, or the one that reports it."""
    assigned = [row[0] for row in await store.database.rows(
        "SELECT node FROM documents WHERE kind='Device' AND namespace=? AND name=? AND node IS NOT NULL",
        namespace, name)]
    reporting = [row[0] for row in await store.database.rows(
        "SELECT node FROM device_twins WHERE namespace=? AND name=? ORDER BY node", namespace, name)]
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
    if not await store.database.rows("SELECT 1 FROM nodes WHERE name=?", node):
        raise ConfigError(f"node {node} has not joined yet")
    reported = await store.database.rows("SELECT properties FROM device_twins WHERE node=? AND namespace=? AND "
                                         "name=?", node, namespace, name)
    known = set(json.loads(reported[0][0])) if reported else set()
    converted = {}
    for prop, value in values.items():
        model = await _model_property(store, namespace, name, prop)
        if model is None:
            if reported and prop not in known:
                raise NotFound(f"device {namespace}/{name} has no property {prop!r}")
            converted[prop] = value
            continue
        if model.access != "ReadWrite":
            raise ValueRejected(f"{prop}: the property is {model.access}")
        converted[prop] = coerce(model, value)
    now = time.time()
    await store.database.transaction([
        ("UPDATE nodes SET desired_version=desired_version+1 WHERE name=?", (node,)),
        *[("INSERT INTO device_desired VALUES (?, ?, ?, ?, ?, (SELECT desired_version FROM nodes WHERE name=?), ?, "
           "NULL, NULL) ON CONFLICT (node, namespace, name, property) DO UPDATE SET value=excluded.value, "
           "version=excluded.version, set_at=excluded.set_at, delivered_at=NULL, error=NULL",
           (node, namespace, name, prop, json.dumps(value), node, now)) for prop, value in converted.items()]])
    return (await device_views(store, node=node, namespace=namespace, name=name))[0]


async def device_views(store: RegistryStore, *, node: str | None = None, namespace: str | None = None,
                       name: str | None = None) -> list[dict[str, Any]]:
    """Devices with their twin, desired against reported: those the nodes report, have desired values for, or
    were applied at the registry for a node."""
    where, args = [], []
    for column, value in (("node", node), ("namespace", namespace), ("name", name)):
        if value is not None:
            where.append(f"{column}=?")
            args.append(value)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    views: dict[tuple[str, str, str], dict[str, Any]] = {}

    def view(key: tuple[str, str, str]) -> dict[str, Any]:
        return views.setdefault(key, {"node": key[0], "namespace": key[1], "name": key[2], "state": "unknown",
                                      "state_reason": "not reported yet", "reported_at": None,
                                      "applied_at_registry": False, "twin": {}})

    document_clause = clause.replace("WHERE", "AND") if clause else ""
    for key in await store.database.rows(
            f"SELECT node, namespace, name FROM documents WHERE kind='Device' AND node IS NOT NULL{document_clause}",
            *args):
        view((key[0], key[1], key[2]))["applied_at_registry"] = True
    for row_node, ns, row_name, state, reason, properties, reported_at in await store.database.rows(
            f"SELECT node, namespace, name, state, state_reason, properties, reported_at FROM device_twins{clause}",
            *args):
        entry = view((row_node, ns, row_name))
        entry.update(state=state, state_reason=reason, reported_at=reported_at)
        for prop, report in json.loads(properties).items():
            entry["twin"][prop] = {"desired": None, "desired_status": None, "reported": report.get("reported"),
                                   "reported_at": report.get("reported_at"), "quality": report.get("quality"),
                                   "node_desired": report.get("desired"),
                                   **({"error": report["error"]} if report.get("error") else {})}
    for row_node, ns, row_name, prop, value, version, set_at, delivered_at, error in await store.database.rows(
            "SELECT node, namespace, name, property, value, version, set_at, delivered_at, error FROM device_desired"
            f"{clause}", *args):
        twin = view((row_node, ns, row_name))["twin"].setdefault(prop, {"reported": None, "reported_at": None,
                                                                        "quality": "unknown", "node_desired": None})
        desired = json.loads(value)
        status = ("rejected" if error else "in sync" if same_value(desired, twin["reported"])
                  else "delivered" if delivered_at else "pending")
        twin.update(desired=desired, desired_version=version, desired_at=set_at, desired_status=status,
                    **({"desired_error": error} if error else {}))
    if namespace is not None and name is not None and not views:
        raise NotFound(f"no device {namespace}/{name}" + (f" on node {node}" if node else ""))
    return [views[key] for key in sorted(views)]


async def _visible(store: RegistryStore, caller: access.Caller, views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The views of devices on nodes within the caller's scope."""
    workspaces = dict(await store.database.rows("SELECT name, workspace FROM nodes"))
    return [view for view in views if view["node"] in workspaces and caller.sees(workspaces[view["node"]])]


async def _scoped_node(request: AnyRequest, caller: access.Caller, namespace: str, name: str) -> str:
    """The node of a device within the caller's scope (NotFound, as for no device, outside it)."""
    store = store_of(request)
    node = await device_node(store, namespace, name, request.query_params.get("node"))
    try:
        await access.check_node_in_scope(store, caller, node)
    except NotFound:
        raise NotFound(f"no device {namespace}/{name}") from None
    return node


@get("/api/v1/devices", summary="Devices of every node with their twins (desired against reported); ?node=")
async def list_devices(request: AnyRequest) -> list[dict[str, Any]]:
    caller = await access.require_caller(request, "viewer")
    store = store_of(request)
    return await _visible(store, caller, await device_views(store, node=request.query_params.get("node")))


@get("/api/v1/nodes/{node:str}/devices", summary="A node's devices with their twins")
async def node_devices(request: AnyRequest, node: FromPath[str]) -> list[dict[str, Any]]:
    caller = await access.require_caller(request, "viewer")
    store = store_of(request)
    await access.check_node_in_scope(store, caller, node)
    return await device_views(store, node=node)


@get("/api/v1/devices/{namespace:str}/{name:str}", summary="One device's twin: desired against reported")
async def device(request: AnyRequest, namespace: FromPath[str], name: FromPath[str]) -> dict[str, Any]:
    caller = await access.require_caller(request, "viewer")
    node = await _scoped_node(request, caller, namespace, name)
    return (await device_views(store_of(request), node=node, namespace=namespace, name=name))[0]


@put("/api/v1/devices/{namespace:str}/{name:str}/desired", summary="Set desired values (operator); the node "
     "applies them with its next heartbeat", status_code=200)
async def put_desired(request: AnyRequest, namespace: FromPath[str], name: FromPath[str],
                      data: JSONBody[DesiredRequest]) -> dict[str, Any]:
    caller = await access.require_caller(request, "operator")
    store = store_of(request)
    node = await _scoped_node(request, caller, namespace, name)
    scope = access.workspace_scope(await access.node_workspace(store, node))
    async with access.audited(store, caller, "device.set-desired", f"device/{namespace}/{name}", scope) as entry:
        entry.detail = {"node": node, "desired": data.desired}
        return await set_desired(store, namespace, name, data.desired, node)


ROUTE_HANDLERS = [list_devices, node_devices, device, put_desired]
