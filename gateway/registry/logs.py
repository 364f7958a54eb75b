"""A node's recent log, fetched on demand through the registry.

`GET /api/v1/nodes/<node>/logs?<filters>` (a bearer API token, viewer or more) queues a request for the node on
its message long-poll, in a namespace no resource can have (`_fieldgate`), and waits up to `?timeout=` (default
10s) for the answer: 404 for an unknown node, 504 when the node does not answer in time. The node runs the
query on its own ring (the filters of `GET /api/v1/logs` on the gateway) and posts the page back over mutual
TLS to `POST /api/v1/nodes/self/logs/<request>` (or sends it over its channel). With several registry replicas the
node may be linked to another replica than the one whose call waits: the request is a row of `node_requests` in the
shared database, the replica the answer reaches stores it there and notifies (PostgreSQL NOTIFY) with the request
id, and the waiting call reads it at once (or at its next look, once a second, should a notification be lost).

A workload's log comes the same way: `GET /api/v1/nodes/<node>/workloads/<ns>/<name>/logs?instance=&tail=` asks
the node for the last lines of one of its registry-owned workloads (gateway.workloads.logs), and the registry's
workload page shows them. `ask_node()` carries any such request: the stop, start and restart of a workload
(gateway.registry.lifecycle) are asked of the node the same way. A node answers at `POST /api/v1/nodes/self/answers/
<request>` (or `…/logs/<request>`, where nodes of earlier versions post).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import socket
import ssl
import sys
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
from litestar import Response, get, post
from litestar.exceptions import HTTPException
from litestar.params import FromPath

from gateway.decoding import decode_json
from gateway.errors import ConfigError, FieldgateError, NotFound
from gateway.logs import LogQuery
from gateway.registry.access import PLATFORM, Scope, create_api_token, node_workspace, require_caller
from gateway.registry.auth import AnyRequest, client_node, store_of
from gateway.registry.messages import CHANNEL, query_seconds
from gateway.registry.store.requests import ANSWERS_CHANNEL
from gateway.wire import (
    ANSWERS,
    DEFAULT_TAIL,
    LOGS_NAMESPACE,
    LOGS_PATH,
    MAX_ANSWER,
    MAX_TAIL,
    WORKLOAD_LOGS_PATH,
    NodeAnswer,
    WorkloadLogAnswer,
    WorkloadLogRequest,
)

if TYPE_CHECKING:
    from gateway.registry.store import RegistryStore

DEFAULT_TIMEOUT = 10.0
ANSWER_LOOK = 1.0  # seconds between two looks for an answer another replica stored (should its nudge be lost)
MAX_TIMEOUT = 60.0
MAX_CONTAINER_NAME = 63  # a pod's container names are DNS labels


class Pending:
    """A call waiting for a node's answer: the node, what was asked (a key of ANSWERS), the answer when it reaches
    this replica, and a nudge when another replica stored it."""

    def __init__(self, node: str, path: str) -> None:
        self.node = node
        self.path = path
        self.future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.nudged = asyncio.Event()


class LogRequests:
    """Calls waiting for a node's answer on this replica, by request id (the id of the message that carries the
    request); `wake` is the listener of ANSWERS_CHANNEL."""

    def __init__(self) -> None:
        self.waiting: dict[str, Pending] = {}

    def wake(self, request_id: str) -> None:
        pending = self.waiting.get(request_id)
        if pending is not None:
            pending.nudged.set()


class NodeSilent(FieldgateError):
    """A node that did not answer a request in time (504) or refused it (502, `status`)."""

    def __init__(self, message: str, status: int = 504) -> None:
        super().__init__(message)
        self.status = status


def timeout_param(raw: str | None) -> float:
    """`?timeout=`: how long the node has to answer (DEFAULT_TIMEOUT, at most MAX_TIMEOUT)."""
    if raw is None:
        return DEFAULT_TIMEOUT
    seconds = query_seconds(f"?timeout={raw}", raw)
    if not 0 < seconds <= MAX_TIMEOUT:
        raise ConfigError(f"?timeout={raw}: expected more than 0 and at most {MAX_TIMEOUT:g} s")
    return seconds


def _requests(request: AnyRequest) -> LogRequests:
    requests: LogRequests = request.app.state.log_requests
    return requests


def tail_param(raw: str | None) -> int:
    """`?tail=`: how many of the newest lines, 0 to MAX_TAIL."""
    if raw is None or raw == "":
        return DEFAULT_TAIL
    if not raw.isdigit() or int(raw) > MAX_TAIL:
        raise ConfigError(f"?tail={raw}: expected a whole number from 0 to {MAX_TAIL}")
    return int(raw)


async def ask_node(store: RegistryStore, requests: LogRequests, node: str, path: str, payload: bytes,
                   timeout: float) -> dict[str, Any]:
    """Queue a request (`path`: a key of ANSWERS) for a node on its message long-poll and wait for its answer;
    NotFound for an unknown node, NodeSilent when it does not answer in time or refuses. A request the node has not
    fetched when the time is up is withdrawn, so a node that comes back later never acts on it. The answer comes
    straight to this call when the node answers at this replica, else through the database (deliver_answer)."""
    online = await store.node_online(node)
    request_id = secrets.token_hex(8)
    deadline = time.monotonic() + timeout
    pending = Pending(node, path)
    requests.waiting[request_id] = pending
    try:
        await store.requests.open(request_id, node, path, time.time() + timeout)
        await store.queue_message(node, LOGS_NAMESPACE, path, payload, timeout, message_id=request_id)
        await store.database.notify(CHANNEL, node)
        answer = await _answer(store, request_id, pending, deadline)
        if answer is None:
            await store.ack_messages(node, [request_id])  # not fetched in time: the node must not answer it later
            state = "online" if online else "offline, no recent heartbeat"
            raise NodeSilent(f"node {node} did not answer within {timeout:g} s ({state})")
    finally:
        requests.waiting.pop(request_id, None)
        await store.requests.close(request_id)
    error = answer.pop("error", None)
    if error:
        raise NodeSilent(f"node {node}: {error}", 502)
    return answer


async def _answer(store: RegistryStore, request_id: str, pending: Pending, deadline: float) -> dict[str, Any] | None:
    """The node's answer: set here by this replica, or stored by another one (a nudge, else a look every
    ANSWER_LOOK s); None when the deadline passes first."""
    while True:
        pending.nudged.clear()  # before looking, so a nudge meanwhile still ends the wait
        if pending.future.done():
            return pending.future.result()
        stored = await store.requests.answered(request_id)
        if stored is not None:
            answer: dict[str, Any] = json.loads(stored)
            return answer
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        nudge: asyncio.Future[Any] = asyncio.ensure_future(pending.nudged.wait())
        await asyncio.wait([nudge, pending.future], timeout=min(remaining, ANSWER_LOOK),
                           return_when=asyncio.FIRST_COMPLETED)
        nudge.cancel()


async def deliver_answer(store: RegistryStore, requests: LogRequests, node: str, request_id: str,
                         body: bytes) -> Any:
    """Take a node's answer to a request (over HTTPS or its channel): to the call waiting on this replica, else
    stored for the replica whose call waits. The decoded answer; NotFound when no request of this node waits (it
    timed out), ConfigError (naming the answer) when the body is not one."""
    pending = requests.waiting.get(request_id)
    if pending is not None and pending.node == node:
        answer = decode_json(body, ANSWERS[pending.path], what=f"{pending.path} answer")
        if not pending.future.done():
            pending.future.set_result(msgspec.to_builtins(answer))
        return answer
    path = await store.requests.path(request_id, node)
    if path is None or path not in ANSWERS:
        raise NotFound(f"no request {request_id} is waiting for node {node} (it timed out)")
    answer = decode_json(body, ANSWERS[path], what=f"{path} answer")
    if not await store.requests.answer(request_id, node, msgspec.json.encode(answer).decode()):
        raise NotFound(f"no request {request_id} is waiting for node {node} (it timed out)")
    await store.database.notify(ANSWERS_CHANNEL, request_id)
    return answer


async def fetch_workload_log(store: RegistryStore, requests: LogRequests, node: str, namespace: str, name: str,
                             instance: str | None, tail: int, timeout: float, container: str | None = None
                             ) -> dict[str, Any]:
    """The last `tail` lines of a workload (one instance's, one container's of a pod, if named) asked of its node
    now."""
    request = WorkloadLogRequest(workload=f"{namespace}/{name}", instance=instance or None, tail=tail,
                                 container=container or None)
    answer = await ask_node(store, requests, node, WORKLOAD_LOGS_PATH, msgspec.json.encode(request), timeout)
    return {"node": node, "workload": request.workload, "instance": request.instance,
            "container": request.container, **answer}


async def _visible_node(request: AnyRequest, node: str, permission: str) -> RegistryStore:
    caller = await require_caller(request, permission)
    store = store_of(request)
    workspace = await node_workspace(store, node)
    if workspace is None or not caller.sees(workspace):  # the same answer for a node outside the token's scope
        raise NotFound(f"no node {node}")
    return store


@get("/api/v1/nodes/{node:str}/logs", summary="A node's recent log, asked of the node now (?timeout=, filters "
                                              "as the gateway's GET /api/v1/logs)")
async def node_logs(request: AnyRequest, node: FromPath[str]) -> Response[dict[str, Any]]:
    params = dict(request.query_params.items())
    timeout = timeout_param(params.pop("timeout", None))
    query = LogQuery.parse(params)  # refused here, with the parameter named, rather than by the node
    store = await _visible_node(request, node, "nodes.read")
    try:
        answer = await ask_node(store, _requests(request), node, LOGS_PATH, msgspec.json.encode(query.params()),
                                timeout)
    except NodeSilent as exc:
        raise HTTPException(status_code=exc.status, detail=str(exc)) from None
    return Response({"node": node, **answer}, status_code=200)


@get("/api/v1/nodes/{node:str}/workloads/{namespace:str}/{name:str}/logs",
     summary="The last lines of a workload on a node, asked of the node now (?instance=, ?container=, ?tail=, "
             "?timeout=)")
async def node_workload_logs(request: AnyRequest, node: FromPath[str], namespace: FromPath[str],
                             name: FromPath[str]) -> Response[dict[str, Any]]:
    params = request.query_params
    timeout = timeout_param(params.get("timeout"))
    tail = tail_param(params.get("tail"))
    unknown = sorted(set(params) - {"timeout", "tail", "instance", "container"})
    if unknown:
        raise ConfigError(f"?{unknown[0]}: unknown parameter (expected instance, container, tail, timeout)")
    container = params.get("container")
    if container is not None and len(container) > MAX_CONTAINER_NAME:
        raise ConfigError(f"?container: at most {MAX_CONTAINER_NAME} characters")
    store = await _visible_node(request, node, "apps.read")
    if not await store.workloads.runs_on(node, namespace, name):
        raise NotFound(f"no workload {namespace}/{name} on node {node}")
    try:
        answer = await fetch_workload_log(store, _requests(request), node, namespace, name,
                                          params.get("instance"), tail, timeout, container)
    except NodeSilent as exc:
        raise HTTPException(status_code=exc.status, detail=str(exc)) from None
    return Response(answer, status_code=200)


@post(["/api/v1/nodes/self/answers/{request_id:str}", "/api/v1/nodes/self/logs/{request_id:str}"],
      summary="The calling node's answer to a request of the registry (a log, a workload's log or action)",
      status_code=200, request_max_body_size=MAX_ANSWER)
async def node_logs_answer(request: AnyRequest, request_id: FromPath[str]) -> Response[dict[str, Any]]:
    node = await client_node(request)
    # NotFound: 404; ConfigError: 400
    answer = await deliver_answer(store_of(request), _requests(request), node, request_id, await request.body())
    taken = (len(answer.records) if isinstance(answer, NodeAnswer) else len(answer.lines)
             if isinstance(answer, WorkloadLogAnswer) else 1)
    return Response({"accepted": taken}, status_code=200)


ROUTE_HANDLERS = [node_logs, node_workload_logs, node_logs_answer]


# --- `fieldgate registry logs NODE` ----------------------------------------------------------------------------


DEFAULT_URL = "https://127.0.0.1:8443"
CLI_FILTERS = ("level", "device", "route", "sink", "logger", "contains", "since", "limit")


def local_url(recorded: list[str]) -> str:
    """Where `registry serve` last listened, as seen from this machine: a registry that listened on every
    address was recorded under this machine's name, which its certificate may not carry; loopback it is."""
    if not recorded:
        return DEFAULT_URL
    parsed = urllib.parse.urlsplit(recorded[0])
    if parsed.hostname == socket.getfqdn():
        return f"https://127.0.0.1:{parsed.port or 443}"
    return recorded[0]


