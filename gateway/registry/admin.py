"""Administration within a scope: the registry users, API tokens and workspaces an admin manages, and the audit log
searched. An admin grants only what it holds: a role no higher than its own, in a scope within its own (a folder
admin never hands out `platform`, nor a scope of another folder). Users and tokens outside the admin's scope are
"not found", as every other object outside a scope is. Every change is audited."""

from __future__ import annotations

import calendar
import time
from typing import Any

from argon2 import PasswordHasher
from litestar import get

from gateway.errors import ConfigError, NotFound
from gateway.registry import access
from gateway.registry.access import Caller, Scope
from gateway.registry.store import ROLES, RegistryStore

# What each role may do, for the role picker (least privilege: the lowest role is the default).
ROLE_SUMMARY = {
    "viewer": "sees nodes, groups, devices, workloads, upgrades and their history in its scope",
    "operator": "as viewer, and sets desired values, sends messages to nodes, starts, stops, restarts and rolls "
                "back workloads",
    "admin": "as operator, and changes nodes, groups, documents, join tokens and upgrades, manages users, API "
             "tokens and workspaces within its scope, reads the audit log",
}
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
MAX_DESCRIPTION = 200  # characters of an API token's description
AUDIT_PAGE = 50
_hasher = PasswordHasher()


def grantable_roles(caller: Caller) -> list[str]:
    """The roles the caller may hand out: its own and those below, lowest first."""
    return [role for role in ROLES if caller.can(role)]


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


def check_role_grant(caller: Caller, role: str) -> str:
    """`role` when the caller may grant it; ConfigError for an unknown role or one above the caller's."""
    access.check_role(role)
    if not caller.can(role):
        raise ConfigError(f"role {role}: a {caller.role} cannot grant a higher role than its own")
    return role


async def check_grant(store: RegistryStore, caller: Caller, role: str, scope_text: str) -> Scope:
    """The scope to grant; ConfigError for an unknown role or scope, or one above what the caller holds."""
    check_role_grant(caller, role)
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


def _managed(caller: Caller, user: dict[str, Any]) -> bool:
    """Whether the caller manages this user: its scope lies within the caller's and its role is not higher."""
    try:
        scope = Scope.parse(user["scope"])
    except ConfigError:
        return caller.scope.kind == "platform"
    return caller.covers(scope) and user["role"] in ROLES and caller.can(user["role"])


async def visible_users(store: RegistryStore, caller: Caller) -> list[dict[str, Any]]:
    """The users the caller manages, by name."""
    return [user for user in await access.users(store) if _managed(caller, user)]


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
    return [token for token in reversed(await access.api_tokens(store)) if _managed(caller, token)]


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


async def visible_folders(store: RegistryStore, caller: Caller) -> dict[str, list[str]]:
    """The folders with the workspaces in them the caller sees, by name."""
    folders: dict[str, list[str]] = {}
    for workspace, folder in sorted((await access.workspaces(store)).items()):
        if caller.sees(workspace):
            folders.setdefault(folder, []).append(workspace)
    return dict(sorted(folders.items()))


async def create_workspace_as(store: RegistryStore, caller: Caller, name: str, folder: str) -> None:
    """A workspace in a folder within the caller's scope; a new folder (platform admins) with its first workspace
    (audited)."""
    async with access.audited(store, caller, "workspace.create", f"workspace/{name}", f"folder:{folder}"):
        if not caller.covers(Scope("folder", folder)):
            raise ConfigError(f"folder {folder}: outside your scope {caller.scope}")
        await access.create_workspace(store, name, folder)


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
    caller = await access.require_caller(request, "admin")
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


ROUTE_HANDLERS = [audit_log]
