"""Services at the registry: every Service in the caller's scope with its endpoints (node, instance, whether the
node takes direct streams or is reached through the relay, readiness and ports), as the registry computes them from
placements and the nodes' reports, the counters and the events the nodes report with their heartbeats."""

from __future__ import annotations

from litestar import get
from litestar.response import Template

from gateway.registry.access import AnyRequest
from gateway.registry.pages.common import caller_of, page, show, store_of
from gateway.registry.services import service_views


@get("/services", summary="Services at the registry with their endpoints across the fleet", **page("apps.read"))
async def services_page(request: AnyRequest) -> Template:
    return show(request, "services.html", services=await service_views(store_of(request), caller_of(request)))


ROUTE_HANDLERS = [services_page]
