"""Versions of the registry's Workload and BatchWorkload documents and the events their nodes report.

Every apply that changes such a document keeps the new spec as the next numbered version (the last KEEP_VERSIONS
per document; a document stored before versions were kept gets its old spec as a version first). A rollback
applies a kept version's spec again as a new version, so it can be undone in turn, and the nodes get it with their
next heartbeat. Secrets are not versioned: Workloads name them, they never carry their values. Stopping, starting
and restarting a workload on its nodes is gateway.registry.lifecycle's (served with these routes).

A node sends, with its workload status, the events of each workload it has not delivered yet (gateway.uplink
.workloads.WorkloadSync); the registry keeps the last KEEP_EVENTS per node and workload. The API routes and
`fieldgate registry workloads versions|rollback|events` serve both.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Annotated, Any

import msgspec
from litestar import Response, get, post
from litestar.params import FromPath, JSONBody, QueryParameter

from gateway.errors import ConfigError, NotFound, ResourceError
from gateway.registry import access, lifecycle
from gateway.registry.auth import AnyRequest, store_of
from gateway.registry.store import RegistryStore
from gateway.resources.loader import Source

VERSIONED = ("Workload", "BatchWorkload")
KEEP_VERSIONS = 20
KEEP_EVENTS = 100


class RollbackRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    version: Annotated[int, msgspec.Meta(ge=1)]


# --- versions -----------------------------------------------------------------------------------------------------


async def _document_workspace(store: RegistryStore, caller: access.Caller, kind: str, namespace: str,
                              name: str) -> str:
    """The workspace of a versioned document the caller sees; NotFound otherwise (the same for one out of scope)."""
    if kind not in VERSIONED:
        raise NotFound(f"{kind}: versions are kept of {' and '.join(VERSIONED)} documents")
    workspace = await store.documents.workspace(kind, namespace, name)
    if workspace is None or not caller.sees(workspace):
        raise NotFound(f"no {kind} {namespace}/{name} at the registry")
    return workspace


async def versions(store: RegistryStore, caller: access.Caller, kind: str, namespace: str,
                   name: str) -> list[dict[str, Any]]:
    """The kept versions of a document, oldest first; `current` marks the one applied now."""
    await _document_workspace(store, caller, kind, namespace, name)
    rows = await store.documents.versions(kind, namespace, name)
    current = await store.documents.get(kind, namespace, name)
    newest = max((number for number, document, *_ in rows if document == current), default=None)
    return [{"version": number, "created_at": created, "actor": actor, "note": note, "current": number == newest,
             "document": json.loads(document)} for number, document, created, actor, note in rows]


async def rollback(store: RegistryStore, caller: access.Caller, kind: str, namespace: str, name: str,
                   version: int) -> dict[str, Any]:
    """Apply a kept version's spec again (as a new version); what is applied now."""
    from gateway.registry.workloads import apply_documents

    workspace = await _document_workspace(store, caller, kind, namespace, name)
    target = f"{kind}/{namespace}/{name}"
    document = await store.documents.version(kind, namespace, name, version)
    if document is None:
        kept = [str(v["version"]) for v in await versions(store, caller, kind, namespace, name)]
        await access.record(store, caller, access.workspace_scope(workspace), "document.rollback", target,
                            "not found", {"version": version})
        raise NotFound(f"{kind} {namespace}/{name} has no version {version} (kept: {', '.join(kept) or 'none'})")
    before = await store.documents.latest_version(kind, namespace, name)
    raw = json.loads(document)
    try:
        await apply_documents(store, [(Source(f"{kind} {namespace}/{name} version {version}", 1), raw)], workspace,
                              caller, target, action="document.rollback", note=f"rollback to version {version}")
    except ResourceError as exc:  # refused (a privileged version for an operator): recorded as refused
        await access.record(store, caller, access.workspace_scope(workspace), "document.rollback", target,
                            f"refused: {exc.problems[0][:200]}", {"version": version})
        raise
    after = await store.documents.latest_version(kind, namespace, name)
    now = after[0] if after is not None else version
    return {"kind": kind, "namespace": namespace, "name": name, "rolled_back_to": version, "version": now,
            "changed": after != before}


@get("/api/v1/workloads/{kind:str}/{namespace:str}/{name:str}/versions",
     summary="Kept versions of a Workload or BatchWorkload document, oldest first")
