"""The security headers of both web apps: one definition, added to every response either app sends."""

from __future__ import annotations

from litestar.datastructures import MutableScopeHeaders
from litestar.types import Message, Scope

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none';"
                               " base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


async def add_security_headers(message: Message, scope: Scope) -> None:
    """A Litestar `before_send` hook: pages, API answers, errors and static files get the headers they lack."""
    # Here rather than in `after_request`, which never sees the answers of exception handlers.
    if message["type"] != "http.response.start":
        return
    headers = MutableScopeHeaders.from_message(message)
    for name, value in SECURITY_HEADERS.items():
        if name not in headers:
            headers[name] = value


async def complete_options_allow(message: Message, scope: Scope) -> None:
    """A Litestar `before_send` hook: an OPTIONS answer's Allow lists every method of its path. Litestar's own lists
    only the methods of the handlers registered for the path before its OPTIONS handler was made."""
    if message["type"] != "http.response.start" or scope.get("method") != "OPTIONS":
        return
    headers = MutableScopeHeaders.from_message(message)
    handler, app = scope.get("route_handler"), scope.get("app")
    if "allow" not in headers or handler is None or app is None:
        return
    methods = {method for path in handler.paths for method in app.route_handler_method_map.get(path, {})}
    if methods:
        headers["Allow"] = ", ".join(sorted(methods))
