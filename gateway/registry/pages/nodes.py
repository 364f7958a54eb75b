"""Nodes: the list with filters, a search and batch actions; one node with its alias, labels, addresses, versions,
resource plots, workloads, devices with their latest values, events and log, and what an admin does to it (pause
or resume scheduling, move it to another workspace, remove it)."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import msgspec
from litestar import Response, get, post
from litestar.params import FromPath
from litestar.response import Template

from gateway.errors import ConfigError, NotFound
from gateway.logs import LogQuery
from gateway.registry import access, logs, monitoring, twins
from gateway.registry.access import AnyRequest, NodeChange
from gateway.registry.pages.common import (
    caller_of,
    flash,
    labels_from_text,
    labels_text,
    page,
    show,
    store_of,
)
from gateway.registry.store import RegistryStore
from gateway.registry.workloads import workload_views
from gateway.webkit.pages import form_fields, see_other
from gateway.wire import LOGS_PATH

NODE_STATES = ("healthy", "offline", "joined", "paused")
PLOT_WINDOWS = {"15m": 900.0, "1h": 3600.0, "6h": 6 * 3600.0, "24h": 24 * 3600.0}
NODE_LOG_TIMEOUT = 5.0  # seconds a node has to send its log to the node page
NODE_LOG_LINES = 100
NODE_EVENTS = 50


def _matches(node: dict[str, Any], filters: dict[str, str]) -> bool:
    """Whether a node passes the list's filters (state, group, label k=v, version, workspace) and search."""
    state = filters.get("state", "")
    if (state == "paused" and not node["paused"]) or (state and state != "paused" and node["status"] != state):
        return False
    for key in ("group", "version", "workspace"):
        wanted = filters.get(key, "")
        if wanted and str(node.get(key) or "") != wanted:
            return False
    if filters.get("label", "").strip():
        key, sep, value = (part.strip() for part in filters["label"].partition("="))
        if key not in node["labels"] or (sep and node["labels"][key] != value):
            return False
    text = filters.get("q", "").strip().lower()
    if text:
        haystack = " ".join([node["name"], node.get("alias", ""), labels_text(node["labels"]),
                             *addresses(node)]).lower()
        return text in haystack
    return True


def addresses(node: dict[str, Any]) -> list[str]:
    """The node's IP addresses as it reports them, and the one the registry sees it at."""
    info = node.get("info") or {}
    found = [str(a) for a in info.get("addresses") or [] if isinstance(a, str)]
    seen = info.get("seen_from")
    return found + ([f"{seen} (seen by the registry)"] if isinstance(seen, str) and seen not in found else [])


async def _workspace_names(store: RegistryStore, caller: access.Caller) -> list[str]:
    return [name for name in await access.workspaces(store) if caller.sees(name)]


@get("/nodes", summary="Nodes with their state (?state=, ?group=, ?label=k=v, ?version=, ?workspace=, ?q=)",
     **page("nodes.read"))
async def nodes_page(request: AnyRequest) -> Template:
    store, caller = store_of(request), caller_of(request)
    every = await access.visible_nodes(store, caller)
    filters = {key: request.query_params.get(key, "") for key in ("state", "group", "label", "version", "workspace",
                                                                   "q")}
    shown = [node for node in every if _matches(node, filters)]
    choices = {"group": sorted({n["group"] for n in every if n["group"]}),
               "version": sorted({n["version"] for n in every if n["version"]}),
               "workspace": sorted({n["workspace"] for n in every})}
    return show(request, "nodes.html", nodes=shown, total=len(every), filters=filters, choices=choices,
                states=NODE_STATES, workspaces=await _workspace_names(store, caller),
                back="/nodes" + (f"?{request.url.query}" if request.url.query else ""))


@post("/nodes/batch", summary="Pause or resume scheduling on, or move to a workspace, the nodes ticked in the list",
      status_code=303, **page("nodes.manage", action="change nodes"))
