"""The registry's pages: server-rendered HTML for registry users (login, session cookie, CSRF on every form).

Nodes with their state, one node (info, labels, devices and, when a monitoring module provides them, its plots),
groups, devices across nodes, workloads and one workload (status per node, events, versions with a rollback for
operators, a node's log of it fetched on request, stop / start / restart on one node or on all for operators), join
tokens (admins create and revoke them) and the audit log; every page shows only what lies in the user's scope. The
styles are the local UI's (`gateway/web/static/app.css`).
"""

from __future__ import annotations

import datetime as dt
import inspect
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import Response, get, post
from litestar.datastructures import Cookie
from litestar.enums import MediaType
from litestar.params import FromPath
from litestar.response import File, Redirect
from litestar.types import ExceptionHandlersMap
from markupsafe import Markup

from gateway.errors import AuthError, ConfigError, NotFound
from gateway.registry import access
from gateway.registry.access import AnyRequest, Caller
from gateway.registry.store import RegistryStore
from gateway.resources.durations import Duration
from gateway.web.sessions import LoginLimiter, Session, SessionStore

SESSION_COOKIE = "fieldgate_registry_session"
LOGIN_CSRF_COOKIE = "fieldgate_registry_login_csrf"
CSS = Path(__file__).resolve().parents[1] / "web" / "static" / "app.css"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none';"
                               " base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
# (path, label, role needed to see the link)
NAV = [("/", "Nodes", "viewer"), ("/groups", "Groups", "viewer"), ("/devices", "Devices", "viewer"),
       ("/workloads", "Workloads", "viewer"), ("/join-tokens", "Join tokens", "admin"),
       ("/audit", "Audit log", "admin")]

_templates = Environment(loader=FileSystemLoader(Path(__file__).resolve().parent / "templates"),
                         autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)


def _format_ts(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "\u2013"


def _format_ago(ts: float | None) -> str:
    if not ts:
        return "never"
    seconds = max(time.time() - ts, 0)
    for limit, unit, size in ((90, "s", 1), (5400, "min", 60), (172800, "h", 3600)):
        if seconds < limit:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds / 86400:.0f} d ago"


_templates.filters.update(ts=_format_ts, ago=_format_ago)


class LoginRequired(Exception):
    """A page request without a valid session: answered with a redirect to the login form."""


class PageForbidden(Exception):
    """A page or form the user's role may not use, or a form without the session's CSRF token."""


def initial_state() -> dict[str, Any]:
    return {"page_sessions": SessionStore(), "page_login_limiter": LoginLimiter()}


def _store(request: AnyRequest) -> RegistryStore:
    store: RegistryStore = request.app.state.store
    return store


def _sessions(request: AnyRequest) -> SessionStore:
    sessions: SessionStore = request.app.state.page_sessions
    return sessions


def _html(template: str, *, status_code: int = 200, **context: Any) -> Response[str]:
    return Response(_templates.get_template(template).render({"nav": [], **context}), status_code=status_code,
                    media_type=MediaType.HTML, headers=SECURITY_HEADERS)


def _page(request: AnyRequest, caller: Caller, session: Session, template: str, *, status_code: int = 200,
          **context: Any) -> Response[str]:
    return _html(template, status_code=status_code, user=caller, csrf=session.csrf, path=request.url.path,
                 flashes=session.take_flash(), **{**context, "nav": [n for n in NAV if caller.can(n[2])]})


def _see_other(path: str) -> Redirect:
    return Redirect(path, status_code=303)


async def _fields(request: AnyRequest) -> dict[str, str]:
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str)}


async def session_caller(request: AnyRequest) -> tuple[Caller, Session] | None:
    """The user of the session cookie with its role and scope as stored now; None without a valid session."""
    sid = request.cookies.get(SESSION_COOKIE, "")
    session = _sessions(request).get(sid) if sid else None
    if session is None:
        return None
    try:
        caller = await access.user_caller(_store(request), session.user)
    except AuthError:
        _sessions(request).end(sid)
        return None
    return caller, session


async def _session(request: AnyRequest) -> tuple[Caller, Session]:
    """The user of the session cookie, its role and scope as stored now; a POST must carry the session's CSRF."""
    found = await session_caller(request)
    if found is None:
        raise LoginRequired()
    caller, session = found
    if request.method == "POST":
        sent = (await _fields(request)).get("_csrf", "")
        if not sent or not secrets.compare_digest(sent, session.csrf):
            raise PageForbidden("CSRF token missing or wrong: reload the page and try again")
    return caller, session


def _error(request: AnyRequest, caller: Caller, session: Session, code: int, message: str) -> Response[str]:
    return _page(request, caller, session, "error.html", status_code=code, code=code, message=message)


