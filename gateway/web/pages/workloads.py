"""The Workloads pages: every edge app with its status, and one app's instances, events, recent logs (followed by
a script polling the API with its cursor) and kept versions; stop and restart (operator), roll back (admin)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import get, post
from litestar.params import FromPath
from litestar.response import Redirect, Template

from gateway.errors import ConfigError, NotFound
from gateway.web.pages.common import AnyRequest, actor, flash, gateway_of, render
from gateway.web.pages.plots import app_plots
from gateway.web.security import requires
from gateway.webkit.pages import form_fields, see_other
from gateway.webkit.templating import badge_class

RECENT_EVENTS = 50
RECENT_LOG_LINES = 100
MAX_CONTAINER_NAME = 63  # a ?container= longer than any container name is cut there


def badge(status: str) -> str:
    """The badge colour of a workload or instance status (green, amber, red), as on the registry's pages."""
    return badge_class(status)


def _summary(workload: dict[str, Any]) -> dict[str, Any]:
    instances = workload["instances"]
    return {**workload, "badge": badge(workload["status"]), "restarts": sum(i["restarts"] for i in instances)}


@get("/workloads", guards=[requires("viewer")], summary="Edge apps and their status", include_in_schema=False)
async def workload_list(request: AnyRequest) -> Template:
    workloads = [_summary(w) for w in gateway_of(request).workloads.describe()]
    return render(request, "workloads.html", workloads=workloads)


@get("/workloads/{namespace:str}/{name:str}", guards=[requires("viewer")], summary="One edge app",
     include_in_schema=False)
async def workload_page(request: AnyRequest, namespace: FromPath[str], name: FromPath[str]) -> Template:
    manager = gateway_of(request).workloads
    runner = manager.runner(namespace, name)
    workload = _summary(runner.describe())
    events = await manager.history.events(namespace, name, limit=RECENT_EVENTS)
    log = manager.log(namespace, name)
    container = request.query_params.get("container", "")[:MAX_CONTAINER_NAME] or None
    lines = log.read(tail=RECENT_LOG_LINES, container=container)
    cursor = lines[-1].seq if lines else log.seq
    versions = [{**v, "spec": msgspec.json.decode(v["spec"]), "current": v["version"] == runner.version}
                for v in reversed(await manager.history.versions(namespace, name))]
    figures = [{"instance": f.instance, "latest": f.latest} for f in manager.figures.of_workload(runner.id)
               if f.latest is not None]
    plots = app_plots(gateway_of(request), runner.id, request.query_params.get("window", "15m"))
    containers = [{"instance": i["id"], **c} for i in workload["instances"] for c in i.get("containers") or ()]
    return render(request, "workload.html", workload=workload, events=sorted(events, key=lambda e: -e["id"]),
                  lines=lines, cursor=cursor, versions=versions, badge=badge, figures=figures, plots=plots,
                  containers=containers, container=container or "")


def _back(namespace: str, name: str) -> Redirect:
    return see_other(f"/workloads/{namespace}/{name}")


@post("/workloads/{namespace:str}/{name:str}/rollback", guards=[requires("admin")],
      summary="Deploy a kept version again (form)", include_in_schema=False, status_code=303)
async def workload_rollback(request: AnyRequest, namespace: FromPath[str], name: FromPath[str]) -> Redirect:
    raw = (await form_fields(request)).get("version", "")
    who, address = actor(request)
    try:
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigError(f"rollback form: version: expected a version number, got {raw!r}")
        version = await gateway_of(request).workloads.rollback(namespace, name, int(raw), actor=who,
                                                               address=address)
    except (ConfigError, NotFound) as exc:
        flash(request, "error", str(exc))
        return _back(namespace, name)
    flash(request, "ok", f"rolled back to version {raw}: now version {version}")
    return _back(namespace, name)


DONE = {"stop": "stopped", "start": "starting", "restart": "restarting"}


@post("/workloads/{namespace:str}/{name:str}/{action:str}", guards=[requires("operator")],
      summary="Stop, start or restart (form)", include_in_schema=False, status_code=303)
async def workload_action(request: AnyRequest, namespace: FromPath[str], name: FromPath[str],
                          action: FromPath[str]) -> Redirect:
    who, address = actor(request)
    changed = await gateway_of(request).workloads.user_action(action, namespace, name, actor=who, address=address)
    flash(request, "ok", f"{namespace}/{name} {DONE[action]}" if changed else f"{namespace}/{name} was not stopped")
    return _back(namespace, name)


PAGES = [workload_list, workload_page, workload_rollback, workload_action]
