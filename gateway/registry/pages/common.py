"""What the registry's pages share: the layout and its navigation, the guard that resolves a page's session and
checks the permissions the page names (`opt["page_permissions"]`: one of them is needed; none, a session is
enough), rendering, and the error pages a browser gets."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from litestar import Response
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.response import Template
from litestar.types import ExceptionHandlersMap

from gateway.errors import AuthError, ConfigError
from gateway.registry import access
from gateway.registry.access import AnyRequest, Caller
from gateway.registry.permissions import check_permissions
from gateway.registry.store import RegistryStore
from gateway.webkit import pages
from gateway.webkit.pages import NavItem, Site, Who, login_redirect
from gateway.webkit.sessions import BrowserSessions, CsrfRefused, Session, check_csrf

SESSION_COOKIE = "fieldgate_registry_session"
LOGIN_CSRF_COOKIE = "fieldgate_registry_login_csrf"
TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
STATIC = Path(__file__).resolve().parents[1] / "static"
SITE = Site(title="fieldgate registry", name="registry", home="the overview", login_heading="Registry log in",
            scripts=("/static/registry.js",))
# each link with the permission it needs ("" for none); the Administration link goes to the first of ADMIN_PAGES
# the user may use
NAV = [NavItem("/", "Overview", ""), NavItem("/nodes", "Nodes", "nodes.read"),
       NavItem("/groups", "Groups", "nodes.read"),
       NavItem("/devices", "Devices", "devices.read", also=("/models", "/editor")),
       NavItem("/workloads", "Workloads", "apps.read"), NavItem("/apps", "Apps", "apps.read", also=("/configs",)),
       NavItem("/services", "Services", "apps.read"),
       NavItem("/routes", "Routes", "routes.read", also=("/endpoints",)),
       NavItem("/upgrades", "Upgrades", "upgrades.read"),
       NavItem("/files", "Files", "files.read"),
       NavItem("/join", "Join tokens", "join.manage", also=("/join-tokens",)),
       NavItem("/audit", "Audit log", "audit.read")]
ADMIN_PAGES = (("/users", "Users", "users.manage"), ("/api-tokens", "API tokens", "tokens.manage"),
               ("/roles", "Roles", "roles.manage"), ("/workspaces", "Workspaces", "workspaces.manage"),
               ("/audit", "Audit log", "audit.read"))
PAGE_PERMISSIONS = "page_permissions"  # the opt key of a page handler: the permissions of which one is needed
PAGE_ACTION = "page_action"  # the opt key of a form handler: what it does, for the refusal ("set desired values")
_PAGE_STATE = "fieldgate_page"  # where the guard leaves (caller, session) in the request's scope state
API_PREFIXES = ("/api/", "/schema", "/static/", "/events/")
DATA_SUFFIXES = ("/metrics",)  # what the pages' scripts read (a node's samples, gateway.registry.live): JSON errors


class LoginRequired(Exception):
    """A page request without a valid session: answered with a redirect to the login form."""


class PageForbidden(Exception):
    """A page or form the user's role may not use."""


def initial_state() -> dict[str, Any]:
    # the registry speaks TLS only: its cookies are always Secure
    return {"page_sessions": BrowserSessions(SESSION_COOKIE, LOGIN_CSRF_COOKIE, always_secure=True)}


def store_of(request: AnyRequest) -> RegistryStore:
    store: RegistryStore = request.app.state.store
    return store


def sessions_of(request: AnyRequest) -> BrowserSessions:
    sessions: BrowserSessions = request.app.state.page_sessions
    return sessions


def is_page_path(path: str) -> bool:
    """Pages answer browsers with HTML; the API, its schema, static assets, probes, event streams and the data the
    pages' scripts read answer with status codes."""
    return (not path.startswith(API_PREFIXES) and path not in ("/healthz", "/metrics")
            and not path.endswith(DATA_SUFFIXES))


# --- sessions and the page guard ------------------------------------------------------------------------------


async def session_caller(request: AnyRequest) -> tuple[Caller, Session] | None:
    """The user of the session cookie with its role and scope as stored now; None without a valid session."""
    current = sessions_of(request).current(request)
    if current is None:
        return None
    sid, session = current
    try:
        caller = await access.user_caller(store_of(request), session.user)
    except AuthError:
        sessions_of(request).store.end(sid)
        return None
    return caller, session


