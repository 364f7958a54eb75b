"""Apps at the registry: Workloads and BatchWorkloads listed with where they run, made and changed through a form
(or the YAML editor), and a BatchWorkload's view: its groups with their overrides, the state of every node's
instance with the reason of a failure, and its versions with a rollback. Saving goes through the registry's apply
path (gateway.registry.workloads.apply_documents): the same checks and problems as `fieldgate check`."""

from __future__ import annotations

import shlex
from typing import Any
from urllib.parse import quote

from litestar import Response, get, post
from litestar.params import FromPath
from litestar.response import Template

from gateway.errors import ConfigError, NotFound
from gateway.registry import access, history
from gateway.registry.access import AnyRequest
from gateway.registry.pages.common import caller_of, flash, labels_from_text, labels_text, page, show, store_of
from gateway.registry.pages.documents import _apply, _stored, _workspace_for, delete_from_form, problems_of
from gateway.registry.pages.workloads import FAILED
from gateway.registry.workloads import workload_views
from gateway.webkit.forms import row_count
from gateway.webkit.pages import form_fields, see_other

APP_KINDS = ("Workload", "BatchWorkload")
RUNTIMES = ("process", "container")
RESTARTS = ("always", "on-failure", "never")
HEALTH_TYPES = ("http", "tcp", "exec")
# the Workload fields the form sets; the others a document has (working_dir, network, …) are kept as they are
FORM_FIELDS = ("description", "labels", "runtime", "command", "image", "args", "env", "env_from", "files", "ports",
               "limits", "restart", "health", "replicas", "node", "node_selector")
GROUP_FIELDS = ("replicas", "image", "image_tag", "command", "args", "env")
EXTRA_ROWS = 2


# --- form fields ↔ documents ------------------------------------------------------------------------------------


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _pairs(text: str, field: str) -> dict[str, str]:
    """`KEY=value` lines (values may hold commas and `=`); ConfigError naming the bad line."""
    found: dict[str, str] = {}
    for line in _lines(text):
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{field}: expected KEY=value lines, got {line!r}")
        found[key.strip()] = value.strip()
    return found


def _number(text: str) -> Any:
    """A form's number as an int or a float; any other text as it is, for the schema to name the field."""
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _words(text: str, field: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"{field}: {exc}") from None


