"""Every route of the app: who may call it (anonymous, viewer, operator, admin), sessions, CSRF, login limits."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any

import pytest

from gateway.runtime import Gateway
from gateway.web.app import create_app
from gateway.web.auth import ROLES, create_token
from gateway.web.routes_doc import app_routes, required_role
from gateway.web.security import is_api_path
from tests.web.conftest import PASSWORD

PUBLIC = {"/healthz", "/login", "/static/{file_path:path}"}
PATH_VALUES = {"namespace": "default", "name": "d1", "prop": "setpoint", "token_id": "1", "file_path": "app.css",
               "path": "plant/orders", "action": "restart"}
STREAMING = {"/devices/{namespace:str}/{name:str}/events", "/events/devices", "/events/status"}


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: PATH_VALUES[m.group(1)], path)


def routes(gateway: Gateway) -> list[tuple[str, str, str]]:
    """(method, path template, required role) of every route but the OpenAPI ones."""
    return [(method, path, required_role(handler, path))
            for method, path, handler in app_routes(create_app(gateway.api)) if not path.startswith("/schema")]


async def test_every_route_has_a_role_guard_or_is_public(web_gateway: Gateway) -> None:
    table = routes(web_gateway)
    assert len(table) > 30
    for method, path, role in table:
        if path in PUBLIC:
            assert role == "public", (method, path)
        else:
            assert role in ROLES, f"{method} {path} has no requires(<role>) guard"


async def test_anonymous_pages_redirect_to_login_and_api_calls_get_401(web_gateway: Gateway,
                                                                       open_browser: Callable[..., Any]) -> None:
    anonymous = await open_browser()
    for method, path, role in routes(web_gateway):
        if role == "public":
            continue
        response = await anonymous.client.request(method, concrete(path))
        if is_api_path(path):
            assert response.status_code == 401, (method, path)
        else:
            assert response.status_code == 303, (method, path, response.status_code)
            assert response.headers["location"].startswith("/login"), (method, path)
    assert (await anonymous.client.get("/healthz")).status_code == 200
    login = await anonymous.client.get("/login")
    assert login.status_code == 200 and 'type="password"' in login.text
    assert (await anonymous.client.get("/static/app.css")).status_code == 200
    assert (await anonymous.client.get("/devices?state=online")).headers["location"] == \
        "/login?next=/devices%3Fstate%3Donline"


@pytest.mark.parametrize("role", ROLES)
async def test_each_role_gets_exactly_its_routes(web_gateway: Gateway, open_browser: Callable[..., Any],
                                                 role: str) -> None:
    browser = await open_browser(role)
    for method, path, needed in routes(web_gateway):
        if needed == "public" or path in STREAMING or path == "/logout":
            continue
        if method == "GET":
            response = await browser.client.get(concrete(path))
        else:
            response = await browser.client.request(method, concrete(path), data={"_csrf": browser.csrf},
                                                    headers={"x-csrf-token": browser.csrf})
        allowed = ROLES.index(role) >= ROLES.index(needed)
        if allowed:
            assert response.status_code not in (401, 403), (role, method, path, response.text[:300])
            if method == "GET" and not path.startswith(("/api/v1/devices/{namespace:str}/{name:str}/",
                                                        "/api/v1/workloads/{namespace:str}/",  # no workload d1
                                                        "/workloads/{namespace:str}/",
                                                        "/plots/workloads/{namespace:str}/",
                                                        "/api/v1/secrets/{namespace:str}/",
                                                        "/api/v1/services/{namespace:str}/")):  # no service d1
                assert response.status_code == 200, (role, method, path, response.text[:300])
        else:
            assert response.status_code == 403, (role, method, path, response.status_code)
    assert web_gateway.api.twin("default/d1").properties["setpoint"].desired is None or role != "viewer"


async def test_viewer_cannot_change_anything(web_gateway: Gateway, open_browser: Callable[..., Any]) -> None:
    viewer = await open_browser("viewer")
    response = await viewer.post("/devices/default/d1/desired", {"property": "setpoint", "value": "20"})
    assert response.status_code == 403, response.text
    assert web_gateway.api.twin("default/d1").properties["setpoint"].desired is None
    assert (await viewer.post("/users", {"name": "eve", "role": "admin", "password": "x" * 10})).status_code == 403
    assert await web_gateway.store.users.get("eve") is None
    device = await viewer.client.get("/devices/default/d1")
    assert "set-desired" not in device.text  # no setpoint forms for viewers


async def test_forms_need_the_session_csrf_token(web_gateway: Gateway, open_browser: Callable[..., Any]) -> None:
    operator = await open_browser("operator")
    form = {"property": "setpoint", "value": "20"}
    assert (await operator.client.post("/devices/default/d1/desired", data=form)).status_code == 403
    response = await operator.client.post("/devices/default/d1/desired", data={**form, "_csrf": "forged"})
    assert response.status_code == 403
    other = await open_browser("operator")  # another session's token is no good either
    response = await operator.client.post("/devices/default/d1/desired", data={**form, "_csrf": other.csrf})
    assert response.status_code == 403
    assert web_gateway.api.twin("default/d1").properties["setpoint"].desired is None
    response = await operator.post("/devices/default/d1/desired", form)
    assert response.status_code == 303
    assert web_gateway.api.twin("default/d1").properties["setpoint"].desired == 20.0
    # The JSON API takes the session too, with the token in a header.
    response = await operator.client.put("/api/v1/devices/default/d1/twin/setpoint", json={"desired": 21})
    assert response.status_code == 403
    response = await operator.client.put("/api/v1/devices/default/d1/twin/setpoint", json={"desired": 21},
                                         headers={"x-csrf-token": operator.csrf})
    assert response.status_code == 200


async def test_every_form_carries_the_session_csrf_token(open_browser: Callable[..., Any]) -> None:
    admin = await open_browser("admin")
    for path in ("/users", "/devices/default/d1", "/models", "/editor", "/import", "/settings", "/models/edit"):
        page = await admin.client.get(path)
        forms = re.findall(r'<form[^>]*method="post"', page.text)
        tokens = re.findall(r'name="_csrf" value="([^"]*)"', page.text)
        # one masking per page (BREACH: a compressed page never repeats the secret), of the session's token
        assert forms and len(tokens) == len(forms) and len(set(tokens)) == 1, path
        assert unmasked(tokens[0]) == unmasked(admin.csrf) and tokens[0] != admin.csrf, path


def unmasked(token: str) -> bytes:
    """The session's CSRF token in a page's masked one (gateway.webkit.sessions.mask_token)."""
    both = base64.urlsafe_b64decode(token)
    return bytes(a ^ b for a, b in zip(both[:len(both) // 2], both[len(both) // 2:], strict=True))


async def test_bearer_tokens_need_no_csrf_token(web_gateway: Gateway, open_browser: Callable[..., Any]) -> None:
    anonymous = await open_browser()
    token = await create_token(web_gateway.store, "operator")
    headers = {"Authorization": f"Bearer {token}"}
    response = await anonymous.client.put("/api/v1/devices/default/d1/twin/setpoint", json={"desired": 22},
                                          headers=headers)
    assert response.status_code == 200
    response = await anonymous.client.post("/devices/default/d1/desired", data={"property": "setpoint", "value": 23},
                                           headers={**headers, "accept": "application/json"})
    assert response.status_code == 200 and response.json()["desired"] == 23.0
    # A bad Authorization header is never rescued by a session cookie.
    operator = await open_browser("operator")
    response = await operator.client.get("/api/v1/devices", headers={"Authorization": "Bearer fgt_nope"})
    assert response.status_code == 401


async def test_session_cookie_flags_and_logout(web_gateway: Gateway, open_browser: Callable[..., Any]) -> None:
    browser = await open_browser()
    await browser.client.get("/login")
    response = await browser.client.post("/login", data={
        "username": "viewer", "password": PASSWORD, "_csrf": browser.client.cookies["fieldgate_login_csrf"]})
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("fieldgate_session="))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
    page = await browser.client.get("/")
    assert page.status_code == 200
    assert page.headers["x-frame-options"] == "DENY" and "default-src 'self'" in page.headers[
        "content-security-policy"]
    csrf = re.search(r'name="csrf-token" content="([^"]*)"', page.text)
    assert csrf
    assert (await browser.client.post("/logout", data={"_csrf": csrf.group(1)})).status_code == 303
    assert (await browser.client.get("/")).status_code == 303
    audit = [(row["actor"], row["action"]) for row in await web_gateway.store.audit.recent()]
    assert ("viewer", "login") in audit and ("viewer", "logout") in audit

    tls = await open_browser(base_url="https://gateway.local")
    await tls.client.get("/login")
    response = await tls.client.post("/login", data={
        "username": "viewer", "password": PASSWORD, "_csrf": tls.client.cookies["fieldgate_login_csrf"]})
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("fieldgate_session="))
    assert "Secure" in cookie


async def test_login_needs_its_csrf_cookie(open_browser: Callable[..., Any]) -> None:
    browser = await open_browser()
    response = await browser.client.post("/login", data={"username": "viewer", "password": PASSWORD})
    assert response.status_code == 403
    assert "fieldgate_session" not in browser.client.cookies


async def test_failed_logins_are_limited_per_user_and_per_address(web_gateway: Gateway,
                                                                  open_browser: Callable[..., Any]) -> None:
    browser = await open_browser()
    await browser.client.get("/login")
    token = browser.client.cookies["fieldgate_login_csrf"]
    for _ in range(5):
        response = await browser.client.post("/login", data={"username": "admin", "password": "wrong-password",
                                                             "_csrf": token})
        assert response.status_code == 401
        assert "Wrong user name or password" in response.text
    response = await browser.client.post("/login", data={"username": "admin", "password": PASSWORD, "_csrf": token})
    assert response.status_code == 429 and int(response.headers["retry-after"]) > 0
    assert "fieldgate_session" not in browser.client.cookies
    # The same address is blocked for other users too.
    response = await browser.client.post("/login", data={"username": "viewer", "password": PASSWORD,
                                                         "_csrf": token})
    assert response.status_code == 429
    failures = [row for row in await web_gateway.store.audit.recent() if row["action"] == "login-failed"]
    assert len(failures) == 5 and failures[0]["address"] == "127.0.0.9"


async def test_removed_users_lose_their_sessions(web_gateway: Gateway, open_browser: Callable[..., Any]) -> None:
    operator = await open_browser("operator")
    await web_gateway.store.users.delete("operator")
    assert (await operator.client.get("/")).status_code == 303
    assert (await operator.client.get("/api/v1/devices")).status_code == 401


async def test_a_changed_role_applies_at_once(web_gateway: Gateway, open_browser: Callable[..., Any]) -> None:
    operator = await open_browser("operator")
    _role, password_hash = await web_gateway.store.users.get("operator") or ("", "")
    await web_gateway.store.users.put("operator", "viewer", password_hash)
    response = await operator.post("/devices/default/d1/desired", {"property": "setpoint", "value": "20"})
    assert response.status_code == 403


async def test_login_redirects_only_to_local_paths(open_browser: Callable[..., Any]) -> None:
    browser = await open_browser()
    await browser.client.get("/login")
    response = await browser.client.post("/login", data={
        "username": "viewer", "password": PASSWORD, "next": "//evil.example/x",
        "_csrf": browser.client.cookies["fieldgate_login_csrf"]})
    assert response.status_code == 303 and response.headers["location"] == "/"


async def test_the_openapi_document_needs_a_user_and_no_ui_loads_cdn_scripts(open_browser: Callable[..., Any]) -> None:
    anonymous = await open_browser()
    assert (await anonymous.client.get("/schema/openapi.json")).status_code == 401
    viewer = await open_browser("viewer")
    document = await viewer.client.get("/schema/openapi.json")
    assert document.status_code == 200 and "/api/v1/devices" in document.json()["paths"]
    for path in ("/schema/swagger", "/schema/redoc", "/schema/elements", "/schema/rapidoc",
                 "/schema/oauth2-redirect.html"):
        answer = await viewer.client.get(path)
        assert answer.status_code == 404, (path, answer.status_code)
        assert "cdn" not in answer.text.lower()
    assert (await viewer.client.get("/schema")).headers["content-type"].startswith("application/")
