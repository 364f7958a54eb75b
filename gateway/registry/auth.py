"""Who is calling the registry: a node by its client certificate (mutual TLS), a user by a bearer API token."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException

from gateway.errors import AuthError
from gateway.registry.ca import peer_identity
from gateway.registry.store import ROLES, RegistryStore

AnyRequest = Request[Any, Any, Any]


def store_of(request: AnyRequest) -> RegistryStore:
    store: RegistryStore = request.app.state.store
    return store


async def client_node(request: AnyRequest) -> str:
    """The node name of the verified client certificate (ASGI TLS extension); refused when revoked or unknown."""
    extensions: dict[str, Any] = dict(request.scope.get("extensions") or {})
    chain: list[str] = (extensions.get("tls") or {}).get("client_cert_chain") or []
    if not chain:
        raise NotAuthorizedException("a client certificate from the registry CA is required")
    name, serial = peer_identity(chain[0])
    try:
        await store_of(request).check_certificate(name, serial)
    except AuthError as exc:
        raise PermissionDeniedException(str(exc)) from None
    return name


async def require_role(request: AnyRequest, role: str) -> str:
    """The role of the request's bearer token, refused below `role`."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise NotAuthorizedException("an API token is required (Authorization: Bearer <token> from "
                                     "`fieldgate registry token create`)")
    try:
        have = await store_of(request).api_token_role(token.strip())
    except AuthError as exc:
        raise NotAuthorizedException(str(exc)) from None
    if ROLES.index(have) < ROLES.index(role):
        raise PermissionDeniedException(f"the {have} role cannot do this ({role} or more is needed)")
    return have
