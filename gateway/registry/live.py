"""The registry pages' live data, for a page session (401 without one): the nodes' states as a stream the node list
and the overview follow without reload, and a node's resource samples for its plots.

`GET /events/nodes`: server-sent events (gateway.webkit.live: bounded per session, ended at logout) named
`update`, every `NODES_EVERY` seconds something changed: `counts` (`total`, and per state `healthy`, `offline`,
`joined`, and `paused`) and `nodes` rows by name (`status`, `reason`, `version`, `last_heartbeat`, `workspace`,
`group`, `paused`) — all of them in the first event, the changed ones after, `removed` naming nodes gone — of the
nodes in the user's scope as it is now. Every stream reads the same snapshot of the store, taken at most once per
`NODES_EVERY` seconds however many pages are open, so it works the same on every replica and never touches the
heartbeat path.

`GET /nodes/{name}/metrics?window=15m|1h|6h|24h`: a node's per-minute samples (gateway.registry.monitoring) for
webkit/static/plot.js; `GET /nodes/{name}/apps/metrics?window=` and `GET /workloads/{namespace}/{name}/metrics?window=`
the same of the app instances on a node and of a workload's instances.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from litestar import get
from litestar.exceptions import NotAuthorizedException
from litestar.params import FromPath, FromQuery
from litestar.response import ServerSentEvent

from gateway.errors import AuthError, ConfigError
from gateway.registry import access
from gateway.registry.access import AnyRequest, Caller
from gateway.registry.pages.nodes import PLOT_WINDOWS
from gateway.registry.store import RegistryStore
from gateway.webkit.live import SSE_OPT, Snapshot, changes
from gateway.webkit.sessions import BrowserSessions, Session

# the role these routes need, for the generated docs: any user with a page session (they check it themselves, with
# a 401 rather than the page guard's redirect to the login form)
SESSION_ROLE = {"session_role": "viewer"}
NODES_EVERY = 2.0
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
     include_in_schema=False, opt={**SSE_OPT, **SESSION_ROLE})
async def nodes_events(request: AnyRequest) -> ServerSentEvent:
    sid, session, caller = await _page_session(request)
    sessions: BrowserSessions = request.app.state.page_sessions
    store: RegistryStore = request.app.state.store
    states = node_states(request)
    seen = {"caller": caller}

    async def allowed() -> bool:  # the session still open and its user still there, with the scope it has now
        if sessions.store.peek(sid) is None:
            return False
        try:
            seen["caller"] = await access.user_caller(store, session.user)
        except AuthError:
            return False
        return True

    async def snapshot() -> Snapshot:
        return nodes_snapshot(await states.current(store), seen["caller"])

    return sessions.live.respond(sid, changes(snapshot, NODES_EVERY, "update", VOLATILE), allowed)


@get("/nodes/{name:str}/metrics", summary="A node's resource samples for its plots (page session)",
     include_in_schema=False, opt=SESSION_ROLE)
async def node_metrics_page(request: AnyRequest, name: FromPath[str], window: FromQuery[str] = "24h"
                            ) -> dict[str, Any]:
    from gateway.registry.monitoring import node_samples

    _, _, caller = await _page_session(request)
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
     include_in_schema=False, opt=SESSION_ROLE)
async def node_apps_metrics_page(request: AnyRequest, name: FromPath[str], window: FromQuery[str] = "24h"
                                 ) -> dict[str, Any]:
    from gateway.registry.monitoring import app_samples

    _, _, caller = await _page_session(request)
    seconds = _window(window)
    store: RegistryStore = request.app.state.store
    await access.check_node_in_scope(store, caller, name)
    now = time.time()
    return {**await app_samples(store, now - seconds, node=name), "since": now - seconds, "until": now}


@get("/workloads/{namespace:str}/{name:str}/metrics", summary="The resources of a workload's instances for its "
     "plots (page session)", include_in_schema=False, opt=SESSION_ROLE)
async def workload_metrics_page(request: AnyRequest, namespace: FromPath[str], name: FromPath[str],
                                window: FromQuery[str] = "24h") -> dict[str, Any]:
    from gateway.registry.monitoring import app_samples, workload_nodes

    _, _, caller = await _page_session(request)
    seconds = _window(window)
    store: RegistryStore = request.app.state.store
    nodes = await workload_nodes(store, caller, namespace, name)
    now = time.time()
    return {**await app_samples(store, now - seconds, workload=f"{namespace}/{name}", nodes=nodes),
            "since": now - seconds, "until": now}


ROUTE_HANDLERS = [nodes_events, node_metrics_page, node_apps_metrics_page, workload_metrics_page]
