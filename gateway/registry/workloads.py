"""Edge apps from the registry: Workload, ConfigItem, Secret and BatchWorkload documents, where they run, and
their status.

Placement: a Workload with `node:` runs on that node, one with `node_selector:` on every node of its workspace whose
labels match; a BatchWorkload runs as one Workload `<name>.<node>` on every node of its groups, with the group's
overrides. The scheduler (a supervised task of the registry, every half heartbeat interval) records placements in
`workload_placements`; a paused node gets no new ones. When a node of a group has been offline longer than the
BatchWorkload's `failover.after`, its Workload moves to the healthy node of the group with the fewest, and back when
the node returns if `failover.move_back` says so. A node's documents (gateway.registry.store.node_documents) then
carry the Workloads placed on it and the ConfigItems and Secrets they use; Secrets are encrypted in the database
with a key in the registry's data dir and never shown by the API.

Up: a node reports the status of its registry-owned workloads with its heartbeat, only when it changed or new
events happened (gateway.uplink.workloads), and the registry keeps the latest report per node and workload and the
last events (gateway.registry.history, which also keeps the versions of the documents and rolls them back).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import delete, get, post
from litestar.exceptions import PermissionDeniedException
from litestar.params import FromPath, JSONBody

from gateway.errors import ConfigError, NotFound, ResourceError
from gateway.importers import kubernetes
from gateway.registry import access, history, routes
from gateway.registry.auth import AnyRequest, store_of
from gateway.registry.permissions import DOCUMENT_CHANGES, KIND_PERMISSION
from gateway.registry.store import OFFLINE_AFTER, RegistryStore
from gateway.resources.loader import Source, format_validation_error
from gateway.resources.schema import (
    AnyDocument,
    BatchWorkload,
    ConfigItem,
    Device,
    DeviceModel,
    Endpoint,
    GroupOverride,
    Route,
    Secret,
    Service,
    Workload,
    dec_hook,
    enc_hook,
    non_finite_numbers,
)
from gateway.wire import EventReport, WorkloadReport
from gateway.workloads.accelerators import as_counts
from gateway.workloads.secrets import SecretBox

log = logging.getLogger(__name__)
REGISTRY_KINDS = (DeviceModel, Device, Workload, ConfigItem, Secret, BatchWorkload, Endpoint, Route, Service)
TEMPLATE_RESERVED = ("kind", "name", "namespace", "node", "node_selector")


# --- documents ----------------------------------------------------------------------------------------------------


def with_tag(image: str, tag: str) -> str:
    """`image` with its tag (and digest) replaced: registry.local:5000/app:1 → registry.local:5000/app:<tag>."""
    image = image.split("@", 1)[0]
    head, _, last = image.rpartition("/")
    last = last.split(":", 1)[0]
    return f"{head}/{last}:{tag}" if head else f"{last}:{tag}"


def expand(batch: BatchWorkload, override: GroupOverride, node: str) -> dict[str, Any]:
    """The raw Workload a BatchWorkload runs on one node of a group."""
    raw = {key: value for key, value in batch.template.items() if key not in TEMPLATE_RESERVED}
    if override.image is not None:
        raw["image"] = override.image
    if override.image_tag is not None:
        raw["image"] = with_tag(str(raw.get("image") or ""), override.image_tag)
    if override.command is not None:
        raw["command"] = override.command
    if override.args is not None:
        raw["args"] = override.args
    if override.env:
        raw["env"] = {**(raw.get("env") or {}), **override.env}
    if override.replicas is not None:
        raw["replicas"] = override.replicas
    labels = {**(raw.get("labels") or {}), **batch.labels, "batch": batch.name, "origin": node}
    return {**raw, "kind": "Workload", "name": f"{batch.name}.{node}", "namespace": batch.namespace,
            "labels": labels}


def batch_problems(batch: BatchWorkload) -> list[str]:
    """Why a BatchWorkload cannot run: reserved template fields, a group twice, a template a group breaks."""
    problems = [f"$.template.{key}: set by the registry for each node" for key in TEMPLATE_RESERVED
                if key in batch.template]
    seen: set[str] = set()
    for i, override in enumerate(batch.groups):
        if override.group in seen:
            problems.append(f"$.groups[{i}].group: group {override.group} is listed twice")
        seen.add(override.group)
        raw = expand(batch, override, "node")
        try:
            msgspec.convert(raw, Workload, dec_hook=dec_hook)
        except msgspec.ValidationError as exc:
            problems.append(f"{format_validation_error(exc, raw, '$.template')} (with the overrides of group "
                            f"{override.group})")
    return problems


def _refs(workload: Workload) -> list[tuple[str, str]]:
    """(kind, name) of the ConfigItems and Secrets a workload uses."""
    return sorted({("ConfigItem", ref.config_item) if ref.config_item else ("Secret", ref.secret or "")
                   for ref in (*workload.env_from, *workload.files)})


async def apply_documents(store: RegistryStore, raw_documents: list[tuple[Source, Any]], workspace: str,
                          actor: access.Caller, target: str, *, action: str = "document.apply",
                          note: str = "") -> list[str]:
    """Check and store documents of a workspace (all or none), keeping the new versions of Workloads and
    BatchWorkloads (with `note`); a line per document. ResourceError lists problems, a document of a kind the actor's
    role may not change among them (a rollback, `document.rollback`, needs apps.operate only: its caller checked)."""
    await access.check_workspace(store, workspace)
    if any(kubernetes.is_kubernetes(raw) for _, raw in raw_documents):  # Deployments etc. converted on the way in
        raw_documents = kubernetes.convert_documents(raw_documents, keep_others=True)
    box = SecretBox(store.data_dir)
    documents, problems, parsed = [], [], []
    for source, raw in raw_documents:
        non_finite = non_finite_numbers(raw)
        problems += [f"{source.prefix()}: {path}: expected a finite number, got {value!r}"
                     for path, value in non_finite]
        if non_finite:
            continue
        try:
            doc = msgspec.convert(raw, AnyDocument, dec_hook=dec_hook)
        except msgspec.ValidationError as exc:
            problems.append(f"{source.prefix()}: {format_validation_error(exc, raw)}")
            continue
        if not isinstance(doc, REGISTRY_KINDS):
            problems.append(f"{source.prefix()}: the registry keeps " + ", ".join(
                cls.__name__ for cls in REGISTRY_KINDS) + f" documents, not {doc.kind}")
            continue
        needed = KIND_PERMISSION[doc.kind]
        if action != "document.rollback" and not actor.can(needed):
            problems.append(f"{source.prefix()}: the {actor.role} role cannot change {doc.kind} documents (it needs "
                            f"{needed})")
            continue
        parsed.append((source, doc))
    held = {(kind, ns, name) for kind, ns, name, _, _ in await store.documents.of_kinds(("ConfigItem", "Secret"))}
    held |= {(doc.kind, doc.namespace, doc.name) for _, doc in parsed}
    problems += routes.document_problems(parsed, await routes.held_endpoints(store))
    for source, doc in parsed:
        node = doc.node if isinstance(doc, Device | Workload | Endpoint | Route) else None
        if isinstance(doc, Workload):
            problems += [f"{source.prefix()}: {kind} {doc.namespace}/{name} is not at the registry (apply it too)"
                         for kind, name in _refs(doc) if (kind, doc.namespace, name) not in held]
        if isinstance(doc, BatchWorkload):
            problems += [f"{source.prefix()}: {problem}" for problem in batch_problems(doc)]
        security = doc.template.get("security") if isinstance(doc, BatchWorkload) else None
        privileged = (doc.secured.privileged if isinstance(doc, Workload) else
                      isinstance(security, dict) and security.get("privileged") is True)
        if privileged and not actor.can("apps.privileged"):
            where = "$.security.privileged" if isinstance(doc, Workload) else "$.template.security.privileged"
            problems.append(f"{source.prefix()}: {where}: only an admin may run a workload privileged (the "
                            f"{actor.role} role cannot; it needs apps.privileged)")
        if isinstance(doc, Service):  # the registry computes them for every node
            doc = msgspec.structs.replace(doc, endpoints=[])
        body = msgspec.json.encode(doc, enc_hook=enc_hook)
        documents.append((doc.kind, doc.namespace, doc.name, node, box.seal_document(doc.kind, body)))
    problems += await access.workspace_problems(store, documents, workspace)
    if problems:
        raise ResourceError(problems)
    async with access.audited(store, actor, action, target, access.workspace_scope(workspace)) as entry:
        entry.detail = [f"{kind}/{ns}/{name}" for kind, ns, name, _, _ in documents] + ([note] if note else [])
        versions = await store.documents.version_statements(documents, history.VERSIONED, history.KEEP_VERSIONS,
                                                            actor.actor, note)
        await store.put_documents(documents, workspace, versions)
    await schedule(store)
    return [f"{kind} {ns}/{name}" + (f" → node {node}" if node else "") for kind, ns, name, node, _ in documents]


async def node_workload_documents(store: RegistryStore, node: str) -> list[dict[str, Any]]:
    """The Workloads placed on a node, with the ConfigItems and Secrets (decrypted) they use."""
    placements = await store.workloads.placements_on(node)
    if not placements:
        return []
    groups = await store.group_members()
    workloads, wanted = [], set()
    for namespace, name, source_kind, source, origin in placements:
        document = await store.documents.get(source_kind, namespace, source)
        if document is None:
            continue
        if source_kind == "BatchWorkload":
            batch = msgspec.json.decode(document, type=BatchWorkload, dec_hook=dec_hook)
            override = next((o for o in batch.groups if o.group == groups.get(origin)), None)
            if override is None:
                continue
            raw = expand(batch, override, origin)
        else:
            raw = {key: value for key, value in json.loads(document).items()
                   if key not in ("node", "node_selector")}
        try:
            workload = msgspec.convert(raw, Workload, dec_hook=dec_hook)
        except msgspec.ValidationError as exc:  # stored before a schema change: skip it, not the node's devices
            log.warning("workload %s/%s not sent to node %s: %s", namespace, name, node, exc)
            continue
        workloads.append((workload, raw))
        wanted |= {(kind, namespace, ref) for kind, ref in _refs(workload)}
    box = SecretBox(store.data_dir)
    values: list[dict[str, Any]] = []
    for kind, namespace, name in sorted(wanted):
        document = await store.documents.get(kind, namespace, name)
        if document is not None:
            values.append(box.unseal_document(kind, document))
    have = {(raw["kind"], raw.get("namespace", "default"), raw["name"]) for raw in values}
    return values + [raw for workload, raw in workloads
                     if all((kind, workload.namespace, ref) in have for kind, ref in _refs(workload))]


async def delete_document(store: RegistryStore, caller: access.Caller, kind: str, namespace: str, name: str) -> None:
    """Delete a registry document; a ConfigItem or Secret a Workload or BatchWorkload uses, or an Endpoint a Route
    uses, is refused."""
    workspace = await store.documents.workspace(kind, namespace, name)
    if workspace is None or not caller.sees(workspace) or not caller.reads(kind):
        raise NotFound(f"no {kind} {namespace}/{name} at the registry")
    async with access.audited(store, caller, "document.delete", f"{kind}/{namespace}/{name}",
                              access.workspace_scope(workspace)):
        if not caller.can(KIND_PERMISSION[kind]):
            raise PermissionDeniedException(access.refusal(caller, (KIND_PERMISSION[kind],),
                                                           f"delete {kind} documents"))
        if kind in ("ConfigItem", "Secret"):
            for user_kind, _, user, document, _ in await store.documents.of_kinds(("Workload", "BatchWorkload"),
                                                                                  namespace):
                raw = json.loads(document)
                raw = raw if user_kind == "Workload" else {"name": user, **raw.get("template", {})}
                try:
                    workload = msgspec.convert({**raw, "kind": "Workload"}, Workload, dec_hook=dec_hook)
                except msgspec.ValidationError:
                    continue  # stored before a schema change; it does not run anyway
                if (kind, name) in _refs(workload):
                    raise ConfigError(f"{kind} {namespace}/{name} is used by {user_kind} {namespace}/{user}")
        if kind == "Endpoint" and (users := await routes.routes_using(store, namespace, name)):
            raise ConfigError(f"Endpoint {namespace}/{name} is used by Route " + ", ".join(
                f"{namespace}/{user}" for user in users))
        await store.documents.delete(kind, namespace, name)
    await schedule(store)


# --- placement ----------------------------------------------------------------------------------------------------


class _Node(msgspec.Struct):
    name: str
    labels: dict[str, str]
    workspace: str
    paused: bool
    healthy: bool
    down_for: float  # seconds without a heartbeat (since it joined, if it never sent one); 0 when healthy
    accelerators: dict[str, int] = {}  # what the node offers, from its last heartbeat


async def _nodes(store: RegistryStore) -> dict[str, _Node]:
    now = time.time()
    nodes = {}
    infos = await store.node_infos()
    for name, labels, joined_at, last, interval, paused, workspace in await store.placement_nodes():
        healthy = last is not None and now - last <= OFFLINE_AFTER * interval
        nodes[name] = _Node(name, labels, workspace, paused, healthy,
                            0.0 if healthy else now - (last or joined_at),
                            as_counts(infos.get(name, {}).get("accelerators")))
    return nodes


def accelerator_need(raw: dict[str, Any], replicas: Any = None) -> dict[str, int]:
    """What one node running a raw Workload (or a template) needs: its accelerators times its replicas."""
    wanted = raw.get("accelerators") or {}
    count = replicas if replicas is not None else raw.get("replicas", 1)
    if not isinstance(wanted, dict) or not isinstance(count, int):
        return {}
    return {str(k): int(v) * count for k, v in wanted.items() if isinstance(v, int) and v > 0 and count > 0}


def _fits(need: dict[str, int], node: _Node, used: dict[str, int]) -> bool:
    return all(used.get(name, 0) + count <= node.accelerators.get(name, 0) for name, count in need.items())


def shortfall(need: dict[str, int], nodes: list[_Node], used: dict[str, dict[str, int]]) -> str:
    """Why no node of `nodes` takes a workload that needs `need`, for its status."""
    wanted = ", ".join(f"{count} x {name}" for name, count in sorted(need.items()))
    free = [f"{n.name}: " + ", ".join(f"{n.accelerators.get(a, 0) - used.get(n.name, {}).get(a, 0)} of "
                                      f"{n.accelerators.get(a, 0)} {a} free" for a in sorted(need))
            for n in sorted(nodes, key=lambda n: n.name)]
    return f"pending: needs {wanted} on one node; none has them free (" + ("; ".join(free) or "no nodes") + ")"


async def schedule(store: RegistryStore) -> int:
    """Bring the placements in step with the documents and the nodes; how many placements changed."""
    nodes = await _nodes(store)
    members: dict[str, list[str]] = {}
    for member, group_name in (await store.group_members()).items():
        members.setdefault(group_name, []).append(member)
    current: dict[tuple[str, str, str], tuple[str, str, str]] = {
        (ns, name, node): (kind, source, origin)
        for ns, name, node, kind, source, origin, _ in await store.workloads.placements()}
    placed: dict[tuple[str, str], str] = {}
    for ns, name, node in current:  # the first placement counts, should two registry replicas have raced
        placed.setdefault((ns, name), node)
    wanted: dict[tuple[str, str, str], tuple[str, str, str]] = {}
    needs: dict[tuple[str, str, str], dict[str, int]] = {}

    def may_start(key: tuple[str, str, str]) -> bool:  # a paused node keeps what it has and gets nothing new
        return key in current or not nodes[key[2]].paused

    for kind, namespace, name, document, workspace in await store.documents.of_kinds(("Workload", "BatchWorkload")):
        if kind == "Workload":
            raw = json.loads(document)
            selector = raw.get("node_selector") or {}
            targets = ([raw["node"]] if raw.get("node") else
                       [n.name for n in nodes.values() if n.workspace == workspace and
                        all(n.labels.get(k) == v for k, v in selector.items())] if selector else [])
            for target in targets:
                key = (namespace, name, target)
                if target in nodes and may_start(key):
                    wanted[key] = ("Workload", name, target)
                    needs[key] = accelerator_need(raw)
            continue
        batch = msgspec.json.decode(document, type=BatchWorkload, dec_hook=dec_hook)
        load: dict[str, int] = {}
        failover = batch.failover
        for override in batch.groups:
            group = [n for n in members.get(override.group, []) if n in nodes and nodes[n].workspace == workspace]
            down = {n for n in group if failover is not None and not nodes[n].healthy
                    and nodes[n].down_for >= float(failover.after)}
            for origin in sorted(group, key=lambda n: n in down):  # the nodes that are up first
                instance = f"{batch.name}.{origin}"
                previous = placed.get((namespace, instance))
                host = _host(origin, previous, down, group, nodes, load, failover.move_back if failover else True)
                if host is not None and may_start((namespace, instance, host)):
                    wanted[(namespace, instance, host)] = ("BatchWorkload", batch.name, origin)
                    needs[(namespace, instance, host)] = accelerator_need(batch.template, override.replicas)
                    load[host] = load.get(host, 0) + 1
    used: dict[str, dict[str, int]] = {}
    for key in sorted(wanted, key=lambda k: (k not in current, k)):  # what runs keeps its accelerators first
        need = needs.get(key)
        if not need:
            continue
        node_used = used.setdefault(key[2], {})
        if _fits(need, nodes[key[2]], node_used):
            for name, count in need.items():
                node_used[name] = node_used.get(name, 0) + count
        else:  # no over-commit: it stays unplaced, and its status says why
            del wanted[key]
    removed, added = current.keys() - wanted.keys(), wanted.keys() - current.keys()
    if removed or added:
        await store.workloads.place(removed, {key: wanted[key] for key in added}, time.time())
        for namespace, name, node in sorted(added):
            log.info("workload %s/%s placed on node %s", namespace, name, node)
    return len(current.keys() ^ wanted.keys())


def _host(origin: str, previous: str | None, down: set[str], group: list[str], nodes: dict[str, _Node],
          load: dict[str, int], move_back: bool) -> str | None:
    """Where the instances of a batch workload's node `origin` run now."""
    usable = [n for n in group if n != origin and n not in down and nodes[n].healthy and not nodes[n].paused]
    if origin not in down:
        if previous is None or previous == origin or (move_back and not nodes[origin].paused):
            return origin
        return previous if previous in usable else origin  # moved and staying there
    if previous is not None and previous != origin and previous in usable:
        return previous
    if not usable:
        return previous or origin  # nowhere to go: it stays, and runs when its node is back
    return min(usable, key=lambda n: (load.get(n, 0), n))