def print_node_logs(args: argparse.Namespace) -> int:
    """`fieldgate registry logs NODE`: ask the running registry (--registry, else where `registry serve` last
    listened) for a node's recent log and print it."""
    from gateway.registry.batch import known_urls
    from gateway.registry.store import RegistryStore

    params = {key: str(value) for key in CLI_FILTERS if (value := getattr(args, key, None)) not in (None, "")}
    try:
        LogQuery.parse(params)
    except ConfigError as exc:
        raise ConfigError(f"--{str(exc).lstrip('?')}") from None
    url = (args.registry or local_url(known_urls(args.data_dir))).rstrip("/")

    async def fetch() -> dict[str, Any]:
        async with RegistryStore(args.data_dir, args.db) as store:
            return await fetch_node_logs(store, args.data_dir, url, args.node, params, args.token, args.timeout)

    answer = asyncio.run(fetch())
    for record in answer["records"]:
        print(json.dumps(record) if args.json else format_record(record))
    if not answer["records"] and not args.json:
        print(f"no log lines of node {args.node} match", file=sys.stderr)
    return 0


def print_workload_logs(args: argparse.Namespace, namespace: str, name: str) -> int:
    """`fieldgate registry workloads logs [NS/]NAME --node NODE`: a workload's last lines, asked of its node through
    the running registry."""
    from gateway.registry.batch import known_urls
    from gateway.registry.store import RegistryStore

    if not args.node:
        raise ConfigError("workloads logs: expected --node NODE (the node whose instances to read)")
    params = {"tail": str(tail_param(str(args.tail)))} | ({"instance": args.instance} if args.instance else {})
    url = (args.registry or local_url(known_urls(args.data_dir))).rstrip("/")

    async def fetch() -> dict[str, Any]:
        async with RegistryStore(args.data_dir, args.db) as store:
            return await ask_registry(store, args.data_dir, url, f"/api/v1/nodes/{args.node}/workloads/{namespace}/"
                                      f"{name}/logs", params, args.token, args.timeout,
                                      f"fieldgate registry workloads logs {namespace}/{name}")

    answer = asyncio.run(fetch())
    for line in answer["lines"]:
        if args.json:
            print(json.dumps(line))
        else:
            when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(line["ts"])) + "Z"
            print(f"{when} {line['instance']} {line['stream']}: {line['line']}")
    if not answer["lines"] and not args.json:
        print(f"no log lines of {namespace}/{name} on node {args.node}", file=sys.stderr)
    return 0


