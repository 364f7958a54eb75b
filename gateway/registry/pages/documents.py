"""Device models and devices applied at the registry (devices.manage): their forms, a device bound to a node (or
rebound), and a YAML editor for them and for apps (Workload, BatchWorkload, ConfigItem, Secret): each kind with the
permission that changes it. Every save goes through the registry's apply path
(gateway.registry.workloads.apply_documents), which checks the documents as `fieldgate check` does and answers each
problem with its document and field path."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

import yaml
from litestar import Response, get, post
from litestar.exceptions import PermissionDeniedException
from litestar.params import FromPath
from litestar.response import Template

from gateway.errors import ConfigError, NotFound, ResourceError
from gateway.registry import access
from gateway.registry.access import AnyRequest, Caller
from gateway.registry.pages.common import caller_of, flash, labels_from_text, labels_text, page, show, store_of
from gateway.registry.permissions import DOCUMENT_CHANGES, KIND_PERMISSION
from gateway.registry.store import RegistryStore
from gateway.registry.workloads import apply_documents, delete_document
from gateway.resources.loader import Source, parse_yaml
from gateway.resources.schema import NAME_PATTERN
from gateway.webkit import forms
from gateway.webkit.forms import PROPERTY_TYPES, flow
from gateway.webkit.pages import form_fields, see_other
from gateway.workloads.secrets import MASK, SecretBox

# what the editor takes
EDITABLE = ("DeviceModel", "Device", "Workload", "BatchWorkload", "ConfigItem", "Secret", "Endpoint", "Route",
            "Service")
APP_KINDS = ("Workload", "BatchWorkload", "ConfigItem", "Secret")
KEPT = "(kept)"  # a Secret's value as the editor shows it: applied as is, the stored value stays
EXTRA_ROWS = 3
MAX_EDITOR_BYTES = 1 << 20


def problems_of(exc: ConfigError) -> list[str]:
    return list(exc.problems) if isinstance(exc, ResourceError) else [str(exc)]


async def _documents(store: RegistryStore, caller: Caller, kind: str) -> list[dict[str, Any]]:
    return await access.documents(store, caller, kind)


async def _stored(store: RegistryStore, caller: Caller, kind: str, namespace: str,
                  name: str) -> tuple[dict[str, Any], str] | None:
    """A document applied at the registry in the caller's scope and its workspace; None when there is none."""
    workspace = await store.documents.workspace(kind, namespace, name)
    document = await store.documents.get(kind, namespace, name)
    if workspace is None or document is None or not caller.sees(workspace) or not caller.reads(kind):
        return None
    return json.loads(document), workspace


async def secret_values(store: RegistryStore, namespace: str, name: str) -> dict[str, str]:
    """The stored values of a Secret, for keeping those a form or the editor leaves out; never for a page."""
    document = await store.documents.get("Secret", namespace, name)
    if document is None:
        return {}
    data = SecretBox(store.data_dir).unseal_document("Secret", document).get("data") or {}
    return {str(key): str(value) for key, value in data.items()}


async def keep_secret_values(store: RegistryStore, documents: list[Any]) -> None:
    """Put the stored value back in every Secret value the editor showed as KEPT (a key it never had: an error)."""
    for index, raw in enumerate(documents, start=1):
        if not (isinstance(raw, dict) and raw.get("kind") == "Secret" and isinstance(raw.get("data"), dict)):
            continue
        kept = [key for key, value in raw["data"].items() if value == KEPT]
        if not kept:
            continue
        stored = await secret_values(store, str(raw.get("namespace") or "default"), str(raw.get("name") or ""))
        missing = [key for key in kept if key not in stored]
        if missing:
            raise ResourceError([f"editor: document {index} ({_kind_and_name(raw)}): $.data.{key}: {KEPT} keeps a "
                                 "stored value, and there is none" for key in missing])
        raw["data"] = {key: stored[key] if value == KEPT else value for key, value in raw["data"].items()}


async def _apply(request: AnyRequest, documents: list[dict[str, Any]], workspace: str, label: str) -> list[str]:
    """Apply documents through the registry's apply path in a workspace of the caller's scope."""
    caller = caller_of(request)
    if not caller.sees(workspace):
        raise ConfigError(f"workspace {workspace!r}: no such workspace")
    raw = [(Source(label, index, _kind_and_name(document)), document)
           for index, document in enumerate(documents, start=1)]
    try:
        return await apply_documents(store_of(request), raw, workspace, caller, "pages")
    except ConfigError as exc:  # a problem may quote the document: never a Secret's values, which go to a page
        values = sorted({str(value) for document in documents if isinstance(document, dict)
                         and document.get("kind") == "Secret" and isinstance(document.get("data"), dict)
                         for value in document["data"].values() if str(value)}, key=len, reverse=True)
        if not values:
            raise
        problems = problems_of(exc)
        for value in values:
            problems = [problem.replace(value, MASK) for problem in problems]
        raise ResourceError(problems) from None


