"""Upgrade tasks: the list, one task with the state of each of its nodes, and (admins) a new task from uploaded
wheels to nodes and groups, a few at a time, and stopping a task (its nodes not started yet are cancelled)."""

from __future__ import annotations

import io
import zipfile
from typing import Any
from urllib.parse import quote, urlencode

from litestar import Response, get, post
from litestar.datastructures import UploadFile
from litestar.params import FromPath
from litestar.response import Template

from gateway.errors import ConfigError
from gateway.ops.upgrade import SUCCEEDED, UPGRADING
from gateway.registry import access, upgrades
from gateway.registry.access import AnyRequest
from gateway.registry.pages.common import caller_of, flash, page, show, store_of
from gateway.webkit.pages import see_other
from gateway.wire import WHEEL_FILE

MAX_WHEEL_BYTES = 64 * 2**20  # one uploaded wheel; a fieldgate wheel is a few MiB
FORM_FIELDS = ("workspace", "version", "concurrency", "max_failures", "deadline")
# what the task page says of a node's status: pending, running, done, failed or cancelled
PHASES = {upgrades.PENDING: "pending", upgrades.ASSIGNED: "running", UPGRADING: "running",
          SUCCEEDED: "done", upgrades.SKIPPED: "done", upgrades.CANCELLED: "cancelled",
          **dict.fromkeys(upgrades.FAILED, "failed")}


PHASE_NAMES = ("pending", "running", "done", "failed", "cancelled")


def phase(status: str) -> str:
    return PHASES.get(status, "failed" if status.startswith("failed") else "running")


@get("/upgrades", summary="Upgrade tasks with the status of every node (?state=running)", **page("upgrades.read"))
async def upgrades_page(request: AnyRequest) -> Template:
    tasks = await upgrades.task_views(store_of(request), caller_of(request))
    state = request.query_params.get("state", "")
    shown = [task for task in reversed(tasks) if not state or task["state"] == state]
    return show(request, "upgrades.html", tasks=shown, total=len(tasks), state=state)


@get("/upgrades/new", summary="The new upgrade task form: wheels, target nodes and groups, concurrency, failures",
     **page("upgrades.run"))
async def upgrade_new(request: AnyRequest) -> Template:
    store, caller = store_of(request), caller_of(request)
    query = request.query_params
    fields = {key: query.get(key, "") for key in FORM_FIELDS}
    workspaces = [name for name in await access.workspaces(store) if caller.sees(name)]
    nodes = await access.visible_nodes(store, caller)
    return show(request, "upgrade_form.html", fields=fields, workspaces=workspaces, nodes=nodes,
                groups=await access.visible_groups(store, caller), chosen_nodes=set(query.getall("node", [])),
                chosen_groups=set(query.getall("group", [])), max_wheel_mib=MAX_WHEEL_BYTES // 2**20,
                versions=sorted({node["version"] for node in nodes if node["version"]}))


@post("/upgrades", summary="Create an upgrade task from uploaded wheels (multipart) for nodes and groups",
      status_code=303, request_max_body_size=upgrades.MAX_WHEELS_BYTES + 2**20,
      **page("upgrades.run", action="start upgrades"))
async def upgrade_create(request: AnyRequest) -> Response[Any]:
    form = await request.form()
    fields = {key: str(form.get(key) or "").strip() for key in FORM_FIELDS}
    node_names = _all(form, "node")
    group_names = _all(form, "group")
    store, caller = store_of(request), caller_of(request)
    uploads = [v for v in form.getall("wheels") if isinstance(v, UploadFile)] if "wheels" in form else []
    workspace = fields["workspace"] or access.DEFAULT_WORKSPACE

    def refused(exc: ConfigError) -> Response[Any]:
        flash(request, "error", f"Upgrade not started: {_plain(str(exc))}")
        query = [(key, value) for key, value in fields.items() if value]
        query += [("node", name) for name in node_names] + [("group", name) for name in group_names]
        return see_other("/upgrades/new" + (f"?{urlencode(query)}" if query else ""))

    try:  # what the form holds; a refusal here is audited as create_task audits its own
        wheels = await _uploaded_wheels(uploads)
        version = fields["version"] or upgrades.wheel_pins(wheels)["fieldgate"]
        if not caller.sees(workspace):
            raise ConfigError(f"workspace {workspace!r}: no such workspace")
        targets = await _targets(request, workspace, node_names, group_names)
        spec = upgrades.CreateUpgrade(
            version=version, wheels={}, nodes=targets, workspace=workspace,
            concurrency=_number(fields["concurrency"], "concurrency", 1, 1),
            max_failures=_number(fields["max_failures"], "max failures", 0, 0),
            deadline=float(_number(fields["deadline"], "deadline", 120, 1)))
    except ConfigError as exc:
        detail = {"version": fields["version"], "nodes": node_names, "groups": group_names,
                  "wheels": sorted(upload.filename for upload in uploads if upload.filename)}
        await upgrades.record_refused(store, caller, workspace, _plain(str(exc)), detail)
        return refused(exc)
    try:
        view = await upgrades.create_task(store, spec, wheels, caller)
    except ConfigError as exc:
        return refused(exc)
    flash(request, "ok", f"Upgrade {view['id']} to version {view['version']} started on "
                         f"{len(view['nodes'])} node(s), {view['concurrency']} at a time.")
    return see_other(f"/upgrades/{quote(view['id'])}")


