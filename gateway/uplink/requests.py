"""The node's answers to requests of the registry: they come as messages in the `_fieldgate` namespace on the node's
message long-poll (gateway.uplink.client) and are answered over mutual TLS at `POST /api/v1/nodes/self/answers/<id>`:
this process's recent log, the last lines of a registry-owned workload, or the stop, start or restart of one (a
workload the node did not get from the registry is refused: its own workloads are changed on the node)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import httpx
import msgspec

from gateway import __version__
from gateway.decoding import decode_json
from gateway.errors import ConfigError, FieldgateError, NotFound
from gateway.logs import LogQuery, log_ring
from gateway.wire import (
    LOGS_PATH,
    MAX_ANSWER,
    MAX_TAIL,
    WORKLOAD_ACTION_PATH,
    WORKLOAD_ACTIONS,
    WORKLOAD_LOGS_PATH,
    WorkloadActionRequest,
    WorkloadLogRequest,
)

if TYPE_CHECKING:
    from gateway.api import GatewayAPI

log = logging.getLogger(__name__)


async def answer_request(client: httpx.AsyncClient, request_id: str, payload: bytes, path: str = LOGS_PATH,
                         gateway: GatewayAPI | None = None) -> None:
    """Answer a request from the registry (this process's log ring, a workload's log, a workload action) and post
    the answer back."""
    body = await request_answer(payload, path, gateway)
    response = await client.post(f"/api/v1/nodes/self/answers/{request_id}", content=body,
                                 headers={"Content-Type": "application/json"})
    if response.status_code != 200:
        log.info("the registry did not take the answer to its %s request %s: %s %s", path, request_id,
                 response.status_code, response.text.strip()[:200])


async def request_answer(payload: bytes, path: str, gateway: GatewayAPI | None) -> bytes:
    """The JSON answer to a request from the registry (over HTTPS or the channel); a refusal as `{"error": …}`."""
    try:
        if path == WORKLOAD_LOGS_PATH and gateway is not None:
            body = _workload_log(gateway, payload)
        elif path == WORKLOAD_ACTION_PATH and gateway is not None:
            body = await perform_action(gateway, payload)
        elif path == LOGS_PATH:
            params = decode_json(payload, dict[str, str], what="a log request")
            body = msgspec.json.encode(log_ring().query(LogQuery.parse(params)))
        else:
            raise ConfigError(f"unknown request {path!r} (this node runs fieldgate {__version__})")
    except (msgspec.DecodeError, msgspec.ValidationError, FieldgateError) as exc:
        body = msgspec.json.encode({"error": str(exc)})
    if len(body) > MAX_ANSWER:
        body = msgspec.json.encode({"error": f"the answer has {len(body)} bytes, more than {MAX_ANSWER}: ask for "
                                             "fewer lines"})
    return body


def _workload_log(gateway: GatewayAPI, payload: bytes) -> bytes:
    """The answer to a workload log request: the lines of a registry-owned workload of this node."""
    request = decode_json(payload, WorkloadLogRequest, what="a workload log request")
    namespace, _, name = request.workload.partition("/")
    runner = gateway.workloads.runners.get(request.workload)
    if runner is None or gateway.resources.resource_owner("Workload", namespace, name) != "registry":
        raise NotFound(f"no workload {request.workload} from the registry runs here")
    if not 0 <= request.tail <= MAX_TAIL:
        raise ConfigError(f"tail {request.tail}: expected 0 to {MAX_TAIL}")
    workload_log = gateway.workloads.log(namespace, name)
    lines = workload_log.read(tail=request.tail, instance=request.instance, container=request.container)
    return msgspec.json.encode({"lines": [msgspec.structs.asdict(line) for line in lines],
                                "cursor": lines[-1].seq if lines else workload_log.seq})


async def perform_action(gateway: GatewayAPI, payload: bytes) -> bytes:
    """The answer to a workload action: done on a registry-owned workload of this node, refused for any other."""
    request = decode_json(payload, WorkloadActionRequest, what="a workload action")
    namespace, _, name = request.workload.partition("/")
    if request.action not in WORKLOAD_ACTIONS:
        raise ConfigError(f"workload action {request.action!r}: expected stop, start or restart")
    manager = gateway.workloads
    runner = manager.runners.get(request.workload)
    if runner is None or gateway.resources.resource_owner("Workload", namespace, name) != "registry":
        raise NotFound(f"no workload {request.workload} from the registry runs here (this node's own workloads are "
                       "changed on the node)")
    actor = f"registry:{request.actor}"
    changed = True
    if request.action == "stop":
        changed = not runner.stopped_by_user
        if changed:
            await manager.stop_workload(namespace, name, actor=actor)
    elif request.action == "start":
        changed = await manager.start_workload(namespace, name, actor=actor)
    else:
        await manager.restart_workload(namespace, name, actor=actor)
    described = runner.describe()
    return msgspec.json.encode({
        "workload": request.workload, "action": request.action, "changed": changed, "status": described["status"],
        "reason": described["reason"], "version": described["version"],
        "instances": [{"id": i["id"], "state": i["state"], "pid": i["pid"]} for i in described["instances"]]})
