"""The route table of a Litestar app (method, path, handler), for the generated docs and the guard tests of both
apps."""

from __future__ import annotations

from litestar import Litestar
from litestar.handlers import HTTPRouteHandler


def app_routes(app: Litestar) -> list[tuple[str, str, HTTPRouteHandler]]:
    rows = []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if isinstance(handler, HTTPRouteHandler):
                for method in sorted(handler.http_methods):
                    if method not in ("HEAD", "OPTIONS"):
                        rows.append((method, route.path, handler))
    return sorted(rows, key=lambda row: (row[1], row[0]))