@contextlib.asynccontextmanager
async def scheduling(store: RegistryStore, interval: float) -> AsyncIterator[None]:
    """Run the scheduler every half heartbeat interval (0.5 s to 5 s) while the registry serves."""
    period = min(max(interval / 2, 0.5), 5.0)

    async def loop() -> None:
        failing = False
        while True:
            try:
                await schedule(store)
                if failing:
                    log.info("workload scheduling works again")
                failing = False
            except Exception as exc:  # a database hiccup: try again next period, logged once
                if not failing:
                    log.warning("workload scheduling failed, retrying every %.1fs: %s", period, exc)
                failing = True
            await asyncio.sleep(period)

    task = asyncio.create_task(loop(), name="workload scheduler")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# --- status -------------------------------------------------------------------------------------------------------


async def _accelerators_used(store: RegistryStore, nodes: dict[str, _Node]) -> dict[str, dict[str, int]]:
    """The accelerators the placed workloads take on each node."""
    used: dict[str, dict[str, int]] = {}
    for namespace, _, node, kind, source, _, _ in await store.workloads.placements():
        document = await store.documents.get(kind, namespace, source)
        if document is None or node not in nodes:
            continue
        raw = json.loads(document)
        if kind == "Workload":
            need = accelerator_need(raw)
        else:
            template = raw.get("template") or {}
            need = accelerator_need(template)
        for accelerator, count in need.items():
            used.setdefault(node, {})[accelerator] = used.get(node, {}).get(accelerator, 0) + count
    return used


