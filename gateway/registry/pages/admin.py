"""Administration (each page with its permission, within the user's scope): registry users (add, change role and
scope, reset a password, remove), API tokens (create, shown once; revoke), folders and the workspaces in them, and
the audit log filtered by who, what, workspace and time. Least privilege: an admin grants no role carrying a
permission it lacks and no scope outside its own; the role picker lists the permissions of every role it offers,
least privileged first, and picks that one."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from litestar import Response, get, post
from litestar.params import FromPath
from litestar.response import Template

from gateway.errors import ConfigError, NotFound
from gateway.registry import access, admin
from gateway.registry.access import AnyRequest
from gateway.registry.pages.common import caller_of, flash, page, show, store_of
from gateway.registry.permissions import PERMISSIONS
from gateway.registry.roles import all_roles
from gateway.webkit.pages import form_fields, see_other


async def _grants(request: AnyRequest) -> dict[str, Any]:
    """What the role and scope pickers offer this admin: the roles least privileged first (the first picked), each
    with its permissions, and the scopes narrowest first."""
    caller, store = caller_of(request), store_of(request)
    scopes = await admin.grantable_scopes(store, caller)
    roles = await admin.grantable_roles(store, caller)
    return {"roles": roles, "catalogue": PERMISSIONS, "scopes": scopes, "default_scope": admin.default_scope(scopes),
            "default_role": roles[0].name if roles else "",
            "role_permissions": {role.name: role.listed() for role in await all_roles(store)}}


# --- users ----------------------------------------------------------------------------------------------------


@get("/users", summary="Registry users in the admin's scope, with forms to add, change and remove them",
     **page("users.manage"))
async def users_page(request: AnyRequest) -> Template:
    users = await admin.visible_users(store_of(request), caller_of(request))
    return show(request, "users.html", users=users, **await _grants(request))


@post("/users", summary="Add a registry user with a role in a scope (no higher than the admin's own)",
      status_code=303, **page("users.manage", action="add users"))
async def user_add(request: AnyRequest) -> Response[Any]:
    fields = await form_fields(request)
    name = fields.get("name", "").strip()
    try:
        await admin.add_user_as(store_of(request), caller_of(request), name, fields.get("role", ""),
                                fields.get("scope", ""), fields.get("password", ""))
    except ConfigError as exc:
        flash(request, "error", f"User {name} not added: {exc}")
    else:
        flash(request, "ok", f"User {name} added as {fields['role']} in {fields['scope']}.")
    return see_other("/users")


@post("/users/{name:str}", summary="Change a registry user's role and scope", status_code=303,
      **page("users.manage", action="change users"))
async def user_change(request: AnyRequest, name: FromPath[str]) -> Response[Any]:
    fields = await form_fields(request)
    try:
        await admin.change_user_as(store_of(request), caller_of(request), name, fields.get("role", ""),
                                   fields.get("scope", ""))
    except (ConfigError, NotFound) as exc:
        flash(request, "error", f"User {name} not changed: {exc}")
    else:
        flash(request, "ok", f"User {name} is now {fields['role']} in {fields['scope']}.")
    return see_other("/users")


@post("/users/{name:str}/password", summary="Give a registry user a new password", status_code=303,
      **page("users.manage", action="reset passwords"))
async def user_password(request: AnyRequest, name: FromPath[str]) -> Response[Any]:
    fields = await form_fields(request)
    try:
        await admin.reset_password_as(store_of(request), caller_of(request), name, fields.get("password", ""))
    except (ConfigError, NotFound) as exc:
        flash(request, "error", f"Password of {name} not changed: {exc}")
    else:
        flash(request, "ok", f"User {name} has a new password.")
    return see_other("/users")


@post("/users/{name:str}/remove", summary="Remove a registry user", status_code=303,
      **page("users.manage", action="remove users"))
async def user_remove(request: AnyRequest, name: FromPath[str]) -> Response[Any]:
    try:
        await admin.remove_user_as(store_of(request), caller_of(request), name)
    except (ConfigError, NotFound) as exc:
        flash(request, "error", f"User {name} not removed: {exc}")
    else:
        flash(request, "ok", f"User {name} removed.")
    return see_other("/users")


# --- API tokens -----------------------------------------------------------------------------------------------


async def _tokens_page(request: AnyRequest, *, created: str = "", problem: str = "",
                       status_code: int = 200) -> Template:
    tokens = await admin.visible_tokens(store_of(request), caller_of(request))
    return show(request, "api_tokens.html", status_code=status_code, tokens=tokens, created=created, problem=problem,
                **await _grants(request))


@get("/api-tokens", summary="API tokens in the admin's scope (never their secrets)", **page("tokens.manage"))
async def tokens_page(request: AnyRequest) -> Template:
    return await _tokens_page(request)


@post("/api-tokens", summary="Create an API token; the page shows it once", status_code=200,
      **page("tokens.manage", action="create API tokens"))
async def token_create(request: AnyRequest) -> Template:
    fields = await form_fields(request)
    try:
        token = await admin.create_token_as(store_of(request), caller_of(request), fields.get("role", ""),
                                            fields.get("scope", ""), fields.get("description", ""))
    except ConfigError as exc:
        return await _tokens_page(request, problem=str(exc), status_code=400)
    return await _tokens_page(request, created=token)


@post("/api-tokens/{token_id:str}/revoke", summary="Revoke an API token", status_code=303,
      **page("tokens.manage", action="revoke API tokens"))
async def token_revoke(request: AnyRequest, token_id: FromPath[str]) -> Response[Any]:
    try:
        await admin.revoke_token_as(store_of(request), caller_of(request), token_id)
    except (ConfigError, NotFound) as exc:
        flash(request, "error", f"API token {token_id} not revoked: {exc}")
    else:
        flash(request, "ok", f"API token {token_id} revoked.")
    return see_other("/api-tokens")


# --- workspaces -----------------------------------------------------------------------------------------------


@get("/workspaces", summary="Folders and their workspaces in the admin's scope, with who is granted on each folder",
     **page("workspaces.manage"))
async def workspaces_page(request: AnyRequest) -> Template:
    store, caller = store_of(request), caller_of(request)
    folders = await admin.folder_details(store, caller)
    creatable = sorted(f for f in await access.folders(store) if caller.covers(access.Scope("folder", f)))
    return show(request, "workspaces.html", folders=folders, creatable=creatable,
                new_folders=caller.scope.kind == "platform")


@post("/workspaces", summary="Create a workspace in a folder (a new folder: platform admins)", status_code=303,
      **page("workspaces.manage", action="create workspaces"))
async def workspace_create(request: AnyRequest) -> Response[Any]:
    fields = await form_fields(request)
    name = fields.get("name", "").strip()
    folder = (fields.get("new_folder", "").strip() or fields.get("folder", "")).strip() or access.DEFAULT_FOLDER
    try:
        await admin.create_workspace_as(store_of(request), caller_of(request), name, folder)
    except ConfigError as exc:
        flash(request, "error", f"Workspace {name} not created: {exc}")
    else:
        flash(request, "ok", f"Workspace {name} created in folder {folder}.")
    return see_other("/workspaces")


@post("/workspaces/{name:str}/folder", summary="Move a workspace to another folder (grants on that folder cover it "
      "from then on)", status_code=303, **page("workspaces.manage", action="move workspaces"))
async def workspace_move(request: AnyRequest, name: FromPath[str]) -> Response[Any]:
    folder = (await form_fields(request)).get("folder", "").strip()
    try:
        await admin.move_workspace_as(store_of(request), caller_of(request), name, folder)
    except (ConfigError, NotFound) as exc:
        flash(request, "error", f"Workspace {name} not moved: {exc}")
    else:
        flash(request, "ok", f"Workspace {name} moved to folder {folder}.")
    return see_other("/workspaces")


@post("/folders", summary="Create an empty folder (platform)", status_code=303,
      **page("workspaces.manage", action="create folders"))
async def folder_create(request: AnyRequest) -> Response[Any]:
    fields = await form_fields(request)
    name = fields.get("name", "").strip()
    try:
        await admin.create_folder_as(store_of(request), caller_of(request), name, fields.get("description", ""))
    except ConfigError as exc:
        flash(request, "error", f"Folder {name[:63]} not created: {exc}")
    else:
        flash(request, "ok", f"Folder {name} created.")
    return see_other("/workspaces")


@post("/folders/{name:str}/delete", summary="Delete a folder that holds no workspace and is granted to nobody",
      status_code=303, **page("workspaces.manage", action="delete folders"))
async def folder_delete(request: AnyRequest, name: FromPath[str]) -> Response[Any]:
    try:
        await admin.delete_folder_as(store_of(request), caller_of(request), name)
    except (ConfigError, NotFound) as exc:
        flash(request, "error", f"Folder {name[:63]} not deleted: {exc}")
    else:
        flash(request, "ok", f"Folder {name} deleted.")
    return see_other("/workspaces")


# --- the audit log --------------------------------------------------------------------------------------------

AUDIT_FILTERS = ("actor", "action", "workspace", "since", "until")


@get("/audit", summary="The audit log, newest first (?actor=, ?action= prefix, ?workspace=, ?since=, ?until=, "
     "?page=)", **page("audit.read"))
async def audit_page(request: AnyRequest) -> Template:
    store, caller = store_of(request), caller_of(request)
    query = {key: request.query_params.get(key, "").strip() for key in AUDIT_FILTERS}
    number = request.query_params.get("page", "1")
    current = int(number) if number.isdigit() and int(number) > 0 else 1
    problem, more = "", False
    entries: list[dict[str, Any]] = []
    try:
        entries, more = await admin.search_audit(
            store, caller, actor=query["actor"], action=query["action"], workspace=query["workspace"],
            since=admin.parse_time(query["since"], "from"), until=admin.parse_time(query["until"], "until"),
            page=current)
    except ConfigError as exc:
        problem = str(exc)
    kept = {key: value for key, value in query.items() if value}
    return show(request, "audit.html", status_code=400 if problem else 200, entries=entries, query=query,
                problem=problem, page=current, workspaces=[w for w in await access.workspaces(store)
                                                           if caller.sees(w)],
                newer=f"/audit?{urlencode({**kept, 'page': current - 1})}" if current > 1 else "",
                older=f"/audit?{urlencode({**kept, 'page': current + 1})}" if more else "")


ROUTE_HANDLERS = [users_page, user_add, user_change, user_password, user_remove, tokens_page, token_create,
                  token_revoke, workspaces_page, workspace_create, workspace_move, folder_create, folder_delete,
                  audit_page]
