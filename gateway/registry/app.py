"""The registry's web app: join (token + CSR → node certificate), heartbeats and desired resources (mTLS)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from litestar import Litestar, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException, PermissionDeniedException
from litestar.middleware import DefineMiddleware
from litestar.params import JSONBody

from gateway import __version__
from gateway.errors import ConfigError, NotFound
from gateway.registry import access, batch, metrics, monitoring, pages, twins, upgrades, workloads
from gateway.registry.auth import AnyRequest, client_node, node_caller, store_of
from gateway.registry.ca import CertificateAuthority, cert_pem
from gateway.registry.logs import ROUTE_HANDLERS as LOG_ROUTE_HANDLERS
from gateway.registry.logs import LogRequests
from gateway.registry.messages import CHANNEL, ROUTE_HANDLERS, Waiters
from gateway.registry.store import RegistryStore, TokenRefused
from gateway.wire import HeartbeatRequest, HeartbeatResponse, JoinRequest, JoinResponse

DEFAULT_INTERVAL = 10.0


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
    name = data.name or f"node-{secrets.token_hex(3)}"
    known = await access.join_token_workspace(store, token_id)
    workspace = known or access.DEFAULT_WORKSPACE
    # a refused unknown token is recorded at platform scope: no workspace's admins learn of it
    scope = access.workspace_scope(known) if known else access.PLATFORM
    async with access.audited(store, f"join-token:{token_id}", "node.join", f"node/{name}", scope):
        try:
            labels = await store.use_token(token_id, secret)
        except TokenRefused as exc:
            raise PermissionDeniedException(str(exc)) from None
        taken = await store.node_names()
        if name in taken:
            raise HTTPException(status_code=409, detail=f"node name {name} is taken")
        try:
            group = await store.group_for_labels(labels, workspace)
        except ConfigError as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None
        cert = ca.sign_node(data.csr, name)
        interval = float(request.app.state.interval)
        await store.add_node(name, format(cert.serial_number, "x"), labels, interval, group, workspace)
    return JoinResponse(node=name, certificate=cert_pem(cert), ca=ca.cert_pem.decode(), heartbeat_interval=interval)


@post("/api/v1/heartbeat", summary="A node's heartbeat; answers with its desired resources when they changed",
      status_code=200)
async def heartbeat(request: AnyRequest, data: JSONBody[HeartbeatRequest]) -> HeartbeatResponse:
    node = await client_node(request)
    if data.twins is not None:
        twins.check_report_rate(request.app.state, node)
    store = store_of(request)
    interval = await store.heartbeat(node, data.info)
    await workloads.record_status(store, node, data.workloads)
    assignment = await upgrades.on_heartbeat(store, node, data.upgrade)
    version, documents = await store.node_documents(node)
    desired = await twins.sync(store, node, data.twins, data.twins_complete, data.desired_version, data.desired_ack)
    return HeartbeatResponse(node=node, resource_version=version, heartbeat_interval=interval,
                             documents=documents if version != data.resource_version else None, desired=desired,
                             upgrade=assignment)


@get("/api/v1/nodes", summary="Nodes with their status (an API token, or a node's certificate)")
async def nodes(request: AnyRequest) -> list[dict[str, Any]]:
    if request.headers.get("authorization"):
        caller = await access.require_caller(request, "viewer")
    else:
        caller = await node_caller(request)
    return await access.visible_nodes(store_of(request), caller)


@get("/api/v1/groups", summary="Node groups with their members")
async def groups(request: AnyRequest) -> list[dict[str, Any]]:
    return await access.visible_groups(store_of(request), await access.require_caller(request, "viewer"))


def _error(status: int) -> Any:
    def handle(request: AnyRequest, exc: Exception) -> Response[dict[str, str]]:
        return Response({"detail": str(exc)}, status_code=status)

    return handle


def _http_error(request: AnyRequest, exc: HTTPException) -> Response[dict[str, str]]:
    detail = str(exc.detail)
    if isinstance(exc.extra, list):  # a body that does not validate: say which field and why
        detail += ": " + "; ".join(
            (f"{item['key']}: " if item.get("key") else "") + str(item.get("message", item))
            if isinstance(item, dict) else str(item) for item in exc.extra[:5])
    return Response({"detail": detail}, status_code=exc.status_code)


def create_app(data_dir: Path, *, interval: float = DEFAULT_INTERVAL, db_url: str | None = None) -> Litestar:
    """The registry app on a data dir (CA there, made on first start) and its database (SQLite in the data dir
    unless `db_url` names a PostgreSQL database that other replicas may share)."""
    ca = CertificateAuthority.load_or_create(data_dir)
    registry_metrics = metrics.RegistryMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with RegistryStore(data_dir, db_url) as store:
            app.state.store = store
            await store.database.listen(CHANNEL, app.state.waiters.wake)
            async with workloads.scheduling(store, interval):
                yield

    return Litestar(
        route_handlers=[healthz, ca_certificate, join, heartbeat, nodes, groups, *ROUTE_HANDLERS,
                        *access.ROUTE_HANDLERS, *pages.ROUTE_HANDLERS, *monitoring.ROUTE_HANDLERS,
                        *metrics.ROUTE_HANDLERS, *batch.ROUTE_HANDLERS, *twins.ROUTE_HANDLERS,
                        *LOG_ROUTE_HANDLERS, *workloads.ROUTE_HANDLERS, *upgrades.ROUTE_HANDLERS],
        state=State({"ca": ca, "interval": interval, "waiters": Waiters(), "metrics": registry_metrics,
                     "log_requests": LogRequests(), **pages.initial_state()}),
        lifespan=[lifespan],
        middleware=[DefineMiddleware(metrics.MetricsMiddleware, metrics=registry_metrics)],
        exception_handlers={ConfigError: _error(400), NotFound: _error(404), HTTPException: _http_error,
                            **pages.EXCEPTION_HANDLERS},
        logging_config=None,
        debug=False,
    )
