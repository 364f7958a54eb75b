"""Message endpoints and routes from the registry: Endpoint and Route documents, the nodes they go to, and the
counters each node reports of each route.

Placement: an Endpoint or a Route goes to its `node:`, to every node of its workspace whose labels match its
`node_selector:` and to every node of its `groups:` (any of them; none set: to no node). A Route takes its source and
target Endpoints along to every node it goes to, wherever those are placed themselves, so a node never gets a route
without its endpoints; applying a Route whose endpoints are not at the registry is refused, and so is deleting an
Endpoint a Route uses. The node gets them without the placement fields, owned by the registry (read-only there).

Up: a node reports the counters of its registry-owned routes with its heartbeat when they changed
(gateway.uplink.routes); the registry keeps the latest report per node and route.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec
from litestar import get
from litestar.params import FromPath

from gateway.errors import NotFound
from gateway.registry import access
from gateway.registry.auth import AnyRequest, store_of
from gateway.registry.store import RegistryStore
from gateway.resources.endpoints import BUILTIN_ENDPOINT_TYPES, EndpointType, route_problems
from gateway.resources.loader import Source
from gateway.resources.names import split_namespaced
from gateway.resources.schema import Document, Endpoint, Route, dec_hook
from gateway.wire import RouteReport

PLACEMENT_FIELDS = ("node", "node_selector", "groups")


def placed_on(raw: Mapping[str, Any], workspace: str, node: str, labels: Mapping[str, str],
               node_workspace: str, group: str | None) -> bool:
    """Whether a stored Endpoint or Route (raw JSON) goes to a node."""
    if raw.get("node") == node:
        return True
    if node_workspace != workspace:
        return False
    selector = raw.get("node_selector") or {}
    if selector and all(labels.get(key) == value for key, value in selector.items()):
        return True
    return group is not None and group in (raw.get("groups") or [])


def _without_placement(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in raw.items() if key not in PLACEMENT_FIELDS}


async def node_route_documents(store: RegistryStore, node: str,
                               documents: Sequence[tuple[str, str, str, str, str]] | None = None
                               ) -> list[dict[str, Any]]:
    """The Endpoints and Routes meant for a node, a Route's endpoints with it; a Route whose endpoints are gone is
    not sent. `documents`: the registry's documents of these kinds and maybe others (of_kinds rows), when the caller
    has them."""
    if documents is None:
        documents = await store.documents.of_kinds(("Endpoint", "Route"))
    stored = [row for row in documents if row[0] in ("Endpoint", "Route")]
    if not stored:  # most nodes' registries: no query about the node
        return []
    placement = await store.node_placement(node)
    if placement is None:
        return []
    labels, node_workspace, group = placement
    endpoints = {(ns, name): json.loads(document) for kind, ns, name, document, _ in stored if kind == "Endpoint"}
    wanted_endpoints: set[tuple[str, str]] = set()
    routes = []
    for kind, ns, name, document, workspace in stored:
        raw = json.loads(document)
        if not placed_on(raw, workspace, node, labels, node_workspace, group):
            continue
        if kind == "Endpoint":
            wanted_endpoints.add((ns, name))
            continue
        ends = {(ns, raw["source"]), (ns, raw["target"])}
        if ends <= endpoints.keys():
            wanted_endpoints |= ends
            routes.append(_without_placement(raw))
    return [_without_placement(endpoints[key]) for key in sorted(wanted_endpoints)] + routes


def document_problems(parsed: Iterable[tuple[Source, Document]],
                      held_endpoints: Mapping[tuple[str, str], str]) -> list[str]:
    """Why Endpoints and Routes about to be applied cannot be: a Route whose endpoint is not at the registry (nor
    applied with it), or that its endpoints' types cannot serve. `held_endpoints`: the type of every Endpoint at
    the registry by (namespace, name)."""
    documents = list(parsed)
    types = {**held_endpoints, **{(doc.namespace, doc.name): doc.type for _, doc in documents
                                  if isinstance(doc, Endpoint)}}
    # an endpoint type a plugin of the nodes serves is not known here: the nodes check routes of those
    endpoint_types: dict[tuple[str, str], EndpointType | None] = {
        key: BUILTIN_ENDPOINT_TYPES.get(type_name) for key, type_name in types.items()}
    problems = []
    for source, doc in documents:
        if not isinstance(doc, Route):
            continue
        for path, message in route_problems(doc, endpoint_types, BUILTIN_ENDPOINT_TYPES):
            if message.startswith("no Endpoint"):
                message += " at the registry (apply it too: a Route takes its Endpoints to its nodes)"
            problems.append(f"{source.prefix()}: {path}: {message}")
    return problems


async def held_endpoints(store: RegistryStore) -> dict[tuple[str, str], str]:
    """The type of every Endpoint at the registry by (namespace, name)."""
    return {(ns, name): str(json.loads(document).get("type", ""))
            for _, ns, name, document, _ in await store.documents.of_kinds(("Endpoint",))}


async def routes_using(store: RegistryStore, namespace: str, endpoint: str) -> list[str]:
    """The Routes at the registry whose source or target is an Endpoint."""
    return [name for _, _, name, document, _ in await store.documents.of_kinds(("Route",), namespace)
            if endpoint in (json.loads(document).get("source"), json.loads(document).get("target"))]


# --- counters -----------------------------------------------------------------------------------------------------


async def record_counters(store: RegistryStore, node: str, reports: list[RouteReport] | None) -> None:
    """Keep a node's latest report of its registry-owned routes' counters (the whole set)."""
    if reports is None:
        return
    rows = []
    for report in reports:
        namespace, name = split_namespaced(report.route, "route")
        rows.append((namespace, name, report.accepted, report.delivered, report.failed, report.dropped,
                     report.queued, report.state, report.last_error))
    await store.routes.record(node, rows, time.time())


COUNTER_FIELDS = ("node", "namespace", "name", "accepted", "delivered", "failed", "dropped", "queued", "state",
                  "last_error", "reported_at")


async def counter_views(store: RegistryStore, caller: access.Caller, namespace: str | None = None,
                        name: str | None = None) -> list[dict[str, Any]]:
    """The latest counters per node and route (of one route) on the nodes the caller sees."""
    workspaces = await store.node_workspaces()
    return [dict(zip(COUNTER_FIELDS, row, strict=True)) for row in await store.routes.counters(namespace, name)
            if row[0] in workspaces and caller.sees(workspaces[row[0]])]


async def route_nodes(store: RegistryStore, namespace: str, name: str) -> list[str]:
    """The nodes a Route (or an Endpoint, alone or with its routes) goes to now."""
    nodes = []
    for node, _, _, _, _, _, _ in await store.placement_nodes():
        if any(doc.get("kind") in ("Route", "Endpoint") and doc.get("name") == name
               and doc.get("namespace", "default") == namespace for doc in await node_route_documents(store, node)):
            nodes.append(node)
    return sorted(nodes)


async def route_view(store: RegistryStore, caller: access.Caller, namespace: str, name: str) -> dict[str, Any]:
    """A Route at the registry with the nodes it goes to and their latest counters; NotFound outside the scope."""
    document = await store.documents.get("Route", namespace, name)
    workspace = await store.documents.workspace("Route", namespace, name)
    if document is None or not caller.sees(workspace):
        raise NotFound(f"no Route {namespace}/{name} at the registry")
    route = msgspec.json.decode(document, type=Route, dec_hook=dec_hook)
    return {"route": msgspec.to_builtins(route), "workspace": workspace,
            "nodes": await route_nodes(store, namespace, name),
            "counters": await counter_views(store, caller, namespace, name)}


@get("/api/v1/routes", summary="The counters of the registry's routes per node, as the nodes last reported them")
async def list_route_counters(request: AnyRequest) -> list[dict[str, Any]]:
    caller = await access.require_caller(request, "routes.read")
    return await counter_views(store_of(request), caller)


@get("/api/v1/routes/{namespace:str}/{name:str}", summary="A registry Route, the nodes it goes to and its "
                                                           "counters per node")
async def get_route(request: AnyRequest, namespace: FromPath[str], name: FromPath[str]) -> dict[str, Any]:
    caller = await access.require_caller(request, "routes.read")
    return await route_view(store_of(request), caller, namespace, name)


ROUTE_HANDLERS = [list_route_counters, get_route]
