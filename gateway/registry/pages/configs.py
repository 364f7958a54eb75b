"""ConfigItems and Secrets at the registry: listed with the apps that use them, made and changed through a form.
A Secret's values never reach a browser: the list shows its keys, the form an empty field per key, and an empty
field keeps the stored value."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from litestar import Response, get, post
from litestar.response import Template

from gateway.errors import ConfigError, NotFound
from gateway.registry import access
from gateway.registry.access import AnyRequest
from gateway.registry.pages.common import caller_of, flash, labels_from_text, labels_text, page, show, store_of
from gateway.registry.pages.documents import (
    _apply,
    _stored,
    _workspace_for,
    delete_from_form,
    problems_of,
    secret_values,
)
from gateway.webkit.forms import row_count
from gateway.webkit.pages import form_fields, see_other

CONFIG_KINDS = ("ConfigItem", "Secret")
EXTRA_ROWS = 3


def _users(document: dict[str, Any]) -> set[tuple[str, str]]:
    """(kind, name) of the ConfigItems and Secrets a Workload or a BatchWorkload's template names."""
    body = document.get("template") or document
    return {("ConfigItem", ref["config_item"]) if ref.get("config_item") else ("Secret", str(ref.get("secret")))
            for ref in (*(body.get("env_from") or []), *(body.get("files") or []))}


@get("/configs", summary="Config items and secrets at the registry (a secret's keys only) with the apps using them",
     **page("configs.read"))
async def configs_page(request: AnyRequest) -> Template:
    store, caller = store_of(request), caller_of(request)
    used: dict[tuple[str, str, str], list[dict[str, str]]] = {}
    for kind in ("Workload", "BatchWorkload"):
        for app in await access.documents(store, caller, kind):
            path = ("/apps/batch/" if kind == "BatchWorkload" else "/workloads/") + \
                f"{quote(app['namespace'])}/{quote(app['name'])}"
            for ref_kind, ref in _users(app["document"]):
                used.setdefault((ref_kind, app["namespace"], ref), []).append(
                    {"name": f"{kind} {app['name']}", "path": path})
    listed = {kind: [{**item, "users": used.get((kind, item["namespace"], item["name"]), [])}
                     for item in await access.documents(store, caller, kind)] for kind in CONFIG_KINDS}
    return show(request, "configs.html", configs=listed["ConfigItem"], secrets=listed["Secret"])


async def _config_form(request: AnyRequest, kind: str, document: dict[str, Any], *, is_new: bool,
                       problems: list[str], workspace: str = "", status_code: int = 200) -> Template:
    store, caller = store_of(request), caller_of(request)
    data = document.get("data") or {}
    # a Secret's rows carry keys only: the value fields stay empty whatever is stored or was typed
    rows = [{"key": key, "was": key, "value": "" if kind == "Secret" else value} for key, value in data.items()]
    rows += [{} for _ in range(EXTRA_ROWS)]
    shown = {key: value for key, value in document.items() if key != "data"}
    return show(request, "config_form.html", status_code=status_code, kind=kind, doc=shown, rows=rows,
                is_new=is_new, problems=problems, workspace=workspace, labels=labels_text(document.get("labels") or {}),
                workspaces=[w for w in await access.workspaces(store) if caller.sees(w)])


def _kind(raw: str) -> str:
    if raw not in CONFIG_KINDS:
        raise NotFound(f"this form edits ConfigItem and Secret documents, not {raw}")
    return raw


@get("/configs/edit", summary="The config item or secret form (?kind=ConfigItem or ?kind=Secret, with "
     "&namespace=&name= to edit one; a secret's values are not shown)", **page("configs.write"))
async def config_form(request: AnyRequest) -> Template:
    query = request.query_params
    kind = _kind(query.get("kind") or "ConfigItem")
    namespace, name = query.get("namespace") or "default", query.get("name", "")
    found = await _stored(store_of(request), caller_of(request), kind, namespace, name) if name else None
    if name and found is None:
        raise NotFound(f"no {kind} {namespace}/{name} at the registry")
    document, workspace = found or ({"namespace": namespace}, "")
    return await _config_form(request, kind, document, is_new=found is None, problems=[], workspace=workspace)


@post("/configs/edit", summary="Create or change a config item or a secret from the form (an empty secret value "
      "keeps the stored one)", status_code=303, **page("configs.write", action="change config items and secrets"))
async def config_save(request: AnyRequest) -> Response[Any]:
    fields = await form_fields(request)
    kind = _kind(fields.get("kind") or "ConfigItem")
    namespace, name = fields.get("namespace", "").strip() or "default", fields.get("name", "").strip()
    is_new = fields.get("is_new") == "1"
    document: dict[str, Any] = {"kind": kind, "namespace": namespace, "name": name}
    store = store_of(request)
    rows = [(fields.get(f"data-{i}-key", "").strip(), fields.get(f"data-{i}-was", "").strip(),
             fields.get(f"data-{i}-value", "")) for i in range(row_count(fields))]
    try:
        if is_new and await _stored(store, caller_of(request), kind, namespace, name) is not None:
            raise ConfigError(f"{kind} {namespace}/{name} exists already (edit it from its list)")
        stored = await secret_values(store, namespace, name) if kind == "Secret" and not is_new else {}
        data: dict[str, str] = {}
        for key, was, value in rows:
            if not key:
                continue
            if key in data:
                raise ConfigError(f"data: key {key!r} is given twice")
            data[key] = stored[was] if kind == "Secret" and value == "" and was in stored else value
        document["data"] = data
        if fields.get("description", "").strip():
            document["description"] = fields["description"].strip()
        if labels := labels_from_text(fields.get("labels", "")):
            document["labels"] = labels
        workspace = await _workspace_for(request, kind, namespace, name, None, fields.get("workspace", ""))
        await _apply(request, [document], workspace, f"{kind.lower()} form")
    except (ConfigError, NotFound) as exc:
        problems = problems_of(exc) if isinstance(exc, ConfigError) else [str(exc)]
        return await _config_form(request, kind, document, is_new=is_new, problems=problems,
                                  workspace=fields.get("workspace", ""), status_code=400)
    flash(request, "ok", f"{kind} {namespace}/{name} saved: the nodes whose apps use it get it with their next "
                         "heartbeat.")
    return see_other("/configs")


@post("/configs/delete", summary="Delete a config item or a secret (fields kind, namespace, name); refused while "
      "an app uses it, naming the app", status_code=303,
      **page("configs.write", action="delete config items and secrets"))
async def config_delete(request: AnyRequest) -> Response[Any]:
    return await delete_from_form(request, CONFIG_KINDS, "/configs")


ROUTE_HANDLERS = [configs_page, config_form, config_save, config_delete]
