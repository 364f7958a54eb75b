"""Who may see and change what at the registry, and the record of every change.

Scopes form a hierarchy: `platform` > `folder:F` > `workspace:W`. Nodes, groups, join tokens and documents lie in
one workspace (`default`, in folder `default`, unless said otherwise); a workspace lies in one folder. An API token
or a registry user has a role granted at one scope: the role is a set of permissions (gateway.registry.permissions:
the built-in viewer, operator and admin, or a custom role), and every check asks for a permission. A caller sees and
changes only what lies in its scope (a folder grant covers every workspace in the folder, one moved there later
too): lists are filtered and a single object outside the scope is "not found", so a scope never learns what another
one holds. Every change is written to the audit table with its time, actor, scope, action, object and outcome.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from litestar import Request, delete, get, patch, post
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.params import FromPath, JSONBody

from gateway.errors import AuthError, ConfigError, NotFound
from gateway.registry.permissions import BUILTIN_ROLES, KIND_READ, check_permissions, holders
from gateway.registry.store import RegistryStore
from gateway.resources.schema import NAME_PATTERN
from gateway.workloads.secrets import masked

ScopeKind = Literal["platform", "folder", "workspace"]
PLATFORM = "platform"
DEFAULT_WORKSPACE = "default"
DEFAULT_FOLDER = "default"
DEFAULT_SCOPE = f"workspace:{DEFAULT_WORKSPACE}"  # least privilege: the narrowest scope every registry has
LOWEST_ROLE = "viewer"
_hasher = PasswordHasher()
AnyRequest = Request[Any, Any, Any]


@dataclass(frozen=True)
class Scope:
    """`platform`, `folder:F` or `workspace:W`."""

    kind: ScopeKind
    name: str = ""

    @classmethod
    def parse(cls, text: str) -> Scope:
        text = text.strip()
        if text == PLATFORM:
            return cls("platform")
        kind, sep, name = text.partition(":")
        if not sep or kind not in ("folder", "workspace") or not valid_name(name):
            raise ConfigError(f"scope {text!r}: expected platform, folder:NAME or workspace:NAME")
        return cls("folder" if kind == "folder" else "workspace", name)

    def __str__(self) -> str:
        return PLATFORM if self.kind == "platform" else f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class Caller:
    """An authenticated actor (`token:<id>`, `user:<name>`, `node:<name>`, `cli:<login>`), its role with the role's
    permissions, and its scope."""

    actor: str
    role: str
    scope: Scope
    workspaces: frozenset[str] | None  # the workspaces the scope covers; None: every one (platform)
    granted: frozenset[str] | None = None  # the role's permissions; None: those of the built-in role of that name

    @property
    def permissions(self) -> frozenset[str]:
        if self.granted is None:
            return BUILTIN_ROLES.get(self.role, frozenset())
        return self.granted

    def can(self, permission: str) -> bool:
        """Whether the caller's role holds `permission` (a name of the catalogue; ValueError for anything else)."""
        check_permissions((permission,))
        return permission in self.permissions

    def can_any(self, *permissions: str) -> bool:
        """Whether the caller's role holds one of `permissions` (all of the catalogue); True when none are named."""
        check_permissions(permissions)
        return not permissions or any(p in self.permissions for p in permissions)

    def reads(self, kind: str) -> bool:
        """Whether the caller may see registry documents of `kind`."""
        return kind in KIND_READ and KIND_READ[kind] in self.permissions

    def sees(self, workspace: str | None) -> bool:
        return self.workspaces is None or (workspace or DEFAULT_WORKSPACE) in self.workspaces

    def covers(self, scope: Scope) -> bool:
        """Whether `scope` lies within this caller's scope (a token or user it may hand out)."""
        if self.scope.kind == "platform":
            return True
        if scope.kind == "workspace":
            return self.sees(scope.name)
        return scope == self.scope

    def audit_scopes(self) -> list[str] | None:
        """The audit scopes this caller may read; None: all."""
        if self.workspaces is None:
            return None
        return sorted({f"workspace:{w}" for w in self.workspaces} | {str(self.scope)})


def valid_name(name: str) -> bool:
    return bool(re.fullmatch(NAME_PATTERN, name)) and len(name) <= 63


NAME_PREFIX_MAX = 48  # leaves a node name room for `-<6 hex digits>`
ALIAS_MAX = 100
LABEL_MAX = 63


