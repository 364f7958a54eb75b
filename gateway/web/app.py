"""create_app(): the Litestar app of one gateway runtime: REST API, pages, static assets."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import psutil
from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.middleware.base import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from gateway import __version__
from gateway.api import GatewayAPI
from gateway.errors import FieldgateError, NotFound, StoreError, ValueRejected
from gateway.logs import log_ring
from gateway.web.api import files as files_api
from gateway.web.api.devices import DeviceController
from gateway.web.api.logs import logs as logs_api
from gateway.web.api.system import healthz, plugins, status
from gateway.web.monitor import recent_errors, state_history
from gateway.web.pages import admin, devices, editor, live, login, logs, overview, plots, services, workloads
from gateway.web.pages.common import render
from gateway.web.security import (
    BODY_DEFAULT,
    LOGIN_CSRF_COOKIE,
    PUBLIC_PATHS,
    PUBLIC_PREFIXES,
    SESSION_COOKIE,
    AuthMiddleware,
    is_api_path,
)
from gateway.webkit.application import Application
from gateway.webkit.assets import compression_config
from gateway.webkit.errors import (
    CheckedRequest,
    OpenAPIJson,
    add_request_id,
    error_response,
    http_error_detail,
    internal_error,
)
from gateway.webkit.headers import add_security_headers, complete_options_allow
from gateway.webkit.pages import login_redirect
from gateway.webkit.sessions import BrowserSessions
from gateway.webkit.templating import static_files, template_config

WEB = Path(__file__).resolve().parent
STATIC = (WEB / "static",)  # the node UI's own assets, before the shared ones
PAGES = [
    login.login_form, login.login, login.logout,
    overview.dashboard, overview.models, overview.endpoints, overview.sinks, overview.plugins,
    devices.device_list, devices.device_page, devices.device_events, devices.device_plot, devices.set_desired,
    editor.model_form, editor.model_save, editor.device_form, editor.device_save, editor.yaml_editor,
    editor.yaml_apply, editor.delete_resource, editor.import_form, editor.import_preview, editor.import_apply,
    admin.audit, admin.users, admin.user_add, admin.token_create, admin.token_revoke, admin.settings,
    admin.settings_save, logs.logs_page, *workloads.PAGES, *services.PAGES, *live.PAGES, *plots.PAGES,
]

Lifespan = Callable[[Litestar], AbstractAsyncContextManager[None]]


def _page_error(request: Request[Any, Any, Any], status_code: int, message: str, headers: Mapping[str, str]
                ) -> Response[Any]:
    page = render(request, "error.html", status_code=status_code, code=status_code, message=message)
    page.headers.update(headers)
    return page


def _error(status_code: int) -> Any:
    def handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        if is_api_path(request.url.path):
            return error_response(request, status_code, str(exc))
        return _page_error(request, status_code, str(exc), {})

    return handler


def _not_authorized(request: Request[Any, Any, Any], exc: NotAuthorizedException) -> Response[Any]:
    """Anonymous API calls get 401; anonymous page requests go to the login form (303)."""
    if is_api_path(request.url.path):
        return error_response(request, 401, exc.detail, {"WWW-Authenticate": "Bearer"})
    return login_redirect(request)


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if exc.status_code == 413 and exc.detail == "Request Entity Too Large":  # Litestar's own, which says no more
        limit = request.route_handler.resolve_request_max_body_size()
        exc = HTTPException(status_code=413, detail=f"the request body is larger than the {limit} bytes "
                            f"{request.method} {request.url.path} takes")
    if is_api_path(request.url.path) or exc.status_code < 400:
        return error_response(request, exc.status_code, http_error_detail(exc), exc.headers)
    return _page_error(request, exc.status_code, exc.detail, exc.headers or {})


def create_app(gateway: GatewayAPI, *, lifespan: Sequence[Lifespan] = ()) -> Litestar:
    """The app of one gateway; `lifespan` context managers run around serving it (gateway.web.server starts and
    stops the gateway with one)."""
    plugin_routes = [route for routes in gateway.pm.hook.register_routes() for route in routes]
    recent_errors()  # counts warnings and errors from now on, for the dashboard
    log_ring()  # the recent log, when `fieldgate run` has not installed it already
    state_history(gateway)
    psutil.cpu_percent(interval=None)  # the first reading is meaningless; later ones cover the time between
    exclude = [f"^{p}$" for p in sorted(PUBLIC_PATHS)] + [f"^{p}" for p in PUBLIC_PREFIXES]
    return Application(
        route_handlers=[
            healthz, status, plugins, logs_api, DeviceController, *files_api.ROUTES, *PAGES, *plugin_routes,
            static_files(*STATIC),
        ],
        state=State({"gateway": gateway, "sessions": BrowserSessions(SESSION_COOKIE, LOGIN_CSRF_COOKIE)}),
        middleware=[DefineMiddleware(AuthMiddleware, exclude=exclude)],
        template_config=template_config(WEB / "templates", app_static=STATIC),
        compression_config=compression_config(),
        exception_handlers={
            NotAuthorizedException: _not_authorized,
            PermissionDeniedException: _http_error,
            NotFound: _error(404),
            ValueRejected: _error(400),
            StoreError: _error(503),  # the store fails, not the request
            FieldgateError: _error(400),
            HTTPException: _http_error,
            Exception: internal_error(_page_error, is_page=lambda path: not is_api_path(path)),
        },
        request_class=CheckedRequest,
        before_send=[add_security_headers, add_request_id, complete_options_allow],
        # the document only (it needs a login, as every API route): the UIs Litestar can add (Swagger, ReDoc,
        # Elements, RapiDoc) load scripts from CDNs, which the pages' CSP rightly refuses
        openapi_config=OpenAPIConfig(
            title="fieldgate", version=__version__, path="/schema", render_plugins=[OpenAPIJson()],
            components=Components(security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}),
            security=[{"bearer": []}],
        ),
        lifespan=list(lifespan),
        request_max_body_size=BODY_DEFAULT,  # routes that take more say so (gateway.web.security)
        logging_config=None,
        debug=False,
    )
