"""Both web apps send the web kit's security headers, on a page and on an API error alike."""

from __future__ import annotations

from typing import Any

import httpx
from litestar.testing import TestClient

from gateway.webkit.headers import SECURITY_HEADERS


def security_headers(response: httpx.Response) -> dict[str, str | None]:
    return {name: response.headers.get(name) for name in SECURITY_HEADERS}


async def test_both_apps_send_the_same_security_headers_on_pages_and_api_errors(
        node_client: httpx.AsyncClient, registry_client: TestClient[Any]) -> None:
    node_page, node_error = await node_client.get("/login"), await node_client.get("/api/v1/devices")
    registry_page = registry_client.get("/login")
    registry_error = registry_client.get("/api/v1/nodes", headers={"Authorization": "Bearer nope"})
    assert (node_page.status_code, node_error.status_code) == (200, 401)
    assert (registry_page.status_code, registry_error.status_code) == (200, 401)
    for response in (node_page, node_error, registry_page, registry_error):
        assert security_headers(response) == SECURITY_HEADERS, response.url