async def record_status(store: RegistryStore, node: str, reports: list[WorkloadReport] | None) -> None:
    """Keep a node's latest report of its registry-owned workloads (the whole set)."""
    if reports is None:
        return
    statuses = []
    events: dict[tuple[str, str], list[EventReport]] = {}
    for report in reports:
        namespace, sep, name = report.workload.partition("/")
        if not sep:
            raise ConfigError(f"workload {report.workload!r}: expected <namespace>/<name>")
        events[(namespace, name)] = report.events
        statuses.append((namespace, name, report.status[:64], report.reason[:500], report.replicas, report.ready,
                         report.restarts, report.last_event[:500], msgspec.json.encode(report.instances).decode()))
    await store.workloads.record_status(node, statuses, events, history.KEEP_EVENTS, time.time())


async def workload_views(store: RegistryStore, caller: access.Caller | None = None) -> list[dict[str, Any]]:
    """Every placed or reported workload per node with its status; workloads placed nowhere with node None."""
    nodes = {node["name"]: node for node in await store.nodes()}
    views: dict[tuple[str, str, str], dict[str, Any]] = {}
    for ns, name, node, kind, source, origin, placed_at in await store.workloads.placements():
        views[(ns, name, node)] = {
            "namespace": ns, "name": name, "node": node, "source": f"{kind} {source}", "origin": origin,
            "placed": True, "placed_at": placed_at, "status": "pending", "reason": "not reported by the node yet",
            "replicas": None, "ready": 0, "restarts": 0, "last_event": "", "instances": [], "reported_at": None}
    for row in await store.workloads.statuses():
        node, ns, name, status, reason, replicas, ready, restarts, last_event, instances, reported_at = row
        view = views.setdefault((ns, name, node), {
            "namespace": ns, "name": name, "node": node, "source": "", "origin": node, "placed": False,
            "placed_at": None})
        view.update(status=status, reason=reason, replicas=replicas, ready=ready, restarts=restarts,
                    last_event=last_event, instances=json.loads(instances), reported_at=reported_at)
    placed = {(ns, view["source"].split(" ", 1)[-1]) for (ns, _, _), view in views.items()}
    result: list[dict[str, Any]] = []
    fleet: dict[str, _Node] | None = None
    for kind, ns, name, document, workspace in await store.documents.of_kinds(("Workload", "BatchWorkload")):
        if (ns, name) not in placed and (caller is None or caller.sees(workspace)):
            reason = "no node matches (or nodes paused)"
            raw = json.loads(document)
            need = accelerator_need(raw if kind == "Workload" else raw.get("template") or {})
            if need:
                fleet = fleet if fleet is not None else await _nodes(store)
                reason = shortfall(need, [n for n in fleet.values() if n.workspace == workspace],
                                   await _accelerators_used(store, fleet))
            result.append({"namespace": ns, "name": name, "node": None, "source": f"{kind} {name}", "origin": None,
                           "placed": False, "status": "pending" if need else "not-placed", "reason": reason,
                           "replicas": None, "ready": 0, "restarts": 0, "last_event": "", "instances": [],
                           "reported_at": None, "node_status": None})
    for key in sorted(views):
        view = views[key]
        info = nodes.get(key[2])
        if info is None or (caller is not None and not caller.sees(info.get("workspace"))):
            continue
        view["node_status"] = info["status"]
        result.append(view)
    return result


