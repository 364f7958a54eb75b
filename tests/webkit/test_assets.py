"""Static assets and compression in both apps: pages ask for assets by versioned URLs that browsers keep for a year,
unversioned requests revalidate (ETag, 304), assets come gzip-compressed once, text answers are gzip-compressed
(event streams are not: tests/web/test_live.py)."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import httpx
from litestar.testing import TestClient

from gateway.webkit.assets import IMMUTABLE, REVALIDATE
from gateway.webkit.templating import STATIC

GZIP = {"Accept-Encoding": "gzip"}
IDENTITY = {"Accept-Encoding": "identity"}


def version_of(name: str) -> str:
    return hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:12]


async def test_pages_ask_for_versioned_assets_that_browsers_keep(node_client: httpx.AsyncClient,
                                                                 registry_client: TestClient[Any]) -> None:
    for page in (await node_client.get("/login"), registry_client.get("/login")):
        assets = re.findall(r'(?:href|src)="(/static/[^"]+)"', page.text)
        assert f"/static/app.css?v={version_of('app.css')}" in assets
        assert f"/static/live.js?v={version_of('live.js')}" in assets
        assert all("?v=" in asset for asset in assets), assets
    versioned = await node_client.get(f"/static/app.css?v={version_of('app.css')}", headers=IDENTITY)
    assert versioned.status_code == 200 and versioned.headers["cache-control"] == IMMUTABLE
    assert versioned.content == (STATIC / "app.css").read_bytes()
    assert versioned.headers["content-type"] == "text/css; charset=utf-8"
    stale = registry_client.get("/static/app.css?v=000000000000", headers=IDENTITY)  # a page of an older release
    assert stale.status_code == 200 and stale.headers["cache-control"] == REVALIDATE


async def test_unversioned_assets_revalidate_with_their_etag(node_client: httpx.AsyncClient,
                                                            registry_client: TestClient[Any]) -> None:
    first = await node_client.get("/static/uplot.min.js", headers=IDENTITY)
    assert first.status_code == 200 and first.headers["cache-control"] == REVALIDATE
    etag = first.headers["etag"]
    assert etag == f'"{version_of("uplot.min.js")}"'
    again = await node_client.get("/static/uplot.min.js", headers={**IDENTITY, "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    # the compressed copy has its own tag; either one saves the transfer
    packed = registry_client.get("/static/uplot.min.js", headers=GZIP)
    assert packed.headers["content-encoding"] == "gzip" and packed.headers["etag"] != etag
    assert registry_client.get("/static/uplot.min.js", headers={**GZIP, "If-None-Match": f"W/{etag}"}
                               ).status_code == 304
    head = await node_client.head("/static/app.css")
    assert head.status_code == 200 and head.headers["etag"]


async def test_assets_and_pages_are_compressed(node_client: httpx.AsyncClient,
                                                                    registry_client: TestClient[Any]) -> None:
    raw = await node_client.get("/static/uplot.min.js", headers=GZIP)
    assert raw.headers["content-encoding"] == "gzip" and raw.headers["vary"] == "Accept-Encoding"
    assert raw.content == (STATIC / "uplot.min.js").read_bytes()  # httpx unpacks it
    assert int(raw.headers["content-length"]) < len(raw.content) // 2
    assert "content-encoding" not in (await node_client.get("/static/app.css", headers=IDENTITY)).headers
    refused = await node_client.get("/static/app.css", headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers
    for page in (await node_client.get("/login", headers=GZIP), registry_client.get("/login", headers=GZIP)):
        assert page.status_code == 200 and page.headers.get("content-encoding") == "gzip", page.headers
    small = registry_client.get("/api/v1/ca", headers=GZIP)  # small answers are sent as they are
    assert small.status_code == 200 and "content-encoding" not in small.headers

