"""Roles as sets of permissions: the built-in viewer, operator and admin (gateway.registry.permissions; read-only,
the defaults, copied to start a custom role) and custom roles kept in the registry database. Roles are the
platform's: a caller granted `roles.manage` at platform scope creates, changes and deletes custom roles, and only
with permissions it holds itself; a role held by a user or a valid API token is not deleted. Every change is
audited (`role.create`, `role.change`, `role.delete`)."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from litestar import delete, get, post, put
from litestar.params import FromPath, JSONBody

from gateway.errors import ConfigError, NotFound
from gateway.registry import access
from gateway.registry.access import AnyRequest, Caller
from gateway.registry.permissions import BUILTIN_DESCRIPTIONS, BUILTIN_ROLES, PERMISSIONS, REQUIRES
from gateway.registry.store import RegistryStore
from gateway.registry.store.db import KeyTaken

NAME_MAX = 63
DESCRIPTION_MAX = 200
MAX_CUSTOM_ROLES = 200
ROLE_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
GRANTING = ("roles.manage", "users.manage", "tokens.manage")  # who may read the roles: those who grant them


@dataclass(frozen=True)
class Role:
    """A role: its permissions, and whether it is built in (read-only) or custom."""

    name: str
    description: str
    permissions: frozenset[str]
    builtin: bool
    created_at: float = 0.0
    updated_at: float = 0.0

    def listed(self) -> list[str]:
        """Its permissions in catalogue order."""
        return [name for name in PERMISSIONS if name in self.permissions]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "permissions": self.listed(),
                "builtin": self.builtin, "created_at": self.created_at, "updated_at": self.updated_at}


BUILTIN = [Role(name, BUILTIN_DESCRIPTIONS[name], permissions, True) for name, permissions in BUILTIN_ROLES.items()]


def least_privileged_first(role: Role) -> tuple[int, bool, str]:
    return len(role.permissions), not role.builtin, role.name


async def custom_roles(store: RegistryStore) -> list[Role]:
    roles = []
    for name, description, permissions, created, updated in await store.access.roles():
        held = json.loads(permissions)
        roles.append(Role(name, description, frozenset(p for p in held if p in PERMISSIONS), False, created,
                          updated))
    return roles


async def all_roles(store: RegistryStore) -> list[Role]:
    """The built-in and custom roles, least privileged first (fewest permissions; built in before custom)."""
    return sorted([*BUILTIN, *await custom_roles(store)], key=least_privileged_first)


async def find_role(store: RegistryStore, name: str) -> Role:
    """A built-in or custom role; NotFound otherwise."""
    for role in BUILTIN:
        if role.name == name:
            return role
    row = await store.access.role(name)
    if row is None:
        raise NotFound(f"no role {name}")
    return next(r for r in await custom_roles(store) if r.name == name)


def smallest_covering(roles: list[Role], needed: set[str]) -> Role | None:
    """The least privileged of `roles` that holds every permission of `needed`."""
    return next((role for role in sorted(roles, key=least_privileged_first) if needed <= role.permissions), None)


# --- checks -----------------------------------------------------------------------------------------------------


def check_name(name: str) -> str:
    if len(name) > NAME_MAX or not ROLE_NAME.fullmatch(name):
        raise ConfigError(f"name {name[:NAME_MAX]!r}: use 1-{NAME_MAX} lowercase letters, digits and '-' (starting "
                          "and ending with a letter or digit)")
    if name in BUILTIN_ROLES:
        raise ConfigError(f"name {name}: the built-in role {name} has that name")
    return name


def check_description(description: str) -> str:
    description = description.strip()
    if len(description) > DESCRIPTION_MAX:
        raise ConfigError(f"description: use at most {DESCRIPTION_MAX} characters")
    return description


def check_permission_set(names: list[str]) -> frozenset[str]:
    """A role's permissions: known names, at least one, each change with what it needs to see (named errors)."""
    if len(names) > len(PERMISSIONS):
        raise ConfigError(f"permissions: at most {len(PERMISSIONS)} (the catalogue's size), got {len(names)}")
    for name in names:
        if name not in PERMISSIONS:
            raise ConfigError(f"permissions: unknown permission {name[:80]!r} (expected {', '.join(PERMISSIONS)})")
    held = frozenset(names)
    if not held:
        raise ConfigError("permissions: a role needs at least one permission")
    for name in PERMISSIONS:
        if name in held and REQUIRES.get(name, name) not in held:
            raise ConfigError(f"permissions: {name} needs {REQUIRES[name]} (a role that changes something sees it)")
    return held


def _platform_only(caller: Caller, verb: str) -> None:
    if caller.scope.kind != "platform":
        raise ConfigError(f"roles are the platform's: your grant at {caller.scope} cannot {verb} them (a grant of "
                          "roles.manage at platform can)")


def _held_only(caller: Caller, permissions: frozenset[str], what: str) -> None:
    lacking = [name for name in PERMISSIONS if name in permissions - caller.permissions]
    if lacking:
        raise ConfigError(f"permissions: {what} {', '.join(lacking)}, which you do not hold (the {caller.role} role "
                          "grants only what it holds)")


def _stored(permissions: frozenset[str]) -> str:
    return json.dumps([name for name in PERMISSIONS if name in permissions])


# --- changes ------------------------------------------------------------------------------------------------------


