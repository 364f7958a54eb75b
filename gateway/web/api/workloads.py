"""Edge apps: /api/v1/workloads (status, instances, events, logs, versions; deploy, stop, restart, rollback,
delete), /api/v1/configitems and /api/v1/secrets (values masked). Registered as a built-in plugin."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from gateway.api import GatewayAPI
from gateway.errors import ConfigError, NotFound
from gateway.hookspecs import hookimpl
from gateway.resources.schema import ConfigItem, Secret
from gateway.web.editing import dump_yaml
from gateway.web.security import requires
from gateway.webkit.pages import client_address
from gateway.workloads.logs import as_dict
from gateway.workloads.secrets import masked

MAX_DOCUMENT = 1 << 20
LOG_POLL = 0.2


class Rollback(msgspec.Struct, forbid_unknown_fields=True):
    version: Annotated[int, msgspec.Meta(ge=1)]


def _gateway(request: Request[Any, Any, Any]) -> GatewayAPI:
    gateway: GatewayAPI = request.app.state.gateway
    return gateway


class WorkloadController(Controller):
    path = "/api/v1/workloads"
    tags = ["workloads"]

    @get("/", guards=[requires("viewer")], summary="List workloads with their status and instances")
    async def list_workloads(self, request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
        return _gateway(request).workloads.describe()

    @post("/", guards=[requires("admin")], summary="Deploy or update a workload (a Workload document)",
          status_code=201, request_max_body_size=MAX_DOCUMENT)
    async def deploy(self, request: Request[Any, Any, Any], data: JSONBody[dict[str, Any]]) -> dict[str, Any]:
        gateway = _gateway(request)
        if data.get("kind", "Workload") != "Workload":
            raise ConfigError(f"request body: $.kind: expected Workload, got {data.get('kind')!r}")
        document = {"kind": "Workload", **{k: v for k, v in data.items() if k != "kind"}}
        await gateway.resources.apply_documents(dump_yaml([document]), actor=request.user.name,
                                      address=client_address(request))
        namespace = document.get("namespace", "default")
        return gateway.workloads.runner(str(namespace), str(document.get("name"))).describe()

    @get("/{namespace:str}/{name:str}", guards=[requires("viewer")], summary="One workload")
    async def get_workload(self, request: Request[Any, Any, Any], namespace: FromPath[str], name: FromPath[str]
                           ) -> dict[str, Any]:
        return _gateway(request).workloads.runner(namespace, name).describe()

    @delete("/{namespace:str}/{name:str}", guards=[requires("admin")], summary="Stop and delete a workload",
            status_code=200)
    async def delete_workload(self, request: Request[Any, Any, Any], namespace: FromPath[str],
                              name: FromPath[str]) -> dict[str, str]:
        gateway = _gateway(request)
        await gateway.resources.delete_resource("Workload", namespace, name, actor=request.user.name,
                                      address=client_address(request))
        return {"deleted": f"{namespace}/{name}"}

    @get("/{namespace:str}/{name:str}/events", guards=[requires("viewer")], summary="Events of a workload")
    async def events(self, request: Request[Any, Any, Any], namespace: FromPath[str], name: FromPath[str],
                     after: Annotated[int, QueryParameter(ge=0, description="only events with a larger id")] = 0,
                     limit: Annotated[int, QueryParameter(gt=0, le=1000)] = 200) -> list[dict[str, Any]]:
        gateway = _gateway(request)
        gateway.workloads.runner(namespace, name)
        return await gateway.workloads.history.events(namespace, name, after=after, limit=limit)

    @get("/{namespace:str}/{name:str}/logs", guards=[requires("viewer")],
         summary="Log lines of a workload: the last `tail`, or those after the `cursor` (follow)")
    async def logs(self, request: Request[Any, Any, Any], namespace: FromPath[str], name: FromPath[str],
                   tail: Annotated[int, QueryParameter(ge=0, le=10_000)] = 100,
                   cursor: Annotated[int | None, QueryParameter(ge=0, description="the `cursor` of the last answer"
                                                                )] = None,
                   instance: FromQuery[str | None] = None,
                   container: Annotated[str | None, QueryParameter(max_length=63, description=(
                       "only the lines of this container of a pod"))] = None,
                   wait: Annotated[float, QueryParameter(ge=0, le=30, description="seconds to wait for new lines "
                                                                                 "after the cursor")] = 0,
                   limit: Annotated[int, QueryParameter(gt=0, le=10_000)] = 1000) -> dict[str, Any]:
        gateway = _gateway(request)
        gateway.workloads.runner(namespace, name)
        log = gateway.workloads.log(namespace, name)
        deadline = time.monotonic() + wait
        while True:
            lines = log.read(after=cursor, tail=tail, limit=limit, instance=instance, container=container)
            if lines or cursor is None or time.monotonic() >= deadline:
                break
            await asyncio.sleep(LOG_POLL)
        next_cursor = lines[-1].seq if lines else (cursor if cursor is not None else log.seq)
        return {"lines": [as_dict(line) for line in lines], "cursor": next_cursor}

    @get("/{namespace:str}/{name:str}/versions", guards=[requires("viewer")], summary="Kept versions of a workload")
    async def versions(self, request: Request[Any, Any, Any], namespace: FromPath[str], name: FromPath[str]
                       ) -> list[dict[str, Any]]:
        gateway = _gateway(request)
        runner = gateway.workloads.runner(namespace, name)
        return [{**v, "spec": msgspec.json.decode(v["spec"]), "current": v["version"] == runner.version}
                for v in await gateway.workloads.history.versions(namespace, name)]

    @post("/{namespace:str}/{name:str}/{action:str}", guards=[requires("operator")], status_code=202,
          summary="Stop a workload (it stays stopped, across restarts too, until started), start a stopped one (a "
                  "running one is left alone) or restart one (starting it when stopped): action stop|start|restart")
    async def act(self, request: Request[Any, Any, Any], namespace: FromPath[str], name: FromPath[str],
                  action: FromPath[str]) -> dict[str, Any]:
        gateway = _gateway(request)
        changed = await gateway.workloads.user_action(action, namespace, name, actor=request.user.name,
                                                      address=client_address(request))
        return {**gateway.workloads.runner(namespace, name).describe(), "changed": changed}

    @post("/{namespace:str}/{name:str}/rollback", guards=[requires("admin")],
          summary="Deploy a kept version again", status_code=202)
    async def rollback(self, request: Request[Any, Any, Any], namespace: FromPath[str], name: FromPath[str],
                       data: JSONBody[Rollback]) -> dict[str, Any]:
        gateway = _gateway(request)
        await gateway.workloads.rollback(namespace, name, data.version, actor=request.user.name,
                                         address=client_address(request))
        return gateway.workloads.runner(namespace, name).describe()


def _key_values(gateway: GatewayAPI, kind: str, namespace: str | None = None, name: str | None = None
                ) -> list[dict[str, Any]]:
    documents: dict[tuple[str, str], ConfigItem | Secret] = {
        **(gateway.config.secrets if kind == "Secret" else gateway.config.config_items)}
    result = []
    for (ns, doc_name), doc in sorted(documents.items()):
        if (namespace is not None and ns != namespace) or (name is not None and doc_name != name):
            continue
        result.append({"namespace": ns, "name": doc_name, "labels": doc.labels,
                       "owner": gateway.resources.resource_owner(kind, ns, doc_name),
                       "data": masked(doc.data) if kind == "Secret" else doc.data})
    return result


@get("/api/v1/configitems", guards=[requires("viewer")], summary="Config items", tags=["workloads"])
async def list_config_items(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    return _key_values(_gateway(request), "ConfigItem")


@get("/api/v1/secrets", guards=[requires("viewer")], summary="Secrets (values masked)", tags=["workloads"])
async def list_secrets(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    return _key_values(_gateway(request), "Secret")


@get("/api/v1/secrets/{namespace:str}/{name:str}", guards=[requires("viewer")],
     summary="One secret (values masked)", tags=["workloads"])
async def get_secret(request: Request[Any, Any, Any], namespace: FromPath[str], name: FromPath[str]
                     ) -> dict[str, Any]:
    found = _key_values(_gateway(request), "Secret", namespace, name)
    if not found:
        raise NotFound(f"no secret {namespace}/{name}")
    return found[0]


@hookimpl
def register_routes() -> list[Any]:
    return [WorkloadController, list_config_items, list_secrets, get_secret]