async def nodes_batch(request: AnyRequest) -> Response[Any]:
    form = await request.form()
    names = [value for value in form.getall("node") if isinstance(value, str)] if "node" in form else []
    action, workspace = str(form.get("action") or ""), str(form.get("workspace") or "")
    back = str(form.get("back") or "/nodes")
    back = back if back.startswith("/nodes") else "/nodes"
    changes = {"pause": NodeChange(paused=True), "resume": NodeChange(paused=False),
               "move": NodeChange(workspace=workspace or None)}
    if action not in changes or not names:
        flash(request, "error", "Tick one or more nodes and pick pause, resume or move." if names else
              "No node ticked: tick the nodes to change first.")
        return see_other(back)
    store, caller = store_of(request), caller_of(request)
    done, problems = [], []
    for name in names:
        try:
            await access.change_node_as(store, caller, name, changes[action])
            done.append(name)
        except (ConfigError, NotFound) as exc:
            problems.append(f"{name}: {exc}")
    what = {"pause": "paused", "resume": "resumed", "move": f"moved to workspace {workspace}"}[action]
    if done:
        flash(request, "ok", f"{len(done)} node(s) {what}: {', '.join(done)}.")
    for problem in problems:
        flash(request, "error", problem)
    return see_other(back)


# --- one node ---------------------------------------------------------------------------------------------------


async def node_plots(store: RegistryStore, node: str, window: str) -> str:
    """The node's resource plots over `window` (a name in PLOT_WINDOWS): inline SVG (gateway.webkit.plots) that the
    page's script redraws with uPlot."""
    return await monitoring.node_plots_html(store, node, window, PLOT_WINDOWS)


async def node_events(store: RegistryStore, caller: access.Caller, node: str) -> list[dict[str, Any]]:
    """What happened on and to a node, newest first: its workloads' events and (for those who may read the audit
    log) the changes made to it."""
    events = [{"at": ts, "what": f"workload {ns}/{name}: {event}", "detail": " ".join(filter(None, (instance, reason))),
               "href": f"/workloads/{quote(ns)}/{quote(name)}"}
              for ns, name, ts, event, instance, reason in await store.workloads.node_events(node, NODE_EVENTS)]
    if caller.can("audit.read"):
        rows = await store.access.entries_about(f"node/{node}", caller.audit_scopes(), NODE_EVENTS)
        events += [{"at": at, "what": f"{action} by {actor}: {outcome}", "detail": detail, "href": ""}
                   for at, actor, _, action, _, outcome, detail in rows]
    return sorted(events, key=lambda event: event["at"] or 0, reverse=True)[:NODE_EVENTS]


async def _node_log(request: AnyRequest, node: str) -> dict[str, Any]:
    """The node's recent log, asked of it now: its lines, or why there are none."""
    panel: dict[str, Any] = {"lines": [], "problem": ""}
    try:
        query = LogQuery.parse({"limit": str(NODE_LOG_LINES), **{k: v for k, v in request.query_params.items()
                                                                  if k == "level" and v}})
        answer = await logs.ask_node(store_of(request), request.app.state.log_requests, node, LOGS_PATH,
                                     msgspec.json.encode(query.params()), NODE_LOG_TIMEOUT)
        panel["lines"] = answer.get("records") or []
    except (logs.NodeSilent, NotFound, ConfigError) as exc:
        panel["problem"] = str(exc)
    return panel


@get("/nodes/{name:str}", summary="One node: alias, labels, addresses, versions, plots, workloads, devices, events "
     "(?window=15m, 1h, 6h or 24h; ?logs=1 asks the node for its log)", **page("nodes.read"))
