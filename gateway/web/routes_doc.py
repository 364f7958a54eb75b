"""The route table of the web app (method, path, required role, summary), for docs and the guard test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar.handlers import HTTPRouteHandler

from gateway.web.security import PUBLIC_PATHS, PUBLIC_PREFIXES, is_api_path
from gateway.webkit.routes import app_routes as app_routes  # the table of either app; imported from here too


def required_role(handler: HTTPRouteHandler, path: str = "") -> str:
    """The role a handler's guard asks for, "public" for the public paths, else "authenticated"."""
    for guard in handler.guards or ():
        name = getattr(guard, "__name__", "")
        if name.startswith("requires_"):
            return name.removeprefix("requires_")
    paths = {*handler.paths, path} - {""}
    if paths & PUBLIC_PATHS or any(p.startswith(PUBLIC_PREFIXES) for p in paths):
        return "public"
    return "authenticated"


def route_table(*, pages: bool = False) -> list[tuple[str, str, str, str]]:
    """(method, path, role, summary) of the REST API routes, or with `pages` of the UI's page routes."""
    from gateway.plugins import get_plugin_manager
    from gateway.resources.loader import Config
    from gateway.resources.schema import Gateway as GatewayDoc
    from gateway.runtime import Gateway
    from gateway.web.app import create_app

    gateway = Gateway(Config(gateway=GatewayDoc(name="docs")), Path("/nonexistent"),
                      get_plugin_manager(load_entry_points=False))
    app = create_app(gateway.api)
    rows: list[tuple[str, str, str, str]] = []
    for method, path, handler in app_routes(app):
        if path.startswith(("/schema", "/static")) or (is_api_path(path) or path == "/healthz") == pages:
            continue
        summary: Any = handler.summary or (handler.fn.__doc__ or "").strip().splitlines()[0:1]
        rows.append((method, path, required_role(handler, path), summary if isinstance(summary, str) else ""))
    return rows