async def delete_from_form(request: AnyRequest, kinds: tuple[str, ...], back: str) -> Response[Any]:
    """Delete the document a list's delete button names (`kind`, `namespace`, `name` fields) through the API's
    delete path (audited; a ConfigItem or Secret an app uses is refused, naming the app), then back to the list
    with what happened."""
    fields = await form_fields(request)
    kind, namespace, name = (fields.get(key, "").strip() for key in ("kind", "namespace", "name"))
    namespace = namespace or "default"
    try:
        if kind not in kinds:
            raise ConfigError(f"kind: expected {' or '.join(kinds)}, got {kind[:40]!r}")
        for field, value in (("namespace", namespace), ("name", name)):
            if len(value) > 253 or not re.fullmatch(NAME_PATTERN, value):
                raise ConfigError(f"{field} {value[:40]!r}: not a document's name")
        await delete_document(store_of(request), caller_of(request), kind, namespace, name)
    except (ConfigError, NotFound) as exc:
        flash(request, "error", f"Not deleted: {exc}")
        return see_other(back)
    flash(request, "ok", f"{kind} {namespace}/{name} deleted: its nodes drop it with their next heartbeat.")
    return see_other(back)


def _kind_and_name(document: Any) -> str:
    """`Device boiler-1`, as `fieldgate check` names a document in its problems."""
    if isinstance(document, dict) and isinstance(document.get("kind"), str) and isinstance(document.get("name"), str):
        return f"{document['kind']} {document['name']}"
    return ""


async def _workspace_for(request: AnyRequest, kind: str, namespace: str, name: str, node: str | None,
                         asked: str) -> str:
    """Where a document goes: where it is already, else its node's workspace, else the one the form names."""
    store = store_of(request)
    held = await store.documents.workspace(kind, namespace, name)
    if held is not None:
        return held
    if node:
        return await access.check_node_in_scope(store, caller_of(request), node)
    return asked or access.DEFAULT_WORKSPACE


# --- models ---------------------------------------------------------------------------------------------------


@get("/models", summary="Device models applied at the registry", **page("devices.read"))
async def models_page(request: AnyRequest) -> Template:
    store, caller = store_of(request), caller_of(request)
    models = await _documents(store, caller, "DeviceModel")
    used: dict[tuple[str, str], int] = {}
    for device in await _documents(store, caller, "Device"):
        key = (device["namespace"], device["document"].get("model") or "")
        used[key] = used.get(key, 0) + 1
    return show(request, "models.html", models=models, used=used,
                devices=await _documents(store, caller, "Device"))


def model_from_form(form: dict[str, str]) -> dict[str, Any]:
    """A DeviceModel document from the model form (gateway.webkit.forms), labels as the console writes them."""
    return forms.model_from_form(form, labels_from_text)


async def _model_form(request: AnyRequest, document: dict[str, Any], *, is_new: bool, problems: list[str],
                      workspace: str = "", status_code: int = 200) -> Template:
    rows = list(document.get("properties", [])) + [{} for _ in range(EXTRA_ROWS)]
    workspaces = [w for w in await access.workspaces(store_of(request)) if caller_of(request).sees(w)]
    return show(request, "model_form.html", status_code=status_code, doc=document, rows=rows, is_new=is_new,
                problems=problems, types=PROPERTY_TYPES, workspaces=workspaces, workspace=workspace)


@get("/models/edit", summary="The model form (new, or ?namespace=&name= to edit)", **page("devices.manage"))
async def model_form(request: AnyRequest) -> Template:
    namespace, name = request.query_params.get("namespace") or "default", request.query_params.get("name", "")
    found = await _stored(store_of(request), caller_of(request), "DeviceModel", namespace, name) if name else None
    if name and found is None:
        raise NotFound(f"no DeviceModel {namespace}/{name} at the registry")
    document, workspace = found or ({"kind": "DeviceModel", "namespace": namespace}, "")
    return await _model_form(request, document, is_new=found is None, problems=[], workspace=workspace)


@post("/models/edit", summary="Create or change a model from the form", status_code=303,
      **page("devices.manage", action="change models"))
