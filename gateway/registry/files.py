"""Files both ways between the registry and its nodes.

Cloud → edge: `POST /api/v1/files?name=…&nodes=a,b|group=G[&path=…][&ttl=…]` (files.write; the body is the file,
streamed into the content store and hashed on the way; `fieldgate registry files push`, the Files page) records the
file with one row per target node. A node learns of it on `GET /api/v1/nodes/self/files?wait=` (a long-poll woken
by the upload), fetches it chunk by chunk from the offset it has written (`GET …/files/<id>/content?offset=&size=`,
each chunk with its SHA-256 in `X-Chunk-SHA256`) and reports its progress, done or refused (`POST
…/files/<id>/progress`).

Edge → cloud: a node announces a file (`POST /api/v1/nodes/self/uploads`) and sends its chunks at the offset the
registry holds (`PUT …/uploads/<id>?offset=`, the chunk's SHA-256 in `X-Chunk-SHA256`); a chunk at another offset is
refused with the offset to resume from (409), a corrupted chunk is refused (422) and nothing of it written; when the
last chunk makes the file whole the registry checks its SHA-256: a mismatch refuses the file and drops its bytes.

A node whose channel is up asks the same over channel streams instead (gateway.registry.filestreams, with the
functions below), its bytes in 64 KiB pieces; these routes are its fallback.

Users list, show (per-node progress), download and delete files (`GET /api/v1/files`, `GET /api/v1/files/<id>`,
`GET …/<id>/content`, `DELETE …/<id>`); edge → cloud files are kept by age and total size (`registry serve
--files-max-age`, `--files-max-bytes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from litestar import Response, delete, get, post, put
from litestar.exceptions import HTTPException
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from gateway.errors import ConfigError, NotFound
from gateway.registry import access
from gateway.registry.auth import AnyRequest, client_node, store_of
from gateway.registry.filestore import ContentStore, OffsetMismatch
from gateway.registry.messages import CHANNEL, MAX_WAIT, Waiters, query_seconds
from gateway.resources.schema import check_node_name
from gateway.webkit.assets import NO_COMPRESSION
from gateway.wire import (
    CHUNK_SHA256,
    FILE_CHUNK,
    FILE_ID,
    MAX_FILE_CHUNK,
    MAX_FILE_LABELS,
    MAX_FILE_NAME,
    MAX_FILE_PATH,
    SHA256_HEX,
    FileOffer,
    FileProgress,
    UploadStart,
    UploadState,
)

if TYPE_CHECKING:
    from gateway.registry.store import RegistryStore

log = logging.getLogger(__name__)
TO_EDGE, FROM_EDGE = "to-edge", "from-edge"
READY, TRANSFERRING, DONE, REFUSED = "ready", "transferring", "done", "refused"
MAX_FILE_SIZE = 64 << 30  # bytes of one file either way
WRITE_BLOCK = 4 << 20  # an upload is appended (and fsynced) in blocks this big
DEFAULT_TTL = 7 * 86400.0
RETENTION_EVERY = 60.0
PROGRESS_EVERY = 1.0  # seconds between two writes of an upload's offset to the database
CONTENT_TYPE = re.compile(r"^[A-Za-z0-9.+-]+/[A-Za-z0-9.+-]+$")


@dataclass
class Retention:
    """How long the registry keeps edge → cloud files, and how many bytes of them at most (the oldest go first)."""

    max_age: float = 30 * 86400.0
    max_bytes: int = 10 << 30


def content_of(request: AnyRequest) -> ContentStore:
    content: ContentStore = request.app.state.files
    return content


def counters(request: AnyRequest) -> Any:
    return request.app.state.metrics.files


def files_key(node: str) -> str:
    """The waiters' key of a node's file long-poll (beside its message long-poll, on the same channel)."""
    return f"files:{node}"


# --- checks -------------------------------------------------------------------------------------------------------


def check_file_name(name: str, field: str = "name") -> str:
    """A file name: one path element, printable, not `.` or `..`."""
    if not name or len(name) > MAX_FILE_NAME:
        raise ConfigError(f"{field}: expected 1 to {MAX_FILE_NAME} characters")
    if "/" in name or "\\" in name or name in (".", "..") or not name.isprintable():
        raise ConfigError(f"{field} {name[:100]!r}: expected a file name without '/', '\\\\' or control "
                          "characters, not '.' or '..'")
    return name


def check_destination(path: str, field: str = "path") -> str:
    """A path relative to a node's files area: no `..`, not absolute, printable; '' is the area itself."""
    if len(path) > MAX_FILE_PATH:
        raise ConfigError(f"{field}: at most {MAX_FILE_PATH} characters")
    if path.startswith("/") or "\\" in path or not path.isprintable():
        raise ConfigError(f"{field} {path[:100]!r}: expected a path relative to the node's files area")
    if any(part in ("..",) for part in path.split("/")):
        raise ConfigError(f"{field} {path[:100]!r}: '..' is not allowed; the file stays in the node's files area")
    return "/".join(part for part in path.split("/") if part not in ("", "."))


