"""The registry's web app: join (token + CSR → node certificate), heartbeats and desired resources (mTLS)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import msgspec
from litestar import Litestar, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    PermissionDeniedException,
    TooManyRequestsException,
)
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.params import JSONBody

from gateway import __version__
from gateway.errors import AuthError, ConfigError, NotFound
from gateway.registry import (
    access,
    admin,
    batch,
    channel,
    files,
    live,
    metrics,
    monitoring,
    offline,
    pages,
    peers,
    roles,
    routes,
    services,
    twins,
    upgrades,
    workloads,
)
from gateway.registry.auth import AnyRequest, client_identity, client_node, node_caller, store_of
from gateway.registry.ca import CertificateAuthority, cert_pem
from gateway.registry.filestore import open_content_store
from gateway.registry.filestreams import FileStreams
from gateway.registry.logs import ROUTE_HANDLERS as LOG_ROUTE_HANDLERS
from gateway.registry.logs import LogRequests
from gateway.registry.messages import CHANNEL, ROUTE_HANDLERS, Waiters
from gateway.registry.store import NameTaken, RegistryStore, TokenRefused
from gateway.registry.store.db import NODES_CHANNEL
from gateway.registry.store.requests import ANSWERS_CHANNEL
from gateway.resources.schema import check_node_name
from gateway.webkit.application import Application
from gateway.webkit.assets import compression_config
from gateway.webkit.errors import (
    CheckedRequest,
    OpenAPIJson,
    add_request_id,
    error_response,
    http_error_detail,
    internal_error,
)
from gateway.webkit.headers import add_security_headers, complete_options_allow
from gateway.webkit.sessions import LoginLimiter
from gateway.webkit.templating import static_files, template_config
from gateway.wire import (
    CHANNEL_OFF,
    CHANNEL_PATH,
    FILE_STREAM,
    MAX_HEARTBEAT,
    HeartbeatRequest,
    HeartbeatResponse,
    JoinRequest,
    JoinResponse,
)

DEFAULT_INTERVAL = 10.0


# Failed joins (any refusal) a window from one client address, and wrong secrets a window for one known token id
# from any address; successful joins are never counted, so a fleet joining at once is not slowed down.
JOIN_FAILURES = 10
JOIN_TOKEN_FAILURES = 20
JOIN_WINDOW = 60.0


@get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@get("/api/v1/ca", summary="The registry CA certificate (PEM); nodes check it against their join token",
     media_type="application/x-pem-file")
async def ca_certificate(request: AnyRequest) -> str:
    ca: CertificateAuthority = request.app.state.ca
    return ca.cert_pem.decode()


@post("/api/v1/join", summary="Join with a token and a CSR; returns the node name and its certificate",
      status_code=200)
async def join(request: AnyRequest, data: JSONBody[JoinRequest]) -> JoinResponse:
    ca: CertificateAuthority = request.app.state.ca
    store = store_of(request)
    token_id, _, secret = data.token.partition(".")
    if not re.fullmatch(r"[0-9a-f]{1,32}", token_id):  # no token has such an id; keep its text out of the audit log
        token_id = "-"
    address_key, token_key = f"address:{request.client.host if request.client else ''}", f"token:{token_id}"
    by_address: LoginLimiter = request.app.state.join_address_limiter
    by_token: LoginLimiter = request.app.state.join_token_limiter
    wait = max(by_address.blocked_for(address_key), by_token.blocked_for(token_key))
    if wait > 0:  # refused before the token is looked at, and not audited: a flood of guesses fills no log
        raise TooManyRequestsException(f"too many failed joins: try again in {wait:.0f} s",
                                       headers={"Retry-After": str(int(wait) + 1)})
    if data.name is not None:
        name = data.name
    else:  # a name the token's prefix starts; a prefix is checked when the token is made
        name = f"{await store.join_token_prefix(token_id) or 'node'}-{secrets.token_hex(3)}"
    try:
        check_node_name(name)
        bad_name: ConfigError | None = None
    except ConfigError as exc:
        bad_name = exc
    known = await access.join_token_workspace(store, token_id)
    workspace = known or access.DEFAULT_WORKSPACE
    # a refused unknown token is recorded at platform scope: no workspace's admins learn of it
    scope = access.workspace_scope(known) if known else access.PLATFORM
    try:
        async with access.audited(store, f"join-token:{token_id}", "node.join",
                                  "node/-" if bad_name else f"node/{name}", scope) as entry:
            if bad_name:  # in the JSON detail, escaped: a newline or NUL in a name forges no line and breaks no write
                entry.detail = {"name": name[:100]}
            # Everything is checked before the token's use is spent, and the use is spent in the transaction that
            # records the node: a refused join (bad name or CSR, name taken, several groups) leaves the token as it was.
            try:
                labels = await store.check_token(token_id, secret)
            except TokenRefused as exc:
                if known and str(exc) == "unknown":  # a wrong secret for a real token: someone may be guessing
                    by_token.failed(token_key)
                raise PermissionDeniedException(str(exc)) from None
            if bad_name:
                raise bad_name
            if await store.name_taken(name):
                raise HTTPException(status_code=409, detail=f"node name {name} is taken")
            cert = ca.sign_node(data.csr, name)
            try:
                group = await store.group_for_labels(labels, workspace)
            except ConfigError as exc:
                raise HTTPException(status_code=409, detail=str(exc)) from None
            interval = float(request.app.state.interval)
            try:
                await store.join_node(token_id, name, format(cert.serial_number, "x"), labels, interval, group,
                                      workspace)
            except TokenRefused as exc:  # another join took the last use meanwhile
                raise PermissionDeniedException(str(exc)) from None
            except NameTaken as exc:  # another node took the name meanwhile
                raise HTTPException(status_code=409, detail=str(exc)) from None
    except (HTTPException, ConfigError):
        by_address.failed(address_key)
        raise
    return JoinResponse(node=name, certificate=cert_pem(cert), ca=ca.cert_pem.decode(), heartbeat_interval=interval,
                        channel=request.app.state.channel_address)


@post("/api/v1/heartbeat", summary="A node's heartbeat; answers with its desired resources when they changed",
      status_code=200, request_max_body_size=MAX_HEARTBEAT)
async def heartbeat(request: AnyRequest, data: JSONBody[HeartbeatRequest]) -> HeartbeatResponse:
    node, serial = client_identity(request)  # checked as the heartbeat is recorded
    if data.twins is not None:
        try:
            twins.check_report_rate(request.app.state, node)
        except HTTPException:
            await client_node(request)  # a revoked node is refused, not told to slow down
            raise
    try:  # the address the registry sees the node at, beside those the node reports of its own interfaces
        return await take_heartbeat(store_of(request), node, data, request.client.host if request.client else None,
                                    request.app.state.channel_address, serial)
    except AuthError as exc:
        raise PermissionDeniedException(str(exc)) from None


async def take_heartbeat(store: RegistryStore, node: str, data: HeartbeatRequest,
                         seen_from_address: str | None, channel: str, serial: str | None = None) -> HeartbeatResponse:
    """Record a node's heartbeat (over HTTPS or the channel); the answer with what the node should have. `serial`:
    the certificate to check (AuthError unless it is the node's current one) as the heartbeat is recorded."""
    seen_from = {"seen_from": seen_from_address} if seen_from_address else {}
    allocatable = {"allocatable": msgspec.to_builtins(data.allocatable)} if data.allocatable is not None else {}
    interval, newest_desired, upgrading = await store.beat(
        node, {**data.info, **seen_from, **allocatable}, data.figures, serial=serial,
        unfinished_upgrades=upgrades.UNFINISHED)
    await offline.adopt(store, node, data.takeovers)  # before the documents: they follow what the group did
    await workloads.record_status(store, node, data.workloads)
    await routes.record_counters(store, node, data.routes)
    await services.record_events(store, node, data.service_events)
    assignment = await upgrades.on_heartbeat(store, node, data.upgrade, upgrading)
    version, documents = await store.node_documents(node)
    desired = await twins.sync(store, node, data.twins, data.twins_complete, data.desired_version, data.desired_ack,
                               data.described, newest=newest_desired)
    return HeartbeatResponse(node=node, resource_version=version, heartbeat_interval=interval,
                             documents=documents if version != data.resource_version else None, desired=desired,
                             upgrade=assignment, channel=channel,
                             failover=await offline.plan_for(store, node, data))


@get("/api/v1/nodes", summary="Nodes with their status and the registry replica each one's channel is at (an API "
                            "token, or a node's certificate)")
async def nodes(request: AnyRequest) -> list[dict[str, Any]]:
    if request.headers.get("authorization"):
        caller = await access.require_caller(request, "nodes.read")
    else:
        caller = await node_caller(request)
    return await access.visible_nodes(store_of(request), caller)


@get("/api/v1/groups", summary="Node groups with their members")
async def groups(request: AnyRequest) -> list[dict[str, Any]]:
    return await access.visible_groups(store_of(request), await access.require_caller(request, "nodes.read"))


async def _users_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """The OpenAPI document is for registry users, as the API it describes: an API token or a page session."""
    request = cast(AnyRequest, connection)  # guards of HTTP routes are handed the request
    if request.headers.get("authorization"):
        await access.require_caller(request)
    elif await pages.session_caller(request) is None:
        raise NotAuthorizedException("an API token is required (Authorization: Bearer <token> from `fieldgate "
                                     "registry token create`), or a login to the registry pages")


def _error(status: int) -> Any:
    """API callers get the error body; a browser asking for a page gets the error page."""

    def handle(request: AnyRequest, exc: Exception) -> Response[Any]:
        if pages.is_page_path(request.url.path):
            return pages.error_page(request, status, str(exc))
        return error_response(request, status, str(exc))

    return handle


def _http_error(request: AnyRequest, exc: HTTPException) -> Response[Any]:
    if pages.is_page_path(request.url.path):  # a page path no route has, a method it does not take, a bad form
        return pages.error_page(request, exc.status_code, http_error_detail(exc), exc.headers)
    return error_response(request, exc.status_code, http_error_detail(exc), exc.headers)


def create_app(data_dir: Path, *, interval: float = DEFAULT_INTERVAL, db_url: str | None = None,
               files_url: str | None = None, retention: files.Retention | None = None,
               channel_address: str = CHANNEL_PATH, peer_listen: str = "", peer_advertise: str = "") -> Litestar:
    """The registry app on a data dir (CA there, made on first start) and its database (SQLite in the data dir
    unless `db_url` names a PostgreSQL database that other replicas may share); file bytes in the data dir unless
    `files_url` names a directory or s3://bucket/prefix (gateway.registry.filestore). `channel_address` is what
    nodes are told of the channel ("[:PORT]PATH", or "off": no channel, nodes poll over HTTPS); `peer_listen`
    (HOST:PORT) and `peer_advertise`: the relay between replicas (gateway.registry.peers), off when empty."""
    ca = CertificateAuthority.load_or_create(data_dir)
    registry_metrics = metrics.RegistryMetrics()
    content = open_content_store(data_dir, files_url)
    log_requests = LogRequests()
    hub = channel.ChannelHub(log_requests, channel_address)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with RegistryStore(data_dir, db_url) as store:
            app.state.store = store
            hub.handlers[FILE_STREAM] = FileStreams(store, content, registry_metrics.files, app.state.waiters).handle
            hub.handlers[services.RELAY_KIND] = services.relay_handler(hub, store)
            await store.database.listen(CHANNEL, app.state.waiters.wake)
            await store.database.listen(CHANNEL, hub.wake)
            await store.database.listen(NODES_CHANNEL, hub.wake)
            await store.database.listen(ANSWERS_CHANNEL, log_requests.wake)
            if peer_listen:
                hub.peers = peers.PeerRelay(hub, store, ca, peer_listen, peer_advertise)
                await hub.peers.start()
            sweep = asyncio.create_task(hub.sweep(store), name="channel sweep")
            try:
                async with workloads.scheduling(store, interval), \
                        files.retaining(store, content, retention or files.Retention()):
                    yield
            finally:
                if hub.peers is not None:
                    await hub.peers.stop()
                sweep.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweep

    return Application(
        route_handlers=[healthz, ca_certificate, join, heartbeat, nodes, groups, *ROUTE_HANDLERS,
                        *access.ROUTE_HANDLERS, *admin.ROUTE_HANDLERS, *pages.ROUTE_HANDLERS,
                        *monitoring.ROUTE_HANDLERS, *metrics.ROUTE_HANDLERS,
                        *batch.ROUTE_HANDLERS, *twins.ROUTE_HANDLERS,
                        *LOG_ROUTE_HANDLERS, *workloads.ROUTE_HANDLERS, *routes.ROUTE_HANDLERS,
                        *services.ROUTE_HANDLERS,
                        *upgrades.ROUTE_HANDLERS, *live.ROUTE_HANDLERS, *roles.ROUTE_HANDLERS,
                        *files.ROUTE_HANDLERS, static_files(pages.STATIC),
                        *(channel.ROUTE_HANDLERS if channel_address != CHANNEL_OFF else [])],
        state=State({"ca": ca, "interval": interval, "waiters": Waiters(), "metrics": registry_metrics,
                     "files": content, "file_chunks_taken": {}, "file_progress_written": {},
                     "log_requests": log_requests, "channel": hub, "channel_address": channel_address,
                     **pages.initial_state(),
                     "join_address_limiter": LoginLimiter(JOIN_FAILURES, JOIN_WINDOW),
                     "join_token_limiter": LoginLimiter(JOIN_TOKEN_FAILURES, JOIN_WINDOW)}),
        lifespan=[lifespan],
        middleware=[DefineMiddleware(metrics.MetricsMiddleware, metrics=registry_metrics)],
        exception_handlers={ConfigError: _error(400), NotFound: _error(404), HTTPException: _http_error,
                            **pages.EXCEPTION_HANDLERS,
                            Exception: internal_error(pages.error_page, pages.is_page_path)},
        request_class=CheckedRequest,
        template_config=template_config(pages.TEMPLATES, utc=True, app_static=(pages.STATIC,)),
        compression_config=compression_config(),
        before_send=[add_security_headers, add_request_id, complete_options_allow],
        # the document only: the UIs Litestar can add (Swagger, ReDoc, Elements, RapiDoc) load scripts from CDNs
        openapi_config=OpenAPIConfig(
            title="fieldgate registry", version=__version__, render_plugins=[OpenAPIJson()],
            openapi_router=Router("/schema", route_handlers=[], guards=[_users_only], include_in_schema=False),
        ),
        logging_config=None,
        debug=False,
    )
