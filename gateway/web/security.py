"""Authentication middleware (bearer tokens) and role guards for every route."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from gateway.auth import Principal, Role, authenticate_token
from gateway.errors import AuthError

PUBLIC_PATHS = {"/healthz"}


class BearerAuthMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        header = connection.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthorizedException("authentication required: send Authorization: Bearer <token>")
        store = connection.app.state.gateway.store
        try:
            principal = await authenticate_token(store, token.strip())
        except AuthError as exc:
            raise NotAuthorizedException(str(exc)) from None
        return AuthenticationResult(user=principal, auth=token)


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
