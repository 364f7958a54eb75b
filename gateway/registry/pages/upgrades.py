"""Upgrade tasks, read-only: each task with the status of its nodes (`fieldgate registry upgrade create` starts one)."""

from __future__ import annotations

from litestar import get
from litestar.response import Template

from gateway.registry import upgrades
from gateway.registry.access import AnyRequest
from gateway.registry.pages.common import caller_of, page, show, store_of


@get("/upgrades", summary="Upgrade tasks with the status of every node (?state=running)", **page("viewer"))
async def upgrades_page(request: AnyRequest) -> Template:
    tasks = await upgrades.task_views(store_of(request), caller_of(request))
    state = request.query_params.get("state", "")
    shown = [task for task in reversed(tasks) if not state or task["state"] == state]
    return show(request, "upgrades.html", tasks=shown, total=len(tasks), state=state)


ROUTE_HANDLERS = [upgrades_page]
