"""Node groups: the list, one group, and (admins) creating, changing and deleting them by node names and/or a label
selector, with a preview of the nodes a group would hold (asked as the form is typed in, or with its Preview
button when scripts are off)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from litestar import Response, get, post
from litestar.params import FromPath
from litestar.response import Template

from gateway.errors import ConfigError
from gateway.registry import access
from gateway.registry.access import AnyRequest, GroupRequest
from gateway.registry.pages.common import caller_of, flash, labels_from_text, labels_text, page, show, store_of
from gateway.webkit.pages import form_fields, see_other


def _names(text: str) -> list[str]:
    return sorted({name.strip() for name in text.replace(";", ",").replace("\n", ",").split(",") if name.strip()})


async def _form(request: AnyRequest, fields: dict[str, str], *, group: dict[str, Any] | None = None,
                problem: str = "", status_code: int = 200) -> Template:
    """The group form (new, or an existing group's) with the preview of what it would hold."""
    store, caller = store_of(request), caller_of(request)
    workspaces = [name for name in await access.workspaces(store) if caller.sees(name)]
    workspace = group["workspace"] if group else fields.get("workspace") or access.DEFAULT_WORKSPACE
    try:
        preview = await access.group_preview(store, caller, workspace, _names(fields.get("nodes", "")),
                                             labels_from_text(fields.get("selector", ""), "selector"),
                                             group["name"] if group else "")
    except ConfigError as exc:
        preview = {"workspace": workspace, "nodes": [], "problems": [str(exc)]}
    return show(request, "group_form.html", status_code=status_code, group=group, fields=fields, problem=problem,
                workspaces=workspaces, preview=preview)


@get("/groups", summary="Node groups", **page("nodes.read"))
async def groups_page(request: AnyRequest) -> Template:
    return show(request, "groups.html", groups=await access.visible_groups(store_of(request), caller_of(request)))


@get("/groups/new", summary="The new group form (?nodes=, ?selector=, ?workspace= preview it)", **page("groups.manage"))
async def group_new(request: AnyRequest) -> Template:
    return await _form(request, dict(request.query_params.items()))


@get("/groups/preview", summary="The nodes a group would hold (JSON for the form's live preview; ?workspace=, "
     "?nodes=a,b, ?selector=k=v, ?group= being changed)", **page("groups.manage"))
async def group_preview(request: AnyRequest) -> dict[str, Any]:
    query = request.query_params
    workspace = query.get("workspace") or access.DEFAULT_WORKSPACE
    try:
        selector = labels_from_text(query.get("selector", ""), "selector")
    except ConfigError as exc:  # half typed: say so beside the form, as the form would
        return {"workspace": workspace, "nodes": [], "problems": [str(exc)]}
    return await access.group_preview(store_of(request), caller_of(request), workspace,
                                      _names(query.get("nodes", "")), selector, query.get("group", ""))


@post("/groups", summary="Create a node group by names and/or a label selector", status_code=303,
      **page("groups.manage", action="create groups"))
async def group_create(request: AnyRequest) -> Response[Any]:
    fields = await form_fields(request)
    name = fields.get("name", "").strip()
    try:
        nodes, selector = _names(fields.get("nodes", "")), labels_from_text(fields.get("selector", ""), "selector")
        if not nodes and not selector:
            raise ConfigError("name the group's nodes, give a label selector, or both")
        made = await access.create_group_as(store_of(request), caller_of(request), GroupRequest(
            name=name, nodes=nodes, selector=selector, workspace=fields.get("workspace") or access.DEFAULT_WORKSPACE))
    except ConfigError as exc:
        return await _form(request, fields, problem=str(exc), status_code=400)
    flash(request, "ok", f"Group {name} created: {', '.join(made['nodes']) or 'no nodes yet'}.")
    return see_other(f"/groups/{quote(name)}")


@get("/groups/{name:str}", summary="One group: its members and selector (admins change it here)", **page("nodes.read"))
async def group_page(request: AnyRequest, name: FromPath[str]) -> Template:
    group = await access.visible_group(store_of(request), caller_of(request), name)
    query = request.query_params
    if "selector" in query or "nodes" in query:  # the form's Preview button, without scripts
        fields = {"nodes": query.get("nodes", ""), "selector": query.get("selector", "")}
    else:
        fields = {"nodes": ", ".join(group["nodes"]), "selector": labels_text(group["selector"])}
    return await _form(request, fields, group=group)


@post("/groups/{name:str}", summary="Change a group's nodes and selector", status_code=303,
      **page("groups.manage", action="change groups"))
async def group_update(request: AnyRequest, name: FromPath[str]) -> Response[Any]:
    store, caller = store_of(request), caller_of(request)
    group = await access.visible_group(store, caller, name)
    fields = await form_fields(request)
    try:
        nodes, selector = _names(fields.get("nodes", "")), labels_from_text(fields.get("selector", ""), "selector")
        if not nodes and not selector:
            raise ConfigError("name the group's nodes, give a label selector, or both")
        members = await access.update_group_as(store, caller, name, nodes, selector)
    except ConfigError as exc:
        return await _form(request, fields, group=group, problem=str(exc), status_code=400)
    flash(request, "ok", f"Group {name} saved: {', '.join(members) or 'no nodes'}.")
    return see_other(f"/groups/{quote(name)}")


@post("/groups/{name:str}/delete", summary="Delete a group (its nodes stay, in no group)", status_code=303,
      **page("groups.manage", action="delete groups"))
async def group_delete(request: AnyRequest, name: FromPath[str]) -> Response[Any]:
    await access.delete_group_as(store_of(request), caller_of(request), name)
    flash(request, "ok", f"Group {name} deleted; its nodes stay, in no group.")
    return see_other("/groups")


ROUTE_HANDLERS = [groups_page, group_new, group_preview, group_create, group_page, group_update, group_delete]
