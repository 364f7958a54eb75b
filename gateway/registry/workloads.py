"""Edge apps from the registry: Workload, ConfigItem, Secret and BatchWorkload documents, where they run, and
their status.

Placement (gateway.registry.placement): a Workload with `node:` runs on that node, one with `node_selector:` on
every node of its workspace whose labels match; a BatchWorkload runs as one Workload `<name>.<node>` on every node of
its groups, with the group's overrides, each where its requests fit, with failover. A node's documents
(gateway.registry.store.node_documents) then carry the Workloads placed on it — but those with a field its version
does not read (held back, gateway.resources.versions) — and the ConfigItems and Secrets they use; Secrets are
encrypted in the database with a key in the registry's data dir and never shown by the API.

Up: a node reports the status of its registry-owned workloads with its heartbeat, only when it changed or new
events happened (gateway.uplink.workloads), and the registry keeps the latest report per node and workload and the
last events (gateway.registry.history, which also keeps the versions of the documents and rolls them back).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import msgspec
from litestar import delete, get, post
from litestar.exceptions import PermissionDeniedException
from litestar.params import FromPath, JSONBody

from gateway.errors import ConfigError, NotFound, ResourceError
from gateway.importers import kubernetes
from gateway.registry import access, history, placement, routes
from gateway.registry.auth import AnyRequest, store_of
from gateway.registry.concerned import nodes_concerned
from gateway.registry.permissions import DOCUMENT_CHANGES, KIND_PERMISSION
from gateway.registry.store import RegistryStore
from gateway.resources import versions
from gateway.resources.loader import Source, format_validation_error
from gateway.resources.names import split_namespaced
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
from gateway.resources.workload_checks import host_port_problems, request_problems
from gateway.wire import EventReport, WorkloadReport
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
        if batch.template.get("containers"):
            problems += [f"$.groups[{i}].{field}: the template's containers each have their own (a group overrides "
                         "env and replicas of a pod)" for field in ("image", "image_tag", "command", "args")
                         if getattr(override, field) is not None]
        raw = expand(batch, override, "node")
        try:
            workload = msgspec.convert(raw, Workload, dec_hook=dec_hook)
        except msgspec.ValidationError as exc:
            problems.append(f"{format_validation_error(exc, raw, '$.template')} (with the overrides of group "
                            f"{override.group})")
            continue
        problems += [f"$.template{path[1:]}: {message} (with the overrides of group {override.group})"
                     for path, message in registry_checks(workload)]
    return problems


def template_privileged_at(template: dict[str, Any]) -> str | None:
    """The field path of the first `privileged: true` of a BatchWorkload's template or its containers, or None."""
    security = template.get("security")
    if isinstance(security, dict) and security.get("privileged") is True:
        return "$.template.security.privileged"
    for field in ("containers", "init_containers"):
        group = template.get(field)
        for i, container in enumerate(group if isinstance(group, list) else []):
            security = container.get("security") if isinstance(container, dict) else None
            if isinstance(security, dict) and security.get("privileged") is True:
                return f"$.template.{field}[{i}].security.privileged"
    return None


def registry_checks(workload: Workload) -> list[tuple[str, str]]:
    """(path, message) of what the registry checks of a Workload before it keeps it (the node checks the rest)."""
    return request_problems(workload) + host_port_problems(workload)


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
            problems += [f"{source.prefix()}: {path}: {message}" for path, message in registry_checks(doc)]
        if isinstance(doc, BatchWorkload):
            problems += [f"{source.prefix()}: {problem}" for problem in batch_problems(doc)]
        where = doc.privileged_at() if isinstance(doc, Workload) else template_privileged_at(doc.template) if \
            isinstance(doc, BatchWorkload) else None
        if where is not None and not actor.can("apps.privileged"):
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
        concerned = await nodes_concerned(store, documents, workspace)
        await store.put_documents(documents, workspace, versions, concerned)
    await schedule(store)
    return [f"{kind} {ns}/{name}" + (f" → node {node}" if node else "") for kind, ns, name, node, _ in documents]


async def _placed_workloads(store: RegistryStore, node: str, groups: dict[str, str] | None = None,
                            placements: list[tuple[str, str, str, str, str]] | None = None
                            ) -> list[tuple[Workload, dict[str, Any]]]:
    """The Workloads placed on a node as it would get them: (the Workload, its raw document); `groups`: the group of
    every node in one, when the caller has them (else the groups of the instances' origins are looked up);
    `placements`: the node's, when the caller has them."""
    workloads = []
    if placements is None:
        placements = await store.workloads.placements_on(node)
    for namespace, name, source_kind, source, origin in placements:
        document = await store.documents.get(source_kind, namespace, source)
        if document is None:
            continue
        if source_kind == "BatchWorkload":
            batch = msgspec.json.decode(document, type=BatchWorkload, dec_hook=dec_hook)
            group = groups.get(origin) if groups is not None else await store.node_group(origin)
            override = next((o for o in batch.groups if o.group == group), None)
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
    return workloads


