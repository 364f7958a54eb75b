"""Logging in to the registry's pages and out again (the form, limits and sessions are the web kit's)."""

from __future__ import annotations

from litestar import get, post
from litestar.response import Redirect, Template

from gateway.errors import AuthError
from gateway.registry import access
from gateway.registry.access import AnyRequest
from gateway.registry.pages.common import page, render, sessions_of, store_of
from gateway.webkit.login import log_in, log_out, login_page


@get("/login", summary="The login form of the registry pages", include_in_schema=False)
async def login_form(request: AnyRequest) -> Template:
    return login_page(request, sessions_of(request), render, next_path=request.query_params.get("next", "/"))


@post("/login", summary="Log in as a registry user", include_in_schema=False, status_code=303)
async def login(request: AnyRequest) -> Template | Redirect:
    store = store_of(request)

    async def authenticate(username: str, password: str, address: str) -> str:
        try:
            caller = await access.authenticate_user(store, username, password)
        except AuthError:
            await access.record(store, f"user:{username or '-'}", access.PLATFORM, "user.login", "pages",
                                "refused: wrong user name or password", {"address": address})
            raise
        await access.record(store, caller, str(caller.scope), "user.login", "pages", "ok", {"address": address})
        return username

    return await log_in(request, sessions_of(request), render, authenticate)


@post("/logout", summary="End the session", status_code=303, **page())
async def logout(request: AnyRequest) -> Redirect:
    sessions = sessions_of(request)
    return log_out(request, sessions, request.cookies.get(sessions.cookie))


ROUTE_HANDLERS = [login_form, login, logout]
