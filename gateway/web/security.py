"""Authentication (bearer tokens, or a session cookie with a CSRF token), role guards and where anonymous calls go.

A request carrying `Authorization` is judged by that header alone, exactly as the REST API always did: a
valid bearer token or 401. Without it, the session cookie is used; a session request that changes something
(POST, PUT, PATCH, DELETE) must also carry the session's CSRF token (`gateway.webkit.sessions.check_csrf`).
Bearer requests need no CSRF token: a browser never adds that header by itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.middleware._utils import should_bypass_middleware
from litestar.types import Receive, Scope, Send

from gateway.errors import AuthError, ConfigError
from gateway.resources.schema import VALUE_MAX_LENGTH
from gateway.web.auth import Principal, Role, authenticate_token, check_role
from gateway.web.editing import MAX_UPLOAD_BYTES
from gateway.webkit.sessions import BrowserSessions, Session, check_csrf

# The most a request body may hold, per route (Litestar answers 413 beyond, before reading it when the length is
# announced). The app's default is BODY_DEFAULT; routes that take more say so. Each fits its largest legitimate
# request and nothing near the 10 MB Litestar would take by itself.
BODY_DEFAULT = 64 << 10  # logins, forms, tokens, workload actions, any plugin route that says nothing
BODY_VALUE = 4 * VALUE_MAX_LENGTH + (16 << 10)  # one desired value as JSON: the longest any property may hold
BODY_FORM_VALUE = 12 * VALUE_MAX_LENGTH + (16 << 10)  # the same as a form field: %XX triples each UTF-8 byte
BODY_DOCUMENTS = 3 * MAX_UPLOAD_BYTES + (64 << 10)  # a CSV or YAML upload, or YAML text posted by a form

SESSION_COOKIE = "fieldgate_session"
LOGIN_CSRF_COOKIE = "fieldgate_login_csrf"
PUBLIC_PATHS = {"/healthz", "/login"}
PUBLIC_PREFIXES = ("/static/",)


def is_api_path(path: str) -> bool:
    """API callers get status codes; everything else is a page, and anonymous page requests go to /login."""
    return path.startswith(("/api/", "/schema")) or path == "/metrics"


class SessionAuth:
    """What the middleware attaches as `request.auth` for a cookie session."""

    def __init__(self, sid: str, session: Session) -> None:
        self.sid = sid
        self.session = session


class AuthMiddleware(AbstractAuthenticationMiddleware):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # As the base class, but the connection keeps `receive`: the CSRF check may read a posted form.
        if not should_bypass_middleware(exclude_http_methods=self.exclude_http_methods,
                                        exclude_opt_key=self.exclude_opt_key, exclude_path_pattern=self.exclude,
                                        scope=scope, scopes=self.scopes):
            result = await self.authenticate_request(ASGIConnection(scope, receive=receive))
            scope["user"] = result.user
            scope["auth"] = result.auth
        await self.app(scope, receive, send)

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        store = connection.app.state.gateway.store
        header = connection.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise NotAuthorizedException("authentication required: send Authorization: Bearer <token>")
            try:
                principal = await authenticate_token(store, token.strip())
            except AuthError as exc:
                raise NotAuthorizedException(str(exc)) from None
            return AuthenticationResult(user=principal, auth=token)

        sessions: BrowserSessions = connection.app.state.sessions
        current = sessions.current(connection)
        if current is None:
            raise NotAuthorizedException("authentication required: log in, or send Authorization: Bearer <token>")
        sid, session = current
        found = await store.users.get(session.user)
        if found is None:
            sessions.store.end(sid)
            raise NotAuthorizedException("the user of this session no longer exists")
        try:
            principal = Principal(session.user, check_role(found[0]))
        except ConfigError:
            raise NotAuthorizedException("the user of this session has no valid role") from None
        await check_csrf(connection, session)
        return AuthenticationResult(user=principal, auth=SessionAuth(sid, session))


def requires(role: Role) -> Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], None]:
    """A guard letting through principals with at least `role`."""

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        user = connection.scope.get("user")
        if not isinstance(user, Principal):
            raise NotAuthorizedException("authentication required")
        if not user.can(role):
            raise PermissionDeniedException(f"the {user.role} role cannot do this; {role} or above can")

    guard.__name__ = f"requires_{role}"
    return guard
