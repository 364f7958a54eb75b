"""What the node's page handlers share: its layout settings and navigation, the user, flash messages, uploads."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.datastructures import UploadFile
from litestar.response import Template
from markupsafe import Markup

from gateway.api import GatewayAPI
from gateway.web.auth import Principal
from gateway.web.security import SessionAuth
from gateway.webkit import pages
from gateway.webkit.pages import NavItem, Site, Who, client_address

AnyRequest = Request[Any, Any, Any]

NAV = [
    NavItem("/", "Dashboard", "viewer"),
    NavItem("/devices", "Devices", "viewer"),
    NavItem("/models", "Models", "viewer"),
    NavItem("/endpoints", "Endpoints & routes", "viewer"),
    NavItem("/sinks", "Sinks & outboxes", "viewer"),
    NavItem("/workloads", "Workloads", "viewer"),
    NavItem("/services", "Services", "viewer"),
    NavItem("/files", "Files", "viewer"),
    NavItem("/plugins", "Plugins", "viewer"),
    NavItem("/logs", "Logs", "viewer"),
    NavItem("/audit", "Audit log", "viewer"),
    NavItem("/import", "Import", "admin"),
    NavItem("/users", "Users & tokens", "admin"),
    NavItem("/settings", "Settings", "admin"),
]
NO_USERS = Markup("No user exists yet. Provision this gateway (fieldgate-provision.yaml on the boot partition) or add "
                  "one with <code>fieldgate user add</code>.")


def site(gateway: GatewayAPI) -> Site:
    node = gateway.node_name
    return Site(title=f"{node} · fieldgate", name=node, home="the dashboard", scripts=("/static/app.js",))


def gateway_of(request: AnyRequest) -> GatewayAPI:
    gateway: GatewayAPI = request.app.state.gateway
    return gateway


def principal(request: AnyRequest) -> Principal:
    user = request.user
    assert isinstance(user, Principal)
    return user


def actor(request: AnyRequest) -> tuple[str, str]:
    """(who, from which address) for the audit log."""
    return principal(request).name, client_address(request)


def session_auth(request: AnyRequest) -> SessionAuth | None:
    auth = request.scope.get("auth")
    return auth if isinstance(auth, SessionAuth) else None


def flash(request: AnyRequest, kind: str, message: str) -> None:
    auth = session_auth(request)
    if auth is not None:
        auth.session.flash.append((kind, message))


def render(request: AnyRequest, template: str, *, status_code: int = 200, **context: Any) -> Template:
    """A page in the shared layout, with the navigation the user's role may see."""
    auth = session_auth(request)
    user = request.scope.get("user")
    signed_in = user if isinstance(user, Principal) else None
    return pages.render(request, template, site=site(gateway_of(request)), status_code=status_code, user=user,
                        who=Who(signed_in.name, signed_in.role) if signed_in else None,
                        session=auth.session if auth else None,
                        nav=[item for item in NAV if signed_in and signed_in.can(item.role)],  # type: ignore[arg-type]
                        **context)


async def form_upload(request: AnyRequest, field: str) -> tuple[str, bytes] | None:
    form = await request.form()
    upload = form.get(field)
    if not isinstance(upload, UploadFile) or not upload.filename:
        return None
    return upload.filename, await upload.read()


def wants_json(request: AnyRequest) -> bool:
    return "application/json" in request.headers.get("accept", "")


def joined_registry(gateway: GatewayAPI) -> dict[str, str] | None:
    """The registry this node joined (URL and node name), or None."""
    from gateway.uplink.join import load_settings

    settings = load_settings(gateway.data_dir) if (gateway.data_dir / "registry" / "registry.json").exists() else None
    return {"url": settings.url, "node": settings.node} if settings is not None else None
