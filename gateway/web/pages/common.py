"""What every page handler shares: rendering with the layout's context, form fields, flash messages, redirects."""

from __future__ import annotations

import datetime as dt
from typing import Any

from jinja2 import Environment
from litestar import Request
from litestar.datastructures import UploadFile
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template

from gateway.api import GatewayAPI
from gateway.web.auth import Principal
from gateway.web.security import SessionAuth, client_address

AnyRequest = Request[Any, Any, Any]

# (path, label, role needed to see the link)
NAV = [
    ("/", "Dashboard", "viewer"),
    ("/devices", "Devices", "viewer"),
    ("/models", "Models", "viewer"),
    ("/endpoints", "Endpoints & routes", "viewer"),
    ("/sinks", "Sinks & outboxes", "viewer"),
    ("/workloads", "Workloads", "viewer"),
    ("/plugins", "Plugins", "viewer"),
    ("/logs", "Logs", "viewer"),
    ("/audit", "Audit log", "viewer"),
    ("/import", "Import", "admin"),
    ("/users", "Users & tokens", "admin"),
    ("/settings", "Settings", "admin"),
]


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
    auth = session_auth(request)
    user = request.scope.get("user")
    base = {
        "user": user,
        "csrf": auth.session.csrf if auth else "",
        "flashes": auth.session.take_flash() if auth else [],
        "nav": [item for item in NAV if isinstance(user, Principal) and user.can(item[2])],  # type: ignore[arg-type]
        "path": request.url.path,
        "node": gateway_of(request).node_name,
    }
    return Template(template_name=template, context={**base, **context}, status_code=status_code)


def see_other(path: str) -> Redirect:
    return Redirect(path, status_code=303)


async def form_fields(request: AnyRequest) -> dict[str, str]:
    """The text fields of a posted form (first value of each; uploads left out)."""
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str)}


async def form_upload(request: AnyRequest, field: str) -> tuple[str, bytes] | None:
    form = await request.form()
    upload = form.get(field)
    if not isinstance(upload, UploadFile) or not upload.filename:
        return None
    return upload.filename, await upload.read()


def wants_json(request: AnyRequest) -> bool:
    return "application/json" in request.headers.get("accept", "")


def format_ts(ts: float | None) -> str:
    if ts is None:
        return "\u2013"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def format_ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    seconds = max(dt.datetime.now().timestamp() - ts, 0)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} d ago"


def format_value(value: Any) -> str:
    if value is None:
        return "\u2013"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def format_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TB"


def setup_engine(engine: JinjaTemplateEngine) -> None:
    environment: Environment = engine.engine
    environment.filters.update(ts=format_ts, ago=format_ago, value=format_value, bytes=format_bytes)
    environment.trim_blocks = True
    environment.lstrip_blocks = True


def joined_registry(gateway: GatewayAPI) -> dict[str, str] | None:
    """The registry this node joined (URL and node name), or None."""
    from gateway.uplink.join import load_settings

    settings = load_settings(gateway.data_dir) if (gateway.data_dir / "registry" / "registry.json").exists() else None
    return {"url": settings.url, "node": settings.node} if settings is not None else None
