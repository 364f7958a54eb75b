"""The login form, login and logout of both web apps; who may log in (node users, registry users) is the app's.

The form carries a double-submit CSRF cookie, failed logins are limited per client address and per user name,
every login gets a fresh session id (no session fixation), and the way back after it is a local path only.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from litestar.datastructures import Cookie
from litestar.response import Redirect, Template

from gateway.errors import AuthError
from gateway.webkit.pages import AnyRequest, client_address, form_fields, see_other
from gateway.webkit.sessions import CSRF_FIELD, BrowserSessions, mask_token, token_matches

# (request, template, *, status_code, **context) -> the page in the app's layout, as an anonymous user sees it
Render = Callable[..., Template]
# (user name, password, client address) -> the user the session is for; raises AuthError when refused (the app
# records both outcomes in its audit log)
Authenticate = Callable[[str, str, str], Awaitable[str]]


def safe_next(target: str) -> str:
    """Only local paths, so the login form cannot be used to send people elsewhere."""
    return target if target.startswith("/") and not target.startswith(("//", "/\\")) else "/"


def login_page(request: AnyRequest, sessions: BrowserSessions, render: Render, *, error: str = "",
               status_code: int = 200, username: str = "", next_path: str = "/", **context: Any) -> Template:
    """The login form with its CSRF cookie (the one the browser has, else a new one)."""
    token = request.cookies.get(sessions.login_cookie) or secrets.token_urlsafe(32)
    response = render(request, "login.html", status_code=status_code, error=error, username=username,
                      next=safe_next(next_path), login_csrf=mask_token(token), **context)
    response.cookies.append(Cookie(key=sessions.login_cookie, value=token, path="/login", httponly=True,
                                   samesite="strict", secure=sessions.secure(request)))
    return response


async def log_in(request: AnyRequest, sessions: BrowserSessions, render: Render,
                 authenticate: Authenticate) -> Template | Redirect:
    """POST /login: a session and a redirect to the form's `next`, or the form again saying why not."""
    fields = await form_fields(request)
    username, next_path = fields.get("username", "").strip(), fields.get("next", "/")
    cookie_token = request.cookies.get(sessions.login_cookie, "")
    if not cookie_token or not token_matches(fields.get(CSRF_FIELD, ""), cookie_token):
        return login_page(request, sessions, render, error="The form expired: please try again.", status_code=403,
                          username=username, next_path=next_path)
    address = client_address(request)
    keys = (f"address:{address}", f"user:{username.lower()}")
    wait = sessions.limiter.blocked_for(*keys)
    if wait > 0:
        response = login_page(request, sessions, render, error=f"Too many failed logins: wait {wait:.0f} s.",
                              status_code=429, username=username, next_path=next_path)
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    try:
        user = await authenticate(username, fields.get("password", ""), address)
    except AuthError:
        sessions.limiter.failed(*keys)
        return login_page(request, sessions, render, error="Wrong user name or password.", status_code=401,
                          username=username, next_path=next_path)
    sessions.limiter.succeeded(keys[1])
    old = request.cookies.get(sessions.cookie)
    if old:
        sessions.store.end(old)
    sid, _ = sessions.store.create(user)
    redirect = see_other(safe_next(next_path))
    redirect.cookies.append(sessions.session_cookie(request, sid))
    redirect.cookies.append(Cookie(key=sessions.login_cookie, value="", path="/login", max_age=0))
    return redirect


def log_out(request: AnyRequest, sessions: BrowserSessions, sid: str | None) -> Redirect:
    """POST /logout: the session `sid` (if any) ends, here and in the browser."""
    if sid:
        sessions.store.end(sid)
    response = see_other("/login")
    response.cookies.append(sessions.session_cookie(request, ""))
    return response
