"""GET/POST /login (public, rate limited, CSRF by a double-submit cookie) and POST /logout, for the node's users."""

from __future__ import annotations

from typing import Annotated

from litestar import get, post
from litestar.params import QueryParameter
from litestar.response import Redirect, Template

from gateway.errors import AuthError
from gateway.web.auth import authenticate_user
from gateway.web.pages.common import NO_USERS, AnyRequest, gateway_of, render, session_auth
from gateway.web.security import requires
from gateway.webkit.login import log_in, log_out, login_page
from gateway.webkit.pages import client_address
from gateway.webkit.sessions import BrowserSessions


def _sessions(request: AnyRequest) -> BrowserSessions:
    sessions: BrowserSessions = request.app.state.sessions
    return sessions


@get("/login", summary="The login form", include_in_schema=False)
async def login_form(request: AnyRequest, next_path: Annotated[str, QueryParameter(name="next")] = "/") -> Template:
    # No default password ships: until a user is added (provisioning, `fieldgate user add`) the form says so.
    no_users = not await gateway_of(request).store.users.has_any()
    return login_page(request, _sessions(request), render, next_path=next_path, notice=NO_USERS if no_users else "")


@post("/login", summary="Log in with a user name and password", include_in_schema=False, status_code=303)
async def login(request: AnyRequest) -> Template | Redirect:
    store = gateway_of(request).store

    async def authenticate(username: str, password: str, address: str) -> str:
        try:
            principal = await authenticate_user(store, username, password)
        except AuthError:
            await store.audit.record(username or "-", "login-failed", "ui", "", address)
            raise
        await store.audit.record(principal.name, "login", "ui", principal.role, address)
        return principal.name

    return await log_in(request, _sessions(request), render, authenticate)


@post("/logout", guards=[requires("viewer")], summary="End the session", include_in_schema=False, status_code=303)
async def logout(request: AnyRequest) -> Redirect:
    auth = session_auth(request)
    if auth is not None:
        await gateway_of(request).store.audit.record(auth.session.user, "logout", "ui", "", client_address(request))
    return log_out(request, _sessions(request), auth.sid if auth else None)
