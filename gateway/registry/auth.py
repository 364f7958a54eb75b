"""Who is calling the registry: a node by its client certificate (mutual TLS), a user by a bearer API token."""

from __future__ import annotations

from typing import Any, cast

from litestar import Request
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException

from gateway.errors import AuthError
from gateway.registry.access import DEFAULT_WORKSPACE, Caller, node_workspace, resolve
from gateway.registry.ca import peer_identity
from gateway.registry.store import RegistryStore

AnyRequest = Request[Any, Any, Any]
# the ASGI TLS extension's key (beside the standard ones) of a callable giving the client certificate's (common name,
# serial), parsed once per connection rather than once per request (gateway.registry.server)
IDENTITY = "fieldgate_client_cert_identity"


def store_of(request: AnyRequest) -> RegistryStore:
    store: RegistryStore = request.app.state.store
    return store


def client_identity(request: AnyRequest) -> tuple[str, str]:
    """(node name, serial) of the verified client certificate (ASGI TLS extension), not checked against the
    store yet (client_node does)."""
    extensions: dict[str, Any] = dict(request.scope.get("extensions") or {})
    tls: dict[str, Any] = extensions.get("tls") or {}
    chain: list[str] = tls.get("client_cert_chain") or []
    if not chain:
        raise NotAuthorizedException("a client certificate from the registry CA is required")
    identity = tls.get(IDENTITY)  # read once per connection by the server
    return cast(tuple[str, str], identity()) if callable(identity) else peer_identity(chain[0])


async def client_node(request: AnyRequest) -> str:
    """The node name of the verified client certificate (ASGI TLS extension); refused when revoked or unknown."""
    name, serial = client_identity(request)
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