async def model_save(request: AnyRequest) -> Response[Any]:
    fields = await form_fields(request)
    document: dict[str, Any] = {"kind": "DeviceModel", "namespace": fields.get("namespace") or "default",
                                "name": fields.get("name", "")}
    try:
        document = model_from_form(fields)
        workspace = await _workspace_for(request, "DeviceModel", document["namespace"], document["name"], None,
                                         fields.get("workspace", ""))
        await _apply(request, [document], workspace, "model form")
    except ConfigError as exc:
        return await _model_form(request, document, is_new=fields.get("is_new") == "1", problems=problems_of(exc),
                                 workspace=fields.get("workspace", ""), status_code=400)
    flash(request, "ok", f"Model {document['namespace']}/{document['name']} saved.")
    return see_other("/models")


# --- devices ----------------------------------------------------------------------------------------------------


def device_from_form(form: dict[str, str]) -> dict[str, Any]:
    """A Device document from the device form (gateway.webkit.forms), labels as the console writes them."""
    return forms.device_from_form(form, labels_from_text)


async def _device_form(request: AnyRequest, document: dict[str, Any], *, is_new: bool, problems: list[str],
                       workspace: str = "", status_code: int = 200) -> Template:
    store, caller = store_of(request), caller_of(request)
    models = await _documents(store, caller, "DeviceModel")
    rows = [{**prop, "visitor": flow(prop.get("visitor")), "desired": flow(prop.get("desired"))}
            for prop in document.get("properties", [])]
    named = {row["name"] for row in rows}
    model = next((m["document"] for m in models if m["namespace"] == document.get("namespace", "default")
                  and m["name"] == document.get("model")), None)
    if model is not None:  # offer the model's properties the device does not map yet
        rows += [{"name": p["name"]} for p in model.get("properties", []) if p.get("name") not in named]
    rows += [{} for _ in range(EXTRA_ROWS)]
    protocol = document.get("protocol") or {}
    return show(request, "device_form.html", status_code=status_code, doc=document, rows=rows, is_new=is_new,
                problems=problems, models=models, labels=labels_text(document.get("labels") or {}),
                protocol_name=protocol.get("name", ""), protocol_config=flow(protocol.get("config") or {}),
                nodes=[n["name"] for n in await access.visible_nodes(store, caller)], workspace=workspace,
                workspaces=[w for w in await access.workspaces(store) if caller.sees(w)])


@get("/devices/edit", summary="The device form (new, or ?namespace=&name= to edit; ?node= binds a new one)",
     **page("devices.manage"))
async def device_form(request: AnyRequest) -> Template:
    query = request.query_params
    namespace, name = query.get("namespace") or "default", query.get("name", "")
    found = await _stored(store_of(request), caller_of(request), "Device", namespace, name) if name else None
    if name and found is None:
        raise NotFound(f"no Device {namespace}/{name} at the registry")
    new = {"kind": "Device", "namespace": namespace, "model": query.get("model", ""), "node": query.get("node", ""),
           "protocol": {"name": "virtual", "config": {}}}
    document, workspace = found or (new, "")
    return await _device_form(request, document, is_new=found is None, problems=[], workspace=workspace)


@post("/devices/edit", summary="Create or change a device from the form", status_code=303,
      **page("devices.manage", action="change devices"))
async def device_save(request: AnyRequest) -> Response[Any]:
    fields = await form_fields(request)
    document: dict[str, Any] = {"kind": "Device", "namespace": fields.get("namespace") or "default",
                                "name": fields.get("name", "")}
    try:
        document = device_from_form(fields)
        workspace = await _workspace_for(request, "Device", document["namespace"], document["name"],
                                         document.get("node"), fields.get("workspace", ""))
        await _apply(request, [document], workspace, "device form")
    except (ConfigError, NotFound) as exc:
        problems = problems_of(exc) if isinstance(exc, ConfigError) else [str(exc)]
        return await _device_form(request, document, is_new=fields.get("is_new") == "1", problems=problems,
                                  workspace=fields.get("workspace", ""), status_code=400)
    flash(request, "ok", f"Device {document['namespace']}/{document['name']} saved"
                         + (f" for node {document['node']}: the node gets it with its next heartbeat." if
                            document.get("node") else ", bound to no node yet."))
    return see_other("/models")


@post("/devices/{namespace:str}/{name:str}/bind", summary="Bind a device applied at the registry to a node (or to "
      "another one, or to none)", status_code=303, **page("devices.manage", action="bind devices"))
