"""The Services page: every service on the node with its address and DNS name, its endpoints (this node's ready
instances and the fleet's as the registry last sent them), the counters per endpoint and path (local, direct,
relay; served: other nodes' connections to this node's instances) and the recent endpoint events."""

from __future__ import annotations

from litestar import get
from litestar.response import Template

from gateway.web.pages.common import AnyRequest, gateway_of, render
from gateway.web.security import requires


@get("/services", guards=[requires("viewer")], summary="Services, their endpoints and counters",
     include_in_schema=False)
async def services_page(request: AnyRequest) -> Template:
    mesh = gateway_of(request).services
    return render(request, "services.html", services=mesh.describe(), status=mesh.status(),
                  events=list(reversed(mesh.events[-50:])))


PAGES = [services_page]