@get("/api/v1/workloads", summary="Workloads per node with their status (placed by the registry, reported by "
                                  "the nodes)")
async def list_workloads(request: AnyRequest) -> list[dict[str, Any]]:
    caller = await access.require_caller(request, "apps.read")
    return await workload_views(store_of(request), caller)


@post("/api/v1/documents", summary="Apply documents (a JSON list; ?workspace=): DeviceModel, Device, Workload, "
                                   "ConfigItem, Secret, BatchWorkload, Endpoint, Route, Service (the permission that "
                                   "changes each kind: devices.manage, apps.deploy, configs.write, routes.write)",
      status_code=200)
async def post_documents(request: AnyRequest, data: JSONBody[list[dict[str, Any]]]) -> dict[str, list[str]]:
    caller = await access.require_caller(request, *DOCUMENT_CHANGES)
    workspace = request.query_params.get("workspace", access.DEFAULT_WORKSPACE)
    if not caller.sees(workspace):
        raise ConfigError(f"workspace {workspace!r}: no such workspace")
    raw = [(Source("request body", i), doc) for i, doc in enumerate(data, start=1)]
    return {"applied": await apply_documents(store_of(request), raw, workspace, caller, "api")}


@delete("/api/v1/documents/{kind:str}/{namespace:str}/{name:str}", summary="Delete a registry document (the "
        "permission that changes its kind); its nodes drop it with their next heartbeat", status_code=200)
async def remove_document(request: AnyRequest, kind: FromPath[str], namespace: FromPath[str],
                          name: FromPath[str]) -> dict[str, str]:
    await delete_document(store_of(request), await access.require_caller(request, *DOCUMENT_CHANGES), kind,
                          namespace, name)
    return {"deleted": f"{kind} {namespace}/{name}"}


ROUTE_HANDLERS = [list_workloads, post_documents, remove_document, *history.ROUTE_HANDLERS]