def _login_required(request: AnyRequest, exc: LoginRequired) -> Response[Any]:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return _see_other("/login" + ("" if target == "/" else f"?next={quote(target, safe='/')}"))


def _forbidden(request: AnyRequest, exc: PageForbidden) -> Response[Any]:
    return _html("error.html", status_code=403, code=403, message=str(exc), user=None, csrf="", flashes=[])


EXCEPTION_HANDLERS: ExceptionHandlersMap = {LoginRequired: _login_required, PageForbidden: _forbidden}


# --- login ----------------------------------------------------------------------------------------------------


def _safe_next(target: str) -> str:
    """Only local paths, so the login form cannot send people elsewhere."""
    return target if target.startswith("/") and not target.startswith(("//", "/\\")) else "/"


def _login_page(request: AnyRequest, *, error: str = "", status_code: int = 200, username: str = "",
                next_path: str = "/") -> Response[str]:
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    response = _html("login.html", status_code=status_code, error=error, username=username,
                     next=_safe_next(next_path), login_csrf=token, user=None, csrf="", flashes=[])
    response.cookies.append(Cookie(key=LOGIN_CSRF_COOKIE, value=token, path="/login", httponly=True,
                                   samesite="strict", secure=True))
    return response


@get("/login", summary="The login form of the registry pages", include_in_schema=False)
async def login_form(request: AnyRequest) -> Response[str]:
    return _login_page(request, next_path=request.query_params.get("next", "/"))


@post("/login", summary="Log in as a registry user", include_in_schema=False, status_code=303)
async def login(request: AnyRequest) -> Response[Any]:
    fields = await _fields(request)
    username, next_path = fields.get("username", "").strip(), fields.get("next", "/")
    cookie_token = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie_token or not secrets.compare_digest(fields.get("_csrf", ""), cookie_token):
        return _login_page(request, error="The form expired: please try again.", status_code=403,
                           username=username, next_path=next_path)
    limiter: LoginLimiter = request.app.state.page_login_limiter
    address = request.client.host if request.client else ""
    keys = (f"address:{address}", f"user:{username.lower()}")
    wait = limiter.blocked_for(*keys)
    if wait > 0:
        response = _login_page(request, error=f"Too many failed logins: wait {wait:.0f} s.", status_code=429,
                               username=username, next_path=next_path)
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    store = _store(request)
    try:
        caller = await access.authenticate_user(store, username, fields.get("password", ""))
    except AuthError:
        limiter.failed(*keys)
        await access.record(store, f"user:{username or '-'}", access.PLATFORM, "user.login", "pages",
                            "refused: wrong user name or password", {"address": address})
        return _login_page(request, error="Wrong user name or password.", status_code=401, username=username,
                           next_path=next_path)
    limiter.succeeded(keys[1])
    old = request.cookies.get(SESSION_COOKIE)
    if old:  # a fresh session id on every login: no session fixation
        _sessions(request).end(old)
    sid, _ = _sessions(request).create(username)
    await access.record(store, caller, str(caller.scope), "user.login", "pages", "ok", {"address": address})
    redirect = _see_other(_safe_next(next_path))
    redirect.cookies.append(Cookie(key=SESSION_COOKIE, value=sid, path="/", httponly=True, samesite="lax",
                                   secure=True))
    redirect.cookies.append(Cookie(key=LOGIN_CSRF_COOKIE, value="", path="/login", max_age=0))
    return redirect


@post("/logout", summary="End the session", include_in_schema=False, status_code=303)
async def logout(request: AnyRequest) -> Redirect:
    await _session(request)
    _sessions(request).end(request.cookies.get(SESSION_COOKIE, ""))
    response = _see_other("/login")
    response.cookies.append(Cookie(key=SESSION_COOKIE, value="", path="/", max_age=0, httponly=True, secure=True))
    return response


@get("/static/app.css", summary="The pages' styles", include_in_schema=False, media_type="text/css")
async def stylesheet() -> File:
    return File(CSS, content_disposition_type="inline", media_type="text/css")


# --- nodes, groups, devices -----------------------------------------------------------------------------------


@get("/", summary="Nodes with their state", include_in_schema=False)
async def nodes_page(request: AnyRequest) -> Response[str]:
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
async def node_page(request: AnyRequest, name: FromPath[str]) -> Response[str]:
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
async def groups_page(request: AnyRequest) -> Response[str]:
    caller, session = await _session(request)
    return _page(request, caller, session, "groups.html",
                 groups=await access.visible_groups(_store(request), caller))


