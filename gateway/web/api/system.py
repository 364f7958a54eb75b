"""Health and status: GET /healthz (public) and GET /api/v1/status."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get

from gateway.api import GatewayAPI
from gateway.web.security import requires


@get("/healthz", summary="Health (no authentication): 200 and status ok, or 503 and what fails", tags=["system"])
async def healthz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    gateway: GatewayAPI = request.app.state.gateway
    health = gateway.store.health
    if health.ok:
        return Response({"status": "ok", "node": gateway.node_name})
    # the gateway runs, but what it reads may not be kept: a probe must not take that for healthy
    return Response({"status": "failing", "node": gateway.node_name,
                     "store": {part: error for part, (error, _) in health.failing.items()}}, status_code=503)


@get("/api/v1/status", guards=[requires("viewer")], summary="Gateway status", tags=["system"])
async def status(request: Request[Any, Any, Any]) -> dict[str, Any]:
    gateway: GatewayAPI = request.app.state.gateway
    return gateway.status()


@get("/api/v1/plugins", guards=[requires("viewer")], summary="Loaded plugins", tags=["system"])
async def plugins(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    from gateway.plugins import list_plugins

    gateway: GatewayAPI = request.app.state.gateway
    return [{"name": p.name, "distribution": p.distribution, "version": p.version, "hooks": list(p.hooks)}
            for p in list_plugins(gateway.pm)]
