"""The registry's pages: server-rendered HTML for registry users (login, session cookie, CSRF on every form).

Nodes with their state, one node (info, labels, devices and, when a monitoring module provides them, its plots),
groups, devices across nodes, workloads and one workload (status per node, events, versions with a rollback for
operators, a node's log of it fetched on request, stop / start / restart on one node or on all for operators), join
tokens (admins create and revoke them) and the audit log; every page shows only what lies in the user's scope. The
layout, login, error page, styles and sessions are the web kit's (`gateway.webkit`), shared with the node's UI.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any
from urllib.parse import quote

from litestar import Response, get, post
from litestar.params import FromPath
from litestar.response import Redirect, Template
from litestar.types import ExceptionHandlersMap
from markupsafe import Markup

from gateway.errors import AuthError, ConfigError, NotFound
from gateway.registry import access
from gateway.registry.access import AnyRequest, Caller
from gateway.registry.store import RegistryStore
from gateway.resources.durations import Duration
from gateway.webkit import pages
from gateway.webkit.login import log_in, log_out, login_page
from gateway.webkit.pages import NavItem, Site, Who, form_fields, login_redirect, see_other
from gateway.webkit.sessions import BrowserSessions, CsrfRefused, Session, check_csrf

SESSION_COOKIE = "fieldgate_registry_session"
LOGIN_CSRF_COOKIE = "fieldgate_registry_login_csrf"
TEMPLATES = Path(__file__).resolve().parent / "templates"
SITE = Site(title="fieldgate registry", name="registry", home="the nodes", login_heading="Registry log in")
NAV = [NavItem("/", "Nodes", "viewer", also=("/nodes/",)), NavItem("/groups", "Groups", "viewer"),
       NavItem("/devices", "Devices", "viewer"), NavItem("/workloads", "Workloads", "viewer"),
       NavItem("/join-tokens", "Join tokens", "admin"), NavItem("/audit", "Audit log", "admin")]


class LoginRequired(Exception):
    """A page request without a valid session: answered with a redirect to the login form."""


class PageForbidden(Exception):
    """A page or form the user's role may not use."""


def initial_state() -> dict[str, Any]:
    # the registry speaks TLS only: its cookies are always Secure
    return {"page_sessions": BrowserSessions(SESSION_COOKIE, LOGIN_CSRF_COOKIE, always_secure=True)}


def _store(request: AnyRequest) -> RegistryStore:
    store: RegistryStore = request.app.state.store
    return store


def _sessions(request: AnyRequest) -> BrowserSessions:
    sessions: BrowserSessions = request.app.state.page_sessions
    return sessions


def _render(request: AnyRequest, template: str, *, status_code: int = 200, caller: Caller | None = None,
            session: Session | None = None, **context: Any) -> Template:
    """A page in the shared layout; anonymous (the login form, a refusal) without `caller` and `session`."""
    who = Who(caller.actor.split(":", 1)[1], f"{caller.role}, {caller.scope}") if caller else None
    return pages.render(request, template, site=SITE, status_code=status_code, user=caller, who=who,
                        session=session, nav=[n for n in NAV if caller and caller.can(n.role)], **context)


def _page(request: AnyRequest, caller: Caller, session: Session, template: str, *, status_code: int = 200,
          **context: Any) -> Template:
    return _render(request, template, status_code=status_code, caller=caller, session=session, **context)


async def session_caller(request: AnyRequest) -> tuple[Caller, Session] | None:
    """The user of the session cookie with its role and scope as stored now; None without a valid session."""
    current = _sessions(request).current(request)
    if current is None:
        return None
    sid, session = current
    try:
        caller = await access.user_caller(_store(request), session.user)
    except AuthError:
        _sessions(request).store.end(sid)
        return None
    return caller, session


async def _session(request: AnyRequest) -> tuple[Caller, Session]:
    """The user of the session cookie, its role and scope as stored now; a form must carry the session's CSRF."""
    found = await session_caller(request)
    if found is None:
        raise LoginRequired()
    caller, session = found
    await check_csrf(request, session)
    return caller, session


