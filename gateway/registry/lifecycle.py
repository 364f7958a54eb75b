"""Stop, start and restart a registry workload on its nodes, asked of each node now.

`POST /api/v1/nodes/<node>/workloads/<ns>/<name>/<action>` (action stop, start or restart; operator or admin in the
node's scope; `?timeout=`, default 10s) asks one node over its message long-poll (gateway.registry.logs.ask_node):
404 for a node or a workload the registry does not know there, 504 when the node does not answer in time, 502 when it
refuses. `POST /api/v1/workloads/<ns>/<name>/<action>` asks every node the registry placed the workload on, all at
once within the same timeout, and answers per node: `ok`, `error` (the node refused, with its reason) or `no answer`.
Each node's action is audited as `workload.<action>`.

On the node (gateway.uplink.requests) only a workload it got from the registry is touched (any other is refused),
through the supervisor
calls of its local API: a stop holds (a marker in the node's data dir, so across restarts of the gateway too)
through every document sync, changed ConfigItems and Secrets and updates of its spec, which are kept as the new
version and run when it is started again; start starts a stopped workload and leaves a running one alone; restart
replaces its instances with new ones, and starts it when stopped. Deleting the workload at the registry (or placing
it on another node) forgets the stop. A request the node has not fetched when the time is up is withdrawn; one it
fetched and answered late is done.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Response, post
from litestar.exceptions import HTTPException
from litestar.params import FromPath

from gateway.errors import ConfigError, NotFound
from gateway.registry import access
from gateway.registry.auth import AnyRequest, store_of
from gateway.registry.logs import LogRequests, NodeSilent, ask_node, timeout_param
from gateway.wire import WORKLOAD_ACTION_PATH, WORKLOAD_ACTIONS, WorkloadActionRequest

if TYPE_CHECKING:
    from gateway.registry.store import RegistryStore

ACTIONS = WORKLOAD_ACTIONS
NO_ANSWER = "no answer"


def check_action(action: str) -> str:
    if action not in ACTIONS:
        raise NotFound(f"no workload action {action!r} (expected stop, start or restart)")
    return action


async def _runs_on(store: RegistryStore, node: str, namespace: str, name: str) -> bool:
    """Whether the registry placed the workload on the node or the node reports it."""
    return await store.workloads.runs_on(node, namespace, name)


async def act_on_node(store: RegistryStore, requests: LogRequests, caller: access.Caller, node: str, namespace: str,
                      name: str, action: str, timeout: float) -> dict[str, Any]:
    """Ask one node to stop, start or restart a workload, audited; its answer. NotFound, NodeSilent."""
    workspace = await access.node_workspace(store, node)
    visible = workspace is not None and caller.sees(workspace)
    scope = access.workspace_scope(workspace) if visible else str(caller.scope)
    async with access.audited(store, caller, f"workload.{check_action(action)}", f"Workload/{namespace}/{name}",
                              scope) as entry:
        entry.detail = {"node": node}
        if not visible:  # the same answer for a node outside the caller's scope
            raise NotFound(f"no node {node}")
        if not await _runs_on(store, node, namespace, name):
            raise NotFound(f"no workload {namespace}/{name} on node {node}")
        request = WorkloadActionRequest(workload=f"{namespace}/{name}", action=action, actor=caller.actor)
        answer = await ask_node(store, requests, node, WORKLOAD_ACTION_PATH, msgspec.json.encode(request), timeout)
        entry.detail = {"node": node, "changed": answer.get("changed"), "status": answer.get("status")}
    return {"node": node, "outcome": "ok", **answer}


async def act_everywhere(store: RegistryStore, requests: LogRequests, caller: access.Caller, namespace: str,
                         name: str, action: str, timeout: float) -> dict[str, Any]:
    """Ask every node the workload is placed on (in the caller's scope) at once; the outcome per node."""
    check_action(action)
    where = {str(n["name"]): n.get("workspace") for n in await store.nodes()}
    nodes = [node for node in await store.workloads.placed_nodes(namespace, name)
             if node in where and caller.sees(where[node])]
    if not nodes:
        await access.record(store, caller, str(caller.scope), f"workload.{action}", f"Workload/{namespace}/{name}",
                            "not found", {"node": "all"})
        raise NotFound(f"workload {namespace}/{name} is placed on no node")

    async def outcome(node: str) -> dict[str, Any]:
        try:
            return await act_on_node(store, requests, caller, node, namespace, name, action, timeout)
        except NodeSilent as exc:
            return {"node": node, "outcome": NO_ANSWER if exc.status == 504 else "error", "detail": str(exc)}
        except NotFound as exc:  # the node went away meanwhile
            return {"node": node, "outcome": "error", "detail": str(exc)}

    results = await asyncio.gather(*(outcome(node) for node in nodes))
    return {"workload": f"{namespace}/{name}", "action": action, "nodes": results}


def _timeout(request: AnyRequest) -> float:
    unknown = sorted(set(request.query_params) - {"timeout"})
    if unknown:
        raise ConfigError(f"?{unknown[0]}: unknown parameter (expected timeout)")
    return timeout_param(request.query_params.get("timeout"))


def _requests(request: AnyRequest) -> LogRequests:
    requests: LogRequests = request.app.state.log_requests
    return requests


@post("/api/v1/nodes/{node:str}/workloads/{namespace:str}/{name:str}/{action:str}",
      summary="Stop, start or restart a workload on one node, asked of the node now (operator; ?timeout=)",
      status_code=200)
async def node_workload_action(request: AnyRequest, node: FromPath[str], namespace: FromPath[str],
                               name: FromPath[str], action: FromPath[str]) -> Response[dict[str, Any]]:
    caller = await access.require_caller(request, "apps.operate")
    check_action(action)
    timeout = _timeout(request)
    try:
        answer = await act_on_node(store_of(request), _requests(request), caller, node, namespace, name, action,
                                   timeout)
    except NodeSilent as exc:
        raise HTTPException(status_code=exc.status, detail=str(exc)) from None
    return Response(answer, status_code=200)


@post("/api/v1/workloads/{namespace:str}/{name:str}/{action:str}",
      summary="Stop, start or restart a workload on every node it is placed on, at once; the outcome per node "
              "(operator; ?timeout=)", status_code=200)
async def workload_action(request: AnyRequest, namespace: FromPath[str], name: FromPath[str],
                          action: FromPath[str]) -> dict[str, Any]:
    caller = await access.require_caller(request, "apps.operate")
    check_action(action)
    timeout = _timeout(request)
    return await act_everywhere(store_of(request), _requests(request), caller, namespace, name, action, timeout)


ROUTE_HANDLERS = [node_workload_action, workload_action]


# --- `fieldgate registry workloads stop|start|restart [NS/]NAME [--node N]` ------------------------------------


def describe_outcome(result: dict[str, Any]) -> str:
    """One node's outcome as a line: `gw-1: ok, stopped` or `gw-2: no answer: node gw-2 did not answer …`."""
    if result["outcome"] != "ok":
        return f"{result['node']}: {result['outcome']}: {result.get('detail', '')}"
    done = "" if result.get("changed", True) else " (nothing to do)"
    return f"{result['node']}: ok{done}, {result.get('status') or 'unknown'}"


def print_workload_action(args: argparse.Namespace, namespace: str, name: str) -> int:
    """Ask the running registry to stop, start or restart a workload on one node (--node) or on all of its nodes;
    0 when every node did it, 1 otherwise."""
    from gateway.registry.batch import known_urls
    from gateway.registry.logs import ask_registry, local_url
    from gateway.registry.store import RegistryStore

    action = check_action(args.workloads_action)
    url = (args.registry or local_url(known_urls(args.data_dir))).rstrip("/")
    path = (f"/api/v1/nodes/{args.node}/workloads/{namespace}/{name}/{action}" if args.node
            else f"/api/v1/workloads/{namespace}/{name}/{action}")

    async def ask() -> dict[str, Any]:
        async with RegistryStore(args.data_dir, args.db) as store:
            return await ask_registry(store, args.data_dir, url, path, {}, args.token, args.timeout,
                                      f"fieldgate registry workloads {action} {namespace}/{name}", method="POST",
                                      role="operator")

    answer = asyncio.run(ask())
    results: list[dict[str, Any]] = answer.get("nodes", [answer])
    for result in results:
        print(json.dumps(result) if args.json else describe_outcome(result))
    failed = [r["node"] for r in results if r["outcome"] != "ok"]
    if failed and not args.json:
        print(f"workloads {action} {namespace}/{name}: not done on {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
