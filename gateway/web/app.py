"""create_app(): the Litestar app of one gateway runtime."""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.middleware.base import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from gateway import __version__
from gateway.errors import FieldgateError, NotFound, ValueRejected
from gateway.runtime import Gateway
from gateway.web.api.devices import DeviceController
from gateway.web.api.system import healthz, plugins, status
from gateway.web.security import PUBLIC_PATHS, BearerAuthMiddleware


def _error(status_code: int) -> Any:
    def handler(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
        return Response({"status_code": status_code, "detail": str(exc)}, status_code=status_code)

    return handler


def create_app(gateway: Gateway) -> Litestar:
    plugin_routes = [route for routes in gateway.pm.hook.register_routes() for route in routes]
    return Litestar(
        route_handlers=[healthz, status, plugins, DeviceController, *plugin_routes],
        state=State({"gateway": gateway}),
        middleware=[DefineMiddleware(BearerAuthMiddleware, exclude=[f"^{p}$" for p in PUBLIC_PATHS])],
        exception_handlers={
            NotFound: _error(404),
            ValueRejected: _error(400),
            FieldgateError: _error(400),
        },
        openapi_config=OpenAPIConfig(
            title="fieldgate", version=__version__, path="/schema",
            components=Components(security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}),
            security=[{"bearer": []}],
        ),
        logging_config=None,
        debug=False,
    )
