"""Who is calling the registry: a node by its client certificate (mutual TLS), a user by a bearer API token."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException

from gateway.errors import AuthError
from gateway.registry.access import DEFAULT_WORKSPACE, Caller, node_workspace, resolve
from gateway.registry.ca import peer_identity
from gateway.registry.store import RegistryStore

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


async def node_caller(request: AnyRequest) -> Caller:
    """The calling node (client certificate) as a viewer of its own workspace."""
    name = await client_node(request)
    workspace = await node_workspace(store_of(request), name) or DEFAULT_WORKSPACE
    return await resolve(store_of(request), f"node:{name}", "viewer", f"workspace:{workspace}")
