"""Every page with its scripts and styles weighs under 200 KB uncompressed, and uses no third-party host."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from gateway.runtime import Gateway
from gateway.web.app import create_app
from gateway.web.routes_doc import app_routes
from gateway.web.security import is_api_path

LIMIT = 200 * 1024
PAGES_WITH_PARAMS = {"/devices/{namespace:str}/{name:str}": "/devices/default/d1"}
NOT_PAGES = ("/events", "/plot/", "/static/", "/healthz",
             "/workloads/")  # one workload's page: this plant runs none; tests/browser/test_workloads_page.py opens it


async def test_page_weight(web_gateway: Gateway, open_browser: Callable[..., Any]) -> None:
    admin = await open_browser("admin")
    paths = []
    for method, path, _ in app_routes(create_app(web_gateway.api)):
        if method != "GET" or is_api_path(path) or any(part in path for part in NOT_PAGES):
            continue
        paths.append(PAGES_WITH_PARAMS.get(path, path))
    assert "/" in paths and "/devices/default/d1" in paths and "/login" in paths
    weights = {}
    for path in paths:
        assert "{" not in path, f"give {path} a concrete value in PAGES_WITH_PARAMS"
        page = await admin.client.get(path)
        assert page.status_code == 200, path
        assets = re.findall(r'<(?:link[^>]+href|script[^>]+src|img[^>]+src)="([^"]+)"', page.text)
        total = len(page.content)
        for asset in assets:
            assert asset.startswith("/static/"), f"{path} loads {asset}: every asset is vendored under /static"
            response = await admin.client.get(asset)
            assert response.status_code == 200, asset
            total += len(response.content)
        weights[path] = total
    print("page weights (bytes, HTML + assets):", weights)
    heavy = {path: weight for path, weight in weights.items() if weight >= LIMIT}
    assert not heavy