async def fetch_node_logs(store: RegistryStore, data_dir: Path, url: str, node: str, params: dict[str, str],
                          token: str | None, timeout: float) -> dict[str, Any]:
    """Ask the running registry at `url` for a node's logs; without a token, one made for this call only."""
    return await ask_registry(store, data_dir, url, f"/api/v1/nodes/{node}/logs", params, token, timeout,
                              f"fieldgate registry logs {node}")


async def ask_registry(store: RegistryStore, data_dir: Path, url: str, path: str, params: dict[str, str],
                       token: str | None, timeout: float, description: str, *, method: str = "GET",
                       role: str = "viewer") -> dict[str, Any]:
    """GET (or POST) `path` of the running registry at `url` (which asks a node); without a token, one with `role`
    made for this call only. ConfigError with the registry's reason when it refuses."""
    own_token = token is None
    if token is None:
        token = await create_api_token(store, role, Scope.parse(PLATFORM), description)
    try:
        context = ssl.create_default_context(cafile=str(data_dir / "ca.pem"))
        async with httpx.AsyncClient(base_url=url, verify=context, timeout=timeout + 10,
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            try:
                response = await client.request(method, path, params={**params, "timeout": f"{timeout:g}"})
            except httpx.HTTPError as exc:
                raise ConfigError(f"--registry {url}: {type(exc).__name__}: {exc}") from None
    finally:
        if own_token:
            await store.access.delete_api_token(token.partition(".")[0])
    if response.status_code != 200:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text.strip()[:200]
        raise ConfigError(f"{response.status_code}: {detail}")
    answer: dict[str, Any] = response.json()
    return answer


def format_record(record: dict[str, Any]) -> str:
    """One record as a line (and its traceback, indented), the way `fieldgate run` logs in human format."""
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record["ts"])) + f".{int(record['ts'] % 1 * 1000):03d}Z"
    context = " ".join(f"{key}={record[key]}" for key in ("device", "route", "sink", "plugin") if record.get(key))
    line = f"{when} {record['level'].upper():<8} {record['logger']}: {record['message']}"
    if context:
        line += f"  [{context}]"
    if record.get("exception"):
        line += "\n" + "\n".join("    " + part for part in record["exception"].rstrip().splitlines())
    return line
