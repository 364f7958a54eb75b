"""The audit log (viewer), users and tokens, and settings (admin)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlparse

from litestar import get, post
from litestar.params import FromPath, QueryParameter
from litestar.response import Redirect, Template

from gateway.errors import ConfigError, FieldgateError
from gateway.resources.schema import check_node_name
from gateway.web.auth import ROLES, add_user, create_token
from gateway.web.pages.common import AnyRequest, actor, flash, gateway_of, joined_registry, render
from gateway.web.security import requires
from gateway.webkit.pages import form_fields, see_other

admin = [requires("admin")]
AUDIT_PAGE = 100


@get("/audit", guards=[requires("viewer")], summary="The audit log: who changed what, when, from where",
     include_in_schema=False)
async def audit(request: AnyRequest, before: Annotated[int | None, QueryParameter(ge=1)] = None,
                actor_name: Annotated[str, QueryParameter(name="actor")] = "") -> Template:
    rows = await gateway_of(request).store.audit.page(AUDIT_PAGE, before, actor_name)
    older = rows[-1]["id"] if len(rows) == AUDIT_PAGE else None
    return render(request, "audit.html", rows=rows, older=older, actor=actor_name)


async def _users_page(request: AnyRequest, *, new_token: str = "", problems: list[str] | None = None,
                      status_code: int = 200) -> Template:
    store = gateway_of(request).store
    return render(request, "users.html", status_code=status_code, users=await store.users.list_users(),
                  tokens=await store.users.list_tokens(), roles=ROLES, new_token=new_token, problems=problems or [])


@get("/users", guards=admin, summary="Users and API tokens", include_in_schema=False)
async def users(request: AnyRequest) -> Template:
    return await _users_page(request)


@post("/users", guards=admin, summary="Add a user or change one's role and password", include_in_schema=False,
      status_code=303)
async def user_add(request: AnyRequest) -> Template | Redirect:
    fields = await form_fields(request)
    name, role = fields.get("name", "").strip(), fields.get("role", "")
    try:
        await add_user(gateway_of(request).store, name, role, fields.get("password", ""))
    except FieldgateError as exc:
        return await _users_page(request, problems=[str(exc)], status_code=400)
    who, address = actor(request)
    await gateway_of(request).store.audit.record(who, "user-add", f"user:{name}", role, address)
    request.app.state.sessions.store.end_user(name)  # a new password or role: log the user in again
    flash(request, "ok", f"user {name} saved with the {role} role")
    return see_other("/users")


@post("/tokens", guards=admin, summary="Create an API token (shown once)", include_in_schema=False, status_code=200)
async def token_create(request: AnyRequest) -> Template:
    fields = await form_fields(request)
    role, description = fields.get("role", ""), fields.get("description", "").strip()[:200]
    store = gateway_of(request).store
    try:
        token = await create_token(store, role, description)
    except FieldgateError as exc:
        return await _users_page(request, problems=[str(exc)], status_code=400)
    created = (await store.users.list_tokens())[0]
    who, address = actor(request)
    await store.audit.record(who, "token-create", f"token:{created.id}", f"{role} {description}".strip(), address)
    return await _users_page(request, new_token=token)


@post("/tokens/{token_id:int}/revoke", guards=admin, summary="Revoke an API token", include_in_schema=False,
      status_code=303)
async def token_revoke(request: AnyRequest, token_id: FromPath[int]) -> Redirect:
    store = gateway_of(request).store
    await store.users.revoke_token(token_id)
    who, address = actor(request)
    await store.audit.record(who, "token-revoke", f"token:{token_id}", "", address)
    flash(request, "ok", f"token {token_id} revoked")
    return see_other("/users")


@get("/settings", guards=admin, summary="Settings: join a registry", include_in_schema=False)
async def settings(request: AnyRequest) -> Template:
    gateway = gateway_of(request)
    return render(request, "settings.html", registry=joined_registry(gateway), registry_url="",
                  node_name=gateway.node_name, problems=[])



@post("/settings", guards=admin, summary="Join a registry with a join token", include_in_schema=False,
      status_code=303)
async def settings_save(request: AnyRequest) -> Template | Redirect:
    from gateway.uplink.join import join
    from gateway.uplink.plugin import startup as start_uplink

    fields = await form_fields(request)
    url, token = fields.get("registry_url", "").strip(), fields.get("join_token", "").strip()
    name = fields.get("node_name", "").strip()  # empty: the registry picks one
    gateway = gateway_of(request)
    who, address = actor(request)
    try:
        parsed = urlparse(url)
        if parsed.scheme != "https" or not parsed.netloc:
            raise ConfigError(f"registry URL: expected https://host[:port], got {url!r}")
        if name:
            check_node_name(name, "node name")
        if not token:
            raise ConfigError("join token: required (from `fieldgate registry join-token create` on the registry)")
        joined = await join(url, token, gateway.data_dir, name=name or None)
    except FieldgateError as exc:
        return render(request, "settings.html", status_code=400, registry=joined_registry(gateway), registry_url=url,
                      node_name=name, problems=[str(exc)])
    start_uplink(gateway)  # heartbeats and registry resources from now on, as after a restart
    await gateway.store.audit.record(who, "registry-join", url, f"node {joined.node}", address)
    flash(request, "ok", f"joined {url} as node {joined.node}")
    return see_other("/settings")
