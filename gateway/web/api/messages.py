"""Messages and routes: POST /api/v1/messages/<path> follows the routes whose source is a rest path;
GET /api/v1/routes shows every route with its counters. Registered as a built-in plugin."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post
from litestar.exceptions import ServiceUnavailableException
from litestar.params import FromPath

from gateway.api import GatewayAPI
from gateway.errors import NotFound, StoreError
from gateway.hookspecs import hookimpl
from gateway.web.security import requires

MAX_MESSAGE = 1 << 20


@post("/api/v1/messages/{path:path}", guards=[requires("operator")], summary="Send a message along rest routes",
      tags=["routes"], status_code=202, request_max_body_size=MAX_MESSAGE)
async def post_message(request: Request[Any, Any, Any], path: FromPath[str]) -> Response[dict[str, Any]]:
    gateway: GatewayAPI = request.app.state.gateway
    body = await request.body()
    taken = gateway.routes.from_rest(path, body)
    if not taken:
        raise NotFound(f"no route takes messages for path {path!r}")
    try:
        await gateway.store.flush()  # accepted means durable: the message is committed to the routes' outboxes
    except StoreError as exc:  # queued, and written by a later flush if the store recovers: not durable yet
        raise ServiceUnavailableException(f"the message is queued but not stored yet: {exc}") from None
    return Response({"routes": taken}, status_code=202)


@get("/api/v1/routes", guards=[requires("viewer")], summary="Routes with their counters", tags=["routes"])
async def list_routes(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    gateway: GatewayAPI = request.app.state.gateway
    return gateway.routes.describe()


@get("/api/v1/sinks", guards=[requires("viewer")], summary="Sinks and their outboxes", tags=["routes"])
async def list_sinks(request: Request[Any, Any, Any]) -> dict[str, Any]:
    gateway: GatewayAPI = request.app.state.gateway
    stats = await gateway.store.outboxes.stats()
    return {name: {**described, "outbox_depth": stats.get(name, {}).get("depth", 0),
                   "outbox_oldest": stats.get(name, {}).get("oldest")}
            for name, described in sorted(gateway.sinks().items())}


@hookimpl
def register_routes() -> list[Any]:
    return [post_message, list_routes, list_sinks]
