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
any it refused. The registry shows desired against reported.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from litestar import get, put
from litestar.exceptions import HTTPException
from litestar.params import FromPath, JSONBody

from gateway.errors import ConfigError, FieldgateError, NotFound, ValueRejected
from gateway.pipeline.twin import same_value
from gateway.pipeline.values import coerce
from gateway.registry import access
from gateway.registry.auth import AnyRequest, store_of
from gateway.registry.store import RegistryStore
from gateway.resources.schema import VALUE_MAX_LENGTH, PropertyModel

if TYPE_CHECKING:
    from gateway.api import GatewayAPI

log = logging.getLogger(__name__)
_json = msgspec.json.Encoder()
MAX_REPORT_DEVICES = 2000  # devices in one heartbeat; a node with more sends the rest with the next ones
# A heartbeat body the registry takes, and the part of it a node fills with twin reports (JSON bytes): a node with
# many devices, or long values, sends the rest with the next heartbeats. Devices x properties x max_length could
# otherwise make one heartbeat of any size (100 properties of 1 KiB strings on 2000 devices: 400 MB).
MAX_HEARTBEAT = 16 << 20
TWINS_BUDGET = 4 << 20
REPORT_VALUE_MAX = 1024  # characters of a value in a report that alone is too large for a heartbeat
MIN_REPORT_INTERVAL = 1.0  # seconds between two twin reports of a node, however often it heartbeats
MAX_UNCHECKED_TEXT = VALUE_MAX_LENGTH * 4 // 3 + 4  # the longest value any property may take (bytes as base64)
MAX_DESIRED_BODY = 1 << 20  # a PUT of desired values: many properties at once, each within its max_length