def check_label(key: str, value: str) -> None:
    """A node label as selectors match it: a key and a value of letters, digits, `-`, `_`, `.` and `/`."""
    for what, text in (("key", key), ("value", value)):
        if len(text) > LABEL_MAX or not re.fullmatch(r"[A-Za-z0-9._/-]*", text) or (what == "key" and not text):
            raise ConfigError(f"label {key}={value}: the {what} takes up to {LABEL_MAX} letters, digits, '-', '_', "
                              "'.' and '/'" + (" (and no empty key)" if what == "key" else ""))


def check_name_prefix(prefix: str, field: str = "prefix") -> str:
    """A node name prefix of a join token ("" for none); ConfigError saying what a prefix may hold."""
    if prefix and (not re.fullmatch(NAME_PATTERN, prefix) or len(prefix) > NAME_PREFIX_MAX):
        raise ConfigError(f"{field} {prefix!r}: expected at most {NAME_PREFIX_MAX} lowercase letters, digits, '-' "
                          "and '.', starting and ending with a letter or digit")
    return prefix


async def role_permissions(store: RegistryStore, role: str) -> frozenset[str] | None:
    """The permissions of a built-in or custom role; None when there is no such role."""
    if role in BUILTIN_ROLES:
        return BUILTIN_ROLES[role]
    row = await store.access.role(role)
    if row is None:
        return None
    return frozenset(name for name in json.loads(row[1]) if isinstance(name, str))


async def check_role(store: RegistryStore, role: str) -> str:
    """`role` when it is a built-in or custom role; ConfigError naming the roles otherwise."""
    if await role_permissions(store, role) is None:
        custom = [name for name, *_ in await store.access.roles()]
        raise ConfigError(f"--role {role}: expected one of {', '.join([*BUILTIN_ROLES, *custom])}")
    return role


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# --- workspaces and folders -----------------------------------------------------------------------------------


async def workspaces(store: RegistryStore) -> dict[str, str]:
    """Every workspace with its folder."""
    return await store.access.workspaces()


async def create_workspace(store: RegistryStore, name: str, folder: str = DEFAULT_FOLDER) -> None:
    """A workspace in a folder; the folder is made too when there is none of that name."""
    if not valid_name(name):
        raise ConfigError(f"workspace {name!r}: expected lowercase letters, digits and '-' (at most 63)")
    if not valid_name(folder):
        raise ConfigError(f"--folder {folder!r}: expected lowercase letters, digits and '-' (at most 63)")
    if name in await workspaces(store):
        raise ConfigError(f"workspace {name} exists already")
    await store.access.add_workspace(name, folder, time.time())


async def folders(store: RegistryStore) -> list[str]:
    """Every folder's name (one may hold no workspace yet)."""
    return list(await store.access.folders())


async def check_workspace(store: RegistryStore, name: str) -> str:
    """`name` when such a workspace exists; ConfigError otherwise."""
    if name not in await workspaces(store):
        raise ConfigError(f"--workspace {name}: no such workspace (`fieldgate registry workspace create {name}`)")
    return name


async def resolve(store: RegistryStore, actor: str, role: str, scope: Scope | str) -> Caller:
    """A caller with the workspaces its scope covers now."""
    scope = Scope.parse(scope) if isinstance(scope, str) else scope
    folders = await workspaces(store)
    if scope.kind == "platform":
        covered = None
    elif scope.kind == "folder":
        covered = frozenset(w for w, f in folders.items() if f == scope.name)
    else:
        covered = frozenset({scope.name})
    # a role that is gone (it cannot be deleted while held) grants nothing
    return Caller(actor, role, scope, covered, await role_permissions(store, role) or frozenset())


async def check_scope(store: RegistryStore, text: str) -> Scope:
    """A parsed scope that names an existing folder or workspace; ConfigError otherwise."""
    scope = Scope.parse(text)
    folders = await workspaces(store)
    if scope.kind == "workspace" and scope.name not in folders:
        raise ConfigError(f"--scope {text}: no workspace {scope.name}")
    if scope.kind == "folder" and scope.name not in await store.access.folders():
        raise ConfigError(f"--scope {text}: no folder {scope.name} (`fieldgate registry workspace create W --folder "
                          f"{scope.name}` makes one)")
    return scope


def cli_caller() -> Caller:
    """Whoever runs the registry's command line on its data dir can do everything."""
    try:
        login = getpass.getuser()
    except (KeyError, OSError):
        login = "unknown"
    return Caller(f"cli:{login}", "admin", Scope("platform"), None)


