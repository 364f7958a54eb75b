"""The registry pages' live data, for a page session (401 without one): the nodes' states as a stream the node list
follows without reload, the overview's numbers and alerts, an upgrade task's progress, and a node's resource samples
for its plots.

`GET /events/nodes`: server-sent events (gateway.webkit.live: bounded per session, ended at logout) named
`update`, every `NODES_EVERY` seconds something changed: `counts` (`total`, and per state `healthy`, `offline`,
`joined`, and `paused`) and `nodes` rows by name (`status`, `reason`, `version`, `last_heartbeat`, `workspace`,
`group`, `paused`) — all of them in the first event, the changed ones after, `removed` naming nodes gone — of the
nodes in the user's scope as it is now. Every stream reads the same snapshot of the store, taken at most once per
`NODES_EVERY` seconds however many pages are open, so it works the same on every replica and never touches the
heartbeat path.

`GET /events/overview`: events `update` every `OVERVIEW_EVERY` seconds something changed, of what the overview shows
in the user's scope: `counts` (the nodes, as above), `apps` (`running`, `failed`, `total` placed instances),
`devices` (`online`, `not_online`, `total`), `upgrades` (`open`, `total`) and `alerts` (the list of the newest, each
`at`, `when`, `kind`, `subject`, `href`, `reason`). The fleet is read at most once per `OVERVIEW_EVERY` seconds for
all streams together and filtered per user.

`GET /events/upgrades/{task}`: events `update` every `TASK_EVERY` seconds the task changed: `task` (`state`,
`open`: still running or stopping, `finished`), `phases` (nodes pending, running, done, failed, cancelled) and
`nodes` rows by node (`phase`, `status`, `reason`, `log`, `has_log`, `started`, `finished`); 404 for a task outside
the user's scope, and the stream ends when the task is gone.

`GET /nodes/{name}/metrics?window=15m|1h|6h|24h`: a node's per-minute samples (gateway.registry.monitoring) for
webkit/static/plot.js; `GET /nodes/{name}/apps/metrics?window=` and `GET /workloads/{namespace}/{name}/metrics?window=`
the same of the app instances on a node and of a workload's instances.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from litestar import get
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.params import FromPath, FromQuery
from litestar.response import ServerSentEvent

from gateway.errors import AuthError, ConfigError, NotFound
from gateway.registry import access, twins, upgrades
from gateway.registry.access import AnyRequest, Caller
from gateway.registry.pages.nodes import PLOT_WINDOWS
from gateway.registry.pages.overview import alerts, figures
from gateway.registry.pages.upgrades import PHASE_NAMES, phase
from gateway.registry.store import RegistryStore
from gateway.registry.workloads import workload_views
from gateway.webkit.live import SSE_OPT, Snapshot, changes
from gateway.webkit.sessions import BrowserSessions, Session
from gateway.webkit.templating import format_ts

# the permission these routes need, for the generated docs: a user with a page session whose role holds it (they
# check it themselves, with a 401 or 403 rather than the page guard's redirect to the login form)
SESSION_PERMISSION = {"session_permission": "nodes.read"}
NODES_EVERY = 2.0
OVERVIEW_EVERY = 3.0  # the overview reads every workload, device and task of the fleet: a little less often
TASK_EVERY = 2.0
NODE_STATES = ("healthy", "offline", "joined")
# how long ago the last heartbeat was, in words: it changes on every read, so on its own it is no change
VOLATILE = frozenset({"reason"})


class NodeStates:
    """The nodes as the store has them, read at most once per `every` seconds for all streams together."""

    def __init__(self, every: float = NODES_EVERY) -> None:
        self.every = every
        self._read_at = -every
        self._nodes: list[dict[str, Any]] = []
        self._lock = asyncio.Lock()

    async def current(self, store: RegistryStore) -> list[dict[str, Any]]:
        async with self._lock:
            if time.monotonic() - self._read_at >= self.every * 0.9:  # streams wake a little apart
                self._nodes = await store.nodes()
                self._read_at = time.monotonic()
            return self._nodes


def node_states(request: AnyRequest) -> NodeStates:
    states: NodeStates | None = getattr(request.app.state, "live_node_states", None)
    if states is None:
        states = request.app.state.live_node_states = NodeStates()
    return states


def nodes_snapshot(nodes: list[dict[str, Any]], caller: Caller) -> Snapshot:
    """The counts and rows of the nodes `caller` sees."""
    counts = dict.fromkeys(("total", *NODE_STATES, "paused"), 0)
    rows: dict[str, Any] = {}
    for node in nodes:
        if not caller.sees(node.get("workspace")):
            continue
        counts["total"] += 1
        counts[node["status"]] = counts.get(node["status"], 0) + 1
        counts["paused"] += bool(node.get("paused"))
        rows[node["name"]] = {key: node.get(key) for key in ("status", "reason", "version", "last_heartbeat",
                                                             "workspace", "group", "paused")}
    return {"counts": counts, "nodes": rows}


def _needs(caller: Caller, permission: str) -> None:
    if not caller.can(permission):
        raise PermissionDeniedException(access.refusal(caller, (permission,)))


class Fleet(msgspec.Struct):
    """What the overview counts, for every scope: nodes, placed workloads, devices and upgrade tasks."""

    nodes: list[dict[str, Any]]
    placed: list[dict[str, Any]]
    devices: list[dict[str, Any]]
    tasks: list[dict[str, Any]]


class FleetStates:
    """The fleet as the store has it, read at most once per `every` seconds for all overview streams together."""

    def __init__(self, every: float = OVERVIEW_EVERY) -> None:
        self.every = every
        self._read_at = -every
        self._fleet = Fleet([], [], [], [])
        self._lock = asyncio.Lock()

    async def current(self, store: RegistryStore) -> Fleet:
        async with self._lock:
            if time.monotonic() - self._read_at >= self.every * 0.9:
                self._fleet = Fleet(await store.nodes(),
                                    [view for view in await workload_views(store) if view["node"]],
                                    await twins.device_views(store), await upgrades.task_views(store))
                self._read_at = time.monotonic()
            return self._fleet


def fleet_states(request: AnyRequest) -> FleetStates:
    states: FleetStates | None = getattr(request.app.state, "live_fleet_states", None)
    if states is None:
        states = request.app.state.live_fleet_states = FleetStates()
    return states


def overview_snapshot(fleet: Fleet, caller: Caller) -> Snapshot:
    """The overview's numbers and alerts in `caller`'s scope, as the page renders them."""
    # each figure only for a role that may see what it counts, as the page does
    seen = {node["name"] for node in fleet.nodes if caller.sees(node.get("workspace"))}
    nodes = [node for node in fleet.nodes if node["name"] in seen] if caller.can("nodes.read") else []
    placed = [view for view in fleet.placed if view["node"] in seen] if caller.can("apps.read") else []
    devices = [view for view in fleet.devices if view["node"] in seen] if caller.can("devices.read") else []
    tasks = ([task for task in fleet.tasks if caller.sees(task["workspace"])] if caller.can("upgrades.read")
             else [])
    shown = figures(nodes, placed, devices, tasks)
    return {"counts": nodes_snapshot(nodes, caller)["counts"], "apps": shown["apps"], "devices": shown["devices"],
            "upgrades": shown["upgrades"],
            "alerts": [{**alert, "when": format_ts(alert["at"], utc=True)} for alert in alerts(nodes, placed, devices)]}


def task_snapshot(view: dict[str, Any]) -> Snapshot:
    """An upgrade task's state, its nodes per phase and each node's row, as the task page shows them."""
    phases = dict.fromkeys(PHASE_NAMES, 0)
    rows: dict[str, Any] = {}
    for node in view["nodes"]:
        shown = phase(node["status"])
        phases[shown] += 1
        rows[node["node"]] = {"phase": shown, "status": node["status"], "reason": node["reason"],
                              "log": node["log"] or "", "has_log": bool(node["log"]),
                              "started": format_ts(node["started_at"], utc=True),
                              "finished": format_ts(node["finished_at"], utc=True)}
    return {"task": {"state": view["state"], "open": view["state"] in upgrades.UNFINISHED,
                     "finished": format_ts(view["finished_at"], utc=True)},
            "phases": phases, "nodes": rows}


async def _page_session(request: AnyRequest) -> tuple[str, Session, Caller]:
    """The page session of the request and its user as stored now; 401 without a valid one."""
    sessions: BrowserSessions = request.app.state.page_sessions
    current = sessions.current(request)
    if current is None:
        raise NotAuthorizedException("log in to the registry pages first")
    sid, session = current
    try:
        caller = await access.user_caller(request.app.state.store, session.user)
    except AuthError:
        sessions.store.end(sid)
        raise NotAuthorizedException("the user of this session no longer exists") from None
    return sid, session, caller


@get("/events/nodes", summary="Live states of the nodes in the user's scope (SSE, page session)",
     include_in_schema=False, opt={**SSE_OPT, **SESSION_PERMISSION})
async def nodes_events(request: AnyRequest) -> ServerSentEvent:
    sid, session, caller = await _page_session(request)
    _needs(caller, "nodes.read")
    sessions: BrowserSessions = request.app.state.page_sessions
    store: RegistryStore = request.app.state.store
    states = node_states(request)
    seen, allowed = _follow(request, sid, session, caller)

    async def snapshot() -> Snapshot:
        return nodes_snapshot(await states.current(store), seen["caller"])

    return sessions.live.respond(sid, changes(snapshot, NODES_EVERY, "update", VOLATILE), allowed)


def _follow(request: AnyRequest, sid: str, session: Session,
            caller: Caller) -> tuple[dict[str, Caller], Callable[[], Awaitable[bool]]]:
    """The caller as it is now (`seen["caller"]`), and the `allowed` check of a stream: the session still open
    and its user still there, with the scope it has now."""
    sessions: BrowserSessions = request.app.state.page_sessions
    store: RegistryStore = request.app.state.store
    seen = {"caller": caller}

    async def allowed() -> bool:
        if sessions.store.peek(sid) is None:
            return False
        try:
            seen["caller"] = await access.user_caller(store, session.user)
        except AuthError:
            return False
        return True

    return seen, allowed


@get("/events/overview", summary="Live numbers and alerts of the overview in the user's scope (SSE, page session)",
     include_in_schema=False, opt={**SSE_OPT, "session_permission": "session"})
async def overview_events(request: AnyRequest) -> ServerSentEvent:
    sid, session, caller = await _page_session(request)
    sessions: BrowserSessions = request.app.state.page_sessions
    store: RegistryStore = request.app.state.store
    states = fleet_states(request)
    seen, allowed = _follow(request, sid, session, caller)

    async def snapshot() -> Snapshot:
        return overview_snapshot(await states.current(store), seen["caller"])

    return sessions.live.respond(sid, changes(snapshot, OVERVIEW_EVERY, "update", VOLATILE), allowed)


@get("/events/upgrades/{task:str}", summary="Live progress of an upgrade task, node by node (SSE, page session)",
     include_in_schema=False, opt={**SSE_OPT, "session_permission": "upgrades.read"})
async def upgrade_events(request: AnyRequest, task: FromPath[str]) -> ServerSentEvent:
    sid, session, caller = await _page_session(request)
    _needs(caller, "upgrades.read")
    sessions: BrowserSessions = request.app.state.page_sessions
    store: RegistryStore = request.app.state.store
    await upgrades.task_view(store, task, caller)  # 404 outside the user's scope, before the stream starts
    seen, allowed = _follow(request, sid, session, caller)

    async def snapshot() -> Snapshot | None:
        try:
            return task_snapshot(await upgrades.task_view(store, task, seen["caller"]))
        except NotFound:
            return None  # gone, or out of the user's scope now: the stream ends

    return sessions.live.respond(sid, changes(snapshot, TASK_EVERY, "update"), allowed)


@get("/nodes/{name:str}/metrics", summary="A node's resource samples for its plots (page session)",
     include_in_schema=False, opt=SESSION_PERMISSION)
async def node_metrics_page(request: AnyRequest, name: FromPath[str], window: FromQuery[str] = "24h"
                            ) -> dict[str, Any]:
    from gateway.registry.monitoring import node_samples

    _, _, caller = await _page_session(request)
    _needs(caller, "nodes.read")
    seconds = PLOT_WINDOWS.get(window)
    if seconds is None:
        raise ConfigError(f"?window={window}: expected one of {', '.join(PLOT_WINDOWS)}")
    store: RegistryStore = request.app.state.store
    await access.check_node_in_scope(store, caller, name)
    now = time.time()
    return {**await node_samples(store, name, now - seconds), "since": now - seconds, "until": now}


def _window(window: str) -> float:
    seconds = PLOT_WINDOWS.get(window)
    if seconds is None:
        raise ConfigError(f"?window={window}: expected one of {', '.join(PLOT_WINDOWS)}")
    return seconds


@get("/nodes/{name:str}/apps/metrics", summary="The resources of a node's app instances for its plots (page session)",
     include_in_schema=False, opt={"session_permission": "apps.read"})
async def node_apps_metrics_page(request: AnyRequest, name: FromPath[str], window: FromQuery[str] = "24h"
                                 ) -> dict[str, Any]:
    from gateway.registry.monitoring import app_samples

    _, _, caller = await _page_session(request)
    _needs(caller, "apps.read")
    seconds = _window(window)
    store: RegistryStore = request.app.state.store
    await access.check_node_in_scope(store, caller, name)
    now = time.time()
    return {**await app_samples(store, now - seconds, node=name), "since": now - seconds, "until": now}


@get("/workloads/{namespace:str}/{name:str}/metrics", summary="The resources of a workload's instances for its "
     "plots (page session)", include_in_schema=False, opt={"session_permission": "apps.read"})
async def workload_metrics_page(request: AnyRequest, namespace: FromPath[str], name: FromPath[str],
                                window: FromQuery[str] = "24h") -> dict[str, Any]:
    from gateway.registry.monitoring import app_samples, workload_nodes

    _, _, caller = await _page_session(request)
    _needs(caller, "apps.read")
    seconds = _window(window)
    store: RegistryStore = request.app.state.store
    nodes = await workload_nodes(store, caller, namespace, name)
    now = time.time()
    return {**await app_samples(store, now - seconds, workload=f"{namespace}/{name}", nodes=nodes),
            "since": now - seconds, "until": now}


ROUTE_HANDLERS = [nodes_events, overview_events, upgrade_events, node_metrics_page, node_apps_metrics_page,
                  workload_metrics_page]
