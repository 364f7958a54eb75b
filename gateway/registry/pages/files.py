"""Files both ways: the list (to nodes with their progress, from nodes with their state), one file with each node's
progress, and (with files.write) pushing a file to nodes or a group, downloading and deleting files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from litestar import Response, get, post
from litestar.datastructures import UploadFile
from litestar.params import FromPath
from litestar.response import Stream, Template

from gateway.errors import ConfigError, NotFound
from gateway.registry import access, files
from gateway.registry.access import AnyRequest
from gateway.registry.messages import query_seconds
from gateway.registry.pages.common import caller_of, flash, page, show, store_of
from gateway.webkit.pages import see_other

MAX_PAGE_UPLOAD = 4 << 30  # a file pushed from the page (the CLI and the API take up to files.MAX_FILE_SIZE)
READ_BLOCK = 1 << 20


@get("/files", summary="Files both ways with their progress", **page("files.read"))
async def files_page(request: AnyRequest) -> Template:
    store, caller = store_of(request), caller_of(request)
    listed = await files.visible_files(store, caller)
    to_edge = [f for f in listed if f["direction"] == files.TO_EDGE]
    from_edge = [f for f in listed if f["direction"] == files.FROM_EDGE]
    return show(request, "files.html", to_edge=to_edge, from_edge=from_edge,
                nodes=await access.visible_nodes(store, caller) if caller.can("files.write") else [],
                groups=await access.visible_groups(store, caller) if caller.can("files.write") else [])


async def _blocks(upload: UploadFile) -> AsyncIterator[bytes]:
    while block := await upload.read(READ_BLOCK):
        yield block


@post("/files", summary="Push an uploaded file (multipart) to nodes or a group", status_code=303,
      request_max_body_size=MAX_PAGE_UPLOAD + (1 << 20), **page("files.write", action="push files"))
async def files_push(request: AnyRequest) -> Response[Any]:
    form = await request.form()
    upload = form.get("file")
    nodes = [v.strip() for v in form.getall("node") if isinstance(v, str) and v.strip()] if "node" in form else []
    group = str(form.get("group") or "").strip() or None
    try:
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise ConfigError("file: choose a file to push")
        ttl = query_seconds("ttl", str(form.get("ttl") or "7d").strip())
        record = await files.create_to_edge(
            store_of(request), request.app.state.files, caller_of(request), _blocks(upload),
            name=str(form.get("name") or "").strip() or upload.filename, nodes=nodes, group=group,
            path=str(form.get("path") or "").strip(), ttl=ttl,
            content_type=upload.content_type or "application/octet-stream",
            labels=files.parse_labels(str(form.get("labels") or "")))
    except (ConfigError, NotFound) as exc:
        flash(request, "error", f"File not pushed: {exc}")
        return see_other("/files")
    flash(request, "ok", f"File {record['name']} ({record['size']} bytes) pushed to "
                         f"{', '.join(n['node'] for n in record['nodes'])}.")
    return see_other(f"/files/{quote(record['id'])}")


@get("/files/{file_id:str}", summary="One file with the progress of each of its nodes", **page("files.read"))
async def file_page(request: AnyRequest, file_id: FromPath[str]) -> Template:
    record = await files.visible_file(store_of(request), caller_of(request), file_id)
    return show(request, "file.html", file=record)


@get("/files/{file_id:str}/download", summary="Download a file", **page("files.read"))
async def file_download(request: AnyRequest, file_id: FromPath[str]) -> Stream:
    record = await files.visible_file(store_of(request), caller_of(request), file_id)
    return files.download_response(request.app.state.files, record)


@post("/files/{file_id:str}/delete", summary="Delete a file", status_code=303,
      **page("files.write", action="delete files"))
async def file_delete(request: AnyRequest, file_id: FromPath[str]) -> Response[Any]:
    try:
        await files.delete_file(store_of(request), request.app.state.files, caller_of(request), file_id)
    except NotFound as exc:
        flash(request, "error", f"File not deleted: {exc}")
        return see_other("/files")
    flash(request, "ok", f"File {file_id} deleted.")
    return see_other("/files")


ROUTE_HANDLERS = [files_page, files_push, file_page, file_download, file_delete]