def parse_labels(text: str, field: str = "labels") -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{field}: expected k=v,… got {item[:100]!r}")
        access.check_label(key.strip(), value.strip())
        labels[key.strip()] = value.strip()
    if len(labels) > MAX_FILE_LABELS:
        raise ConfigError(f"{field}: at most {MAX_FILE_LABELS} labels")
    return labels


def check_content_type(value: str) -> str:
    if not CONTENT_TYPE.match(value) or len(value) > 127:
        raise ConfigError(f"content_type {value[:100]!r}: expected type/subtype")
    return value


# --- cloud → edge: upload and targets -----------------------------------------------------------------------------


async def resolve_targets(store: RegistryStore, caller: access.Caller, nodes: list[str], group: str | None
                          ) -> tuple[str, list[str]]:
    """(workspace, target nodes) of `nodes` or a `group`, all in one workspace the caller sees."""
    if bool(nodes) == bool(group):
        raise ConfigError("expected nodes or a group (exactly one of them)")
    workspaces = await store.node_workspaces()
    if group:
        found = [g for g in await store.groups() if g["name"] == group]
        if not found or not caller.sees((await store.group_workspaces()).get(group)):
            raise NotFound(f"group {group}: no such group")
        targets = sorted(found[0]["nodes"])
        if not targets:
            raise ConfigError(f"group {group}: has no nodes")
    else:
        targets = list(dict.fromkeys(nodes))
        for node in targets:
            check_node_name(node)
            if node not in workspaces or not caller.sees(workspaces[node]):
                raise NotFound(f"node {node}: no such node")
    spaces = {workspaces.get(node, access.DEFAULT_WORKSPACE) for node in targets}
    if len(spaces) != 1:
        raise ConfigError(f"the target nodes are in several workspaces ({', '.join(sorted(spaces))}): push to "
                          "each workspace's nodes apart")
    return spaces.pop(), targets


async def take_upload(content: ContentStore, file_id: str, chunks: AsyncIterator[bytes], limit: int
                      ) -> tuple[int, str]:
    """Stream a body into a part of the content store (never whole in memory); (size, SHA-256)."""
    digest = hashlib.sha256()
    buffer = bytearray()
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise HTTPException(status_code=413, detail=f"the file is larger than the {limit} bytes the "
                                                            "registry takes")
            digest.update(chunk)
            buffer += chunk
            if len(buffer) >= WRITE_BLOCK:
                await content.append(file_id, size - len(buffer), bytes(buffer))
                buffer.clear()
        await content.append(file_id, size - len(buffer), bytes(buffer))
    except BaseException:
        await content.drop_part(file_id)
        raise
    return size, digest.hexdigest()


