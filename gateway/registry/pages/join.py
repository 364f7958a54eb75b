"""Joining nodes (admins): a join token (how long, how many nodes, their labels and name prefix) with the exact
commands to run on the node, a batch bundle to download for many nodes at once, the join tokens with their state,
and how to make a browser trust the registry's CA (its certificate to download, its SHA-256 fingerprint)."""

from __future__ import annotations

from typing import Any

from litestar import Response, get, post
from litestar.params import FromPath
from litestar.response import Template

from gateway.errors import ConfigError
from gateway.registry import access, batch
from gateway.registry.access import AnyRequest
from gateway.registry.ca import CertificateAuthority
from gateway.registry.pages.common import caller_of, flash, labels_from_text, page, show, store_of
from gateway.resources.durations import Duration
from gateway.webkit.pages import form_fields, see_other

NODE_DATA_DIR = "/var/lib/fieldgate"  # where the appliance keeps a gateway's data (and `fieldgate join` writes)


def colon_hex(fingerprint: str) -> str:
    """`AB:CD:…`, as browsers show a certificate's SHA-256 fingerprint."""
    return ":".join(fingerprint[i:i + 2] for i in range(0, len(fingerprint), 2)).upper()


def registry_url(request: AnyRequest) -> str:
    """The registry's URL as this browser reached it, which is the one its nodes reach too, most often."""
    return str(request.base_url).rstrip("/")


async def _join_page(request: AnyRequest, template: str = "join.html", *, created: dict[str, Any] | None = None,
                     problem: str = "", status_code: int = 200, form: dict[str, str] | None = None) -> Template:
    store, caller = store_of(request), caller_of(request)
    ca: CertificateAuthority = request.app.state.ca
    visible = [name for name in await access.workspaces(store) if caller.sees(name)]
    return show(request, template, status_code=status_code, created=created, problem=problem, workspaces=visible,
                tokens=await access.join_tokens(store, caller),
                batches=[b for b in await batch.list_batches(store) if caller.sees(b["workspace"])],
                url=registry_url(request), fingerprint=ca.fingerprint, fingerprint_colons=colon_hex(ca.fingerprint),
                data_dir=NODE_DATA_DIR, form=form or {})


@get(["/join", "/join-tokens"], summary="Join nodes: a join token or a batch bundle, the commands to run on the node, "
     "the join tokens, and how to trust the registry's CA", **page("join.manage"))
async def join_page(request: AnyRequest) -> Template:
    return await _join_page(request)


def _ttl(text: str, field: str) -> float:
    try:
        ttl = float(Duration.parse(text))
    except ValueError as exc:
        raise ConfigError(f"{field}: {exc}") from None
    if ttl <= 0:
        raise ConfigError(f"{field}: expected a positive duration such as 24h")
    return ttl


def _count(text: str, field: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise ConfigError(f"{field}: expected a whole number of 1 or more, got {text!r}")
    return int(text)


@post("/join-tokens", summary="Create a join token; the page shows it once, with the commands to run on the node",
      status_code=200, **page("join.manage", action="create join tokens"))
async def join_token_create(request: AnyRequest) -> Template:
    fields = await form_fields(request)
    try:
        data = access.JoinTokenRequest(workspace=fields.get("workspace") or access.DEFAULT_WORKSPACE,
                                       ttl=_ttl(fields.get("ttl") or "24h", "valid for"),
                                       max_uses=_count(fields.get("max_uses") or "1", "max uses"),
                                       labels=labels_from_text(fields.get("labels", "")),
                                       prefix=fields.get("prefix", "").strip())
        created = await access.new_join_token(request, caller_of(request), data)
    except ConfigError as exc:
        return await _join_page(request, problem=str(exc), status_code=400, form=fields)
    name = fields.get("name", "").strip()
    return await _join_page(request, created={**created, "max_uses": data.max_uses, "name": name,
                                              "prefix": data.prefix}, form=fields)


@post("/join-tokens/{token_id:str}/revoke", summary="Revoke a join token", status_code=303,
      **page("join.manage", action="revoke join tokens"))
async def join_token_revoke(request: AnyRequest, token_id: FromPath[str]) -> Response[Any]:
    await access.revoke_join_token_as(store_of(request), caller_of(request), token_id)
    flash(request, "ok", f"Join token {token_id} revoked.")
    return see_other("/join")


@get("/join/bundle", summary="The batch bundle form: many nodes join with one file", **page("join.manage"))
async def bundle_page(request: AnyRequest) -> Template:
    return await _join_page(request, "bundle.html")


@post("/join/bundle", summary="Create a batch and download its bundle (many nodes join with one file)",
      status_code=200, **page("join.manage", action="create batches"))
async def bundle_create(request: AnyRequest) -> Response[Any]:
    fields = await form_fields(request)
    store, caller = store_of(request), caller_of(request)
    name, workspace = fields.get("name", "").strip(), fields.get("workspace") or access.DEFAULT_WORKSPACE
    labels: dict[str, str] = {}
    try:
        count = _count(fields.get("count") or "1", "nodes")
        ttl = _ttl(fields.get("ttl") or "7d", "valid for")
        labels = labels_from_text(fields.get("labels", ""))
        async with access.audited(store, caller, "batch.create", f"batch/{name}",
                                  access.workspace_scope(workspace)) as entry:
            entry.detail = {"count": count, "labels": labels, "prefix": fields.get("prefix", "")}
            if not caller.sees(workspace) or workspace not in await access.workspaces(store):
                raise ConfigError(f"workspace {workspace!r}: no such workspace")
            bundle = await batch.create_batch(store, request.app.state.ca, name, count=count, ttl=ttl, labels=labels,
                                              prefix=fields.get("prefix", "").strip() or None,
                                              urls=[registry_url(request)], workspace=workspace)
    except ConfigError as exc:
        return await _join_page(request, "bundle.html", problem=str(exc), status_code=400, form=fields)
    return Response(bundle, media_type="application/gzip", headers={
        "Content-Disposition": f'attachment; filename="{name}.tar.gz"', "Cache-Control": "no-store"})


ROUTE_HANDLERS = [join_page, join_token_create, join_token_revoke, bundle_page, bundle_create]
