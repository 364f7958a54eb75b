"""Workloads across the nodes, and one workload: its status per node, events, versions with a rollback, a node's
log of it fetched on request, and stop / start / restart on one node or on all of them (operators)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from litestar import Response, get, post
from litestar.params import FromPath
from litestar.response import Template

from gateway.errors import ConfigError, NotFound
from gateway.registry import history, lifecycle, logs, monitoring
from gateway.registry.access import AnyRequest
from gateway.registry.pages.common import caller_of, flash, page, show, store_of
from gateway.registry.pages.nodes import PLOT_WINDOWS
from gateway.registry.workloads import workload_views
from gateway.webkit.pages import form_fields, see_other

PAGE_LOG_TIMEOUT = 5.0  # seconds a node has to answer for the workload page's log panel
FAILED = ("failed",)  # the workload statuses the overview counts as failed


@get("/workloads", summary="Workloads with their status per node (?status=, ?node=)", **page("apps.read"))
async def workloads_page(request: AnyRequest) -> Template:
    views = await workload_views(store_of(request), caller_of(request))
    status, node = request.query_params.get("status", ""), request.query_params.get("node", "")
    if status == "failed":
        views = [v for v in views if v["status"] in FAILED]
    elif status:
        views = [v for v in views if v["status"] == status]
    if node:
        views = [v for v in views if v["node"] == node]
    return show(request, "workloads.html", workloads=views, status=status, node=node)


async def _workload_page(request: AnyRequest, namespace: str, name: str) -> Template:
    store, caller = store_of(request), caller_of(request)
    placements = [v for v in await workload_views(store, caller) if v["namespace"] == namespace
                  and v["name"] == name]
    if not placements:
        raise NotFound(f"no workload {namespace}/{name}")
    kind, _, source = (placements[0]["source"] or f"Workload {name}").partition(" ")
    try:
        versions = list(reversed(await history.versions(store, caller, kind, namespace, source)))
    except NotFound:
        versions = []
    events = list(reversed(await history.workload_events(store, caller, namespace, name)))
    query = request.query_params
    panel: dict[str, Any] | None = None
    node, instance = query.get("logs", ""), query.get("instance", "")
    container = query.get("container", "")[:logs.MAX_CONTAINER_NAME]
    if node:
        panel = {"node": node, "instance": instance, "container": container, "lines": [], "problem": ""}
        if not any(p["node"] == node for p in placements):
            panel["problem"] = f"workload {namespace}/{name} does not run on node {node}"
        else:
            try:
                answer = await logs.fetch_workload_log(store, request.app.state.log_requests, node, namespace,
                                                       name, instance or None,
                                                       logs.tail_param(query.get("tail")), PAGE_LOG_TIMEOUT,
                                                       container or None)
                panel["lines"] = answer["lines"]
            except (logs.NodeSilent, NotFound, ConfigError) as exc:
                panel["problem"] = str(exc)
    window = query.get("window", "1h")
    window = window if window in PLOT_WINDOWS else "1h"
    app_plots, app_instances = await monitoring.app_plots_html(
        store, window, source=f"/workloads/{quote(namespace, safe='')}/{quote(name, safe='')}/metrics",
        workload=f"{namespace}/{name}", nodes={str(p["node"]) for p in placements if p["node"]},
        windows=PLOT_WINDOWS)
    current: Any = next((v["document"] for v in versions if v["current"]), {})
    annotations = current.get("annotations") if isinstance(current, dict) else None
    return show(request, "workload.html", namespace=namespace, name=name, kind=kind, source=source,
                placements=placements, versions=versions, events=events, panel=panel, app_plots=app_plots,
                app_instances=app_instances,
                annotations=annotations if isinstance(annotations, dict) else {})


@get("/workloads/{namespace:str}/{name:str}", summary="One workload: status per node, events, versions, logs",
     **page("apps.read"))
async def workload_page(request: AnyRequest, namespace: FromPath[str], name: FromPath[str]) -> Template:
    return await _workload_page(request, namespace, name)


@post("/workloads/{namespace:str}/{name:str}/rollback", summary="Apply a kept version again (operators)",
      status_code=303, **page("apps.operate", action="roll back"))
async def workload_rollback(request: AnyRequest, namespace: FromPath[str], name: FromPath[str]) -> Response[Any]:
    fields = await form_fields(request)
    raw, kind, source = fields.get("version", ""), fields.get("kind", ""), fields.get("source", "")
    back = f"/workloads/{quote(namespace)}/{quote(name)}"
    try:
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigError(f"rollback: version: expected a version number, got {raw!r}")
        done = await history.rollback(store_of(request), caller_of(request), kind, namespace, source, int(raw))
    except ConfigError as exc:
        flash(request, "error", str(exc))
        return see_other(back)
    flash(request, "ok", f"{kind} {namespace}/{source} rolled back to version {raw}: now version "
                         f"{done['version']}." if done["changed"] else
          f"{kind} {namespace}/{source} runs version {raw}'s spec already.")
    return see_other(back)


@post("/workloads/{namespace:str}/{name:str}/action", summary="Stop, start or restart a workload on one node or "
      "on all of its nodes (operators)", status_code=303,
      **page("apps.operate", action="stop, start or restart workloads"))
async def workload_action(request: AnyRequest, namespace: FromPath[str], name: FromPath[str]) -> Response[Any]:
    fields = await form_fields(request)
    action, node = fields.get("action", ""), fields.get("node", "")
    store, caller, requests = store_of(request), caller_of(request), request.app.state.log_requests
    try:
        lifecycle.check_action(action)
        if node:
            results = [await lifecycle.act_on_node(store, requests, caller, node, namespace, name, action,
                                                   PAGE_LOG_TIMEOUT)]
        else:
            done = await lifecycle.act_everywhere(store, requests, caller, namespace, name, action,
                                                  PAGE_LOG_TIMEOUT)
            results = done["nodes"]
    except logs.NodeSilent as exc:
        results = [{"node": node, "outcome": lifecycle.NO_ANSWER if exc.status == 504 else "error",
                    "detail": str(exc)}]
    except NotFound as exc:  # no such action, or the workload is on no such node (any more)
        flash(request, "error", f"{action} {namespace}/{name}: {exc}")
        return see_other(f"/workloads/{quote(namespace)}/{quote(name)}")
    for result in results:
        flash(request, "ok" if result["outcome"] == "ok" else "error",
              f"{action} {namespace}/{name} on {lifecycle.describe_outcome(result)}")
    return see_other(f"/workloads/{quote(namespace)}/{quote(name)}")


ROUTE_HANDLERS = [workloads_page, workload_page, workload_rollback, workload_action]
