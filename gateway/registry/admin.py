"""Administration within a scope: the registry users, API tokens, workspaces and folders an admin manages, and the
audit log searched. Least privilege: a caller grants only what it holds, a role whose permissions are all its own,
in a scope within its own (a folder admin never hands out `platform`, nor a scope of another folder), and the grant
forms offer the roles smallest first. Users and tokens outside the admin's scope, or holding a permission it lacks,
are "not found", as every other object outside a scope is. Every change is audited."""

from __future__ import annotations

import calendar
import time
from typing import Annotated, Any

import msgspec
from argon2 import PasswordHasher
from litestar import delete, get, patch, post
from litestar.params import FromPath, JSONBody

from gateway.errors import ConfigError, NotFound
from gateway.registry import access
from gateway.registry.access import Caller, Scope
from gateway.registry.permissions import PERMISSIONS
from gateway.registry.roles import Role, all_roles
from gateway.registry.store import RegistryStore
from gateway.registry.store.db import KeyTaken

MIN_PASSWORD = 8
MAX_PASSWORD = 1024
MAX_DESCRIPTION = 200  # characters of an API token's description
AUDIT_PAGE = 50
_hasher = PasswordHasher()


async def grantable_roles(store: RegistryStore, caller: Caller) -> list[Role]:
    """The roles the caller may hand out (every permission of each is its own), least privileged first: fewest
    permissions, a built-in role before a custom one of the same size."""
    return [role for role in await all_roles(store) if role.permissions <= caller.permissions]


async def grantable_scopes(store: RegistryStore, caller: Caller) -> list[str]:
    """The scopes the caller may hand out, narrowest first (workspaces, then folders, then platform)."""
    folders = await access.workspaces(store)
    scopes = [f"workspace:{w}" for w in folders if caller.sees(w)]
    scopes += [f"folder:{f}" for f in sorted(set(folders.values())) if caller.covers(Scope("folder", f))]
    if caller.scope.kind == "platform":
        scopes.append(access.PLATFORM)
    return scopes


def default_scope(scopes: list[str]) -> str:
    """The narrowest scope offered: `workspace:default` when it is there."""
    return access.DEFAULT_SCOPE if access.DEFAULT_SCOPE in scopes else scopes[0]


async def check_role_grant(store: RegistryStore, caller: Caller, role: str) -> str:
    """`role` when the caller may grant it; ConfigError for an unknown role or one carrying a permission the caller
    does not hold (naming them)."""
    permissions = await access.role_permissions(store, role)
    if permissions is None:
        await access.check_role(store, role)  # the error that lists the roles
        raise ConfigError(f"role {role}: no such role")
    lacking = [name for name in PERMISSIONS if name in permissions - caller.permissions]
    if lacking:
        raise ConfigError(f"role {role}: it carries permissions you do not hold ({', '.join(lacking)}); the "
                          f"{caller.role} role grants only what it holds")
    return role


async def check_grant(store: RegistryStore, caller: Caller, role: str, scope_text: str) -> Scope:
    """The scope to grant; ConfigError for an unknown role or scope, or one above what the caller holds."""
    await check_role_grant(store, caller, role)
    scope = await access.check_scope(store, scope_text)
    if not caller.covers(scope):
        raise ConfigError(f"scope {scope}: outside your scope {caller.scope}")
    return scope