# --- API tokens -----------------------------------------------------------------------------------------------


async def create_api_token(store: RegistryStore, role: str, scope: Scope, description: str = "") -> str:
    """A new bearer token `<id>.<secret>` with a role bound to a scope; only a hash of the secret is kept."""
    token_id, secret = secrets.token_hex(4), secrets.token_urlsafe(24)
    await store.access.add_api_token(token_id, _hash(secret), await check_role(store, role), str(scope), description,
                                     time.time())
    return f"{token_id}.{secret}"


async def token_caller(store: RegistryStore, token: str) -> Caller:
    """The caller of a bearer token; AuthError when it is unknown or revoked."""
    token_id, _, secret = token.partition(".")
    row = await store.access.api_token(token_id)
    if row is None or not hmac.compare_digest(row[0], _hash(secret)):
        raise AuthError("unknown API token")
    _, role, scope, revoked_at = row
    if revoked_at is not None:
        raise AuthError("revoked API token")
    return await resolve(store, f"token:{token_id}", role, scope)


async def api_tokens(store: RegistryStore) -> list[dict[str, Any]]:
    return [{"id": token_id, "role": role, "scope": scope, "description": description, "created_at": created,
             "revoked_at": revoked}
            for token_id, role, scope, description, created, revoked in await store.access.api_tokens()]


async def revoke_api_token(store: RegistryStore, token_id: str) -> str:
    """Revoke a token; its scope (for the audit log)."""
    row = await store.access.api_token(token_id)
    if row is None:
        raise NotFound(f"no API token {token_id}")
    await store.access.revoke_api_token(token_id, time.time())
    return row[2]


# --- registry users (for the pages) ---------------------------------------------------------------------------


async def add_user(store: RegistryStore, name: str, role: str, scope: Scope, password: str) -> None:
    """Add a registry user or change its role, scope and password (argon2)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise ConfigError(f"user name {name!r}: use 1-64 letters, digits, '-', '_' or '.'")
    if len(password) < 8:
        raise ConfigError("password: use at least 8 characters")
    await check_role(store, role)
    await store.access.put_user(name, _hasher.hash(password), role, str(scope), time.time())


async def remove_user(store: RegistryStore, name: str) -> None:
    if not await store.access.delete_user(name):
        raise NotFound(f"no registry user {name}")


async def users(store: RegistryStore) -> list[dict[str, Any]]:
    return [{"name": name, "role": role, "scope": scope, "created_at": created}
            for name, role, scope, created in await store.access.users()]


async def user_caller(store: RegistryStore, name: str) -> Caller:
    """The caller of a known user (role and scope as stored now); AuthError when the user is gone."""
    row = await store.access.user(name)
    if row is None:
        raise AuthError("the user of this session no longer exists")
    return await resolve(store, f"user:{name}", row[1], row[2])


async def authenticate_user(store: RegistryStore, name: str, password: str) -> Caller:
    row = await store.access.user(name)
    if row is None:
        _hasher.hash(password)  # the same work as a real check: no user enumeration by timing
        raise AuthError("invalid user name or password")
    try:
        _hasher.verify(row[0], password)
    except (VerificationError, InvalidHashError):
        raise AuthError("invalid user name or password") from None
    return await user_caller(store, name)


# --- what lies where ------------------------------------------------------------------------------------------


async def node_workspace(store: RegistryStore, name: str) -> str | None:
    return await store.node_workspace(name)


async def visible_node(store: RegistryStore, caller: Caller, name: str) -> dict[str, Any]:
    """One node with its status; NotFound when there is none or it lies outside the caller's scope."""
    for node in await store.nodes():
        if node["name"] == name and caller.sees(node.get("workspace")):
            return node
    raise NotFound(f"no node {name}")


async def check_node_in_scope(store: RegistryStore, caller: Caller, name: str) -> str:
    """The node's workspace; NotFound (as for a node that does not exist) outside the caller's scope."""
    workspace = await node_workspace(store, name)
    if workspace is None or not caller.sees(workspace):
        raise NotFound(f"no node {name}")
    return workspace


async def group_workspaces(store: RegistryStore) -> dict[str, str]:
    return await store.group_workspaces()


