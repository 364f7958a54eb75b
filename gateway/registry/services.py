"""Services across the fleet, the registry's half: which instances stand behind each Service (its endpoints), the
documents that carry them to the nodes, and the relay between nodes that cannot reach each other.

Endpoints: a Service selects the Workloads of its namespace by labels (`selector`) or by name (`workload`, which
also takes the per-node Workloads of a BatchWorkload of that name). For each placement of such a workload, the
instances its node last reported become endpoints: node, instance, the node's advertised address for direct streams
(its heartbeat's `mesh`), readiness, and the instance's port for each service port. A Service goes to every node of
its workspace with its endpoints filled in, so its resource version changes when an instance comes, goes or changes
readiness; nodes keep it on disk like every registry document, so they keep their direct paths while the registry is
away.

Relay: a node opens a `relay` stream on its channel naming the node it wants (`{"node": ...}`); the registry opens a
`service` stream to that node's channel (`{"from": ...}`) and copies bytes both ways. What travels is a TLS
connection between the two nodes, made with their own certificates: the registry sees ciphertext only. The two
nodes must belong to the same workspace. When the target's channel is at another replica (and the replicas were
started with `--peer-listen`), the stream goes on to that replica (gateway.registry.peers), which opens the
`service` stream there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import msgspec
from litestar import get

from gateway.channel import ChannelError, Stream, StreamError
from gateway.registry import access
from gateway.registry.auth import AnyRequest, store_of
from gateway.registry.store import RegistryStore
from gateway.registry.workloads import expand
from gateway.resources import versions
from gateway.resources.names import split_namespaced
from gateway.resources.schema import BatchWorkload, Service, ServiceEndpoint, Workload, dec_hook
from gateway.resources.services import instance_ports, selects
from gateway.wire import RELAY_STREAM, SERVICE_STREAM, ServiceEventReport

log = logging.getLogger(__name__)
RELAY_KIND = RELAY_STREAM  # node → registry: a stream to another node
SERVICE_KIND = SERVICE_STREAM  # registry → node: a relayed stream from another node


async def _workloads(store: RegistryStore) -> dict[tuple[str, str], list[tuple[Workload, str, str]]]:
    """The placed workloads by (namespace, name): (the Workload as its node runs it, node, source name)."""
    groups = await store.group_members()
    placed: dict[tuple[str, str], list[tuple[Workload, str, str]]] = {}
    documents: dict[tuple[str, str, str], bytes | str | None] = {}
    for namespace, name, node, kind, source, origin, _ in await store.workloads.placements():
        key = (kind, namespace, source)
        if key not in documents:
            documents[key] = await store.documents.get(kind, namespace, source)
        document = documents[key]
        if document is None:
            continue
        try:
            if kind == "BatchWorkload":
                batch = msgspec.json.decode(document, type=BatchWorkload, dec_hook=dec_hook)
                override = next((o for o in batch.groups if o.group == groups.get(origin)), None)
                if override is None:
                    continue
                raw = expand(batch, override, origin)
            else:
                raw = {k: v for k, v in json.loads(document).items() if k not in ("node", "node_selector")}
            workload = msgspec.convert(raw, Workload, dec_hook=dec_hook)
        except msgspec.ValidationError:
            continue  # stored before a schema change: it does not run anyway
        placed.setdefault((namespace, name), []).append((workload, node, source))
    return placed


async def service_endpoints(store: RegistryStore) -> dict[tuple[str, str], list[ServiceEndpoint]]:
    """The endpoints of every Service at the registry, by (namespace, name)."""
    stored = await store.documents.of_kinds(("Service",))
    if not stored:
        return {}
    placed = await _workloads(store)
    reported: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for node, namespace, name, *_, instances, _ in await store.workloads.statuses():
        with contextlib.suppress(ValueError):
            reported[(node, namespace, name)] = list(json.loads(instances or "[]"))
    infos = await store.node_infos()
    result: dict[tuple[str, str], list[ServiceEndpoint]] = {}
    for _, namespace, name, document, _ in stored:
        service = msgspec.json.decode(document, type=Service, dec_hook=dec_hook)
        endpoints = []
        for (ns, workload_name), runs in sorted(placed.items()):
            for workload, node, source in runs:
                if not selects(service, ns, workload_name, workload.labels, source):
                    continue
                address = str(infos.get(node, {}).get("mesh") or "")[:300]
                for instance in reported.get((node, ns, workload_name), []):
                    ports = {str(k): int(v) for k, v in (instance.get("ports") or {}).items()
                             if isinstance(v, int) and 0 < v < 65536}
                    endpoints.append(ServiceEndpoint(
                        node=node, instance=str(instance.get("id", ""))[:300], address=address,
                        ready=bool(instance.get("ready")) and instance.get("state") in ("ready", "running"),
                        ports=instance_ports(service, workload, ports)))
        result[(namespace, name)] = endpoints[:1000]
    return result


async def node_service_documents(store: RegistryStore, node: str,
                                 documents: Sequence[tuple[str, str, str, str, str]] | None = None
                                 ) -> list[dict[str, Any]]:
    """The Services of a node's workspace with their endpoints (none for a node too old to read them); `documents`:
    the registry's Services and maybe documents of other kinds (of_kinds rows), when the caller has them."""
    if documents is None:
        documents = await store.documents.of_kinds(("Service",))
    services = [row for row in documents if row[0] == "Service"]
    if not services:  # most registries: no query about the node
        return []
    version = (await store.node_info(node)).get("version")
    if not versions.reads_kind("Service", version):
        return []
    workspace = await store.node_workspace(node)
    stored = [row for row in services if row[4] == workspace]
    if workspace is None or not stored:
        return []
    endpoints = await service_endpoints(store)
    result = []
    for _, namespace, name, document, _ in stored:
        raw = json.loads(document)
        raw["endpoints"] = msgspec.to_builtins(endpoints.get((namespace, name), []))
        result.append(raw)
    return result