async def device_bind(request: AnyRequest, namespace: FromPath[str], name: FromPath[str]) -> Response[Any]:
    store, caller = store_of(request), caller_of(request)
    node = (await form_fields(request)).get("node", "").strip()
    found = await _stored(store, caller, "Device", namespace, name)
    if found is None:
        raise NotFound(f"no Device {namespace}/{name} at the registry")
    document, workspace = found
    document = {key: value for key, value in document.items() if key != "node"} | ({"node": node} if node else {})
    back = f"/devices/{quote(namespace)}/{quote(name)}" + (f"?node={quote(node)}" if node else "")
    try:
        if node:
            workspace = await access.check_node_in_scope(store, caller, node)
        await _apply(request, [document], workspace, "bind")
    except (ConfigError, NotFound) as exc:
        flash(request, "error", "Not bound: " + "; ".join(problems_of(exc) if isinstance(exc, ConfigError)
                                                          else [str(exc)]))
        return see_other(back if node else "/models")
    flash(request, "ok", f"Device {namespace}/{name} " + (f"bound to node {node}: the node gets it with its next "
                                                         "heartbeat." if node else "bound to no node."))
    return see_other(back if node else "/models")


# --- the YAML editor ----------------------------------------------------------------------------------------------


@get("/editor", summary="The YAML editor for models, devices, workloads, batch workloads, config items and secrets "
     "(?kind=&namespace=&name= loads one; a secret's values shown as (kept))",
     **page(*DOCUMENT_CHANGES))
async def editor_page(request: AnyRequest) -> Template:
    query = request.query_params
    kind, namespace, name = query.get("kind", ""), query.get("namespace") or "default", query.get("name", "")
    text, workspace = "", ""
    if kind and name:
        if kind not in EDITABLE:
            raise NotFound(f"the editor loads {', '.join(EDITABLE)} documents, not {kind}")
        caller = caller_of(request)
        if not caller.can(KIND_PERMISSION[kind]):
            raise PermissionDeniedException(access.refusal(caller, (KIND_PERMISSION[kind],), f"change {kind} "
                                                           "documents"))
        found = await _stored(store_of(request), caller_of(request), kind, namespace, name)
        if found is None:
            raise NotFound(f"no {kind} {namespace}/{name} at the registry")
        document, workspace = found
        if kind == "Secret":  # its values never go to a browser
            document = {**document, "data": dict.fromkeys(document.get("data") or {}, KEPT)}
        text = yaml.safe_dump({"kind": kind, **document}, sort_keys=False, allow_unicode=True)
    return await _editor(request, text, workspace, [])


async def _editor(request: AnyRequest, text: str, workspace: str, problems: list[str], *,
                  status_code: int = 200) -> Template:
    workspaces = [w for w in await access.workspaces(store_of(request)) if caller_of(request).sees(w)]
    return show(request, "editor.html", status_code=status_code, text=text, workspace=workspace,
                workspaces=workspaces, problems=problems)


@post("/editor", summary="Check and apply YAML documents (models, devices, apps, config items and secrets)",
      status_code=303, request_max_body_size=MAX_EDITOR_BYTES * 2,
      **page(*DOCUMENT_CHANGES, action="apply documents"))
async def editor_apply(request: AnyRequest) -> Response[Any]:
    fields = await form_fields(request)
    text, workspace = fields.get("yaml", ""), fields.get("workspace") or access.DEFAULT_WORKSPACE
    try:
        if len(text.encode()) > MAX_EDITOR_BYTES:
            raise ConfigError(f"editor: larger than {MAX_EDITOR_BYTES >> 10} KiB")
        documents = [raw for _, raw in parse_yaml(text, "editor")]
        if not documents:
            raise ConfigError("editor: no documents")
        others = [f"editor: document {i}: the editor applies {', '.join(EDITABLE)} documents (apply "
                  f"{raw.get('kind')} documents with `fieldgate registry apply`)"
                  for i, raw in enumerate(documents, start=1) if isinstance(raw, dict) and raw.get("kind") not in
                  EDITABLE]
        if others:
            raise ResourceError(others)
        await keep_secret_values(store_of(request), documents)
        applied = await _apply(request, documents, workspace, "editor")
    except ConfigError as exc:
        return await _editor(request, text, workspace, problems_of(exc), status_code=400)
    flash(request, "ok", "Applied: " + "; ".join(applied) + ".")
    apps = any(isinstance(raw, dict) and raw.get("kind") in APP_KINDS for raw in documents)
    return see_other("/apps" if apps else "/models")


ROUTE_HANDLERS = [models_page, model_form, model_save, device_form, device_save, device_bind, editor_page,
                  editor_apply]