async def visible_groups(store: RegistryStore, caller: Caller) -> list[dict[str, Any]]:
    """The groups in the caller's scope, each with its workspace."""
    where = await group_workspaces(store)
    return [{**group, "workspace": where.get(group["name"], DEFAULT_WORKSPACE)} for group in await store.groups()
            if caller.sees(where.get(group["name"]))]


async def visible_nodes(store: RegistryStore, caller: Caller) -> list[dict[str, Any]]:
    return [node for node in await store.nodes() if caller.sees(node.get("workspace"))]


async def documents(store: RegistryStore, caller: Caller, kind: str | None = None) -> list[dict[str, Any]]:
    """The registry's documents in the caller's scope: kind, namespace, name, node, workspace, document."""
    rows = await store.documents.listing(kind)
    return [{"kind": k, "namespace": ns, "name": name, "node": node, "workspace": workspace,
             "document": _shown(k, json.loads(doc)), "updated_at": updated}
            for k, ns, name, node, workspace, doc, updated in rows if caller.sees(workspace) and caller.reads(k)]


def _shown(kind: str, document: dict[str, Any]) -> dict[str, Any]:
    """A stored document as the API shows it: a Secret's values masked."""
    if kind == "Secret" and isinstance(document.get("data"), dict):
        return {**document, "data": masked(document["data"])}
    return document


async def join_tokens(store: RegistryStore, caller: Caller) -> list[dict[str, Any]]:
    now = time.time()
    result = []
    for token_id, expires, max_uses, uses, revoked, labels, created, workspace, prefix in await store.join_tokens():
        if not caller.sees(workspace):
            continue
        state = ("revoked" if revoked else "expired" if expires < now else "used up" if uses >= max_uses
                 else "valid")
        result.append({"id": token_id, "workspace": workspace, "labels": labels, "uses": uses,
                       "max_uses": max_uses, "expires_at": expires, "created_at": created, "state": state,
                       "prefix": prefix})
    return result


async def join_token_workspace(store: RegistryStore, token_id: str) -> str | None:
    return await store.join_token_workspace(token_id)


# --- the audit log --------------------------------------------------------------------------------------------


def workspace_scope(workspace: str | None) -> str:
    return f"workspace:{workspace or DEFAULT_WORKSPACE}"


AUDIT_FIELD = 300  # characters of an audit entry's scope, action and object
AUDIT_TEXT = 2000  # characters of its outcome and detail


async def record(store: RegistryStore, actor: Caller | str, scope: str, action: str, target: str,
                 outcome: str = "ok", detail: Any = "") -> None:
    """Write one audit entry: who (`token:<id>`, `user:<name>`, `node:<name>`, `cli:<login>`) did what to which
    object in which scope, and how it ended (`ok`, `refused: …`, `not found`)."""
    who = actor.actor if isinstance(actor, Caller) else actor
    text = detail if isinstance(detail, str) else json.dumps(detail, sort_keys=True)
    now = time.time()
    # what a refused request named goes in as far as a reader needs it: a 10 MB name is not kept 10 MB
    await store.access.record(f"{time.time_ns():x}{secrets.token_hex(2)}", now, who, scope[:AUDIT_FIELD],
                              action[:AUDIT_FIELD], target[:AUDIT_FIELD], outcome[:AUDIT_TEXT], text[:AUDIT_TEXT])


async def audit_entries(store: RegistryStore, caller: Caller, *, limit: int = 200,
                        before: float | None = None) -> list[dict[str, Any]]:
    """The newest audit entries the caller may read (its scope and the workspaces within), newest first."""
    rows = await store.access.entries(before if before is not None else time.time() + 86400, caller.audit_scopes(),
                                      max(1, min(limit, 1000)))
    return [{"at": at, "actor": actor, "scope": scope, "action": action, "object": target, "outcome": outcome,
             "detail": detail} for at, actor, scope, action, target, outcome, detail in rows]


@dataclass
class Entry:
    """An audit entry being made: its scope and detail may be set once the object is found."""

    scope: str
    detail: Any = ""


@contextlib.asynccontextmanager
async def audited(store: RegistryStore, actor: Caller | str, action: str, target: str,
                  scope: str) -> AsyncIterator[Entry]:
    """Record the change made in the block with its outcome: `ok`, `not found` or `refused: <reason>`."""
    entry = Entry(scope)
    try:
        yield entry
    except NotFound:
        await record(store, actor, entry.scope, action, target, "not found", entry.detail)
        raise
    except Exception as exc:
        reason = exc.detail if isinstance(exc, HTTPException) else str(exc)
        await record(store, actor, entry.scope, action, target, f"refused: {reason}", entry.detail)
        raise
    await record(store, actor, entry.scope, action, target, "ok", entry.detail)