COUNTER_FIELDS = ("service", "port", "endpoint", "path", "connections", "bytes_in", "bytes_out", "errors")


async def service_counters(store: RegistryStore) -> dict[str, list[dict[str, Any]]]:
    """The counters each node last reported with its heartbeat (its info's `services`), by `<ns>/<name>`, each with
    the node that counted it."""
    found: dict[str, list[dict[str, Any]]] = {}
    for node, info in (await store.node_infos()).items():
        rows = info.get("services")
        for row in rows if isinstance(rows, list) else []:
            if isinstance(row, list) and len(row) == len(COUNTER_FIELDS):
                counter = {"node": node, **dict(zip(COUNTER_FIELDS, row, strict=True))}
                found.setdefault(str(counter["service"]), []).append(counter)
    return found


KEEP_EVENTS = 100  # per node and service
SHOWN_EVENTS = 50  # per service, in its view


async def record_events(store: RegistryStore, node: str, reports: list[ServiceEventReport] | None) -> None:
    """Keep the events a node reported of the Services of its workspace (each once): a node cannot write into the
    events of another workspace's Services."""
    if not reports:
        return
    events = []
    for report in reports:
        namespace, name = split_namespaced(report.service, "service_events: service")
        events.append((namespace, name, report.ts, report.seq, report.event, report.detail))
    workspace = await store.node_workspace(node)
    known = {(namespace, name) for _, namespace, name, _, where in await store.documents.of_kinds(("Service",))
             if where == workspace}
    await store.services.record_events(node, events, KEEP_EVENTS, time.time(), known)


async def service_events(store: RegistryStore) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The newest SHOWN_EVENTS events of each service its nodes reported, newest first."""
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for namespace, name, node, ts, seq, event, detail in await store.services.events(SHOWN_EVENTS):
        found.setdefault((namespace, name), []).append({"node": node, "ts": ts, "seq": seq, "event": event,
                                                        "detail": detail})
    return found


async def service_views(store: RegistryStore, caller: access.Caller | None = None) -> list[dict[str, Any]]:
    """Every Service at the registry (in the caller's scope) with its endpoints, the counters its nodes reported
    (per node, port, endpoint and path: local, direct, relay, served) and their newest events."""
    endpoints = await service_endpoints(store)
    counters = await service_counters(store)
    events = await service_events(store)
    views = []
    for _, namespace, name, document, workspace in await store.documents.of_kinds(("Service",)):
        if caller is not None and not caller.sees(workspace):
            continue
        service = msgspec.json.decode(document, type=Service, dec_hook=dec_hook)
        found = endpoints.get((namespace, name), [])
        views.append({"namespace": namespace, "name": name, "workspace": workspace,
                      "service": msgspec.to_builtins(service),
                      "endpoints": msgspec.to_builtins(found), "ready": sum(e.ready for e in found),
                      "counters": counters.get(f"{namespace}/{name}", []),
                      "events": events.get((namespace, name), [])})
    return views


@get("/api/v1/services", summary="Services at the registry with their endpoints (node, instance, address, ready, "
                                 "ports), the counters their nodes report and the nodes' newest events of them")
async def list_services(request: AnyRequest) -> list[dict[str, Any]]:
    caller = await access.require_caller(request, "apps.read")
    return await service_views(store_of(request), caller)


ROUTE_HANDLERS = [list_services]


# --- the relay ----------------------------------------------------------------------------------------------------


async def _copy(source: Stream, target: Stream) -> None:
    """Bytes from one stream to the other until the source ends; its end (or abort) goes along."""
    try:
        while chunk := await source.receive():
            await target.send(chunk)
    except StreamError as exc:
        await target.close(str(exc)[:200] or "aborted")
        return
    with contextlib.suppress(StreamError):
        await target.close()


async def relay_refusal(store: RegistryStore, source: str, target: str) -> str | None:
    """Why `source` may not reach `target` through the relay (a node the registry does not know, or one of another
    workspace); None when it may. The replica with the source's stream asks, and the one with the target's channel
    asks again for a stream another replica brings."""
    workspaces = await store.workspaces_of(source, target)
    target_workspace, source_workspace = workspaces.get(target), workspaces.get(source)
    if target_workspace is None:
        return f"no node {target[:80]!r}"
    if source_workspace is None:
        return f"no node {source[:80]!r}"
    if source_workspace != target_workspace:
        return f"node {target[:80]} is not in node {source[:80]}'s workspace"
    return None


def relay_handler(hub: Any, store: RegistryStore) -> Any:
    """The handler of `relay` streams for the channel hub (gateway.registry.channel.ChannelHub)."""

    async def relay(stream: Stream) -> None:
        source = next((name for name, session in hub.sessions.items() if session.mux is stream.mux), None)
        target = stream.meta.get("node")
        if source is None or not isinstance(target, str):
            await stream.close(f"relay: no node {str(target)[:80]!r}")
            return
        refusal = await relay_refusal(store, source, target)
        if refusal is not None:
            await stream.close(f"relay: {refusal}")
            return
        if target not in hub.sessions and hub.peers is not None:  # its channel is at another replica
            await hub.peers.forward(stream, source, target)
            return
        try:
            other = await hub.open_stream(target, SERVICE_KIND, {"from": source})
        except ChannelError as exc:
            await stream.close(f"relay: {exc}")
            return
        hub.relays["local"] += 1
        await asyncio.gather(_copy(stream, other), _copy(other, stream))

    return relay