def _check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise ConfigError(f"password: use at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise ConfigError(f"password: use at most {MAX_PASSWORD} characters")
    return password


# --- users ----------------------------------------------------------------------------------------------------


def _managed(caller: Caller, user: dict[str, Any], roles: dict[str, Role]) -> bool:
    """Whether the caller manages this user or token: its scope lies within the caller's and every permission of
    its role is the caller's too."""
    role = roles.get(user["role"])
    try:
        scope = Scope.parse(user["scope"])
    except ConfigError:
        return caller.scope.kind == "platform" and (role is None or role.permissions <= caller.permissions)
    return caller.covers(scope) and (role.permissions <= caller.permissions if role else caller.scope.kind ==
                                     "platform")


async def _roles(store: RegistryStore) -> dict[str, Role]:
    return {role.name: role for role in await all_roles(store)}


async def visible_users(store: RegistryStore, caller: Caller) -> list[dict[str, Any]]:
    """The users the caller manages, by name."""
    roles = await _roles(store)
    return [user for user in await access.users(store) if _managed(caller, user, roles)]


async def _managed_user(store: RegistryStore, caller: Caller, name: str) -> dict[str, Any]:
    user = next((u for u in await visible_users(store, caller) if u["name"] == name), None)
    if user is None:
        raise NotFound(f"no registry user {name}")
    return user


async def add_user_as(store: RegistryStore, caller: Caller, name: str, role: str, scope: str,
                      password: str) -> None:
    """Add a user with a role in a scope the caller may grant (audited); ConfigError when the name is taken."""
    async with access.audited(store, caller, "user.add", f"user/{name}", str(caller.scope)) as entry:
        entry.detail = {"role": role, "scope": scope}
        granted = await check_grant(store, caller, role, scope)
        entry.scope = str(granted)
        if any(u["name"] == name for u in await access.users(store)):
            raise ConfigError(f"user {name} exists already")
        await access.add_user(store, name, role, granted, _check_password(password))


async def change_user_as(store: RegistryStore, caller: Caller, name: str, role: str, scope: str) -> None:
    """Give a user the caller manages another role and scope the caller may grant (audited)."""
    async with access.audited(store, caller, "user.change", f"user/{name}", str(caller.scope)) as entry:
        entry.detail = {"role": role, "scope": scope}
        entry.scope = (await _managed_user(store, caller, name))["scope"]
        granted = await check_grant(store, caller, role, scope)
        if caller.actor == f"user:{name}" and (role, str(granted)) != (caller.role, str(caller.scope)):
            raise ConfigError("you cannot change your own role or scope (another admin can)")
        await store.access.set_user_grant(name, role, str(granted))


async def reset_password_as(store: RegistryStore, caller: Caller, name: str, password: str) -> None:
    """Give a user the caller manages a new password (audited; the password is not recorded)."""
    async with access.audited(store, caller, "user.password", f"user/{name}", str(caller.scope)) as entry:
        entry.scope = (await _managed_user(store, caller, name))["scope"]
        await store.access.set_user_password(name, _hasher.hash(_check_password(password)))


async def remove_user_as(store: RegistryStore, caller: Caller, name: str) -> None:
    """Remove a user the caller manages, never the caller itself (audited)."""
    async with access.audited(store, caller, "user.remove", f"user/{name}", str(caller.scope)) as entry:
        entry.scope = (await _managed_user(store, caller, name))["scope"]
        if caller.actor == f"user:{name}":
            raise ConfigError("you cannot remove yourself (another admin can)")
        await access.remove_user(store, name)


# --- API tokens -----------------------------------------------------------------------------------------------


async def visible_tokens(store: RegistryStore, caller: Caller) -> list[dict[str, Any]]:
    """The API tokens the caller manages (never their secrets), newest first."""
    roles = await _roles(store)
    return [token for token in reversed(await access.api_tokens(store)) if _managed(caller, token, roles)]


async def create_token_as(store: RegistryStore, caller: Caller, role: str, scope: str, description: str) -> str:
    """A new API token with a role in a scope the caller may grant (audited); the only time its secret is seen."""
    async with access.audited(store, caller, "token.create", "token", str(caller.scope)) as entry:
        entry.detail = {"role": role, "scope": scope, "description": description[:MAX_DESCRIPTION]}
        if len(description.strip()) > MAX_DESCRIPTION:
            raise ConfigError(f"description: use at most {MAX_DESCRIPTION} characters")
        granted = await check_grant(store, caller, role, scope)
        entry.scope = str(granted)
        token = await access.create_api_token(store, role, granted, description.strip())
        entry.detail["id"] = token.split(".")[0]
    return token


async def revoke_token_as(store: RegistryStore, caller: Caller, token_id: str) -> None:
    """Revoke an API token the caller manages (audited)."""
    async with access.audited(store, caller, "token.revoke", f"token/{token_id}", str(caller.scope)) as entry:
        token = next((t for t in await visible_tokens(store, caller) if t["id"] == token_id), None)
        if token is None:
            raise NotFound(f"no API token {token_id}")
        entry.scope = token["scope"]
        if token["revoked_at"] is not None:
            raise ConfigError(f"API token {token_id} is revoked already")
        await access.revoke_api_token(store, token_id)


# --- workspaces and folders -----------------------------------------------------------------------------------


FOLDER_DESCRIPTION = 200


async def visible_folders(store: RegistryStore, caller: Caller) -> dict[str, list[str]]:
    """The folders the caller sees (those it covers, and those of the workspaces it sees) with the workspaces in
    them it sees, by name."""
    folders: dict[str, list[str]] = {f: [] for f in await store.access.folders() if caller.covers(Scope("folder", f))}
    for workspace, folder in sorted((await access.workspaces(store)).items()):
        if caller.sees(workspace):
            folders.setdefault(folder, []).append(workspace)
    return dict(sorted(folders.items()))


async def folder_details(store: RegistryStore, caller: Caller) -> list[dict[str, Any]]:
    """The folders the caller sees with description, workspaces and who is granted on them (users and valid API
    tokens, for those the caller manages)."""
    described = await store.access.folders()
    users = {u["name"] for u in await visible_users(store, caller)}
    tokens = {t["id"] for t in await visible_tokens(store, caller)}
    details = []
    for name, workspaces in (await visible_folders(store, caller)).items():
        granted_users, granted_tokens = await store.access.scope_holders(f"folder:{name}")
        details.append({"name": name, "description": described.get(name, ("", 0.0))[0], "workspaces": workspaces,
                        "users": [u for u in granted_users if u in users],
                        "tokens": [t for t in granted_tokens if t in tokens]})
    return details


async def create_workspace_as(store: RegistryStore, caller: Caller, name: str, folder: str) -> None:
    """A workspace in a folder within the caller's scope; a new folder (platform admins) with its first workspace
    (audited)."""
    async with access.audited(store, caller, "workspace.create", f"workspace/{name}", f"folder:{folder}"):
        if not caller.covers(Scope("folder", folder)):
            raise ConfigError(f"folder {folder}: outside your scope {caller.scope}")
        await access.create_workspace(store, name, folder)


def _folder_name(name: str) -> str:
    if not access.valid_name(name):
        raise ConfigError(f"name {name[:63]!r}: expected lowercase letters, digits and '-' (at most 63)")
    return name


async def create_folder_as(store: RegistryStore, caller: Caller, name: str, description: str = "") -> None:
    """An empty folder (a caller granted at platform; audited)."""
    async with access.audited(store, caller, "folder.create", f"folder/{name[:63]}", f"folder:{name[:63]}"):
        if caller.scope.kind != "platform":
            raise ConfigError(f"folder {name[:63]}: outside your scope {caller.scope} (folders are made at "
                              "platform)")
        _folder_name(name)
        if len(description.strip()) > FOLDER_DESCRIPTION:
            raise ConfigError(f"description: use at most {FOLDER_DESCRIPTION} characters")
        try:
            await store.access.add_folder(name, description.strip(), time.time())
        except KeyTaken:
            raise ConfigError(f"folder {name} exists already") from None


async def delete_folder_as(store: RegistryStore, caller: Caller, name: str) -> None:
    """Delete an empty folder that nobody is granted on (a caller granted at platform; audited)."""
    async with access.audited(store, caller, "folder.delete", f"folder/{name[:63]}", f"folder:{name[:63]}"):
        if name not in await store.access.folders() or not caller.covers(Scope("folder", name)):
            raise NotFound(f"no folder {name}")
        if caller.scope.kind != "platform":
            raise ConfigError(f"folder {name}: only a grant at platform deletes folders")
        if await store.access.delete_folder(name):
            return
        inside = sorted(w for w, f in (await access.workspaces(store)).items() if f == name)
        if inside:
            raise ConfigError(f"folder {name} holds workspaces {', '.join(inside[:10])}: move them to another "
                              "folder first")
        users, tokens = await store.access.scope_holders(f"folder:{name}")
        granted = [f"user {u}" for u in users[:5]] + [f"API token {t}" for t in tokens[:5]]
        raise ConfigError(f"folder {name} is granted to {', '.join(granted)}: give them another scope first")


async def move_workspace_as(store: RegistryStore, caller: Caller, name: str, folder: str) -> None:
    """Put a workspace in another folder: grants on the new folder cover it from now on, those on the old one no
    longer do (the caller covers both folders; audited)."""
    async with access.audited(store, caller, "workspace.move", f"workspace/{name[:63]}",
                              str(caller.scope)) as entry:
        entry.detail = {"folder": folder[:63]}
        current = (await access.workspaces(store)).get(name)
        if current is None or not caller.sees(name):
            raise NotFound(f"no workspace {name}")
        entry.scope = f"folder:{current}"
        if folder not in await store.access.folders() or not caller.covers(Scope("folder", folder)):
            raise ConfigError(f"folder {folder[:63]!r}: no such folder in your scope")
        if not caller.covers(Scope("folder", current)):
            raise ConfigError(f"workspace {name}: its folder {current} is outside your scope {caller.scope}")
        if folder == current:
            raise ConfigError(f"workspace {name} is in folder {folder} already")
        await store.access.move_workspace(name, folder)


# --- the audit log --------------------------------------------------------------------------------------------


async def search_audit(store: RegistryStore, caller: Caller, *, actor: str = "", action: str = "",
                       workspace: str = "", since: float | None = None, until: float | None = None, page: int = 1,
                       per_page: int = AUDIT_PAGE) -> tuple[list[dict[str, Any]], bool]:
    """One page of the audit entries the caller may read, newest first, by who (`user:ann` or `ann`), what (an
    action prefix such as `user.`), in which workspace and when; and whether an older page follows."""
    scopes = caller.audit_scopes()
    scope = access.workspace_scope(workspace) if workspace else ""
    if scope and scopes is not None and scope not in scopes:
        return [], False
    page = max(1, page)
    rows = await store.access.search(scopes, actor=actor.strip(), action=action.strip(), scope=scope, since=since,
                                     until=until, limit=per_page + 1, offset=(page - 1) * per_page)
    entries = [{"at": at, "actor": who, "scope": where, "action": what, "object": target, "outcome": outcome,
                "detail": detail} for at, who, where, what, target, outcome, detail in rows[:per_page]]
    return entries, len(rows) > per_page


def parse_time(text: str, field: str) -> float | None:
    """`2026-12-07`, `2026-12-07T10:30` (UTC, as a browser's date or datetime-local field sends it) or unix
    seconds; None when empty."""
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    for layout in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return float(calendar.timegm(time.strptime(text, layout)))
        except ValueError:
            continue
    raise ConfigError(f"{field} {text!r}: expected a date such as 2026-12-07 or 2026-12-07T10:30 (UTC)")


AUDIT_FILTERS = ("actor", "action", "workspace", "since", "until")


@get("/api/v1/audit", summary="The audit log within the token's scope, newest first (admin; ?limit=, ?before=; "
     "filters ?actor=, ?action= (a prefix), ?workspace=, ?since=, ?until= as the Audit page takes them)")
async def audit_log(request: access.AnyRequest) -> list[dict[str, Any]]:
    caller = await access.require_caller(request, "audit.read")
    query = request.query_params
    try:
        limit = max(1, min(int(query.get("limit", "200")), 1000))
        before = query.get("before")
        until = float(before) if before else None
    except ValueError:
        raise ConfigError("?limit= and ?before= take numbers (a count; unix seconds)") from None
    store: RegistryStore = request.app.state.store
    if not any(query.get(name) for name in AUDIT_FILTERS):
        return await access.audit_entries(store, caller, limit=limit, before=until)
    latest = parse_time(query.get("until", ""), "?until=")
    if latest is not None:
        until = latest if until is None else min(until, latest)
    entries, _ = await search_audit(store, caller, actor=query.get("actor", ""), action=query.get("action", ""),
                                    workspace=query.get("workspace", ""),
                                    since=parse_time(query.get("since", ""), "?since="), until=until, per_page=limit)
    return entries


class FolderRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, msgspec.Meta(max_length=63)]
    description: Annotated[str, msgspec.Meta(max_length=FOLDER_DESCRIPTION)] = ""


