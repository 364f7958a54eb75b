"""GET /metrics: the gateway's state in the Prometheus text format (a built-in plugin).

One collector reads the live state at scrape time (poller and sink counters, the supervisor, psutil), so nothing
is counted twice. Like every other route it needs a bearer token or a session (viewer or above). The plugin also
samples the node's resources every 10 s for the dashboard's plots (task `node-monitor`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar import Request, Response, get

from gateway.hookspecs import hookimpl
from gateway.web.security import requires

if TYPE_CHECKING:
    from gateway.api import GatewayAPI

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@get("/metrics", guards=[requires("viewer")], summary="Metrics in the Prometheus text format", tags=["system"],
     media_type=CONTENT_TYPE)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    from gateway.ops.prometheus import scrape  # prometheus_client is loaded on the first scrape, not at start

    return Response(await scrape(request.app.state.gateway), media_type=CONTENT_TYPE)


@hookimpl
def register_routes() -> list[Any]:
    return [metrics]


@hookimpl
def startup(gateway: GatewayAPI) -> None:
    from gateway.ops.sampler import start_local_monitor

    start_local_monitor(gateway)
