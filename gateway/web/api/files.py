"""Files both ways on the node: `GET /api/v1/files` lists the files the registry sent (in the files area) and those
the node sends (its durable outbox, with progress); `PUT /api/v1/files/<name>` (operator) puts a local app's file
into the outbox, streamed to disk, at most `files.max_upload` bytes; the Files page shows both."""

from __future__ import annotations

from typing import Any

from litestar import get, put
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from litestar.response import Template

from gateway.errors import ConfigError
from gateway.files import COUNTERS, default_outbox_folder, files_area
from gateway.files.outbox import TooLarge, check_name, take_stream
from gateway.web.pages.common import AnyRequest, actor, gateway_of, render
from gateway.web.security import requires

MAX_LOCAL_UPLOAD = 64 << 30  # the route's own ceiling; files.max_upload is the node's limit under it


async def files_view(request: AnyRequest) -> dict[str, Any]:
    gateway = gateway_of(request)
    settings = gateway.config.gateway.files
    return {
        "area": str(files_area(gateway.data_dir)),
        "outbox_folder": settings.outbox_folder or str(default_outbox_folder(gateway.data_dir)),
        "received": await gateway.store.files.received(),
        "sent": await gateway.store.files.sent_files(),
        "counters": dict(COUNTERS),
    }


@get("/api/v1/files", guards=[requires("viewer")], tags=["files"],
     summary="Files the registry sent (received) and files the node sends (sent: the outbox, with progress)")
async def list_files(request: AnyRequest) -> dict[str, Any]:
    return await files_view(request)


@put("/api/v1/files/{name:str}", guards=[requires("operator")], tags=["files"], status_code=201,
     summary="Put a file into the outbox for the registry (the body, streamed to disk; ?content_type=)",
     request_max_body_size=MAX_LOCAL_UPLOAD)
async def put_file(request: AnyRequest, name: FromPath[str]) -> dict[str, Any]:
    gateway = gateway_of(request)
    settings = gateway.config.gateway.files
    check_name(name)
    limit = int(settings.max_upload)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:  # said before a byte is read
        raise HTTPException(status_code=413, detail=f"the file has {length} bytes, more than the {limit} the node "
                                                    "takes into its outbox (files.max_upload)")
    content_type = request.query_params.get("content_type") or request.headers.get("content-type") or None
    if content_type is not None and (len(content_type) > 127 or "/" not in content_type):
        raise ConfigError(f"content_type {content_type[:100]!r}: expected type/subtype")
    try:
        record = await take_stream(gateway.store, gateway.data_dir, name, request.stream(), limit=limit,
                                   quota=int(settings.outbox_quota), content_type=content_type)
    except TooLarge as exc:
        raise HTTPException(status_code=413, detail=str(exc)) from None
    who, address = actor(request)
    await gateway.store.audit.record(who, "file.put", f"file/{record['id']}",
                                     f"{name} ({record['size']} bytes)", address)
    return record


@get("/files", guards=[requires("viewer")], summary="Files both ways", include_in_schema=False)
async def files_page(request: AnyRequest) -> Template:
    return render(request, "files.html", **await files_view(request))


ROUTES = [list_files, put_file, files_page]