def _error(request: AnyRequest, caller: Caller, session: Session, code: int, message: str) -> Template:
    return _page(request, caller, session, "error.html", status_code=code, code=code, message=message)


def _login_required(request: AnyRequest, exc: LoginRequired) -> Response[Any]:
    return login_redirect(request)


def _forbidden(request: AnyRequest, exc: PageForbidden | CsrfRefused) -> Response[Any]:
    message = exc.detail if isinstance(exc, CsrfRefused) else str(exc)
    return _render(request, "error.html", status_code=403, code=403, message=message)


EXCEPTION_HANDLERS: ExceptionHandlersMap = {LoginRequired: _login_required, PageForbidden: _forbidden,
                                            CsrfRefused: _forbidden}


# --- login ----------------------------------------------------------------------------------------------------


@get("/login", summary="The login form of the registry pages", include_in_schema=False)
async def login_form(request: AnyRequest) -> Template:
    return login_page(request, _sessions(request), _render, next_path=request.query_params.get("next", "/"))


@post("/login", summary="Log in as a registry user", include_in_schema=False, status_code=303)
async def login(request: AnyRequest) -> Template | Redirect:
    store = _store(request)

    async def authenticate(username: str, password: str, address: str) -> str:
        try:
            caller = await access.authenticate_user(store, username, password)
        except AuthError:
            await access.record(store, f"user:{username or '-'}", access.PLATFORM, "user.login", "pages",
                                "refused: wrong user name or password", {"address": address})
            raise
        await access.record(store, caller, str(caller.scope), "user.login", "pages", "ok", {"address": address})
        return username

    return await log_in(request, _sessions(request), _render, authenticate)


@post("/logout", summary="End the session", include_in_schema=False, status_code=303)
async def logout(request: AnyRequest) -> Redirect:
    await _session(request)
    sessions = _sessions(request)
    return log_out(request, sessions, request.cookies.get(sessions.cookie))


# --- nodes, groups, devices -----------------------------------------------------------------------------------


@get("/", summary="Nodes with their state", include_in_schema=False)
async def nodes_page(request: AnyRequest) -> Template:
    caller, session = await _session(request)
    return _page(request, caller, session, "nodes.html", nodes=await access.visible_nodes(_store(request), caller))


async def node_plots(store: RegistryStore, name: str) -> Markup:
    """The node's metric plots from `gateway.registry.monitoring.node_plots_html(store, node)` when that module
    exists; nothing otherwise."""
    try:
        from gateway.registry import monitoring  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return Markup("")
    plots_html = getattr(monitoring, "node_plots_html", None)
    if plots_html is None:
        return Markup("")
    html = plots_html(store, name)
    if inspect.isawaitable(html):
        html = await html
    return Markup(str(html))  # the monitoring module renders its own escaped HTML


@get("/nodes/{name:str}", summary="One node: info, labels, devices", include_in_schema=False)
async def node_page(request: AnyRequest, name: FromPath[str]) -> Template:
    caller, session = await _session(request)
    store = _store(request)
    try:
        node = await access.visible_node(store, caller, name)
    except NotFound as exc:
        return _error(request, caller, session, 404, str(exc))
    devices = [d for d in await access.documents(store, caller, "Device") if d["node"] == name]
    return _page(request, caller, session, "node.html", node=node, devices=devices,
                 plots=await node_plots(store, name))


@get("/groups", summary="Node groups", include_in_schema=False)
async def groups_page(request: AnyRequest) -> Template:
    caller, session = await _session(request)
    return _page(request, caller, session, "groups.html",
                 groups=await access.visible_groups(_store(request), caller))


@get("/devices", summary="Devices across nodes", include_in_schema=False)
async def devices_page(request: AnyRequest) -> Template:
    caller, session = await _session(request)
    store = _store(request)
    status = {node["name"]: node["status"] for node in await access.visible_nodes(store, caller)}
    return _page(request, caller, session, "devices.html", status=status,
                 devices=await access.documents(store, caller, "Device"))


@get("/workloads", summary="Workloads with their status per node", include_in_schema=False)
async def workloads_page(request: AnyRequest) -> Template:
    from gateway.registry.workloads import workload_views

    caller, session = await _session(request)
    return _page(request, caller, session, "workloads.html",
                 workloads=await workload_views(_store(request), caller))