def _rows(fields: dict[str, str], prefix: str, filled: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows `<prefix>-<i>-<field>` of a form table with any of the `filled` fields given (a select's default
    alone leaves a row out)."""
    count = row_count(fields, f"{prefix}_rows")
    grouped: dict[int, dict[str, str]] = {}  # one pass over the fields, however many rows the form claims
    for key, value in fields.items():
        index, sep, field = key.removeprefix(f"{prefix}-").partition("-")
        if key.startswith(f"{prefix}-") and sep and index.isdigit() and int(index) < count:
            grouped.setdefault(int(index), {})[field] = value.strip()
    rows = [grouped[i] for i in sorted(grouped) if any(grouped[i].get(key) for key in filled)]
    return rows


def workload_from_form(fields: dict[str, str], base: dict[str, Any]) -> dict[str, Any]:
    """A Workload's fields from the app form over `base` (the stored ones the form does not show stay)."""
    body = {key: value for key, value in base.items() if key not in FORM_FIELDS}
    if fields.get("description", "").strip():
        body["description"] = fields["description"].strip()
    if labels := labels_from_text(fields.get("labels", "")):
        body["labels"] = labels
    body["runtime"] = fields.get("runtime", "").strip() or "process"
    if command := _lines(fields.get("command", "")):
        body["command"] = command
    if fields.get("image", "").strip():
        body["image"] = fields["image"].strip()
    if args := _lines(fields.get("args", "")):
        body["args"] = args
    if env := _pairs(fields.get("env", ""), "env"):
        body["env"] = env
    env_from, files = [], []
    for row in _rows(fields, "ref", ("as", "from", "key")):
        kind, _, name = row.get("from", "").partition("/")
        ref = {"config_item" if kind == "ConfigItem" else "secret": name, "key": row.get("key", "")}
        if row.get("use") == "file":
            files.append({"path": row.get("as", ""), **ref})
        else:
            env_from.append({"name": row.get("as", ""), **ref})
    if env_from:
        body["env_from"] = env_from
    if files:
        body["files"] = files
    ports = []
    for row in _rows(fields, "port", ("name", "host_port", "container_port")):
        port: dict[str, Any] = {"name": row.get("name") or "http", "protocol": row.get("protocol") or "tcp"}
        if row.get("host_port"):
            port["host_port"] = _number(row["host_port"])
        if row.get("container_port"):
            port["container_port"] = _number(row["container_port"])
        ports.append(port)
    if ports:
        body["ports"] = ports
    limits = {key: _number(fields[f"limit_{key}"]) if key == "cpu" else fields[f"limit_{key}"].strip()
              for key in ("memory", "cpu") if fields.get(f"limit_{key}", "").strip()}
    if limits:
        body["limits"] = limits
    if fields.get("restart", "").strip():
        body["restart"] = fields["restart"].strip()
    if fields.get("health_type", "").strip():
        health: dict[str, Any] = {"type": fields["health_type"].strip()}
        for key in ("path", "interval", "timeout", "initial_delay"):
            if fields.get(f"health_{key}", "").strip():
                health[key] = fields[f"health_{key}"].strip()
        if fields.get("health_port", "").strip():
            health["port"] = _number(fields["health_port"])
        if fields.get("health_failure_threshold", "").strip():
            health["failure_threshold"] = _number(fields["health_failure_threshold"])
        if fields.get("health_command", "").strip():
            health["command"] = _words(fields["health_command"], "health check command")
        body["health"] = health
    if fields.get("replicas", "").strip():
        body["replicas"] = _number(fields["replicas"])
    if fields.get("node", "").strip():
        body["node"] = fields["node"].strip()
    if selector := labels_from_text(fields.get("node_selector", ""), "node selector"):
        body["node_selector"] = selector
    return body


def app_from_form(fields: dict[str, str], stored: dict[str, Any] | None) -> dict[str, Any]:
    """A Workload or BatchWorkload document from the app form (over the stored one when editing)."""
    kind = fields.get("kind", "Workload")
    if kind not in APP_KINDS:
        raise ConfigError(f"kind: expected Workload or BatchWorkload, got {kind!r}")
    head = {"kind": kind, "name": fields.get("name", "").strip(),
            "namespace": fields.get("namespace", "").strip() or "default"}
    if kind == "Workload":
        return {**head, **workload_from_form(fields, stored or {})}
    stored = stored or {}
    template = workload_from_form(fields, stored.get("template") or {})
    document: dict[str, Any] = {**head, **{key: template.pop(key) for key in ("description", "labels")
                                           if key in template}}
    for key in ("node", "node_selector"):
        template.pop(key, None)
    document["template"] = template
    groups = []
    for row in _rows(fields, "group", ("group", *GROUP_FIELDS)):
        override: dict[str, Any] = {"group": row.get("group", "")}
        if row.get("replicas"):
            override["replicas"] = _number(row["replicas"])
        for key in ("image", "image_tag"):
            if row.get(key):
                override[key] = row[key]
        for key in ("command", "args"):  # words as a shell splits them: `--port 8080 --name 'line a'`
            if row.get(key):
                override[key] = _words(row[key], f"group {row.get('group')}: {key}")
        if env := labels_from_text(row.get("env", ""), f"group {row.get('group')}: env"):
            override["env"] = env
        groups.append(override)
    document["groups"] = groups
    if fields.get("failover_after", "").strip():
        document["failover"] = {"after": fields["failover_after"].strip(),
                                "move_back": fields.get("failover_move_back") == "1"}
    return document


def form_view(document: dict[str, Any]) -> dict[str, Any]:
    """What the app form shows of a document: text for its fields, rows for its references, ports and groups."""
    kind = document.get("kind", "Workload")
    body = document if kind == "Workload" else {**(document.get("template") or {}),
                                                 **{k: document[k] for k in ("description", "labels")
                                                    if k in document}}
    health = body.get("health") or {}
    refs = [{"use": "env", "as": r["name"], "from": _ref_source(r), "key": r["key"]} for r in body.get("env_from", [])]
    refs += [{"use": "file", "as": r["path"], "from": _ref_source(r), "key": r["key"]} for r in body.get("files", [])]
    groups = [{"group": g["group"], "replicas": g.get("replicas", ""), "image": g.get("image") or "",
               "image_tag": g.get("image_tag") or "", "command": shlex.join(g["command"]) if g.get("command") else "",
               "args": shlex.join(g["args"]) if g.get("args") else "",
               "env": labels_text(g.get("env") or {})} for g in document.get("groups", [])]
    failover = document.get("failover")
    return {
        "kind": kind, "name": document.get("name", ""), "namespace": document.get("namespace", "default"),
        "description": body.get("description", ""), "labels": labels_text(body.get("labels") or {}),
        "runtime": body.get("runtime", "process"), "command": "\n".join(body.get("command", [])),
        "image": body.get("image") or "", "args": "\n".join(body.get("args", [])),
        "env": "\n".join(f"{k}={v}" for k, v in (body.get("env") or {}).items()),
        "refs": refs + [{} for _ in range(EXTRA_ROWS)],
        "ports": list(body.get("ports", [])) + [{} for _ in range(EXTRA_ROWS)],
        "limit_memory": (body.get("limits") or {}).get("memory", ""),
        "limit_cpu": (body.get("limits") or {}).get("cpu", ""), "restart": body.get("restart", "always"),
        "health": {**health, "command": shlex.join(health["command"]) if health.get("command") else ""},
        "replicas": body.get("replicas", ""), "node": body.get("node") or "",
        "node_selector": labels_text(body.get("node_selector") or {}),
        "groups": groups + [{} for _ in range(EXTRA_ROWS)],
        "failover_after": failover.get("after", "") if failover else "",
        "failover_move_back": failover.get("move_back", True) if failover else True,
    }


def _ref_source(ref: dict[str, Any]) -> str:
    return f"ConfigItem/{ref['config_item']}" if ref.get("config_item") else f"Secret/{ref.get('secret')}"


# --- pages --------------------------------------------------------------------------------------------------------


def _summary(views: list[dict[str, Any]]) -> dict[str, int]:
    counts = {"running": 0, "failed": 0, "other": 0}
    for view in views:
        if view["node"] is None:
            continue
        key = "running" if view["status"] == "running" else "failed" if view["status"] in FAILED else "other"
        counts[key] += 1
    return counts


@get("/apps", summary="Apps: Workloads and BatchWorkloads at the registry with where they run", **page("apps.read"))
async def apps_page(request: AnyRequest) -> Template:
    store, caller = store_of(request), caller_of(request)
    views = await workload_views(store, caller)
    apps = []
    for kind in APP_KINDS:
        for item in await access.documents(store, caller, kind):
            source = f"{kind} {item['name']}"
            mine = [v for v in views if v["namespace"] == item["namespace"] and v["source"] == source]
            apps.append({**item, "counts": _summary(mine)})
    return show(request, "apps.html", apps=apps)


async def _app_form(request: AnyRequest, document: dict[str, Any], *, is_new: bool, problems: list[str],
                    workspace: str = "", status_code: int = 200) -> Template:
    store, caller = store_of(request), caller_of(request)
    sources = [f"{kind}/{item['name']}" for kind in ("ConfigItem", "Secret")
               for item in await access.documents(store, caller, kind)
               if item["namespace"] == document.get("namespace", "default")]
    return show(request, "app_form.html", status_code=status_code, app=form_view(document), is_new=is_new,
                problems=problems, workspace=workspace, sources=sorted(set(sources)), runtimes=RUNTIMES,
                restarts=RESTARTS, health_types=HEALTH_TYPES,
                nodes=[n["name"] for n in await access.visible_nodes(store, caller)],
                groups=[g["name"] for g in await access.visible_groups(store, caller)],
                workspaces=[w for w in await access.workspaces(store) if caller.sees(w)])


@get("/apps/edit", summary="The app form: a new Workload or BatchWorkload (?kind=), or ?kind=&namespace=&name= to "
     "edit one", **page("apps.deploy"))
async def app_form(request: AnyRequest) -> Template:
    query = request.query_params
    kind = query.get("kind") or "Workload"
    namespace, name = query.get("namespace") or "default", query.get("name", "")
    if kind not in APP_KINDS:
        raise NotFound(f"the app form edits Workload and BatchWorkload documents, not {kind}")
    found = await _stored(store_of(request), caller_of(request), kind, namespace, name) if name else None
    if name and found is None:
        raise NotFound(f"no {kind} {namespace}/{name} at the registry")
    document, workspace = found or ({"namespace": namespace}, "")
    return await _app_form(request, {**document, "kind": kind}, is_new=found is None, problems=[],
                           workspace=workspace)


@post("/apps/edit", summary="Create or change a Workload or BatchWorkload from the app form", status_code=303,
      **page("apps.deploy", action="change apps"))
async def app_save(request: AnyRequest) -> Response[Any]:
    fields = await form_fields(request)
    kind, namespace = fields.get("kind", "Workload"), fields.get("namespace", "").strip() or "default"
    name, is_new = fields.get("name", "").strip(), fields.get("is_new") == "1"
    document: dict[str, Any] = {"kind": kind, "namespace": namespace, "name": name}
    try:
        found = await _stored(store_of(request), caller_of(request), kind, namespace, name) if name else None
        if found is not None and is_new:
            raise ConfigError(f"{kind} {namespace}/{name} exists already (edit it from the Apps page)")
        document = app_from_form(fields, found[0] if found else None)
        node = document.get("node") if kind == "Workload" else None
        workspace = await _workspace_for(request, kind, namespace, name, node, fields.get("workspace", ""))
        await _apply(request, [document], workspace, "app form")
    except (ConfigError, NotFound) as exc:
        problems = problems_of(exc) if isinstance(exc, ConfigError) else [str(exc)]
        return await _app_form(request, document, is_new=is_new, problems=problems,
                               workspace=fields.get("workspace", ""), status_code=400)
    flash(request, "ok", f"{kind} {namespace}/{name} saved: its nodes get it with their next heartbeat.")
    return see_other(_app_path(kind, namespace, name))


def _app_path(kind: str, namespace: str, name: str) -> str:
    return f"/apps/batch/{quote(namespace)}/{quote(name)}" if kind == "BatchWorkload" else \
        f"/workloads/{quote(namespace)}/{quote(name)}"


@get("/apps/batch/{namespace:str}/{name:str}", summary="A BatchWorkload: its groups with their overrides, the state "
     "of every node's instance with the reason of a failure, versions", **page("apps.read"))
async def batch_page(request: AnyRequest, namespace: FromPath[str], name: FromPath[str]) -> Template:
    store, caller = store_of(request), caller_of(request)
    found = await _stored(store, caller, "BatchWorkload", namespace, name)
    if found is None:
        raise NotFound(f"no BatchWorkload {namespace}/{name} at the registry")
    document, workspace = found
    views = [v for v in await workload_views(store, caller) if v["namespace"] == namespace
             and v["source"] == f"BatchWorkload {name}" and v["node"] is not None]
    by_origin = {v["origin"]: v for v in views}
    members = {g["name"]: g for g in await access.visible_groups(store, caller)}
    nodes = {n["name"]: n for n in await access.visible_nodes(store, caller)}
    groups = []
    for override in document.get("groups", []):
        group = members.get(override["group"])
        rows = []
        for node in (group or {}).get("nodes", []):
            view = by_origin.get(node)
            info = nodes.get(node, {})
            if view is None:
                reason = ("the node is in workspace " + str(info.get("workspace")) if info.get("workspace") !=
                          workspace else "the node is paused" if info.get("paused") else "not placed yet")
                view = {"node": None, "status": "not-placed", "reason": reason, "ready": 0, "replicas": None,
                        "restarts": 0, "instances": [], "last_event": "", "reported_at": None, "node_status": None}
            rows.append({"origin": node, "instance": f"{name}.{node}", **view})
        groups.append({"group": override["group"], "exists": group is not None, "rows": rows,
                       "overrides": {k: override[k] for k in GROUP_FIELDS if override.get(k) not in (None, {})}})
    versions = list(reversed(await history.versions(store, caller, "BatchWorkload", namespace, name)))
    return show(request, "apps_batch.html", namespace=namespace, name=name, document=document,
                workspace=workspace, groups=groups, versions=versions,
                failed=sum(1 for g in groups for r in g["rows"] if r["status"] in FAILED))


@post("/apps/batch/{namespace:str}/{name:str}/rollback", summary="Apply a kept version of a BatchWorkload again "
      "(operators)", status_code=303, **page("apps.operate", action="roll back"))
async def batch_rollback(request: AnyRequest, namespace: FromPath[str], name: FromPath[str]) -> Response[Any]:
    raw = (await form_fields(request)).get("version", "")
    back = f"/apps/batch/{quote(namespace)}/{quote(name)}"
    try:
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigError(f"rollback: version: expected a version number, got {raw!r}")
        done = await history.rollback(store_of(request), caller_of(request), "BatchWorkload", namespace, name,
                                      int(raw))
    except (ConfigError, NotFound) as exc:
        flash(request, "error", str(exc))
        return see_other(back)
    flash(request, "ok", f"BatchWorkload {namespace}/{name} rolled back to version {raw}: now version "
                         f"{done['version']}." if done["changed"] else
          f"BatchWorkload {namespace}/{name} runs version {raw}'s spec already.")
    return see_other(back)


@post("/apps/delete", summary="Delete a Workload or BatchWorkload (fields kind, namespace, name); its nodes stop "
      "and drop its instances", status_code=303, **page("apps.deploy", action="delete apps"))
async def app_delete(request: AnyRequest) -> Response[Any]:
    return await delete_from_form(request, APP_KINDS, "/apps")


ROUTE_HANDLERS = [apps_page, app_form, app_save, batch_page, batch_rollback, app_delete]