class PropertyReport(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    reported: Any = None
    reported_at: float | None = None
    quality: str = "unknown"
    desired: Any = None  # what the node's twin wants, whoever set it
    error: str | None = None


class DeviceReport(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    device: str  # <namespace>/<name>
    state: str
    reason: str = ""
    properties: dict[str, PropertyReport] = {}


class DesiredValue(msgspec.Struct, kw_only=True):
    device: str
    property: str
    value: Any
    version: int


class DesiredError(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    device: str
    property: str
    version: int
    error: str


class DesiredAck(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The node took the desired values up to `version`; `errors` are those it refused."""

    version: int
    errors: list[DesiredError] = []


DeviceReports = Annotated[list[DeviceReport], msgspec.Meta(max_length=MAX_REPORT_DEVICES)]


class DesiredRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    desired: dict[str, Any]


# --- the registry side --------------------------------------------------------------------------------------------


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
            # a report without properties names a device and its state only (a node's whole set that does not fit
            # one heartbeat): the properties last reported stay
            properties = "properties=excluded.properties, " if report.properties else ""
            statements.append((
                "INSERT INTO device_twins VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (node, namespace, name) DO UPDATE "
                f"SET state=excluded.state, state_reason=excluded.state_reason, {properties}"
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
            converted[prop] = unchecked_value(prop, value)
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
     "applies them with its next heartbeat", status_code=200, request_max_body_size=MAX_DESIRED_BODY)
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


# --- the node side ------------------------------------------------------------------------------------------------


def fit_reports(reports: Iterable[DeviceReport], budget: int) -> list[dict[str, Any]]:
    """As many reports as fit `budget` bytes of JSON, in order (at least one); the others wait for the next
    heartbeats. A report alone larger than the budget goes without its long values (see `_shortened`)."""
    fitted: list[dict[str, Any]] = []
    used = 0
    for report in reports:
        size = len(_json.encode(report))
        if size > budget:
            report = _shortened(report, budget)
            size = len(_json.encode(report))
        if fitted and used + size > budget:
            break
        fitted.append(msgspec.to_builtins(report))
        used += size
    return fitted


def _shortened(report: DeviceReport, budget: int) -> DeviceReport:
    """A report that fits a heartbeat: values longer than REPORT_VALUE_MAX stay on the node (said in the property's
    error), and the properties that still do not fit are left out (said in the device's reason)."""
    properties: dict[str, PropertyReport] = {}
    used = 0
    for name, prop in report.properties.items():
        long = [field for field in ("reported", "desired") if isinstance(getattr(prop, field), str | bytes)
                and len(getattr(prop, field)) > REPORT_VALUE_MAX]
        if long:
            prop = msgspec.structs.replace(prop, **dict.fromkeys(long, None), error=f"{' and '.join(long)} value "
                                           f"longer than {REPORT_VALUE_MAX} characters: kept on the node")
        size = len(_json.encode(prop)) + len(name) + 4
        if used + size > budget // 2:
            left_out = len(report.properties) - len(properties)
            return msgspec.structs.replace(report, properties=properties, reason=f"{report.reason} ({left_out} "
                                           "properties not reported: too many for a heartbeat)".lstrip())
        properties[name] = prop
        used += size
    return msgspec.structs.replace(report, properties=properties)


class TwinSync:
    """The node's half: which twins changed since the last delivered report, and the desired values it took."""

    def __init__(self, gateway: GatewayAPI, state_path: Path) -> None:
        self.gateway = gateway
        self.state_path = state_path
        self.dirty: set[str] = set()
        self.complete = True  # the next report carries every device, so the registry forgets removed ones
        self._sending: set[str] = set()
        self._sending_complete = False
        self._sending_ack: DesiredAck | None = None
        self._last_report = -MIN_REPORT_INTERVAL
        self._reported_at: dict[str, float] = {}  # device -> when a heartbeat last carried its report
        self.ack: DesiredAck | None = None
        self.desired_version = self._load_version()
        for pattern in ("devices/+/+/telemetry", "devices/+/+/state", "devices/+/+/twin"):
            gateway.subscribe(pattern, self._changed)

    def _load_version(self) -> int:
        try:
            return int(json.loads(self.state_path.read_text())["desired_version"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def _changed(self, topic: str, message: Any) -> None:
        self.dirty.add(topic.split("/", 1)[1].rsplit("/", 1)[0])

    def outgoing(self) -> dict[str, Any]:
        """The twin part of the next heartbeat: the version of desired values taken, an acknowledgement and the
        devices that changed (at most one report per MIN_REPORT_INTERVAL)."""
        body: dict[str, Any] = {"desired_version": self.desired_version}
        self._sending_ack = self.ack
        if self.ack is not None:
            body["desired_ack"] = msgspec.to_builtins(self.ack)
        now = time.monotonic()
        twins = self.gateway.twins()
        if not (self.dirty or self.complete) or now - self._last_report < MIN_REPORT_INTERVAL:
            self._sending, self._sending_complete = set(), False
            return body
        if self.complete and len(twins) > MAX_REPORT_DEVICES:  # no heartbeat names them all: report as changed
            self.dirty |= twins.keys()
            self.complete = False
        # the devices reported longest ago first: when not all fit, none waits behind the others for good
        devices = sorted(twins if self.complete else self.dirty & twins.keys(),
                         key=lambda device_id: (self._reported_at.get(device_id, 0.0), device_id))
        reports = fit_reports((self._report(device_id) for device_id in devices[:MAX_REPORT_DEVICES]), TWINS_BUDGET)
        chosen = [report["device"] for report in reports]
        self._sending = set(chosen)
        self._sending_complete = self.complete
        self._reported_at.update(dict.fromkeys(chosen, now))
        self.dirty -= self._sending
        self.dirty &= twins.keys()
        if self.complete and len(chosen) < len(devices):
            # the whole set does not fit one heartbeat: the others go by name and state, which the registry takes
            # without touching their properties, and with all of theirs in the next heartbeats
            later = devices[len(chosen):]
            reports += [msgspec.to_builtins(self._report(device_id, properties=False)) for device_id in later]
            self.dirty.update(later)
        self._last_report = now
        body["twins"] = reports
        body["twins_complete"] = self._sending_complete
        return body

    def _report(self, device_id: str, *, properties: bool = True) -> DeviceReport:
        twin = self.gateway.twin(device_id)
        return DeviceReport(device=device_id, state=twin.state, reason=twin.state_reason, properties={
            name: PropertyReport(reported=prop.reported, reported_at=prop.reported_at, quality=prop.quality,
                                 desired=prop.desired, error=prop.error)
            for name, prop in twin.properties.items()} if properties else {})

    def delivered(self) -> None:
        """The heartbeat got through."""
        if self._sending_complete:
            self.complete = False
        if self.ack is self._sending_ack:
            self.ack = None
        self._sending, self._sending_complete, self._sending_ack = set(), False, None

    def failed(self) -> None:
        """The heartbeat did not get through: what it carried goes with the next one."""
        self.dirty |= self._sending
        self._sending, self._sending_complete, self._sending_ack = set(), False, None

    async def apply_desired(self, values: list[DesiredValue]) -> None:
        """Put the registry's desired values through the gateway's desired path; refusals go back with the ack."""
        errors = list(self.ack.errors) if self.ack else []
        for value in values:
            try:
                await self.gateway.set_desired(value.device, value.property, value.value, actor="registry")
            except FieldgateError as exc:
                log.warning("desired value from the registry for %s %s refused: %s", value.device, value.property,
                            exc)
                errors.append(DesiredError(device=value.device, property=value.property, version=value.version,
                                           error=str(exc)))
            self.dirty.add(value.device)
        self.desired_version = max([self.desired_version, *(value.version for value in values)])
        self.ack = DesiredAck(version=self.desired_version, errors=errors)
        self.state_path.write_text(json.dumps({"desired_version": self.desired_version}))