async def create_to_edge(store: RegistryStore, content: ContentStore, caller: access.Caller,
                         chunks: AsyncIterator[bytes], *, name: str, nodes: list[str], group: str | None,
                         path: str, ttl: float, content_type: str, labels: dict[str, str],
                         sha256: str | None = None) -> dict[str, Any]:
    """Take a file for nodes (the body streamed into the content store), record it and wake the nodes; its view."""
    check_file_name(name)
    path = check_destination(path)
    check_content_type(content_type)
    if sha256 is not None and not SHA256_HEX.match(sha256):
        raise ConfigError("sha256: expected 64 lower-case hex digits")
    if not 0 < ttl <= 366 * 86400:
        raise ConfigError("ttl: expected more than 0 s and at most 366 days")
    file_id = secrets.token_hex(16)
    workspace, targets = await resolve_targets(store, caller, nodes, group)
    async with access.audited(store, caller, "file.push", f"file/{file_id}",
                              access.workspace_scope(workspace)) as entry:
        entry.detail = {"name": name, "nodes": targets, "group": group, "path": path}
        size, digest = await take_upload(content, file_id, chunks, MAX_FILE_SIZE)
        if sha256 is not None and digest != sha256:
            await content.drop_part(file_id)
            raise ConfigError(f"sha256: the body's SHA-256 is {digest}, not the {sha256} given; nothing kept")
        entry.detail = {**entry.detail, "size": size, "sha256": digest}
        await content.commit(file_id)
        now = time.time()
        await store.files.create({
            "id": file_id, "name": name, "size": size, "sha256": digest, "content_type": content_type,
            "labels": labels, "direction": TO_EDGE, "path": path, "source_node": "",
            "targets": {"nodes": targets, "group": group}, "workspace": workspace, "created_by": caller.actor,
            "created_at": now, "expires_at": now + ttl, "state": READY}, targets, now)
    for node in targets:
        await store.database.notify(CHANNEL, files_key(node))
    return await file_view(store, file_id)


async def file_view(store: RegistryStore, file_id: str) -> dict[str, Any]:
    record = await store.files.get(file_id)
    if record is None:
        raise NotFound(f"no file {file_id}")
    if record["direction"] == TO_EDGE:
        record["nodes"] = await store.files.targets(file_id)
    return record


async def visible_file(store: RegistryStore, caller: access.Caller, file_id: str) -> dict[str, Any]:
    """A file the caller's scope covers (NotFound for any other, as for one that is not there)."""
    if not FILE_ID.match(file_id):
        raise NotFound(f"no file {file_id[:40]}")
    record = await file_view(store, file_id)
    if not caller.sees(record["workspace"]):
        raise NotFound(f"no file {file_id}")
    return record


async def visible_files(store: RegistryStore, caller: access.Caller, direction: str | None = None
                        ) -> list[dict[str, Any]]:
    if direction not in (None, TO_EDGE, FROM_EDGE):
        raise ConfigError(f"direction {direction[:40]!r}: expected to-edge or from-edge")
    counts = await store.files.target_counts()
    return [{**record, "node_states": counts.get(record["id"], {})}
            for record in await store.files.listing(direction) if caller.sees(record["workspace"])]


async def delete_file(store: RegistryStore, content: ContentStore, caller: access.Caller, file_id: str) -> None:
    record = await visible_file(store, caller, file_id)
    async with access.audited(store, caller, "file.delete", f"file/{file_id}",
                              access.workspace_scope(record["workspace"])) as entry:
        entry.detail = {"name": record["name"], "direction": record["direction"]}
        await store.files.delete(file_id)
        await content.delete(file_id)


# --- retention ----------------------------------------------------------------------------------------------------


async def apply_retention(store: RegistryStore, content: ContentStore, retention: Retention, now: float) -> int:
    """Expire to-edge targets past their TTL; drop edge → cloud files older than max_age, then the oldest until
    the rest fit max_bytes. How many files went."""
    await store.files.expire(now)
    done = await store.files.from_edge_done()
    total = sum(size for _, _, size in done)
    gone = 0
    for file_id, done_at, size in done:
        if done_at >= now - retention.max_age and total <= retention.max_bytes:
            continue
        await store.files.delete(file_id)
        await content.delete(file_id)
        await access.record(store, "registry", access.PLATFORM, "file.expire", f"file/{file_id}", "ok",
                            {"size": size, "done_at": done_at})
        total -= size
        gone += 1
    return gone