async def list_versions(request: AnyRequest, kind: FromPath[str], namespace: FromPath[str],
                        name: FromPath[str]) -> list[dict[str, Any]]:
    caller = await access.require_caller(request, "apps.read")
    return await versions(store_of(request), caller, kind, namespace, name)


@post("/api/v1/workloads/{kind:str}/{namespace:str}/{name:str}/rollback",
      summary="Apply a kept version of a Workload or BatchWorkload document again, as a new version (operator)",
      status_code=200)
async def post_rollback(request: AnyRequest, kind: FromPath[str], namespace: FromPath[str], name: FromPath[str],
                        data: JSONBody[RollbackRequest]) -> dict[str, Any]:
    caller = await access.require_caller(request, "apps.operate")
    return await rollback(store_of(request), caller, kind, namespace, name, data.version)


# --- events -------------------------------------------------------------------------------------------------------


async def workload_events(store: RegistryStore, caller: access.Caller, namespace: str, name: str, *,
                          node: str | None = None, limit: int = KEEP_EVENTS) -> list[dict[str, Any]]:
    """The newest events of a workload on the nodes the caller sees (or one node), oldest first."""
    where = {str(n["name"]): n.get("workspace") for n in await store.nodes()}
    rows = await store.workloads.events(namespace, name, node)
    # the registry's own: moves away from a node the workload kept failing on (gateway.registry.placement)
    rows += [(n, moved_at, "moved", "", reason) for n, moved_to, moved_at, _, reason in
             await store.workloads.moves(namespace, name) if node is None or node in (n, moved_to)]
    rows.sort(key=lambda row: row[1], reverse=True)
    events = [{"node": n, "ts": ts, "event": event, "instance": instance, "reason": reason}
              for n, ts, event, instance, reason in rows if n in where and caller.sees(where[n])]
    return list(reversed(events[:limit]))


@get("/api/v1/workloads/{namespace:str}/{name:str}/events",
     summary="The events of a workload as its nodes report them, and the registry's moves of it away from a node "
             "it kept failing on, oldest first (?node=, ?limit=)")
async def list_events(request: AnyRequest, namespace: FromPath[str], name: FromPath[str],
                      node: Annotated[str | None, QueryParameter(description="only this node's")] = None,
                      limit: Annotated[int, QueryParameter(gt=0, le=1000)] = KEEP_EVENTS) -> Response[Any]:
    caller = await access.require_caller(request, "apps.read")
    store = store_of(request)
    events = await workload_events(store, caller, namespace, name, node=node, limit=limit)
    if not events and not await _known_workload(store, caller, namespace, name):
        raise NotFound(f"no workload {namespace}/{name}")
    return Response(events)


async def _known_workload(store: RegistryStore, caller: access.Caller, namespace: str, name: str) -> bool:
    from gateway.registry.workloads import workload_views

    return any(v["namespace"] == namespace and v["name"] == name for v in await workload_views(store, caller))


ROUTE_HANDLERS = [list_versions, post_rollback, list_events, *lifecycle.ROUTE_HANDLERS]


# --- `fieldgate registry workloads versions|rollback|events` ---------------------------------------------------


async def run_command(store: RegistryStore, args: argparse.Namespace, namespace: str, name: str) -> None:
    """`fieldgate registry workloads versions|rollback|events [NS/]NAME`."""
    cli = access.cli_caller()
    if args.workloads_action == "versions":
        for version in await versions(store, cli, args.kind, namespace, name):
            if args.json:
                print(json.dumps(version))
            else:
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(version["created_at"]))
                print(f"{version['version']:>4}{' *' if version['current'] else '  '} {when}  "
                      f"{version['actor'] or '-':<22} {version['note']}")
    elif args.workloads_action == "rollback":
        if args.version is None:
            raise ConfigError("workloads rollback: expected --version N (see `workloads versions`)")
        done = await rollback(store, cli, args.kind, namespace, name, args.version)
        print(json.dumps(done) if args.json else
              f"{args.kind} {namespace}/{name}: version {args.version} applied again as version {done['version']}"
              if done["changed"] else f"{args.kind} {namespace}/{name} runs version {args.version}'s spec already")
    else:
        events = await workload_events(store, cli, namespace, name, node=args.node)
        for event in events:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(event["ts"]))
            print(json.dumps(event) if args.json else
                  f"{when} {event['node']:<16} {event['event']:<10} {event['instance'] or '-':<20} {event['reason']}")
        if not events and not args.json:
            print(f"no events of {namespace}/{name}")