# --- the access part of the registry API ----------------------------------------------------------------------


def _store(request: AnyRequest) -> RegistryStore:
    store: RegistryStore = request.app.state.store
    return store


def refusal(caller: Caller, permissions: tuple[str, ...], what: str = "do this") -> str:
    """Why a caller may not, and which built-in roles may: `the viewer role cannot see this page; admin can (it needs
    audit.read)`."""
    having = sorted({role for p in permissions for role in holders(p)}, key=list(BUILTIN_ROLES).index)
    return f"the {caller.role} role cannot {what}; {' or '.join(having)} can (it needs {' or '.join(permissions)})"


async def require_caller(request: AnyRequest, *permissions: str) -> Caller:
    """The caller of the request's bearer token (role and scope), refused unless its role holds one of
    `permissions` (any valid token when none are named)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise NotAuthorizedException("an API token is required (Authorization: Bearer <token> from "
                                     "`fieldgate registry token create`)")
    try:
        caller = await token_caller(_store(request), token.strip())
    except AuthError as exc:
        raise NotAuthorizedException(str(exc)) from None
    if not caller.can_any(*permissions):
        raise PermissionDeniedException(refusal(caller, permissions))
    return caller


async def _in_scope_workspace(store: RegistryStore, caller: Caller, name: str) -> str:
    """`name` when it is a workspace within the caller's scope; the same ConfigError for a missing or foreign one."""
    if not caller.sees(name) or name not in await workspaces(store):
        raise ConfigError(f"workspace {name!r}: no such workspace")
    return name