@get("/devices", summary="Devices across nodes", include_in_schema=False)
async def devices_page(request: AnyRequest) -> Response[str]:
    caller, session = await _session(request)
    store = _store(request)
    status = {node["name"]: node["status"] for node in await access.visible_nodes(store, caller)}
    return _page(request, caller, session, "devices.html", status=status,
                 devices=await access.documents(store, caller, "Device"))


@get("/workloads", summary="Workloads with their status per node", include_in_schema=False)
async def workloads_page(request: AnyRequest) -> Response[str]:
    from gateway.registry.workloads import workload_views

    caller, session = await _session(request)
    return _page(request, caller, session, "workloads.html",
                 workloads=await workload_views(_store(request), caller))


PAGE_LOG_TIMEOUT = 5.0  # seconds a node has to answer for the workload page's log panel


async def _workload_page(request: AnyRequest, caller: Caller, session: Session, namespace: str,
                         name: str) -> Response[str]:
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
async def workload_page(request: AnyRequest, namespace: FromPath[str], name: FromPath[str]) -> Response[str]:
    caller, session = await _session(request)
    return await _workload_page(request, caller, session, namespace, name)


@post("/workloads/{namespace:str}/{name:str}/rollback", summary="Apply a kept version again (operators)",
      include_in_schema=False, status_code=303)
async def workload_rollback(request: AnyRequest, namespace: FromPath[str], name: FromPath[str]) -> Response[Any]:
    from gateway.registry import history

    caller, session = await _session(request)
    if not caller.can("operator"):
        raise PageForbidden(f"the {caller.role} role cannot roll back; operator or admin can")
    fields = await _fields(request)
    raw, kind, source = fields.get("version", ""), fields.get("kind", ""), fields.get("source", "")
    try:
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigError(f"rollback: version: expected a version number, got {raw!r}")
        done = await history.rollback(_store(request), caller, kind, namespace, source, int(raw))
    except NotFound as exc:
        return _error(request, caller, session, 404, str(exc))
    except ConfigError as exc:
        session.flash.append(("error", str(exc)))
        return _see_other(f"/workloads/{quote(namespace)}/{quote(name)}")
    session.flash.append(("ok", f"{kind} {namespace}/{source} rolled back to version {raw}: now version "
                                f"{done['version']}." if done["changed"] else
                          f"{kind} {namespace}/{source} runs version {raw}'s spec already."))
    return _see_other(f"/workloads/{quote(namespace)}/{quote(name)}")


@post("/workloads/{namespace:str}/{name:str}/action", summary="Stop, start or restart a workload on one node or "
      "on all of its nodes (operators)", include_in_schema=False, status_code=303)
async def workload_action(request: AnyRequest, namespace: FromPath[str], name: FromPath[str]) -> Response[Any]:
    from gateway.registry import lifecycle, logs

    caller, session = await _session(request)
    fields = await _fields(request)
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
    return _see_other(f"/workloads/{quote(namespace)}/{quote(name)}")


# --- join tokens and the audit log (admins) -------------------------------------------------------------------


async def _admin(request: AnyRequest) -> tuple[Caller, Session]:
    caller, session = await _session(request)
    if not caller.can("admin"):
        raise PageForbidden(f"the {caller.role} role cannot see this page; admin can")
    return caller, session


async def _tokens_page(request: AnyRequest, caller: Caller, session: Session, *, created: str = "",
                       problem: str = "", status_code: int = 200) -> Response[str]:
    store = _store(request)
    visible = [name for name in await access.workspaces(store) if caller.sees(name)]
    return _page(request, caller, session, "join_tokens.html", status_code=status_code, created=created,
                 problem=problem, workspaces=visible, tokens=await access.join_tokens(store, caller))


@get("/join-tokens", summary="Join tokens", include_in_schema=False)
async def join_tokens_page(request: AnyRequest) -> Response[str]:
    caller, session = await _admin(request)
    return await _tokens_page(request, caller, session)


@post("/join-tokens", summary="Create a join token", include_in_schema=False, status_code=200)
async def join_token_create(request: AnyRequest) -> Response[str]:
    caller, session = await _admin(request)
    fields = await _fields(request)
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
    return _see_other("/join-tokens")


@get("/audit", summary="The audit log", include_in_schema=False)
async def audit_page(request: AnyRequest) -> Response[str]:
    caller, session = await _admin(request)
    return _page(request, caller, session, "audit.html",
                 entries=await access.audit_entries(_store(request), caller, limit=200))


ROUTE_HANDLERS = [login_form, login, logout, stylesheet, nodes_page, node_page, groups_page, devices_page,
                  workloads_page, workload_page, workload_rollback, workload_action, join_tokens_page,
                  join_token_create, join_token_revoke, audit_page]
