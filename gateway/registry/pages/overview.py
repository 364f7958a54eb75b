"""The overview at `/`: how many nodes, apps and devices are up, the open upgrade tasks and the recent alerts (nodes
gone offline, failed workloads, desired values a node refused), each number a link to its list."""

from __future__ import annotations

import time
from typing import Any

from litestar import get
from litestar.response import Template

from gateway.registry import access, twins, upgrades
from gateway.registry.access import AnyRequest
from gateway.registry.pages.common import caller_of, page, show, store_of
from gateway.registry.pages.workloads import FAILED
from gateway.registry.workloads import workload_views

MAX_ALERTS = 20
RUNNING = ("running", "completed")  # the workload statuses the overview counts as running


def alerts(nodes: list[dict[str, Any]], workloads: list[dict[str, Any]],
           devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest alerts: nodes offline, failed workloads and refused desired values, each with its time, what it
    is about (a link) and why."""
    found = [{"at": node["last_heartbeat"] or node["joined_at"], "kind": "node offline", "subject": node["name"],
              "href": f"/nodes/{node['name']}", "reason": node["reason"]}
             for node in nodes if node["status"] == "offline"]
    found += [{"at": view["reported_at"], "kind": "workload failed", "subject": f"{view['namespace']}/{view['name']}"
               f" on {view['node']}", "href": f"/workloads/{view['namespace']}/{view['name']}",
               "reason": view["reason"]} for view in workloads if view["status"] in FAILED]
    for device in devices:
        for prop, twin in device["twin"].items():
            if twin.get("desired_status") == "rejected":
                found.append({"at": twin.get("desired_at"), "kind": "desired value refused",
                              "subject": f"{device['namespace']}/{device['name']} {prop}={twin['desired']!r} on "
                                         f"{device['node']}",
                              "href": f"/devices/{device['namespace']}/{device['name']}?node={device['node']}",
                              "reason": twin.get("desired_error", "")})
    return sorted(found, key=lambda alert: alert["at"] or 0, reverse=True)[:MAX_ALERTS]


def figures(nodes: list[dict[str, Any]], placed: list[dict[str, Any]], devices: list[dict[str, Any]],
            tasks: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """The overview's numbers, from what the user sees: nodes by state, placed workloads running and failed,
    devices online, upgrade tasks open (running, as the tile's link lists them)."""

    def count(items: list[dict[str, Any]], key: str, *values: str) -> int:
        return sum(1 for item in items if item[key] in values)

    online = count(devices, "state", "online")
    return {
        "nodes": {"healthy": count(nodes, "status", "healthy"), "offline": count(nodes, "status", "offline"),
                  "joined": count(nodes, "status", "joined"), "total": len(nodes)},
        "apps": {"running": count(placed, "status", *RUNNING), "failed": count(placed, "status", *FAILED),
                 "total": len(placed)},
        "devices": {"online": online, "not_online": len(devices) - online, "total": len(devices)},
        "upgrades": {"open": count(tasks, "state", upgrades.RUNNING), "total": len(tasks)},
    }


@get("/", summary="Overview: nodes, apps and devices up, open upgrade tasks, recent alerts", **page())
async def overview(request: AnyRequest) -> Template:
    store, caller = store_of(request), caller_of(request)
    # each figure only for a role that may see what it counts
    nodes = await access.visible_nodes(store, caller) if caller.can("nodes.read") else []
    placed = [view for view in await workload_views(store, caller) if view["node"]] if caller.can("apps.read") else []
    devices = (await twins.visible(store, caller, await twins.device_views(store)) if caller.can("devices.read")
               else [])
    tasks = await upgrades.task_views(store, caller) if caller.can("upgrades.read") else []
    return show(request, "overview.html", figures=figures(nodes, placed, devices, tasks),
                alerts=alerts(nodes, placed, devices), now=time.time())


ROUTE_HANDLERS = [overview]
