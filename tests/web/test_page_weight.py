"""Every page of both UIs with its scripts and styles (the plotting library included) weighs under 200 KB
uncompressed and uses no third-party host; pages come gzip-compressed, their assets by versioned URLs browsers keep
(Cache-Control)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from litestar.testing import TestClient

from gateway.registry import twins
from gateway.registry.access import DEFAULT_WORKSPACE, Scope, cli_caller
from gateway.registry.access import add_user as add_registry_user
from gateway.registry.app import create_app as create_registry_app
from gateway.registry.filestore import DirectoryStore
from gateway.registry.store import RegistryStore
from gateway.registry.upgrades import CreateUpgrade, create_task
from gateway.registry.workloads import apply_documents
from gateway.resources.loader import read_path
from gateway.runtime import Gateway
from gateway.web.app import create_app
from gateway.web.routes_doc import app_routes
from gateway.web.security import is_api_path
from gateway.webkit.assets import IMMUTABLE
from gateway.wire import DeviceDescription, DeviceReport, PropertyReport

LIMIT = 200 * 1024
GZIP = {"Accept-Encoding": "gzip"}
PAGES_WITH_PARAMS = {"/devices/{namespace:str}/{name:str}": "/devices/default/d1"}
NOT_PAGES = ("/events", "/plot/", "/plots/", "/static/", "/healthz",
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
        page = await admin.client.get(path, headers=GZIP)
        assert page.status_code == 200, path
        assert page.headers.get("content-encoding") == "gzip", path
        total = len(page.content)
        for asset in assets_of(path, page.text):
            response = await admin.client.get(asset)
            assert response.status_code == 200, asset
            assert response.headers["cache-control"] == IMMUTABLE, asset
            total += len(response.content)
        weights[path] = total
    weights["/devices/default/d1?plot=level"] = await plotted_weight(admin)
    print("page weights (bytes, HTML + assets):", weights)
    heavy = {path: weight for path, weight in weights.items() if weight >= LIMIT}
    assert not heavy


async def plotted_weight(admin: Any) -> int:
    """A device page with a plot open: the plotting library, its styles and the SVG drawn without script."""
    path = "/devices/default/d1?plot=level&window=1h"
    page = await admin.client.get(path)
    assert page.status_code == 200 and "<svg" in page.text
    assets = assets_of(path, page.text)
    assert any(asset.startswith("/static/uplot.min.js?v=") for asset in assets), assets
    return len(page.content) + sum([len((await admin.client.get(asset)).content) for asset in assets])


def assets_of(path: str, html: str) -> list[str]:
    assets: list[str] = re.findall(r'<(?:link[^>]+href|script[^>]+src|img[^>]+src)="([^"]+)"', html)
    for asset in assets:
        assert asset.startswith("/static/"), f"{path} loads {asset}: every asset is vendored under /static"
    return assets


REGISTRY_NOT_PAGES = ("/api/", "/schema", "/healthz", "/metrics", "/events/", "/static/", "/logout",
                      "/groups/preview")  # the group form's JSON
REGISTRY_PAGES_WITH_PARAMS = {"/nodes/{name:str}": "/nodes/gw-1", "/groups/{name:str}": "/groups/line-a",
                              "/devices/{namespace:str}/{name:str}": "/devices/default/boiler-1",
                              "/apps/batch/{namespace:str}/{name:str}": "/apps/batch/default/batch-1",
                              "/upgrades/{task:str}": "/upgrades/{task}", "/routes/{namespace:str}/{name:str}":
                              "/routes/default/down", "/roles/{name:str}": "/roles/admin",
                              "/files/{file_id:str}": "/files/{file}"}
REGISTRY_DOCUMENTS = """\
kind: BatchWorkload
name: batch-1
template: {command: [sleep, '60']}
groups: [{group: line-a}]
---
kind: Endpoint
name: cloud
type: rest
---
kind: Endpoint
name: broker
type: mqtt
properties: {url: "mqtt://127.0.0.1:1"}
---
kind: Route
name: down
node: gw-1
source: cloud
source_resource: {path: /alarms}
target: broker
target_resource: {topic: alarms/in}
"""
REGISTRY_PASSWORD = "page-weight-pass"


def test_registry_page_weight(tmp_path: Path) -> None:
    data_dir = tmp_path / "registry"

    async def prepare() -> str:  # a user, a node that has sent a sample, an app and an upgrade task
        async with RegistryStore(data_dir) as store:
            await add_registry_user(store, "ops", "admin", Scope("platform"), REGISTRY_PASSWORD)
            await store.add_node("gw-1", "ab", {"site": "north"}, 10.0)
            await store.heartbeat("gw-1", {"version": "1.0", "metrics": {"cpu_percent": 12.0}})
            await store.create_group("line-a", [], {"site": "north"})
            report = DeviceReport(device="default/boiler-1", state="online",
                                  properties={"temperature": PropertyReport(reported=21.5, reported_at=1.0)})
            await twins.sync(store, "gw-1", [report], True, 0, None,
                             [DeviceDescription(device="default/boiler-1", model="thermo",
                                                units={"temperature": "degC"})])
            (tmp_path / "documents.yaml").write_text(REGISTRY_DOCUMENTS)
            await apply_documents(store, read_path(tmp_path / "documents.yaml"), DEFAULT_WORKSPACE, cli_caller(),
                                  "documents")
            task = await create_task(store, CreateUpgrade(version="9.9.0", wheels={}, nodes=["gw-1"]),
                                     {"fieldgate-9.9.0-py3-none-any.whl": b""}, cli_caller())
            file_id = "0f" * 16  # a file pushed to the node, its bytes in the data dir
            content = DirectoryStore(data_dir / "files")
            await content.append(file_id, 0, b"firmware")
            await content.commit(file_id)
            await store.files.create({"id": file_id, "name": "firmware.bin", "size": 8, "sha256": "0" * 64,
                                      "content_type": "application/octet-stream", "labels": {}, "direction": "to-edge",
                                      "path": "", "source_node": "", "targets": {"nodes": ["gw-1"]},
                                      "workspace": DEFAULT_WORKSPACE, "created_by": "cli:test", "created_at": 1.0,
                                      "expires_at": None, "state": "ready"}, ["gw-1"], 1.0)
            return str(task["id"]), file_id

    data_dir.mkdir()
    task, file_id = asyncio.run(prepare())
    app = create_registry_app(data_dir)
    with TestClient(app, base_url="https://registry.local") as client:
        form = client.get("/login")
        csrf = re.search(r'name="_csrf" value="([^"]+)"', form.text)
        assert csrf
        assert client.post("/login", data={"_csrf": csrf.group(1), "username": "ops", "password": REGISTRY_PASSWORD,
                                           "next": "/"}, follow_redirects=False).status_code == 303
        concrete = {pattern: path.format(task=task, file=file_id)
                    for pattern, path in REGISTRY_PAGES_WITH_PARAMS.items()}
        paths = sorted({concrete.get(path, path)
                        for route in app.routes for path in [route.path]
                        if "GET" in getattr(route, "methods", ()) and not path.startswith(REGISTRY_NOT_PAGES)
                        and not path.startswith("/workloads/")  # one workload's page: this registry runs none
                        and not path.endswith(("/metrics", "/download"))})  # data, not pages
        assert {"/", "/nodes/gw-1", "/login", "/devices", "/devices/default/boiler-1", "/groups/line-a"} <= set(paths)
        weights = {}
        for path in paths:
            assert "{" not in path, f"give {path} a concrete value in REGISTRY_PAGES_WITH_PARAMS"
            page = client.get(path, headers=GZIP)
            assert page.status_code == 200, (path, page.status_code)
            assert page.headers.get("content-encoding") == "gzip", path
            total = len(page.content)
            for asset in assets_of(path, page.text):
                response = client.get(asset)
                assert response.status_code == 200, asset
                assert response.headers["cache-control"] == IMMUTABLE, asset
                total += len(response.content)
            weights[path] = total
    print("registry page weights (bytes, HTML + assets):", weights)
    assert weights["/nodes/gw-1"] > 50_000  # the plotting library is counted
    heavy = {path: weight for path, weight in weights.items() if weight >= LIMIT}
    assert not heavy