@contextlib.asynccontextmanager
async def retaining(store: RegistryStore, content: ContentStore, retention: Retention) -> AsyncIterator[None]:
    """Apply the retention every RETENTION_EVERY seconds while the app runs."""

    async def loop() -> None:
        while True:
            try:
                await apply_retention(store, content, retention, time.time())
            except Exception:  # logged, and tried again next round: retention never stops the registry
                log.exception("file retention failed")
            await asyncio.sleep(RETENTION_EVERY)

    task = asyncio.create_task(loop(), name="file retention")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- the user API -------------------------------------------------------------------------------------------------


def _query(request: AnyRequest, name: str, default: str = "", limit: int = MAX_FILE_PATH) -> str:
    value = request.query_params.get(name, default)
    if len(value) > limit:
        raise ConfigError(f"?{name}: at most {limit} characters")
    return value


@post("/api/v1/files", summary="Push a file (the body) to nodes: ?name=&nodes=a,b or ?group=G, [&path=&ttl=&"
      "content_type=&labels=k=v,…&sha256=]", status_code=201, request_max_body_size=MAX_FILE_SIZE)
async def push_file(request: AnyRequest) -> dict[str, Any]:
    caller = await access.require_caller(request, "files.write")
    ttl = query_seconds("?ttl", _query(request, "ttl", "7d", 40))
    nodes = [n for n in _query(request, "nodes", "", 100_000).split(",") if n]
    record = await create_to_edge(
        store_of(request), content_of(request), caller, request.stream(), name=_query(request, "name"),
        nodes=nodes, group=_query(request, "group", "", 253) or None, path=_query(request, "path"), ttl=ttl,
        content_type=_query(request, "content_type", "application/octet-stream", 127),
        labels=parse_labels(_query(request, "labels", "", 10_000)),
        sha256=_query(request, "sha256", "", 64) or None)
    counters(request)["files_pushed"] += 1
    return record


@get("/api/v1/files", summary="Files both ways, newest first (?direction=to-edge|from-edge)")
async def list_files(request: AnyRequest) -> list[dict[str, Any]]:
    caller = await access.require_caller(request, "files.read")
    return await visible_files(store_of(request), caller, request.query_params.get("direction"))


@get("/api/v1/files/{file_id:str}", summary="One file with the progress of each of its nodes")
async def show_file(request: AnyRequest, file_id: FromPath[str]) -> dict[str, Any]:
    return await visible_file(store_of(request), await access.require_caller(request, "files.read"), file_id)


def download_response(content: ContentStore, record: dict[str, Any], *, attachment: bool = True) -> Stream:
    if record["direction"] == FROM_EDGE and record["state"] != DONE:
        raise HTTPException(status_code=409, detail=f"file {record['id']} is {record['state']}: not whole yet")
    disposition = "attachment" if attachment else "inline"
    quoted = re.sub(r"[^A-Za-z0-9._-]", "_", record["name"])
    return Stream(content.stream(record["id"]), media_type=record["content_type"],
                  headers={"Content-Length": str(record["size"]), "X-Content-SHA256": record["sha256"],
                           "Content-Disposition": f'{disposition}; filename="{quoted}"'})


RAW = {NO_COMPRESSION: True}  # file bytes go as they are: compressing them costs CPU and breaks the chunk hashes


@get("/api/v1/files/{file_id:str}/content", summary="Download a file", media_type="application/octet-stream",
     opt=RAW)
async def download_file(request: AnyRequest, file_id: FromPath[str]) -> Stream:
    record = await visible_file(store_of(request), await access.require_caller(request, "files.read"), file_id)
    return download_response(content_of(request), record)