def held_back_reason(field: str, since: str, version: str) -> str:
    return (f"held back: node version {version} does not support field {field} (fieldgate {since} and later do); "
            "upgrade the node")


def _node_version(info: dict[str, Any]) -> str | None:
    version = info.get("version")
    return str(version)[:64] if isinstance(version, str) else None


async def held_back(store: RegistryStore) -> dict[tuple[str, str, str], tuple[str, str, str]]:
    """(namespace, name, node) → (first field the node cannot read, the version that reads it, the node's version)
    of every Workload placed on a node whose fieldgate version is too old for it."""
    infos = await store.node_infos()
    groups = await store.group_members()
    found = {}
    for node in sorted({node for _, _, node, *_ in await store.workloads.placements()}):
        version = _node_version(infos.get(node, {}))
        if version is None:
            continue
        for workload, raw in await _placed_workloads(store, node, groups):
            unknown = versions.unsupported_fields(raw, version)
            if unknown:
                found[(workload.namespace, workload.name, node)] = (*unknown[0], version)
    return found


async def node_workload_documents(store: RegistryStore, node: str,
                                  placements: list[tuple[str, str, str, str, str]] | None = None
                                  ) -> list[dict[str, Any]]:
    """The Workloads placed on a node, with the ConfigItems and Secrets (decrypted) they use; a Workload with a
    field the node's version does not read is held back (gateway.resources.versions). `placements`: the node's
    (store.workloads.placements_on), when the caller has them."""
    if placements == []:
        return []
    placed = await _placed_workloads(store, node, placements=placements)
    if not placed:
        return []
    version = _node_version(await store.node_info(node))
    workloads, wanted = [], set()
    for workload, raw in placed:
        if version is not None and versions.unsupported_fields(raw, version):
            continue
        workloads.append((workload, raw))
        wanted |= {(kind, workload.namespace, ref) for kind, ref in _refs(workload)}
    if not workloads:
        return []
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
        concerned = await nodes_concerned(store, [(kind, namespace, name, None, None)], workspace)
        await store.documents.delete(kind, namespace, name, concerned)
    await schedule(store)


# --- placement (gateway.registry.placement) ------------------------------------------------------------------

schedule = placement.schedule
scheduling = placement.scheduling


# --- status -------------------------------------------------------------------------------------------------------


async def record_status(store: RegistryStore, node: str, reports: list[WorkloadReport] | None) -> None:
    """Keep a node's latest report of its registry-owned workloads (the whole set)."""
    if reports is None:
        return
    statuses = []
    events: dict[tuple[str, str], list[EventReport]] = {}
    for report in reports:
        namespace, name = split_namespaced(report.workload, "workload")
        events[(namespace, name)] = report.events
        statuses.append((namespace, name, report.status[:64], report.reason[:500], report.replicas, report.ready,
                         report.restarts, report.last_event[:500], msgspec.json.encode(report.instances).decode()))
    await store.workloads.record_status(node, statuses, events, history.KEEP_EVENTS, time.time(), placement.FAILING)


async def workload_views(store: RegistryStore, caller: access.Caller | None = None) -> list[dict[str, Any]]:
    """Every placed or reported workload per node with its status; workloads placed nowhere with node None (pending
    with the reason when nothing has room for them), held back where a node's version cannot read them."""
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
    for key, (field, since, version) in (await held_back(store)).items():
        if key in views:
            views[key].update(status="held-back", reason=held_back_reason(field, since, version))
    plan = await placement.plan(store)
    documents = {(kind, ns, name): (document, workspace) for kind, ns, name, document, workspace in
                 await store.documents.of_kinds(("Workload", "BatchWorkload"))}
    sources = {(ns, view["source"].split(" ", 1)[-1]) for (ns, _, _), view in views.items()}
    result: list[dict[str, Any]] = []

    def pending_view(ns: str, name: str, node: str | None, source: str, origin: str | None, status: str,
                     reason: str) -> dict[str, Any]:
        return {"namespace": ns, "name": name, "node": node, "source": source, "origin": origin, "placed": False,
                "status": status, "reason": reason, "replicas": None, "ready": 0, "restarts": 0, "last_event": "",
                "instances": [], "reported_at": None, "node_status": None}

    pending_sources = set()
    for (ns, name, target), (reason, (kind, source, origin)) in sorted(
            plan.pending.items(), key=lambda item: (item[0][0], item[0][1], item[0][2] or "")):
        space = documents.get((kind, ns, source), ("", ""))[1]
        if (target is not None and (ns, name, target) in views) or (caller is not None and not caller.sees(space)):
            continue
        pending_sources.add((ns, source))
        result.append(pending_view(ns, name, target, f"{kind} {source}", origin or None, "pending", reason))
    for (kind, ns, name), (_, workspace) in documents.items():
        if (ns, name) not in sources | pending_sources and (caller is None or caller.sees(workspace)):
            result.append(pending_view(ns, name, None, f"{kind} {name}", None, "not-placed",
                                       "no node matches (or nodes paused)"))
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