PAGE_LOG_TIMEOUT = 5.0  # seconds a node has to answer for the workload page's log panel


async def _workload_page(request: AnyRequest, caller: Caller, session: Session, namespace: str,
                         name: str) -> Template:
    from gateway.registry import history, logs
    from gateway.registry.workloads import workload_views

    store = _store(request)
    placements = [v for v in await workload_views(store, caller) if v["namespace"] == namespace
                  and v["name"] == name]
    if not placements:
        return _error(request, caller, session, 404, f"no workload {namespace}/{name}")
    kind, _, source = (placements[0]["source"] or f"Workload {name}").partition(" ")
    try:
        versions = list(reversed(await history.versions(store, caller, kind, namespace, source)))
    except NotFound:
        versions = []
    events = list(reversed(await history.workload_events(store, caller, namespace, name)))
    query = request.query_params
    panel: dict[str, Any] | None = None
    node, instance = query.get("logs", ""), query.get("instance", "")
    if node:
        panel = {"node": node, "instance": instance, "lines": [], "problem": ""}
        if not any(p["node"] == node for p in placements):
            panel["problem"] = f"workload {namespace}/{name} does not run on node {node}"
        else:
            try:
                answer = await logs.fetch_workload_log(store, request.app.state.log_requests, node, namespace,
                                                       name, instance or None,
                                                       logs.tail_param(query.get("tail")), PAGE_LOG_TIMEOUT)
                panel["lines"] = answer["lines"]
            except (logs.NodeSilent, NotFound, ConfigError) as exc:
                panel["problem"] = str(exc)
    return _page(request, caller, session, "workload.html", namespace=namespace, name=name, kind=kind,
                 source=source, placements=placements, versions=versions, events=events, panel=panel)


@get("/workloads/{namespace:str}/{name:str}", summary="One workload: status per node, events, versions, logs",
     include_in_schema=False)
async def workload_page(request: AnyRequest, namespace: FromPath[str], name: FromPath[str]) -> Template:
    caller, session = await _session(request)
    return await _workload_page(request, caller, session, namespace, name)


@post("/workloads/{namespace:str}/{name:str}/rollback", summary="Apply a kept version again (operators)",
      include_in_schema=False, status_code=303)
async def workload_rollback(request: AnyRequest, namespace: FromPath[str], name: FromPath[str]) -> Response[Any]:
    from gateway.registry import history

    caller, session = await _session(request)
    if not caller.can("operator"):
        raise PageForbidden(f"the {caller.role} role cannot roll back; operator or admin can")
    fields = await form_fields(request)
    raw, kind, source = fields.get("version", ""), fields.get("kind", ""), fields.get("source", "")
    try:
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigError(f"rollback: version: expected a version number, got {raw!r}")
        done = await history.rollback(_store(request), caller, kind, namespace, source, int(raw))
    except NotFound as exc:
        return _error(request, caller, session, 404, str(exc))
    except ConfigError as exc:
        session.flash.append(("error", str(exc)))
        return see_other(f"/workloads/{quote(namespace)}/{quote(name)}")
    session.flash.append(("ok", f"{kind} {namespace}/{source} rolled back to version {raw}: now version "
                                f"{done['version']}." if done["changed"] else
                          f"{kind} {namespace}/{source} runs version {raw}'s spec already."))
    return see_other(f"/workloads/{quote(namespace)}/{quote(name)}")


@post("/workloads/{namespace:str}/{name:str}/action", summary="Stop, start or restart a workload on one node or "
      "on all of its nodes (operators)", include_in_schema=False, status_code=303)
