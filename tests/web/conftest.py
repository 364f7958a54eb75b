"""Fixtures for the pages: a running gateway, one user per role, logged-in test clients and their CSRF tokens."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.runtime import Gateway
from gateway.web.app import create_app
from gateway.web.auth import add_user
from tests.test_runtime import MODEL, virtual_device, wait_for

PASSWORD = "correct horse battery"
ROLES = ("viewer", "operator", "admin")


@pytest.fixture
async def web_gateway(write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> Gateway:
    config = MODEL + virtual_device("d1", interval="100ms") + virtual_device("d2").replace(
        "model: m", "model: m\nlabels: {line: \"2\"}")
    gw: Gateway = await start_gateway(write_config(config))
    for role in ROLES:
        await add_user(gw.store, role, role, PASSWORD)
    await wait_for(lambda: gw.api.twin("default/d1").properties["count"].reported is not None)
    return gw


class Browser:
    """A test client with a session: `csrf` is the token the pages carry."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.csrf = ""

    async def login(self, user: str, password: str = PASSWORD) -> None:
        await self.client.get("/login")
        response = await self.client.post("/login", data={
            "username": user, "password": password, "next": "/",
            "_csrf": self.client.cookies.get("fieldgate_login_csrf", ""),
        })
        assert response.status_code == 303, response.text
        page = await self.client.get("/")
        self.csrf = csrf_of(page.text)

    async def post(self, path: str, data: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        return await self.client.post(path, data={"_csrf": self.csrf, **(data or {})}, **kwargs)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf-token" content="([^"]*)"', html)
    assert match, "the page carries no CSRF token"
    return match.group(1)


@pytest.fixture
async def open_browser(web_gateway: Gateway) -> AsyncIterator[Callable[..., Any]]:
    """open_browser(role or None) -> a Browser (logged in unless None), each with its own cookies.

    The app runs on the test's own event loop (httpx's ASGI transport), as it runs on the gateway's loop in
    production; Litestar's test client would run it on a second loop in another thread.
    """
    app = create_app(web_gateway.api)
    clients: list[httpx.AsyncClient] = []

    async def open_one(role: str | None = None, base_url: str = "http://testserver.local") -> Browser:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.9", 50000))
        client = httpx.AsyncClient(transport=transport, base_url=base_url, timeout=10)
        await client.__aenter__()
        clients.append(client)
        browser = Browser(client)
        if role is not None:
            await browser.login(role)
        return browser

    yield open_one
    for client in clients:
        await client.__aexit__(None, None, None)
