"""Roles (roles.manage): every role with the permissions it carries side by side, least privileged first, the
smallest role that covers a chosen set of permissions, and the forms of custom roles: new (or a copy of any role,
the built-in ones included), change, delete (refused while a user or API token holds it). Built-in roles are shown
read-only."""

from __future__ import annotations

from typing import Any

from litestar import Response, get, post
from litestar.params import FromPath
from litestar.response import Template

from gateway.errors import ConfigError, NotFound
from gateway.registry import roles
from gateway.registry.access import AnyRequest
from gateway.registry.pages.common import caller_of, flash, page, show, store_of
from gateway.registry.permissions import PERMISSIONS, REQUIRES
from gateway.webkit.pages import form_fields, see_other


@get("/roles", summary="Roles and their permissions side by side, least privileged first (?need=P&need=Q marks the "
     "smallest role that holds them)", **page("roles.manage"))
async def roles_page(request: AnyRequest) -> Template:
    listed = await roles.all_roles(store_of(request))
    need = {name for name in request.query_params.getall("need", []) if name in PERMISSIONS}
    covering = roles.smallest_covering(listed, need) if need else None
    holders = {role.name: await store_of(request).access.role_holders(role.name) for role in listed
               if not role.builtin}
    return show(request, "roles.html", roles=listed, catalogue=PERMISSIONS, need=need, covering=covering,
                holders=holders)


def _form_context(request: AnyRequest) -> dict[str, Any]:
    caller = caller_of(request)
    return {"catalogue": PERMISSIONS, "requires": REQUIRES, "held": caller.permissions,
            "platform": caller.scope.kind == "platform"}


@get("/roles/new", summary="The new custom role form (?from=ROLE starts from a copy of that role)",
     **page("roles.manage"))
async def role_new(request: AnyRequest) -> Template:
    source = request.query_params.get("from", "")
    role: roles.Role | None = None
    if source:
        role = await roles.find_role(store_of(request), source)
    name = f"{role.name}-copy" if role else ""
    return show(request, "role_form.html", role=None, name=name, description=role.description if role else "",
                chosen=set(role.permissions) if role else set(), copied_from=source, problem="",
                **_form_context(request))


@post("/roles", summary="Create a custom role from the permissions ticked", status_code=303,
      **page("roles.manage", action="create roles"))
async def role_create(request: AnyRequest) -> Response[Any]:
    fields = await form_fields(request)
    name = fields.get("name", "").strip()
    chosen = [key[len("perm-"):] for key in fields if key.startswith("perm-")][:len(PERMISSIONS) + 1]
    try:
        await roles.create_role_as(store_of(request), caller_of(request), name, fields.get("description", ""),
                                   chosen)
    except ConfigError as exc:
        return show(request, "role_form.html", status_code=400, role=None, name=name[:roles.NAME_MAX],
                    description=fields.get("description", "")[:roles.DESCRIPTION_MAX],
                    chosen={p for p in chosen if p in PERMISSIONS}, copied_from="", problem=str(exc),
                    **_form_context(request))
    flash(request, "ok", f"Role {name} created with {len(set(chosen))} permissions.")
    return see_other("/roles")


@get("/roles/{name:str}", summary="One role: a custom role's form, a built-in role read-only", **page("roles.manage"))
async def role_page(request: AnyRequest, name: FromPath[str]) -> Template:
    role = await roles.find_role(store_of(request), name)
    users, tokens = await store_of(request).access.role_holders(name) if not role.builtin else ([], [])
    return show(request, "role_form.html", role=role, name=role.name, description=role.description,
                chosen=set(role.permissions), copied_from="", problem="", users=users, tokens=tokens,
                **_form_context(request))


@post("/roles/{name:str}", summary="Change a custom role's description and permissions", status_code=303,
      **page("roles.manage", action="change roles"))
async def role_change(request: AnyRequest, name: FromPath[str]) -> Response[Any]:
    fields = await form_fields(request)
    chosen = [key[len("perm-"):] for key in fields if key.startswith("perm-")][:len(PERMISSIONS) + 1]
    try:
        await roles.change_role_as(store_of(request), caller_of(request), name, fields.get("description", ""),
                                   chosen)
    except ConfigError as exc:
        role = await roles.find_role(store_of(request), name)
        return show(request, "role_form.html", status_code=400, role=role, name=role.name,
                    description=fields.get("description", "")[:roles.DESCRIPTION_MAX],
                    chosen={p for p in chosen if p in PERMISSIONS}, copied_from="", problem=str(exc),
                    users=[], tokens=[], **_form_context(request))
    flash(request, "ok", f"Role {name} changed: its holders have its new permissions now.")
    return see_other("/roles")


@post("/roles/{name:str}/delete", summary="Delete a custom role no user or API token holds", status_code=303,
      **page("roles.manage", action="delete roles"))
async def role_delete(request: AnyRequest, name: FromPath[str]) -> Response[Any]:
    try:
        await roles.delete_role_as(store_of(request), caller_of(request), name)
    except (ConfigError, NotFound) as exc:
        flash(request, "error", f"Role {name[:roles.NAME_MAX]} not deleted: {exc}")
    else:
        flash(request, "ok", f"Role {name} deleted.")
    return see_other("/roles")


ROUTE_HANDLERS = [roles_page, role_new, role_create, role_page, role_change, role_delete]
