"""What page handlers of both web apps share: the layout's context, navigation, form fields and redirects."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import quote

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.response import Redirect, Template

from gateway.webkit.sessions import Session, mask_token

AnyRequest = Request[Any, Any, Any]


@dataclass(frozen=True)
class Site:
    """What the shared layout (`webkit/templates/base.html`) says about the app whose page it frames."""

    title: str  # after each page's own title in the window title
    name: str  # beside the brand in the header
    home: str  # what `/` is, for the error page's way back: "the dashboard"
    login_heading: str = "Log in"
    scripts: tuple[str, ...] = ()  # deferred scripts every page loads


@dataclass(frozen=True)
class NavItem:
    """A link of the header's navigation, for users with at least `role`."""

    href: str
    label: str
    role: str
    also: tuple[str, ...] = ()  # more path prefixes whose pages belong under this link


class NavLink(NamedTuple):
    href: str
    label: str
    active: bool


class Who(NamedTuple):
    """The logged-in user as the header shows them: `name (detail)`."""

    name: str
    detail: str


def nav_links(items: Sequence[NavItem], path: str) -> list[NavLink]:
    """The links of `items`, the one whose section holds `path` marked active."""
    return [NavLink(item.href, item.label, _holds(item, path)) for item in items]


def _holds(item: NavItem, path: str) -> bool:
    under = item.href != "/" and path.startswith(item.href + "/")
    return path == item.href or under or any(path.startswith(prefix) for prefix in item.also)


def render(request: AnyRequest, template: str, *, site: Site, status_code: int = 200, user: object = None,
           who: Who | None = None, session: Session | None = None, nav: Sequence[NavItem] = (),
           **context: Any) -> Template:
    """A page in the shared layout; `nav` holds only the links the user may see, `session` is None when anonymous."""
    base = {
        "site": site,
        "user": user,
        "who": who,
        "csrf": mask_token(session.csrf) if session else "",  # masked anew for each page (BREACH)
        "flashes": session.take_flash() if session else [],
        "nav": nav_links(nav, request.url.path),
        "path": request.url.path,
    }
    return Template(template_name=template, context={**base, **context}, status_code=status_code)


def see_other(path: str) -> Redirect:
    return Redirect(path, status_code=303)


def login_redirect(request: AnyRequest) -> Redirect:
    """An anonymous page request goes to the login form, which sends the user back here afterwards."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return see_other("/login" + ("" if target == "/" else f"?next={quote(target, safe='/')}"))


async def form_fields(request: AnyRequest) -> dict[str, str]:
    """The text fields of a posted form (first value of each; uploads left out)."""
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str)}


def client_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    return connection.client.host if connection.client else ""
