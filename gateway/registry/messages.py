"""REST → edge messages on the registry.

`POST /api/v1/messages/<node>/<ns>/<path>` (a bearer API token, operator or admin, whose scope covers the node's
workspace: 404 otherwise, as for a missing node; audited) queues a message for the node with a TTL (`?ttl=`,
default 1h); `?offline=reject` refuses it with 503 when the node does not heartbeat. The node long-polls
`GET /api/v1/nodes/self/messages?wait=…` over mutual TLS, hands each message to its rest routes and acknowledges
it (`POST /api/v1/nodes/self/messages/ack`), which deletes it. A post wakes the node's waiting poll through the
database's notifications: in-process on SQLite, PostgreSQL NOTIFY across registry replicas.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

from litestar import Response, get, post
from litestar.exceptions import HTTPException
from litestar.params import FromPath, JSONBody

from gateway.errors import ConfigError, NotFound
from gateway.registry.access import node_workspace, record, require_caller, workspace_scope
from gateway.registry.auth import AnyRequest, client_node, store_of
from gateway.resources.durations import Duration
from gateway.wire import MAX_MESSAGE, AckRequest

CHANNEL = "fieldgate_messages"
DEFAULT_TTL = 3600.0
MAX_WAIT = 60.0


class Waiters:
    """One event per node with a waiting long-poll; `wake(node)` is the database notification's listener."""

    def __init__(self) -> None:
        self.events: dict[str, asyncio.Event] = collections.defaultdict(asyncio.Event)
        self.closing = False

    def wake(self, node: str) -> None:
        event = self.events.get(node)
        if event is not None:
            event.set()

    def close(self) -> None:
        """Answer every waiting poll now: the server is shutting down."""
        self.closing = True
        for event in self.events.values():
            event.set()


def query_seconds(param: str, raw: str) -> float:
    """A duration query parameter in seconds; a ConfigError names `param` (`?name` or `?name=value`) when bad."""
    try:
        return float(Duration.parse(raw))
    except ValueError as exc:
        raise ConfigError(f"{param}: {exc}") from None


def _seconds(name: str, raw: str | None, default: float, maximum: float | None = None) -> float:
    if raw is None:
        return default
    seconds = query_seconds(f"?{name}", raw)
    return min(seconds, maximum) if maximum is not None else seconds


@post("/api/v1/messages/{node:str}/{namespace:str}/{path:path}", summary="Send a message to a node's rest routes",
      status_code=202, request_max_body_size=MAX_MESSAGE)
async def post_message(request: AnyRequest, node: FromPath[str], namespace: FromPath[str],
                       path: FromPath[str]) -> Response[dict[str, Any]]:
    caller = await require_caller(request, "messages.send")
    store = store_of(request)
    ttl = _seconds("ttl", request.query_params.get("ttl"), DEFAULT_TTL)
    offline = request.query_params.get("offline", "queue")
    if offline not in ("queue", "reject"):
        raise ConfigError(f"?offline={offline}: expected queue or reject")
    target = f"node/{node}/{namespace}/{path.strip('/')}"
    workspace = await node_workspace(store, node)
    if workspace is None or not caller.sees(workspace):  # the same answer for a node outside the token's scope
        await record(store, caller, str(caller.scope), "message.post", target, "not found")
        raise NotFound(f"no node {node}")
    online = await store.node_online(node)  # NotFound: 404 by the app's exception handler
    if not online and offline == "reject":
        await record(store, caller, workspace_scope(workspace), "message.post", target, "refused: offline")
        raise HTTPException(status_code=503, detail=f"node {node} is offline")
    queued = await store.queue_message(node, namespace, path.strip("/"), await request.body(), ttl)
    await store.database.notify(CHANNEL, node)
    await record(store, caller, workspace_scope(workspace), "message.post", target, "ok",
                 {"id": queued["id"], "ttl": ttl})
    return Response({**queued, "node": node, "status": "sent" if online else "queued"}, status_code=202)


@get("/api/v1/nodes/self/messages", summary="The calling node's pending messages; waits up to ?wait= for one")
async def node_messages(request: AnyRequest) -> list[dict[str, Any]]:
    node = await client_node(request)
    store = store_of(request)
    waiters: Waiters = request.app.state.waiters
    deadline = time.monotonic() + _seconds("wait", request.query_params.get("wait"), 0.0, MAX_WAIT)
    event = waiters.events[node]
    while True:
        event.clear()  # before reading, so a post between the read and the wait still wakes this poll
        messages = await store.pending_messages(node)
        remaining = deadline - time.monotonic()
        if messages or remaining <= 0 or waiters.closing:
            return messages
        try:
            await asyncio.wait_for(event.wait(), remaining)
        except TimeoutError:
            return []


@post("/api/v1/nodes/self/messages/ack", summary="Acknowledge messages the calling node has taken", status_code=200)
async def ack_messages(request: AnyRequest, data: JSONBody[AckRequest]) -> dict[str, int]:
    node = await client_node(request)
    return {"deleted": await store_of(request).ack_messages(node, data.ids)}


ROUTE_HANDLERS = [post_message, node_messages, ack_messages]