class WorkspaceMove(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    folder: Annotated[str, msgspec.Meta(max_length=63, description="the folder to put the workspace in")]


def _store(request: access.AnyRequest) -> RegistryStore:
    store: RegistryStore = request.app.state.store
    return store


@get("/api/v1/folders", summary="Folders in the token's scope with their workspaces (any role)")
async def list_folders(request: access.AnyRequest) -> list[dict[str, Any]]:
    caller = await access.require_caller(request)
    described = await _store(request).access.folders()
    return [{"name": name, "description": described.get(name, ("", 0.0))[0], "workspaces": workspaces}
            for name, workspaces in (await visible_folders(_store(request), caller)).items()]


@post("/api/v1/folders", summary="Create an empty folder `{\"name\", \"description\"}` (workspaces.manage at "
      "platform)", status_code=201)
async def add_folder(request: access.AnyRequest, data: JSONBody[FolderRequest]) -> dict[str, str]:
    caller = await access.require_caller(request, "workspaces.manage")
    await create_folder_as(_store(request), caller, data.name, data.description)
    return {"name": data.name, "description": data.description.strip()}


@delete("/api/v1/folders/{name:str}", summary="Delete a folder that holds no workspace and is granted to nobody "
        "(workspaces.manage at platform)", status_code=200)
async def remove_folder(request: access.AnyRequest, name: FromPath[str]) -> dict[str, str]:
    await delete_folder_as(_store(request), await access.require_caller(request, "workspaces.manage"), name)
    return {"deleted": name}


@patch("/api/v1/workspaces/{name:str}", summary="Move a workspace to another folder `{\"folder\"}`: grants on that "
       "folder cover it from now on (workspaces.manage over both folders)")
async def move_workspace(request: access.AnyRequest, name: FromPath[str],
                         data: JSONBody[WorkspaceMove]) -> dict[str, str]:
    caller = await access.require_caller(request, "workspaces.manage")
    await move_workspace_as(_store(request), caller, name, data.folder)
    return {"name": name, "folder": data.folder}


ROUTE_HANDLERS = [audit_log, list_folders, add_folder, remove_folder, move_workspace]
