"""Read-only pages: the dashboard, models, endpoints and routes, sinks and outboxes, plugins."""

from __future__ import annotations

import os
import time
from typing import Any

import psutil
from litestar import get
from litestar.response import Template

from gateway.api import GatewayAPI
from gateway.ops.sampler import WINDOWS, local_plots_html
from gateway.plugins import list_plugins
from gateway.web.monitor import recent_errors
from gateway.web.pages.common import AnyRequest, gateway_of, joined_registry, render
from gateway.web.security import requires

viewer = [requires("viewer")]
DEVICE_STATES = ("online", "unhealthy", "offline", "unknown")


def host_metrics(gateway: GatewayAPI) -> dict[str, Any]:
    """CPU, memory and disk of the box; psutil's CPU figure is the load since the previous call."""
    memory = psutil.virtual_memory()
    try:
        disk: Any = psutil.disk_usage(str(gateway.data_dir))
    except OSError:
        disk = None
    process = psutil.Process(os.getpid())
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "cpu_count": psutil.cpu_count() or 1,
        "memory_percent": memory.percent,
        "memory_used": memory.total - memory.available,
        "memory_total": memory.total,
        "process_rss": process.memory_info().rss,
        "disk_percent": disk.percent if disk else None,
        "disk_free": disk.free if disk else None,
        "disk_total": disk.total if disk else None,
    }


def _flat(value: Any) -> Any:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items() if v is not None) or "\u2013"
    return value


def outbox_rows(status: dict[str, Any]) -> list[dict[str, Any]]:
    """Sinks and their outboxes as the runtime reports them (name -> counters), flattened for a table."""
    rows = []
    for key in ("outboxes", "sinks"):
        section = status.get(key)
        items = section.items() if isinstance(section, dict) else enumerate(section or [])
        for name, value in items:
            fields = value if isinstance(value, dict) else {"value": value}
            rows.append({"section": key, "name": str(fields.get("name", name)),
                         **{k: _flat(v) for k, v in fields.items() if k != "name" and v is not None}})
    return rows


def route_counters(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    counters: dict[str, dict[str, Any]] = {}
    for row in status.get("routes") or []:
        if isinstance(row, dict):
            key = f"{row.get('namespace', 'default')}/{row.get('name', '')}"
            counters[key] = {k: _flat(v) for k, v in row.items()
                             if k not in ("namespace", "name", "source", "target") and v is not None}
    return counters


@get("/", guards=viewer, summary="Dashboard: health, uplink, host, devices, outboxes, recent errors",
     include_in_schema=False)
async def dashboard(request: AnyRequest) -> Template:
    gateway = gateway_of(request)
    status = gateway.status()
    devices = status.get("devices", {})
    errors = recent_errors().since(3600)
    tasks = status.get("tasks", {})
    failing = [name for name, task in tasks.items() if task.get("state") not in ("running", "done")]
    window = request.query_params.get("plots", "1h")
    window = window if window in WINDOWS else "1h"
    return render(
        request, "dashboard.html",
        status=status,
        health="degraded" if failing else "ok",
        failing=failing,
        device_counts=[(state, devices.get(state, 0)) for state in DEVICE_STATES],
        device_total=devices.get("total", 0),
        host=host_metrics(gateway),
        plots=local_plots_html(gateway, window),
        plot_window=window,
        plot_windows=list(WINDOWS),
        outboxes=outbox_rows(status),
        errors_last_hour=len(errors),
        last_errors=list(reversed(errors))[:8],
        registry=joined_registry(gateway),
        uplink=tasks.get("uplink"),
        eventbus=status.get("eventbus") or {},
        started_at=gateway.started_at,
        now=time.time(),
    )


@get("/models", guards=viewer, summary="Device models with their properties", include_in_schema=False)
async def models(request: AnyRequest) -> Template:
    gateway = gateway_of(request)
    used: dict[str, int] = {}
    for bound in gateway.config.devices.values():
        if bound.resource.model:
            key = f"{bound.resource.namespace}/{bound.resource.model}"
            used[key] = used.get(key, 0) + 1
    rows = sorted(gateway.config.models.values(), key=lambda m: (m.namespace, m.name))
    return render(request, "models.html", models=rows, used=used)


@get("/endpoints", guards=viewer, summary="Message endpoints and routes", include_in_schema=False)
async def endpoints(request: AnyRequest) -> Template:
    gateway = gateway_of(request)
    status = gateway.status()
    counters = route_counters(status)
    return render(request, "endpoints.html",
                  endpoints=sorted(gateway.config.endpoints.values(), key=lambda e: (e.namespace, e.name)),
                  routes=sorted(gateway.config.routes.values(), key=lambda r: (r.namespace, r.name)),
                  counters=counters)


@get("/sinks", guards=viewer, summary="Sinks and their outboxes", include_in_schema=False)
async def sinks(request: AnyRequest) -> Template:
    gateway = gateway_of(request)
    status = gateway.status()
    return render(request, "sinks.html", outboxes=outbox_rows(status), store=status.get("store", {}),
                  tasks=status.get("tasks", {}))


@get("/plugins", guards=viewer, summary="Loaded plugins", include_in_schema=False)
async def plugins(request: AnyRequest) -> Template:
    gateway = gateway_of(request)
    return render(request, "plugins.html", plugins=list_plugins(gateway.pm),
                  protocols=sorted(gateway.protocols))
