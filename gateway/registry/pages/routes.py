"""Message endpoints and routes at the registry: Endpoints and Routes listed with where they go, made and changed
through a form for their common fields (or the YAML editor), deleted, and a route's page with its counters as each
node last reported them. Saving goes through the registry's apply path (gateway.registry.workloads.apply_documents),
deleting through its delete path: both audited, with the same checks as the API."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import yaml
from litestar import Response, get, post
from litestar.params import FromPath
from litestar.response import Template

from gateway.errors import ConfigError, NotFound
from gateway.registry import access
from gateway.registry.access import AnyRequest
from gateway.registry.pages.common import caller_of, flash, labels_from_text, labels_text, page, show, store_of
from gateway.registry.pages.documents import _apply, _stored, _workspace_for, problems_of
from gateway.registry.routes import counter_views, route_view
from gateway.registry.workloads import delete_document
from gateway.resources.endpoints import BUILTIN_ENDPOINT_TYPES
from gateway.webkit.forms import flow_yaml
from gateway.webkit.pages import form_fields, see_other

KINDS = {"Endpoint": "/endpoints", "Route": "/routes"}
# the fields the form sets; the others a stored document has are kept as they are
FORM_FIELDS = ("description", "labels", "node", "node_selector", "groups", "type", "properties", "source",
               "source_resource", "target", "target_resource")


def _mapping(text: str, field: str) -> dict[str, Any]:
    """A YAML mapping from a text field (empty: none); ConfigError naming the field otherwise."""
    value = flow_yaml(text, field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{field}: expected a mapping (key: value lines)")
    return value


def document_from_form(kind: str, fields: dict[str, str], stored: dict[str, Any] | None) -> dict[str, Any]:
    """An Endpoint or Route document from the form, over the stored one when editing."""
    document: dict[str, Any] = {"kind": kind, "name": fields.get("name", "").strip(),
                                "namespace": fields.get("namespace", "").strip() or "default",
                                **{k: v for k, v in (stored or {}).items()
                                   if k not in (*FORM_FIELDS, "kind", "name", "namespace")}}
    if fields.get("description", "").strip():
        document["description"] = fields["description"].strip()
    if labels := labels_from_text(fields.get("labels", "")):
        document["labels"] = labels
    if kind == "Endpoint":
        document["type"] = fields.get("type", "").strip()
        if properties := _mapping(fields.get("properties", ""), "properties"):
            document["properties"] = properties
    else:
        for side in ("source", "target"):
            document[side] = fields.get(side, "").strip()
            if resource := labels_from_text(fields.get(f"{side}_resource", ""), f"{side} resource"):
                document[f"{side}_resource"] = resource
    if fields.get("node", "").strip():
        document["node"] = fields["node"].strip()
    if selector := labels_from_text(fields.get("node_selector", ""), "node selector"):
        document["node_selector"] = selector
    if groups := [g.strip() for g in fields.get("groups", "").replace(",", " ").split() if g.strip()]:
        document["groups"] = groups
    return document


def form_view(document: dict[str, Any]) -> dict[str, Any]:
    """What the form shows of a document: text for each field."""
    properties = document.get("properties") or {}
    return {
        "name": document.get("name", ""), "namespace": document.get("namespace", "default"),
        "description": document.get("description", ""), "labels": labels_text(document.get("labels") or {}),
        "type": document.get("type", ""),
        "properties": yaml.safe_dump(properties, sort_keys=False, allow_unicode=True) if properties else "",
        "source": document.get("source", ""), "target": document.get("target", ""),
        "source_resource": labels_text(document.get("source_resource") or {}),
        "target_resource": labels_text(document.get("target_resource") or {}),
        "node": document.get("node") or "", "node_selector": labels_text(document.get("node_selector") or {}),
        "groups": " ".join(document.get("groups") or []),
    }


def placement_text(document: dict[str, Any]) -> str:
    """Where a document goes, in a few words."""
    parts = []
    if document.get("node"):
        parts.append(f"node {document['node']}")
    if document.get("node_selector"):
        parts.append("nodes with " + labels_text(document["node_selector"]))
    if document.get("groups"):
        parts.append("groups " + ", ".join(document["groups"]))
    return "; ".join(parts)


def _kind(raw: str) -> str:
    if raw not in KINDS:
        raise NotFound(f"this form edits Endpoint and Route documents, not {raw}")
    return raw


# --- lists --------------------------------------------------------------------------------------------------------


@get("/endpoints", summary="Message endpoints at the registry with where they go and the routes using them",
     **page("routes.read"))
async def endpoints_page(request: AnyRequest) -> Template:
    store, caller = store_of(request), caller_of(request)
    routes = await access.documents(store, caller, "Route")
    endpoints = []
    for item in await access.documents(store, caller, "Endpoint"):
        users = [r["name"] for r in routes if r["namespace"] == item["namespace"]
                 and item["name"] in (r["document"].get("source"), r["document"].get("target"))]
        endpoints.append({**item, "placement": placement_text(item["document"]), "routes": users})
    return show(request, "endpoints.html", endpoints=endpoints)


@get("/routes", summary="Routes at the registry with where they go and their counters summed over the nodes",
     **page("routes.read"))
async def routes_page(request: AnyRequest) -> Template:
    store, caller = store_of(request), caller_of(request)
    counters = await counter_views(store, caller)
    routes = []
    for item in await access.documents(store, caller, "Route"):
        mine = [c for c in counters if (c["namespace"], c["name"]) == (item["namespace"], item["name"])]
        totals = {key: sum(c[key] for c in mine) for key in ("accepted", "delivered", "failed", "dropped", "queued")}
        routes.append({**item, "placement": placement_text(item["document"]), "nodes": len(mine), **totals})
    return show(request, "routes.html", routes=routes)


@get("/routes/{namespace:str}/{name:str}", summary="A route at the registry: its endpoints, where it goes and its "
     "counters per node", **page("routes.read"))
async def route_page(request: AnyRequest, namespace: FromPath[str], name: FromPath[str]) -> Template:
    view = await route_view(store_of(request), caller_of(request), namespace, name)
    return show(request, "route.html", namespace=namespace, name=name, placement=placement_text(view["route"]),
                **view)


# --- the form -----------------------------------------------------------------------------------------------------


async def _form(request: AnyRequest, kind: str, document: dict[str, Any], *, is_new: bool, problems: list[str],
                workspace: str = "", status_code: int = 200) -> Template:
    store, caller = store_of(request), caller_of(request)
    namespace = document.get("namespace", "default")
    endpoints = [item["name"] for item in await access.documents(store, caller, "Endpoint")
                 if item["namespace"] == namespace]
    return show(request, "route_form.html", status_code=status_code, kind=kind, doc=form_view(document),
                is_new=is_new, problems=problems, workspace=workspace, endpoints=endpoints,
                types=sorted(BUILTIN_ENDPOINT_TYPES),
                nodes=[n["name"] for n in await access.visible_nodes(store, caller)],
                groups=[g["name"] for g in await access.visible_groups(store, caller)],
                workspaces=[w for w in await access.workspaces(store) if caller.sees(w)])


async def _show_form(request: AnyRequest, kind: str) -> Template:
    query = request.query_params
    namespace, name = query.get("namespace") or "default", query.get("name", "")
    found = await _stored(store_of(request), caller_of(request), kind, namespace, name) if name else None
    if name and found is None:
        raise NotFound(f"no {kind} {namespace}/{name} at the registry")
    document, workspace = found or ({"namespace": namespace}, "")
    return await _form(request, kind, document, is_new=found is None, problems=[], workspace=workspace)


async def _save(request: AnyRequest, kind: str) -> Response[Any]:
    fields = await form_fields(request)
    namespace, name = fields.get("namespace", "").strip() or "default", fields.get("name", "").strip()
    is_new = fields.get("is_new") == "1"
    document: dict[str, Any] = {"kind": kind, "namespace": namespace, "name": name}
    try:
        found = await _stored(store_of(request), caller_of(request), kind, namespace, name) if name else None
        if found is not None and is_new:
            raise ConfigError(f"{kind} {namespace}/{name} exists already (edit it from its list)")
        document = document_from_form(kind, fields, found[0] if found else None)
        workspace = await _workspace_for(request, kind, namespace, name, document.get("node"),
                                         fields.get("workspace", ""))
        await _apply(request, [document], workspace, f"{kind.lower()} form")
    except (ConfigError, NotFound) as exc:
        problems = problems_of(exc) if isinstance(exc, ConfigError) else [str(exc)]
        return await _form(request, kind, document, is_new=is_new, problems=problems,
                           workspace=fields.get("workspace", ""), status_code=400)
    flash(request, "ok", f"{kind} {namespace}/{name} saved: its nodes get it with their next heartbeat.")
    return see_other(f"/routes/{quote(namespace)}/{quote(name)}" if kind == "Route" else "/endpoints")


@get("/endpoints/edit", summary="The endpoint form: a new Endpoint, or ?namespace=&name= to edit one",
     **page("routes.write"))
async def endpoint_form(request: AnyRequest) -> Template:
    return await _show_form(request, "Endpoint")


@post("/endpoints/edit", summary="Create or change an Endpoint from the form", status_code=303,
      **page("routes.write", action="change endpoints"))
async def endpoint_save(request: AnyRequest) -> Response[Any]:
    return await _save(request, "Endpoint")


@get("/routes/edit", summary="The route form: a new Route, or ?namespace=&name= to edit one", **page("routes.write"))
async def route_form(request: AnyRequest) -> Template:
    return await _show_form(request, "Route")


@post("/routes/edit", summary="Create or change a Route from the form", status_code=303,
      **page("routes.write", action="change routes"))
async def route_save(request: AnyRequest) -> Response[Any]:
    return await _save(request, "Route")


# --- delete -------------------------------------------------------------------------------------------------------


async def _delete(request: AnyRequest, kind: str, namespace: str, name: str) -> Response[Any]:
    try:
        await delete_document(store_of(request), caller_of(request), kind, namespace, name)
    except (ConfigError, NotFound) as exc:
        flash(request, "error", str(exc))
        return see_other(KINDS[kind])
    flash(request, "ok", f"{kind} {namespace}/{name} deleted: its nodes drop it with their next heartbeat.")
    return see_other(KINDS[kind])


@post("/endpoints/{namespace:str}/{name:str}/delete", summary="Delete an Endpoint (refused while a Route uses it)",
      status_code=303, **page("routes.write", action="delete endpoints"))
async def endpoint_delete(request: AnyRequest, namespace: FromPath[str], name: FromPath[str]) -> Response[Any]:
    return await _delete(request, "Endpoint", namespace, name)


@post("/routes/{namespace:str}/{name:str}/delete", summary="Delete a Route", status_code=303,
      **page("routes.write", action="delete routes"))
async def route_delete(request: AnyRequest, namespace: FromPath[str], name: FromPath[str]) -> Response[Any]:
    return await _delete(request, "Route", namespace, name)


ROUTE_HANDLERS = [endpoints_page, routes_page, route_page, endpoint_form, endpoint_save, route_form, route_save,
                  endpoint_delete, route_delete]