async def node_page(request: AnyRequest, name: FromPath[str]) -> Template:
    store, caller = store_of(request), caller_of(request)
    node = await access.visible_node(store, caller, name)
    window = request.query_params.get("window", "1h")
    window = window if window in PLOT_WINDOWS else "1h"
    devices = await twins.device_views(store, node=name) if caller.can("devices.read") else []
    workloads = ([view for view in await workload_views(store, caller) if view["node"] == name]
                 if caller.can("apps.read") else [])
    await twins.declared_decimals(store, devices)
    panel = await _node_log(request, name) if request.query_params.get("logs") else None
    app_plots, app_instances = await monitoring.app_plots_html(
        store, window, source=f"/nodes/{quote(name, safe='')}/apps/metrics", node=name, windows=PLOT_WINDOWS)
    return show(request, "node.html", node=node, devices=devices, workloads=workloads, addresses=addresses(node),
                plots=await node_plots(store, name, window), window=window, windows=list(PLOT_WINDOWS),
                app_plots=app_plots, app_instances=app_instances,
                events=await node_events(store, caller, name), panel=panel, labels_text=labels_text(node["labels"]),
                workspaces=await _workspace_names(store, caller), now=time.time())


def _back(name: str) -> str:
    return f"/nodes/{quote(name)}"


@post("/nodes/{name:str}/settings", summary="Change a node's alias and labels", status_code=303,
      **page("nodes.manage", action="change nodes"))
async def node_settings(request: AnyRequest, name: FromPath[str]) -> Response[Any]:
    fields = await form_fields(request)
    try:
        change = NodeChange(alias=fields.get("alias", "")[:access.ALIAS_MAX],
                            labels=labels_from_text(fields.get("labels", "")))
        await access.change_node_as(store_of(request), caller_of(request), name, change)
    except ConfigError as exc:
        flash(request, "error", f"Not saved: {exc}")
        return see_other(_back(name))
    flash(request, "ok", f"Node {name}: alias and labels saved.")
    return see_other(_back(name))


@post("/nodes/{name:str}/scheduling", summary="Pause or resume placing new workload instances on a node",
      status_code=303, **page("nodes.manage", action="change nodes"))
async def node_scheduling(request: AnyRequest, name: FromPath[str]) -> Response[Any]:
    action = (await form_fields(request)).get("action", "")
    if action not in ("pause", "resume"):
        raise ConfigError(f"action {action!r}: expected pause or resume")
    await access.change_node_as(store_of(request), caller_of(request), name, NodeChange(paused=action == "pause"))
    flash(request, "ok", f"Node {name}: " + ("paused: no new workload instances go to it; what runs there keeps "
                                             "running." if action == "pause" else "takes new workload instances "
                                                                                  "again."))
    return see_other(_back(name))


@post("/nodes/{name:str}/move", summary="Move a node (and the devices meant for it) to another workspace",
      status_code=303, **page("nodes.manage", action="change nodes"))
async def node_move(request: AnyRequest, name: FromPath[str]) -> Response[Any]:
    workspace = (await form_fields(request)).get("workspace", "")
    try:
        await access.change_node_as(store_of(request), caller_of(request), name, NodeChange(workspace=workspace))
    except ConfigError as exc:
        flash(request, "error", f"Not moved: {exc}")
        return see_other(_back(name))
    flash(request, "ok", f"Node {name} moved to workspace {workspace}; it left its group.")
    return see_other(_back(name))


@post("/nodes/{name:str}/remove", summary="Forget a node and revoke its certificate (type its name to confirm)",
      status_code=303, **page("nodes.manage", action="remove nodes"))
async def node_remove(request: AnyRequest, name: FromPath[str]) -> Response[Any]:
    confirm = (await form_fields(request)).get("confirm", "").strip()
    if confirm != name:
        flash(request, "error", f"Not removed: type the node's name ({name}) to confirm.")
        return see_other(_back(name))
    await access.remove_node_as(store_of(request), caller_of(request), name)
    flash(request, "ok", f"Node {name} removed; its certificate is revoked. It joins again only with a new token.")
    return see_other("/nodes")


ROUTE_HANDLERS = [nodes_page, nodes_batch, node_page, node_settings, node_scheduling, node_move, node_remove]