@delete("/api/v1/files/{file_id:str}", summary="Delete a file (its bytes, its progress)", status_code=200)
async def remove_file(request: AnyRequest, file_id: FromPath[str]) -> dict[str, str]:
    caller = await access.require_caller(request, "files.write")
    await delete_file(store_of(request), content_of(request), caller, file_id)
    return {"deleted": file_id}


# --- the node side (mutual TLS) -----------------------------------------------------------------------------------


def _offer(record: dict[str, Any]) -> FileOffer:
    return FileOffer(id=record["id"], name=record["name"], path=record["path"], size=record["size"],
                     sha256=record["sha256"], content_type=record["content_type"], labels=record["labels"],
                     expires_at=record["expires_at"] or 0.0)


@get("/api/v1/nodes/self/files", summary="The files for the calling node it has not finished; waits up to ?wait=")
async def node_files(request: AnyRequest) -> list[FileOffer]:
    node = await client_node(request)
    raw = request.query_params.get("wait")
    wait = min(query_seconds("?wait", raw), MAX_WAIT) if raw is not None else 0.0
    return await pending_offers(store_of(request), request.app.state.waiters, node, wait)


async def pending_offers(store: RegistryStore, waiters: Waiters, node: str, wait: float) -> list[FileOffer]:
    """The files for `node` it has not finished, waiting up to `wait` s for one (over HTTPS or the channel)."""
    deadline = time.monotonic() + wait
    event = waiters.events[files_key(node)]
    while True:
        event.clear()
        offers = await store.files.offers(node, time.time())
        remaining = deadline - time.monotonic()
        if offers or remaining <= 0 or waiters.closing:
            return [_offer(record) for record in offers]
        try:
            await asyncio.wait_for(event.wait(), remaining)
        except TimeoutError:
            return []


async def _node_target(request: AnyRequest, file_id: str) -> tuple[str, dict[str, Any]]:
    node = await client_node(request)
    return node, await node_target(store_of(request), node, file_id)


async def node_target(store: RegistryStore, node: str, file_id: str) -> dict[str, Any]:
    """A to-edge file `node` is a target of (NotFound for any other)."""
    record = await store.files.get(file_id) if FILE_ID.match(file_id) else None
    if record is None or record["direction"] != TO_EDGE or await store.files.target(file_id, node) is None:
        raise NotFound(f"no file {file_id[:40]} for node {node}")
    return record


