"""Services on the node: /api/v1/services (address, ports, endpoints in the fleet and this node's own, counters per
endpoint and path), one service, applying and deleting local Service documents, and the recent endpoint events.
Registered as a built-in plugin."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, delete, get, post
from litestar.params import FromPath, JSONBody

from gateway.api import GatewayAPI
from gateway.errors import ConfigError, NotFound
from gateway.hookspecs import hookimpl
from gateway.web.editing import dump_yaml
from gateway.web.security import requires
from gateway.webkit.pages import client_address

MAX_DOCUMENT = 1 << 20


def _gateway(request: Request[Any, Any, Any]) -> GatewayAPI:
    gateway: GatewayAPI = request.app.state.gateway
    return gateway


class ServiceController(Controller):
    path = "/api/v1/services"
    tags = ["services"]

    @get("/", guards=[requires("viewer")], summary="Services with their address, endpoints and counters")
    async def list_services(self, request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
        return _gateway(request).services.describe()

    @post("/", guards=[requires("admin")], summary="Create or change a local service (a Service document)",
          status_code=201, request_max_body_size=MAX_DOCUMENT)
    async def apply(self, request: Request[Any, Any, Any], data: JSONBody[dict[str, Any]]) -> dict[str, Any]:
        gateway = _gateway(request)
        if data.get("kind", "Service") != "Service":
            raise ConfigError(f"request body: $.kind: expected Service, got {data.get('kind')!r}")
        document = {"kind": "Service", **{k: v for k, v in data.items() if k != "kind"}}
        await gateway.resources.apply_documents(dump_yaml([document]), actor=request.user.name,
                                                address=client_address(request))
        view = gateway.services.view(str(document.get("namespace", "default")), str(document.get("name")))
        if view is None:
            raise NotFound(f"no service {document.get('name')}")
        return view

    @get("/events", guards=[requires("viewer")], summary="Recent service events (listening, endpoints changed, "
                                                         "removed), the newest 200, newest last")
    async def events(self, request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
        return list(_gateway(request).services.events[-200:])

    @get("/{namespace:str}/{name:str}", guards=[requires("viewer")], summary="One service")
    async def get_service(self, request: Request[Any, Any, Any], namespace: FromPath[str], name: FromPath[str]
                          ) -> dict[str, Any]:
        view = _gateway(request).services.view(namespace, name)
        if view is None:
            raise NotFound(f"no service {namespace}/{name}")
        return view

    @delete("/{namespace:str}/{name:str}", guards=[requires("admin")], summary="Delete a local service",
            status_code=200)
    async def delete_service(self, request: Request[Any, Any, Any], namespace: FromPath[str],
                             name: FromPath[str]) -> dict[str, str]:
        await _gateway(request).resources.delete_resource("Service", namespace, name, actor=request.user.name,
                                                          address=client_address(request))
        return {"deleted": f"{namespace}/{name}"}


@hookimpl
def register_routes() -> list[Any]:
    return [ServiceController]