async def create_role_as(store: RegistryStore, caller: Caller, name: str, description: str,
                         permissions: list[str]) -> Role:
    """A custom role (audited); ConfigError naming the field for a bad name, description or permission."""
    async with access.audited(store, caller, "role.create", f"role/{name[:NAME_MAX]}", access.PLATFORM) as entry:
        entry.detail = {"permissions": permissions[:len(PERMISSIONS)]}
        _platform_only(caller, "create")
        check_name(name)
        text = check_description(description)
        held = check_permission_set(permissions)
        _held_only(caller, held, "the role would carry")
        if len(await store.access.roles()) >= MAX_CUSTOM_ROLES:
            raise ConfigError(f"name {name}: the registry keeps at most {MAX_CUSTOM_ROLES} custom roles")
        try:
            await store.access.add_role(name, text, _stored(held), time.time())
        except KeyTaken:
            raise ConfigError(f"name {name}: a role of that name exists already") from None
    return await find_role(store, name)


async def _custom(store: RegistryStore, name: str, verb: str) -> Role:
    role = await find_role(store, name)
    if role.builtin:
        raise ConfigError(f"role {name} is built in: it cannot be {verb} (duplicate it as a custom role and change "
                          "that)")
    return role


async def change_role_as(store: RegistryStore, caller: Caller, name: str, description: str | None,
                         permissions: list[str] | None) -> Role:
    """Give a custom role another description or permission set (audited); its holders have it at once."""
    async with access.audited(store, caller, "role.change", f"role/{name[:NAME_MAX]}", access.PLATFORM) as entry:
        entry.detail = {"permissions": (permissions or [])[:len(PERMISSIONS)]}
        _platform_only(caller, "change")
        role = await _custom(store, name, "changed")
        _held_only(caller, role.permissions, "the role carries")
        held = role.permissions if permissions is None else check_permission_set(permissions)
        _held_only(caller, held, "the role would carry")
        text = role.description if description is None else check_description(description)
        entry.detail = {"added": sorted(held - role.permissions), "removed": sorted(role.permissions - held)}
        if not await store.access.change_role(name, text, _stored(held), time.time()):
            raise NotFound(f"no role {name}")
    return await find_role(store, name)


async def delete_role_as(store: RegistryStore, caller: Caller, name: str) -> None:
    """Delete a custom role no user or valid API token holds (audited)."""
    async with access.audited(store, caller, "role.delete", f"role/{name[:NAME_MAX]}", access.PLATFORM):
        _platform_only(caller, "delete")
        role = await _custom(store, name, "deleted")
        _held_only(caller, role.permissions, "the role carries")
        if not await store.access.delete_role(name):
            users, tokens = await store.access.role_holders(name)
            if not users and not tokens:
                raise NotFound(f"no role {name}")
            held_by = [f"user {user}" for user in users[:5]] + [f"API token {token}" for token in tokens[:5]]
            more = len(users) + len(tokens) - len(held_by)
            raise ConfigError(f"role {name} is held by {', '.join(held_by)}" + (f" and {more} more" if more else "")
                              + ": give them another role first")


# --- the API ------------------------------------------------------------------------------------------------------

RoleName = Annotated[str, msgspec.Meta(max_length=NAME_MAX, description="lowercase letters, digits and '-'")]
Description = Annotated[str, msgspec.Meta(max_length=DESCRIPTION_MAX)]
PermissionList = Annotated[list[Annotated[str, msgspec.Meta(max_length=64)]],
                           msgspec.Meta(max_length=len(PERMISSIONS), description="names from GET /api/v1/permissions")]


class RoleRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: RoleName
    description: Description = ""
    permissions: PermissionList


class RoleChange(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    description: Description | None = None
    permissions: PermissionList | None = None


def _store(request: AnyRequest) -> RegistryStore:
    store: RegistryStore = request.app.state.store
    return store


@get("/api/v1/permissions", summary="The catalogue of permissions a role is made of, each with what it allows (any "
     "role)")
async def list_permissions(request: AnyRequest) -> list[dict[str, str]]:
    await access.require_caller(request)
    return [{"name": name, "description": text} for name, text in PERMISSIONS.items()]


@get("/api/v1/roles", summary="Built-in and custom roles with their permissions, least privileged first "
     "(roles.manage, users.manage or tokens.manage)")
async def list_roles(request: AnyRequest) -> list[dict[str, Any]]:
    await access.require_caller(request, *GRANTING)
    return [role.as_dict() for role in await all_roles(_store(request))]


@get("/api/v1/roles/{name:str}", summary="One role with its permissions (roles.manage, users.manage or "
     "tokens.manage)")
async def get_role(request: AnyRequest, name: FromPath[str]) -> dict[str, Any]:
    await access.require_caller(request, *GRANTING)
    return (await find_role(_store(request), name)).as_dict()


@post("/api/v1/roles", summary="Create a custom role `{\"name\", \"description\", \"permissions\": [...]}` "
      "(roles.manage at platform; only permissions the caller holds)", status_code=201)
async def create_role(request: AnyRequest, data: JSONBody[RoleRequest]) -> dict[str, Any]:
    caller = await access.require_caller(request, "roles.manage")
    return (await create_role_as(_store(request), caller, data.name, data.description, data.permissions)).as_dict()


@put("/api/v1/roles/{name:str}", summary="Change a custom role's description or permissions; its holders have them "
     "at once (roles.manage at platform; built-in roles are read-only)")
async def change_role(request: AnyRequest, name: FromPath[str], data: JSONBody[RoleChange]) -> dict[str, Any]:
    caller = await access.require_caller(request, "roles.manage")
    return (await change_role_as(_store(request), caller, name, data.description, data.permissions)).as_dict()


@delete("/api/v1/roles/{name:str}", summary="Delete a custom role that no user or valid API token holds "
        "(roles.manage at platform)", status_code=200)
async def remove_role(request: AnyRequest, name: FromPath[str]) -> dict[str, str]:
    await delete_role_as(_store(request), await access.require_caller(request, "roles.manage"), name)
    return {"deleted": name}


ROUTE_HANDLERS = [list_permissions, list_roles, get_role, create_role, change_role, remove_role]