class NodeChange(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    workspace: str | None = None
    labels: dict[str, str] | None = None
    paused: bool | None = None  # a paused node gets no new workload instances
    alias: Annotated[str, msgspec.Meta(max_length=ALIAS_MAX, description="a name for people (\"\" for none)")
                     ] | None = None


class GroupRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    nodes: list[str] = []
    selector: dict[str, str] = {}
    workspace: str = DEFAULT_WORKSPACE


class JoinTokenRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    workspace: str = DEFAULT_WORKSPACE
    ttl: Annotated[float, msgspec.Meta(gt=0)] = 86400.0
    max_uses: Annotated[int, msgspec.Meta(ge=1)] = 1
    labels: dict[str, str] = {}
    prefix: Annotated[str, msgspec.Meta(description="nodes that ask for no name get `<prefix>-<6 hex digits>` "
                                                    "(default `node`)")] = ""


class WorkspaceRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    folder: str = DEFAULT_FOLDER


@get("/api/v1/nodes/{name:str}", summary="One node with its status (404 outside the token's scope)")
async def get_node(request: AnyRequest, name: FromPath[str]) -> dict[str, Any]:
    caller = await require_caller(request, "nodes.read")
    return await visible_node(_store(request), caller, name)


async def change_node_as(store: RegistryStore, caller: Caller, name: str, data: NodeChange) -> None:
    """Change a node's labels, alias, scheduling or workspace (audited; NotFound outside the caller's scope)."""
    async with audited(store, caller, "node.change", f"node/{name}", str(caller.scope)) as entry:
        entry.detail = msgspec.to_builtins(data)
        workspace = await check_node_in_scope(store, caller, name)
        entry.scope = workspace_scope(workspace)
        if data.labels is not None:
            for key, value in data.labels.items():
                check_label(key, value)
        if data.workspace is not None and data.workspace != workspace:
            await store.move_node(name, await _in_scope_workspace(store, caller, data.workspace))
        if data.labels is not None:
            await store.set_node_labels(name, data.labels)
        if data.paused is not None:
            await store.set_paused(name, data.paused)
        if data.alias is not None:
            await store.set_node_alias(name, data.alias.strip())


async def remove_node_as(store: RegistryStore, caller: Caller, name: str) -> None:
    """Forget a node and revoke its certificate (audited; NotFound outside the caller's scope)."""
    async with audited(store, caller, "node.remove", f"node/{name}", str(caller.scope)) as entry:
        entry.scope = workspace_scope(await check_node_in_scope(store, caller, name))
        await store.remove_node(name)


@patch("/api/v1/nodes/{name:str}", summary="Change a node's labels, alias or scheduling, or move it to another "
       "workspace (admin)")
async def change_node(request: AnyRequest, name: FromPath[str], data: JSONBody[NodeChange]) -> dict[str, Any]:
    caller = await require_caller(request, "nodes.manage")
    store = _store(request)
    await change_node_as(store, caller, name, data)
    return await visible_node(store, caller, name)


@delete("/api/v1/nodes/{name:str}", summary="Forget a node and revoke its certificate (admin)", status_code=200)
async def remove_node(request: AnyRequest, name: FromPath[str]) -> dict[str, str]:
    await remove_node_as(_store(request), await require_caller(request, "nodes.manage"), name)
    return {"removed": name}


async def create_group_as(store: RegistryStore, caller: Caller, data: GroupRequest) -> dict[str, Any]:
    """Make a group in a workspace within the caller's scope (audited); the group with its members."""
    async with audited(store, caller, "group.create", f"group/{data.name}", str(caller.scope)) as entry:
        entry.detail = {"nodes": data.nodes, "selector": data.selector}
        workspace = await _in_scope_workspace(store, caller, data.workspace)
        entry.scope = workspace_scope(workspace)
        members = await store.create_group(data.name, data.nodes, data.selector, workspace)
    return {"name": data.name, "workspace": workspace, "nodes": members}


async def visible_group(store: RegistryStore, caller: Caller, name: str) -> dict[str, Any]:
    """One group with its members and workspace; NotFound when there is none in the caller's scope."""
    group = next((g for g in await visible_groups(store, caller) if g["name"] == name), None)
    if group is None:
        raise NotFound(f"no group {name}")
    return group


async def update_group_as(store: RegistryStore, caller: Caller, name: str, nodes: list[str],
                          selector: dict[str, str]) -> list[str]:
    """Give a group new named nodes and a new selector (audited); its members."""
    async with audited(store, caller, "group.change", f"group/{name}", str(caller.scope)) as entry:
        entry.detail = {"nodes": nodes, "selector": selector}
        entry.scope = workspace_scope((await visible_group(store, caller, name))["workspace"])
        return await store.update_group(name, nodes, selector)


async def delete_group_as(store: RegistryStore, caller: Caller, name: str) -> None:
    async with audited(store, caller, "group.delete", f"group/{name}", str(caller.scope)) as entry:
        entry.scope = workspace_scope((await visible_group(store, caller, name))["workspace"])
        await store.delete_group(name)


async def group_preview(store: RegistryStore, caller: Caller, workspace: str, nodes: list[str],
                        selector: dict[str, str], group: str = "") -> dict[str, Any]:
    """Which nodes a group of these named nodes and this selector would hold now (in a workspace of the caller's
    scope), each with why, and what would keep it from being saved."""
    members, problems = [], []
    in_workspace = {n["name"]: n for n in await visible_nodes(store, caller) if n["workspace"] == workspace}
    for name in nodes:
        if name not in in_workspace:
            problems.append(f"no node {name} in workspace {workspace}")
    for node in in_workspace.values():
        named = node["name"] in nodes
        selected = bool(selector) and all(node["labels"].get(k) == v for k, v in selector.items())
        if not (named or selected):
            continue
        members.append({"name": node["name"], "status": node["status"], "labels": node["labels"],
                        "why": "named" if named else "selector"})
        if node["group"] and node["group"] != group:
            problems.append(f"node {node['name']} is in group {node['group']} already (a node is in at most one "
                            "group)")
    return {"workspace": workspace, "nodes": members, "problems": problems}


@post("/api/v1/groups", summary="Make a node group in a workspace (admin)", status_code=201)
async def create_group(request: AnyRequest, data: JSONBody[GroupRequest]) -> dict[str, Any]:
    return await create_group_as(_store(request), await require_caller(request, "groups.manage"), data)


@delete("/api/v1/groups/{name:str}", summary="Delete a node group; its nodes stay (admin)", status_code=200)
async def delete_group(request: AnyRequest, name: FromPath[str]) -> dict[str, str]:
    await delete_group_as(_store(request), await require_caller(request, "groups.manage"), name)
    return {"deleted": name}


@get("/api/v1/join-tokens", summary="Join tokens in the token's scope, without secrets (admin)")
async def list_join_tokens(request: AnyRequest) -> list[dict[str, Any]]:
    return await join_tokens(_store(request), await require_caller(request, "join.manage"))


async def new_join_token(request: AnyRequest, caller: Caller, data: JoinTokenRequest) -> dict[str, Any]:
    """Create a join token for a workspace in the caller's scope; the full token is in the answer only."""
    store = _store(request)
    async with audited(store, caller, "join-token.create", "join-token", str(caller.scope)) as entry:
        entry.detail = {"labels": data.labels, "max_uses": data.max_uses, "ttl": data.ttl, "prefix": data.prefix}
        check_name_prefix(data.prefix)
        workspace = await _in_scope_workspace(store, caller, data.workspace)
        entry.scope = workspace_scope(workspace)
        token_id, secret = await store.create_token(data.ttl, data.max_uses, data.labels, workspace, data.prefix)
        entry.detail["id"] = token_id
    return {"id": token_id, "workspace": workspace,
            "token": f"{token_id}.{secret}.{request.app.state.ca.fingerprint}"}


@post("/api/v1/join-tokens", summary="Create a join token for a workspace (admin); the answer holds the token",
      status_code=201)
async def create_join_token(request: AnyRequest, data: JSONBody[JoinTokenRequest]) -> dict[str, Any]:
    return await new_join_token(request, await require_caller(request, "join.manage"), data)


async def revoke_join_token_as(store: RegistryStore, caller: Caller, token_id: str) -> None:
    async with audited(store, caller, "join-token.revoke", f"join-token/{token_id}", str(caller.scope)) as entry:
        workspace = await join_token_workspace(store, token_id)
        if workspace is None or not caller.sees(workspace):
            raise NotFound(f"no join token {token_id}")
        entry.scope = workspace_scope(workspace)
        await store.revoke_token(token_id)


@delete("/api/v1/join-tokens/{token_id:str}", summary="Revoke a join token (admin)", status_code=200)
async def revoke_join_token(request: AnyRequest, token_id: FromPath[str]) -> dict[str, str]:
    await revoke_join_token_as(_store(request), await require_caller(request, "join.manage"), token_id)
    return {"revoked": token_id}


@get("/api/v1/documents", summary="Registry documents in the token's scope of the kinds its role reads "
     "(?kind=Device)")
async def list_documents(request: AnyRequest) -> list[dict[str, Any]]:
    caller = await require_caller(request, *dict.fromkeys(KIND_READ.values()))
    return await documents(_store(request), caller, request.query_params.get("kind") or None)


@get("/api/v1/workspaces", summary="Workspaces in the token's scope with their folders (any role)")
async def list_workspaces(request: AnyRequest) -> list[dict[str, str]]:
    caller = await require_caller(request)
    return [{"name": name, "folder": folder} for name, folder in (await workspaces(_store(request))).items()
            if caller.sees(name)]


@post("/api/v1/workspaces", summary="Create a workspace in a folder (workspaces.manage at platform scope, or at the "
      "folder's)", status_code=201)
async def add_workspace(request: AnyRequest, data: JSONBody[WorkspaceRequest]) -> dict[str, str]:
    caller = await require_caller(request, "workspaces.manage")
    store = _store(request)
    async with audited(store, caller, "workspace.create", f"workspace/{data.name}", str(caller.scope)) as entry:
        if not caller.covers(Scope("folder", data.folder)):
            raise PermissionDeniedException(f"the scope {caller.scope} cannot create workspaces in folder "
                                            f"{data.folder}")
        entry.scope = f"folder:{data.folder}"
        await create_workspace(store, data.name, data.folder)
    return {"name": data.name, "folder": data.folder}


ROUTE_HANDLERS = [get_node, change_node, remove_node, create_group, delete_group, list_join_tokens,
                  create_join_token, revoke_join_token, list_documents, list_workspaces, add_workspace]


async def workspace_problems(store: RegistryStore, documents: list[tuple[str, str, str, str | None, bytes]],
                             workspace: str) -> list[str]:
    """Why documents cannot go to a workspace: a device meant for a node of another one, or a document of the same
    kind, namespace and name that another workspace holds."""
    held = await store.documents.workspaces()
    problems = []
    for kind, ns, name, node, _ in documents:
        if held.get((kind, ns, name), workspace) != workspace:
            problems.append(f"{kind} {ns}/{name}: workspace {held[(kind, ns, name)]} holds it")
        if node is not None and (node_ws := await node_workspace(store, node)) not in (None, workspace):
            problems.append(f"{kind} {ns}/{name}: node {node} is in workspace {node_ws}, not {workspace}")
    return problems