async def workload_action(request: AnyRequest, namespace: FromPath[str], name: FromPath[str]) -> Response[Any]:
    from gateway.registry import lifecycle, logs

    caller, session = await _session(request)
    fields = await form_fields(request)
    action, node = fields.get("action", ""), fields.get("node", "")
    if not caller.can("operator"):
        raise PageForbidden(f"the {caller.role} role cannot {action or 'change'} workloads; operator or admin can")
    requests = request.app.state.log_requests
    try:
        lifecycle.check_action(action)
        if node:
            results = [await lifecycle.act_on_node(_store(request), requests, caller, node, namespace, name, action,
                                                   PAGE_LOG_TIMEOUT)]
        else:
            done = await lifecycle.act_everywhere(_store(request), requests, caller, namespace, name, action,
                                                  PAGE_LOG_TIMEOUT)
            results = done["nodes"]
    except NotFound as exc:
        return _error(request, caller, session, 404, str(exc))
    except logs.NodeSilent as exc:
        results = [{"node": node, "outcome": lifecycle.NO_ANSWER if exc.status == 504 else "error",
                    "detail": str(exc)}]
    for result in results:
        session.flash.append(("ok" if result["outcome"] == "ok" else "error",
                              f"{action} {namespace}/{name} on {lifecycle.describe_outcome(result)}"))
    return see_other(f"/workloads/{quote(namespace)}/{quote(name)}")


# --- join tokens and the audit log (admins) -------------------------------------------------------------------


async def _admin(request: AnyRequest) -> tuple[Caller, Session]:
    caller, session = await _session(request)
    if not caller.can("admin"):
        raise PageForbidden(f"the {caller.role} role cannot see this page; admin can")
    return caller, session


async def _tokens_page(request: AnyRequest, caller: Caller, session: Session, *, created: str = "",
                       problem: str = "", status_code: int = 200) -> Template:
    store = _store(request)
    visible = [name for name in await access.workspaces(store) if caller.sees(name)]
    return _page(request, caller, session, "join_tokens.html", status_code=status_code, created=created,
                 problem=problem, workspaces=visible, tokens=await access.join_tokens(store, caller))


@get("/join-tokens", summary="Join tokens", include_in_schema=False)
async def join_tokens_page(request: AnyRequest) -> Template:
    caller, session = await _admin(request)
    return await _tokens_page(request, caller, session)


@post("/join-tokens", summary="Create a join token", include_in_schema=False, status_code=200)
async def join_token_create(request: AnyRequest) -> Template:
    caller, session = await _admin(request)
    fields = await form_fields(request)
    try:
        labels = {}
        for item in filter(None, (part.strip() for part in fields.get("labels", "").split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"labels: expected k=v,… got {item!r}")
            labels[key.strip()] = value.strip()
        ttl = float(Duration.parse(fields.get("ttl") or "24h"))
        max_uses = int(fields.get("max_uses") or "1")
        data = access.JoinTokenRequest(workspace=fields.get("workspace") or access.DEFAULT_WORKSPACE, ttl=ttl,
                                       max_uses=max_uses, labels=labels)
        if ttl <= 0 or max_uses < 1:
            raise ConfigError("ttl and max uses: expected more than 0")
        created = await access.new_join_token(request, caller, data)
    except (ConfigError, ValueError) as exc:
        return await _tokens_page(request, caller, session, problem=str(exc), status_code=400)
    return await _tokens_page(request, caller, session, created=str(created["token"]))


@post("/join-tokens/{token_id:str}/revoke", summary="Revoke a join token", include_in_schema=False,
      status_code=303)
async def join_token_revoke(request: AnyRequest, token_id: FromPath[str]) -> Response[Any]:
    caller, session = await _admin(request)
    try:
        await access.revoke_join_token_as(_store(request), caller, token_id)
    except NotFound as exc:
        return _error(request, caller, session, 404, str(exc))
    session.flash.append(("ok", f"Join token {token_id} revoked."))
    return see_other("/join-tokens")


@get("/audit", summary="The audit log", include_in_schema=False)
async def audit_page(request: AnyRequest) -> Template:
    caller, session = await _admin(request)
    return _page(request, caller, session, "audit.html",
                 entries=await access.audit_entries(_store(request), caller, limit=200))


ROUTE_HANDLERS = [login_form, login, logout, nodes_page, node_page, groups_page, devices_page,
                  workloads_page, workload_page, workload_rollback, workload_action, join_tokens_page,
                  join_token_create, join_token_revoke, audit_page]
