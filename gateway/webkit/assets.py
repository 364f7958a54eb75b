"""Static assets and response compression, the same for both web apps.

The assets (`/static/…`: an app's own, then the shared ones) are small and change only with a release, so they are
read once and kept in memory with a gzip copy. Caching, chosen for a box that may sit behind a slow link: pages ask
for every asset by a versioned URL (`static_url("app.css")` → `/static/app.css?v=<content hash>`), which browsers
keep for a year without asking again (`immutable`); a new release changes the hash and so the URL. An asset asked
for without that version (a bookmark, a plugin's page with a hard-coded path, an old page after an upgrade) is
answered `no-cache` with an ETag, so the browser revalidates it every time and a 304 saves the transfer: nothing
stale is ever used, and nothing fresh is fetched twice.

Text answers of the app (pages, JSON) are gzip-compressed by Litestar's middleware when the client takes it; event
streams and the assets (compressed once, here) are left out of it.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from litestar import HttpMethod, Request, Response, Router, route
from litestar.config.compression import CompressionConfig
from litestar.params import FromPath

from gateway.webkit.errors import STATIC_EXCEPTION_HANDLERS, error_response

NO_COMPRESSION = "no_compression"  # route `opt` key: the compression middleware leaves the answer alone
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
# text/* answers get `; charset=utf-8` from Litestar
MEDIA_TYPES = {".css": "text/css", ".js": "text/javascript", ".json": "application/json", ".svg": "image/svg+xml",
               ".LICENSE": "text/plain", ".txt": "text/plain"}
COMPRESSIBLE = (".css", ".js", ".json", ".svg", ".LICENSE", ".txt")


def compression_config() -> CompressionConfig:
    """gzip for text answers over 1 KB (level 6: near level 9's size at a fraction of its CPU on a small box)."""
    return CompressionConfig(backend="gzip", minimum_size=1024, gzip_compress_level=6,
                             exclude_opt_key=NO_COMPRESSION)


@dataclass(frozen=True)
class Asset:
    data: bytes
    gzipped: bytes | None  # None when compressing does not pay
    media_type: str
    version: str  # the first 12 hex digits of the content's SHA-256

    def etag(self, gzipped: bool) -> str:
        return f'"{self.version}-gz"' if gzipped else f'"{self.version}"'


def _media_type(path: Path) -> str:
    return MEDIA_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


class StaticAssets:
    """The files of `directories` (earlier ones shadow later ones), read once."""

    def __init__(self, directories: Sequence[Path]) -> None:
        self.assets: dict[str, Asset] = {}
        for directory in reversed(directories):
            for path in sorted(directory.rglob("*")) if directory.is_dir() else []:
                if path.is_file():
                    self.assets[path.relative_to(directory).as_posix()] = self._read(path)

    @staticmethod
    def _read(path: Path) -> Asset:
        data = path.read_bytes()
        packed = gzip.compress(data, compresslevel=9, mtime=0) if path.suffix in COMPRESSIBLE else None
        return Asset(data, packed if packed is not None and len(packed) < len(data) else None, _media_type(path),
                     hashlib.sha256(data).hexdigest()[:12])

    def url(self, name: str) -> str:
        """`/static/<name>?v=<version>`; `name` may start with `/static/`. Unversioned for an unknown name."""
        name = name.removeprefix("/static/").lstrip("/")
        asset = self.assets.get(name)
        return f"/static/{name}" if asset is None else f"/static/{name}?v={asset.version}"

    def answer(self, request: Request[Any, Any, Any], name: str) -> Response[Any]:
        asset = self.assets.get(name.lstrip("/"))
        if asset is None:
            return error_response(request, 404, "no such asset")
        gzipped = asset.gzipped is not None and _takes_gzip(request.headers.get("accept-encoding", ""))
        etag = asset.etag(gzipped)
        headers = {"ETag": etag, "Vary": "Accept-Encoding",
                   "Cache-Control": IMMUTABLE if request.query_params.get("v") == asset.version else REVALIDATE}
        wanted = {tag.strip().removeprefix("W/") for tag in request.headers.get("if-none-match", "").split(",")}
        if etag in wanted or asset.etag(not gzipped) in wanted or "*" in wanted:
            return Response(b"", status_code=304, headers=headers)
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        body = asset.gzipped if gzipped and asset.gzipped is not None else asset.data
        return Response(body, media_type=asset.media_type, headers=headers)


def _takes_gzip(accept_encoding: str) -> bool:
    for item in accept_encoding.lower().split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip() in ("gzip", "*"):
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


@lru_cache(maxsize=8)
def assets_of(directories: tuple[Path, ...]) -> StaticAssets:
    """The assets of an app's static directories (its own, then the shared ones), read once per process."""
    return StaticAssets(directories)


def static_router(assets: StaticAssets) -> Router:
    """`/static/…` served from `assets`."""

    @route("/{file_path:path}", http_method=[HttpMethod.GET, HttpMethod.HEAD], include_in_schema=False,
           sync_to_thread=False, opt={NO_COMPRESSION: True})
    def static_asset(request: Request[Any, Any, Any], file_path: FromPath[str]) -> Response[Any]:
        return assets.answer(request, file_path)

    return Router("/static", route_handlers=[static_asset], exception_handlers=STATIC_EXCEPTION_HANDLERS)