def _int_param(request: AnyRequest, name: str, default: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 20 or int(raw) > maximum:
        raise ConfigError(f"?{name}={raw[:40]}: expected a whole number from 0 to {maximum}")
    return int(raw)


@get("/api/v1/nodes/self/files/{file_id:str}/content", summary="A chunk of a file for the calling node "
     "(?offset=&size=); its SHA-256 in X-Chunk-SHA256", media_type="application/octet-stream", opt=RAW)
async def node_file_chunk(request: AnyRequest, file_id: FromPath[str]) -> Response[bytes]:
    _, record = await _node_target(request, file_id)
    offset = _int_param(request, "offset", 0, record["size"])
    size = _int_param(request, "size", FILE_CHUNK, MAX_FILE_CHUNK)
    data = await content_of(request).read(file_id, offset, min(size, record["size"] - offset))
    counters(request)["bytes_sent"] += len(data)  # the node's own count comes with its progress (no write a chunk)
    return Response(data, media_type="application/octet-stream",
                    headers={CHUNK_SHA256: hashlib.sha256(data).hexdigest()})


@post("/api/v1/nodes/self/files/{file_id:str}/progress", summary="The calling node's progress with a file",
      status_code=200)
async def node_file_progress(request: AnyRequest, file_id: FromPath[str], data: JSONBody[FileProgress]
                             ) -> dict[str, Any]:
    node = await client_node(request)
    return await take_progress(store_of(request), counters(request), node, file_id, data)


async def take_progress(store: RegistryStore, files_counters: Any, node: str, file_id: str, data: FileProgress
                        ) -> dict[str, Any]:
    """A node's progress with a to-edge file, audited once done or refused."""
    record = await node_target(store, node, file_id)
    if data.offset > record["size"]:
        raise ConfigError(f"offset {data.offset}: the file has {record['size']} bytes")
    state = data.state
    changed = await store.files.progress(file_id, node, state, data.offset, data.reason, data.bytes_received,
                                         time.time())
    if changed and state in (DONE, REFUSED):
        files_counters[f"to_edge_{state}"] += 1
        await access.record(store, f"node:{node}", access.workspace_scope(record["workspace"]),
                            f"file.{state}", f"file/{file_id}", "ok" if state == DONE else f"refused: {data.reason}",
                            {"name": record["name"], "node": node})
    return {"file": file_id, "node": node, "state": state}


def _upload_state(record: dict[str, Any]) -> UploadState:
    return UploadState(id=record["id"], offset=record["received"], state=record["state"], reason=record["reason"])


async def _node_upload(request: AnyRequest, file_id: str) -> tuple[str, dict[str, Any]]:
    node = await client_node(request)
    return node, await node_upload(store_of(request), node, file_id)


async def node_upload(store: RegistryStore, node: str, file_id: str) -> dict[str, Any]:
    """A from-edge file `node` sends (NotFound for any other)."""
    record = await store.files.get(file_id) if FILE_ID.match(file_id) else None
    if record is None or record["direction"] != FROM_EDGE or record["source_node"] != node:
        raise NotFound(f"no upload {file_id[:40]} of node {node}")
    return record


@post("/api/v1/nodes/self/uploads", summary="The calling node announces a file it sends; answers the offset to "
      "send from", status_code=200)
async def start_upload(request: AnyRequest, data: JSONBody[UploadStart]) -> UploadState:
    node = await client_node(request)
    return await announce_upload(store_of(request), content_of(request), counters(request), node, data)


async def announce_upload(store: RegistryStore, content: ContentStore, files_counters: Any, node: str,
                          data: UploadStart) -> UploadState:
    """Record a file a node announces (once; again: its state); the offset it sends from."""
    check_file_name(data.name)
    if data.size > MAX_FILE_SIZE:
        raise HTTPException(status_code=413, detail=f"size {data.size}: the registry takes files of at most "
                                                    f"{MAX_FILE_SIZE} bytes")
    existing = await store.files.get(data.id)
    if existing is not None:
        if existing["source_node"] != node or existing["sha256"] != data.sha256 or existing["size"] != data.size:
            raise HTTPException(status_code=409, detail=f"file id {data.id} is taken by another file")
        if existing["state"] == TRANSFERRING:  # the part's bytes, on this replica (0 where it has none)
            existing["received"] = await content.part_size(data.id)
        return _upload_state(existing)
    workspace = await store.node_workspace(node) or access.DEFAULT_WORKSPACE
    now = time.time()
    await store.files.create({
        "id": data.id, "name": data.name, "size": data.size, "sha256": data.sha256,
        "content_type": data.content_type, "labels": data.labels, "direction": FROM_EDGE, "path": "",
        "source_node": node, "targets": {}, "workspace": workspace, "created_by": f"node:{node}", "created_at": now,
        "expires_at": None, "state": TRANSFERRING}, [], now)
    await content.drop_part(data.id)  # a part left by an earlier registry under this id
    if data.size == 0:  # whole already: an empty part, verified and kept
        await content.append(data.id, 0, b"")
        return await finish_upload(store, content, files_counters, node, await file_view(store, data.id))
    return UploadState(id=data.id, offset=0, state=TRANSFERRING)


@get("/api/v1/nodes/self/uploads/{file_id:str}", summary="How much of a file the registry holds")
async def upload_state(request: AnyRequest, file_id: FromPath[str]) -> UploadState:
    return await upload_status(store_of(request), content_of(request), await client_node(request), file_id)


async def upload_status(store: RegistryStore, content: ContentStore, node: str, file_id: str) -> UploadState:
    """How much of a file `node` sends this replica holds (its part's size), or its final state."""
    record = await node_upload(store, node, file_id)
    if record["state"] == TRANSFERRING:
        record["received"] = await content.part_size(file_id)
    return _upload_state(record)


@put("/api/v1/nodes/self/uploads/{file_id:str}", summary="A chunk of a file the calling node sends, at ?offset= "
     "(its SHA-256 in X-Chunk-SHA256)", status_code=200, request_max_body_size=MAX_FILE_CHUNK)
async def upload_chunk(request: AnyRequest, file_id: FromPath[str]) -> Response[Any]:
    node, record = await _node_upload(request, file_id)
    content = content_of(request)
    if record["state"] != TRANSFERRING:
        return Response(_upload_state(record), status_code=200)
    offset = _int_param(request, "offset", 0, record["size"])
    expected = request.headers.get(CHUNK_SHA256, "")
    if not SHA256_HEX.match(expected):
        raise ConfigError(f"{CHUNK_SHA256}: expected the chunk's SHA-256 (64 lower-case hex digits)")
    data = await request.body()
    counters(request)["bytes_received"] += len(data)
    if hashlib.sha256(data).hexdigest() != expected:
        counters(request)["chunks_corrupted"] += 1
        raise HTTPException(status_code=422, detail=f"the chunk at offset {offset} does not match its "
                                                    f"{CHUNK_SHA256}: corrupted on the way; send it again")
    if offset + len(data) > record["size"]:
        raise ConfigError(f"the chunk ends at {offset + len(data)}, past the file's {record['size']} bytes")
    try:
        received = await content.append(file_id, offset, data)
    except OffsetMismatch as exc:
        return Response(UploadState(id=file_id, offset=exc.offset, state=TRANSFERRING, reason=str(exc)),
                        status_code=409)
    taken = request.app.state.file_chunks_taken
    taken[file_id] = taken.get(file_id, 0) + len(data)
    if received < record["size"]:
        # the offset itself is the part's size on disk; the database has it for the pages, once a second at most
        last = request.app.state.file_progress_written
        if time.monotonic() - last.get(file_id, 0.0) > PROGRESS_EVERY:
            last[file_id] = time.monotonic()
            await store_of(request).files.set_received(file_id, received, taken.pop(file_id, 0))
        return Response(UploadState(id=file_id, offset=received, state=TRANSFERRING))
    request.app.state.file_progress_written.pop(file_id, None)
    await store_of(request).files.set_received(file_id, received, taken.pop(file_id, 0))
    return Response(await finish_upload(store_of(request), content, counters(request), node, record))


async def finish_upload(store: RegistryStore, content: ContentStore, files_counters: Any, node: str,
                        record: dict[str, Any]) -> UploadState:
    """The whole file: verified and kept, or refused and dropped."""
    file_id = record["id"]
    digest = await content.part_sha256(file_id)
    scope = access.workspace_scope(record["workspace"])
    if digest != record["sha256"]:
        reason = f"the file's SHA-256 is {digest}, not the {record['sha256']} announced: refused, nothing kept"
        await content.drop_part(file_id)
        await store.files.set_state(file_id, REFUSED, reason, time.time())
        files_counters["from_edge_refused"] += 1
        await access.record(store, f"node:{node}", scope, "file.upload", f"file/{file_id}", f"refused: {reason}",
                            {"name": record["name"]})
        return UploadState(id=file_id, offset=record["size"], state=REFUSED, reason=reason)
    await content.commit(file_id)
    await store.files.set_state(file_id, DONE, "", time.time())
    files_counters["from_edge_done"] += 1
    await access.record(store, f"node:{node}", scope, "file.upload", f"file/{file_id}", "ok",
                        {"name": record["name"], "size": record["size"]})
    return UploadState(id=file_id, offset=record["size"], state=DONE)


ROUTE_HANDLERS = [push_file, list_files, show_file, download_file, remove_file, node_files, node_file_chunk,
                  node_file_progress, start_upload, upload_state, upload_chunk]
