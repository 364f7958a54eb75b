"""GET/POST /login (public, rate limited, CSRF by a double-submit cookie) and POST /logout."""

from __future__ import annotations

import secrets
from typing import Annotated

from litestar import get, post
from litestar.datastructures import Cookie
from litestar.params import QueryParameter
from litestar.response import Redirect, Template

from gateway.errors import AuthError
from gateway.web.auth import authenticate_user
from gateway.web.pages.common import AnyRequest, form_fields, gateway_of, render, see_other, session_auth
from gateway.web.security import client_address, requires
from gateway.webkit.sessions import LOGIN_CSRF_COOKIE, SESSION_COOKIE, LoginLimiter, SessionStore


def _safe_next(target: str) -> str:
    """Only local paths, so the login form cannot be used to send people elsewhere."""
    return target if target.startswith("/") and not target.startswith(("//", "/\\")) else "/"


def _secure(request: AnyRequest) -> bool:
    return request.url.scheme == "https"


def _login_page(request: AnyRequest, *, error: str = "", status_code: int = 200, username: str = "",
                next_path: str = "/", no_users: bool = False) -> Template:
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    response = render(request, "login.html", status_code=status_code, error=error, username=username,
                      next=_safe_next(next_path), login_csrf=token, no_users=no_users)
    response.cookies.append(Cookie(key=LOGIN_CSRF_COOKIE, value=token, path="/login", httponly=True,
                                   samesite="strict", secure=_secure(request)))
    return response


@get("/login", summary="The login form", include_in_schema=False)
async def login_form(request: AnyRequest, next_path: Annotated[str, QueryParameter(name="next")] = "/") -> Template:
    # No default password ships: until a user is added (provisioning, `fieldgate user add`) the form says so.
    no_users = not await gateway_of(request).store.users.has_any()
    return _login_page(request, next_path=next_path, no_users=no_users)


@post("/login", summary="Log in with a user name and password", include_in_schema=False, status_code=303)
async def login(request: AnyRequest) -> Template | Redirect:
    fields = await form_fields(request)
    username = fields.get("username", "").strip()
    next_path = fields.get("next", "/")
    cookie_token = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie_token or not secrets.compare_digest(fields.get("_csrf", ""), cookie_token):
        return _login_page(request, error="The form expired: please try again.", status_code=403,
                           username=username, next_path=next_path)
    limiter: LoginLimiter = request.app.state.login_limiter
    address = client_address(request)
    keys = (f"address:{address}", f"user:{username.lower()}")
    wait = limiter.blocked_for(*keys)
    gateway = gateway_of(request)
    if wait > 0:
        response = _login_page(request, error=f"Too many failed logins: wait {wait:.0f} s.", status_code=429,
                               username=username, next_path=next_path)
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    try:
        principal = await authenticate_user(gateway.store, username, fields.get("password", ""))
    except AuthError:
        limiter.failed(*keys)
        await gateway.store.audit.record(username or "-", "login-failed", "ui", "", address)
        return _login_page(request, error="Wrong user name or password.", status_code=401, username=username,
                           next_path=next_path)
    limiter.succeeded(keys[1])
    sessions: SessionStore = request.app.state.sessions
    old = request.cookies.get(SESSION_COOKIE)
    if old:  # a fresh session id on every login: no session fixation
        sessions.end(old)
    sid, _ = sessions.create(principal.name)
    await gateway.store.audit.record(principal.name, "login", "ui", principal.role, address)
    redirect = see_other(_safe_next(next_path))
    redirect.cookies.append(Cookie(key=SESSION_COOKIE, value=sid, path="/", httponly=True, samesite="lax",
                                   secure=_secure(request)))
    redirect.cookies.append(Cookie(key=LOGIN_CSRF_COOKIE, value="", path="/login", max_age=0))
    return redirect


@post("/logout", guards=[requires("viewer")], summary="End the session", include_in_schema=False, status_code=303)
async def logout(request: AnyRequest) -> Redirect:
    auth = session_auth(request)
    if auth is not None:
        request.app.state.sessions.end(auth.sid)
        await gateway_of(request).store.audit.record(auth.session.user, "logout", "ui", "", client_address(request))
    response = see_other("/login")
    response.cookies.append(Cookie(key=SESSION_COOKIE, value="", path="/", max_age=0, httponly=True))
    return response
