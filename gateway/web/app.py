"""create_app(): the Litestar app of one gateway runtime: REST API, pages, static assets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psutil
from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.middleware.base import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from gateway import __version__
from gateway.errors import FieldgateError, NotFound, ValueRejected
from gateway.logs import log_ring
from gateway.runtime import Gateway
from gateway.web.api.devices import DeviceController
from gateway.web.api.logs import logs as logs_api
from gateway.web.api.system import healthz, plugins, status
from gateway.web.monitor import recent_errors, state_history
from gateway.web.pages import admin, devices, editor, login, logs, overview, workloads
from gateway.web.pages.common import render, setup_engine
from gateway.web.security import PUBLIC_PATHS, PUBLIC_PREFIXES, AuthMiddleware, is_api_path
from gateway.web.sessions import LoginLimiter, SessionStore

WEB = Path(__file__).resolve().parent
PAGES = [
    login.login_form, login.login, login.logout,
    overview.dashboard, overview.models, overview.endpoints, overview.sinks, overview.plugins,
    devices.device_list, devices.device_page, devices.device_events, devices.device_plot, devices.set_desired,
    editor.model_form, editor.model_save, editor.device_form, editor.device_save, editor.yaml_editor,
    editor.yaml_apply, editor.delete_resource, editor.import_form, editor.import_preview, editor.import_apply,
    admin.audit, admin.users, admin.user_add, admin.token_create, admin.token_revoke, admin.settings,
    admin.settings_save, logs.logs_page, *workloads.PAGES,
]
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none';"
                               " base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def _error(status_code: int) -> Any:
    def handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        if is_api_path(request.url.path):
            return Response({"status_code": status_code, "detail": str(exc)}, status_code=status_code)
        return render(request, "error.html", status_code=status_code, code=status_code, message=str(exc))

    return handler


def _not_authorized(request: Request[Any, Any, Any], exc: NotAuthorizedException) -> Response[Any]:
    """Anonymous API calls get 401; anonymous page requests go to the login form (303)."""
    if is_api_path(request.url.path):
        return Response({"status_code": 401, "detail": exc.detail}, status_code=401,
                        headers={"WWW-Authenticate": "Bearer"})
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    next_part = "" if target == "/" else f"?next={_quote(target)}"
    return Redirect(f"/login{next_part}", status_code=303)


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if is_api_path(request.url.path) or exc.status_code < 400:
        return Response({"status_code": exc.status_code, "detail": exc.detail}, status_code=exc.status_code,
                        headers=exc.headers)
    return render(request, "error.html", status_code=exc.status_code, code=exc.status_code, message=exc.detail)


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="/")


async def _security_headers(response: Response[Any]) -> Response[Any]:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def create_app(gateway: Gateway) -> Litestar:
    plugin_routes = [route for routes in gateway.pm.hook.register_routes() for route in routes]
    recent_errors()  # counts warnings and errors from now on, for the dashboard
    log_ring()  # the recent log, when `fieldgate run` has not installed it already
    state_history(gateway)
    psutil.cpu_percent(interval=None)  # the first reading is meaningless; later ones cover the time between
    exclude = [f"^{p}$" for p in sorted(PUBLIC_PATHS)] + [f"^{p}" for p in PUBLIC_PREFIXES]
    return Litestar(
        route_handlers=[
            healthz, status, plugins, logs_api, DeviceController, *PAGES, *plugin_routes,
            create_static_files_router(path="/static", directories=[WEB / "static"], include_in_schema=False,
                                       cache_control=None),
        ],
        state=State({"gateway": gateway, "sessions": SessionStore(), "login_limiter": LoginLimiter()}),
        middleware=[DefineMiddleware(AuthMiddleware, exclude=exclude)],
        template_config=TemplateConfig(directory=WEB / "templates", engine=JinjaTemplateEngine,
                                       engine_callback=setup_engine),
        exception_handlers={
            NotAuthorizedException: _not_authorized,
            PermissionDeniedException: _http_error,
            NotFound: _error(404),
            ValueRejected: _error(400),
            FieldgateError: _error(400),
            HTTPException: _http_error,
        },
        after_request=_security_headers,
        # the document only (it needs a login, as every API route): the UIs Litestar can add (Swagger, ReDoc,
        # Elements, RapiDoc) load scripts from CDNs, which the pages' CSP rightly refuses
        openapi_config=OpenAPIConfig(
            title="fieldgate", version=__version__, path="/schema", render_plugins=[JsonRenderPlugin()],
            components=Components(security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}),
            security=[{"bearer": []}],
        ),
        logging_config=None,
        debug=False,
    )