@get("/upgrades/{task:str}", summary="One upgrade task: its wheels and the state of each node, with the reason",
     **page("upgrades.read"))
async def upgrade_page(request: AnyRequest, task: FromPath[str]) -> Template:
    view = await upgrades.task_view(store_of(request), task, caller_of(request))
    counts: dict[str, int] = {}
    for node in view["nodes"]:
        node["phase"] = phase(node["status"])
        counts[node["phase"]] = counts.get(node["phase"], 0) + 1
    return show(request, "upgrade.html", task=view, counts=counts, phases=PHASE_NAMES,
                unfinished=view["state"] in upgrades.UNFINISHED)


@post("/upgrades/{task:str}/stop", summary="Stop an upgrade task: nodes not started yet are cancelled, nodes "
      "upgrading finish", status_code=303, **page("upgrades.run", action="stop upgrades"))
async def upgrade_stop(request: AnyRequest, task: FromPath[str]) -> Response[Any]:
    try:
        view = await upgrades.stop_task(store_of(request), task, caller_of(request))
    except ConfigError as exc:
        flash(request, "error", str(exc))
        return see_other(f"/upgrades/{quote(task)}")
    finishing = [node["node"] for node in view["nodes"] if node["status"] in upgrades.IN_FLIGHT]
    flash(request, "ok", f"Upgrade {task} stopped" + (f"; {', '.join(finishing)} finish(es) the upgrade under way."
                                                      if finishing else "."))
    return see_other(f"/upgrades/{quote(task)}")


def _all(form: Any, key: str) -> list[str]:
    values = form.getall(key) if key in form else []
    return list(dict.fromkeys(value.strip() for value in values if isinstance(value, str) and value.strip()))


def _number(text: str, field: str, default: int, least: int) -> int:
    if not text:
        return default
    if not text.isdigit() or int(text) < least:
        raise ConfigError(f"{field}: expected a whole number of {least} or more, got {text!r}")
    return int(text)


def _plain(message: str) -> str:
    """A task's refusal in the form's words rather than the command line's (`--wheels:` → `wheels:`)."""
    return message.replace("--max-failures", "max failures").replace("--", "")


async def _uploaded_wheels(files: list[UploadFile]) -> dict[str, bytes]:
    """The uploaded files by name, each a wheel (by its name and as a zip archive) of at most MAX_WHEEL_BYTES."""
    wheels: dict[str, bytes] = {}
    for upload in files:
        name = upload.filename or ""
        if not name:  # the file field left empty
            continue
        if not WHEEL_FILE.match(name) or name.count("-") < 2:
            raise ConfigError(f"{name}: not a wheel's file name (expected name-version-python-abi-platform.whl)")
        content = await upload.read(MAX_WHEEL_BYTES + 1)
        if len(content) > MAX_WHEEL_BYTES:
            raise ConfigError(f"{name}: too big, more than the {MAX_WHEEL_BYTES // 2**20} MiB a wheel may have")
        if not zipfile.is_zipfile(io.BytesIO(content)):
            raise ConfigError(f"{name}: not a wheel (a wheel is a zip archive; this file is not)")
        if name in wheels:
            raise ConfigError(f"{name}: uploaded twice")
        wheels[name] = content
    if not wheels:
        raise ConfigError("wheels: choose the .whl files of the version (fieldgate's and its plugins')")
    return wheels


async def _targets(request: AnyRequest, workspace: str, node_names: list[str], group_names: list[str]) -> list[str]:
    """The nodes named and the nodes of the groups named (as they are now), in that order, once each."""
    store, caller = store_of(request), caller_of(request)
    in_workspace = {node["name"] for node in await access.visible_nodes(store, caller)
                    if node["workspace"] == workspace}
    unknown = [name for name in node_names if name not in in_workspace]
    if unknown:
        raise ConfigError(f"nodes: no node {unknown[0]} in workspace {workspace}")
    groups = {group["name"]: group for group in await access.visible_groups(store, caller)}
    targets = list(node_names)
    for name in group_names:
        group = groups.get(name)
        if group is None:
            raise ConfigError(f"groups: no group {name}")
        members = [node for node in group["nodes"] if node in in_workspace]
        if not members:
            raise ConfigError(f"groups: group {name} has no nodes in workspace {workspace}")
        targets += members
    if not targets:
        raise ConfigError("targets: pick nodes, groups or both")
    return list(dict.fromkeys(targets))


ROUTE_HANDLERS = [upgrades_page, upgrade_new, upgrade_create, upgrade_page, upgrade_stop]