async def _page_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """A session (else the login form), the session's CSRF token on a form, and one of the page's permissions."""
    request = cast(AnyRequest, connection)  # guards of HTTP routes are handed the request
    found = await session_caller(request)
    if found is None:
        raise LoginRequired()
    caller, session = found
    await check_csrf(request, session)
    needed: tuple[str, ...] = handler.opt[PAGE_PERMISSIONS]
    if not caller.can_any(*needed):
        raise PageForbidden(access.refusal(caller, needed, handler.opt.get(PAGE_ACTION) or "see this page"))
    request.scope.setdefault("state", {})[_PAGE_STATE] = (caller, session)


def page(*permissions: str, action: str = "") -> dict[str, Any]:
    """The keyword arguments of a page handler for users whose role holds one of `permissions` (a session is enough
    when none are named): `@get("/x", **page("nodes.read"))`; `action` names what a form does, for the refusal
    another role gets."""
    check_permissions(permissions)
    return {"guards": [_page_guard], "opt": {PAGE_PERMISSIONS: permissions, PAGE_ACTION: action},
            "include_in_schema": False}


def navigation(caller: Caller | None) -> list[NavItem]:
    """The header's links the caller's role may follow, with one Administration link to the first administration
    page it may use."""
    if caller is None:
        return []
    links = [item for item in NAV if not item.role or caller.can(item.role)]
    admin = [(href, permission) for href, _, permission in ADMIN_PAGES if caller.can(permission)]
    if admin and admin[0][0] != "/audit":
        links.append(NavItem(admin[0][0], "Administration", admin[0][1],
                             also=tuple(href for href, _ in admin[1:] if href != "/audit")))
    return links


def current(request: AnyRequest) -> tuple[Caller, Session]:
    """The caller and session the page guard found."""
    found: tuple[Caller, Session] = request.scope["state"][_PAGE_STATE]
    return found


def caller_of(request: AnyRequest) -> Caller:
    return current(request)[0]


def flash(request: AnyRequest, kind: str, message: str) -> None:
    current(request)[1].flash.append((kind, message))


# --- rendering ------------------------------------------------------------------------------------------------


def render(request: AnyRequest, template: str, *, status_code: int = 200, caller: Caller | None = None,
           session: Session | None = None, **context: Any) -> Template:
    """A page in the shared layout; anonymous (the login form, a refusal) without `caller` and `session`."""
    who = Who(caller.actor.split(":", 1)[1], f"{caller.role}, {caller.scope}") if caller else None
    return pages.render(request, template, site=SITE, status_code=status_code, user=caller, who=who,
                        session=session, nav=navigation(caller), admin_pages=ADMIN_PAGES, **context)


def show(request: AnyRequest, template: str, *, status_code: int = 200, **context: Any) -> Template:
    """A page for the guard's user, in the layout with the navigation the user's role may see."""
    caller, session = current(request)
    return render(request, template, status_code=status_code, caller=caller, session=session, **context)


def error_page(request: AnyRequest, status_code: int, message: str,
               headers: Mapping[str, str] | None = None) -> Response[Any]:
    """The error page a browser gets: in the user's layout when a page guard ran, else the anonymous one."""
    found = request.scope.get("state", {}).get(_PAGE_STATE)
    caller, session = found if found else (None, None)
    response = render(request, "error.html", status_code=status_code, caller=caller, session=session,
                      code=status_code, message=message)
    response.headers.update(dict(headers or {}))
    return response


def _login_required(request: AnyRequest, exc: LoginRequired) -> Response[Any]:
    return login_redirect(request)


def _forbidden(request: AnyRequest, exc: PageForbidden | CsrfRefused) -> Response[Any]:
    return error_page(request, 403, exc.detail if isinstance(exc, CsrfRefused) else str(exc))


EXCEPTION_HANDLERS: ExceptionHandlersMap = {LoginRequired: _login_required, PageForbidden: _forbidden,
                                            CsrfRefused: _forbidden}


# --- form fields ----------------------------------------------------------------------------------------------


def labels_from_text(text: str, field: str = "labels") -> dict[str, str]:
    """`k=v, k=v` (commas, semicolons or lines between pairs) as a dict; ConfigError naming the bad pair."""
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.replace(";", ",").replace("\n", ",").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{field}: expected key=value pairs separated by commas, got {item!r}")
        labels[key.strip()] = value.strip()
    return labels


def labels_text(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in labels.items())
