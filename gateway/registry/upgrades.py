"""Batch upgrades from the registry: an UpgradeTask takes a gateway version (a wheel directory, kind `gateway`) or
the appliance's system (one signed RAUC bundle, kind `os`) to a set of nodes, a few at a time.

`fieldgate registry upgrade create --version V (--wheels DIR | --os-bundle FILE) (--nodes a,b | --labels k=v |
--group G)` (or `POST /api/v1/upgrades`, admin) records the files in the database, so every replica can serve them
to the nodes over mutual TLS, and one row per target node. With each heartbeat the registry moves the running tasks
on: it hands the task to at most `concurrency` nodes at once, only to healthy ones; a node that already runs the
version (the gateway's, or for an OS bundle the system's its heartbeat reports) is `skipped`; once more than
`max_failures` nodes failed, the nodes not started yet are `cancelled`. Stopping a task
(`POST /api/v1/upgrades/{task}/stop`) cancels its nodes not started yet; the nodes already upgrading finish, then
the task is `stopped`.

On the node (gateway.uplink.upgrade) the heartbeat answer names the assignment; the node downloads the wheels and
starts `fieldgate upgrade --from-wheels`, or downloads the bundle and asks the appliance's system updater for it
(gateway.ops.osupdate), and reports the upgrade's status with the reason and the tail of its log in every heartbeat.
A task's kind is not stored apart: a task whose file is a bundle (`*.raucb`, never a wheel's name) is an OS task.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from litestar import get, post
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from gateway.errors import ConfigError, NotFound
from gateway.ops.osupdate import BUNDLE_FILE, MAX_BUNDLE_BYTES
from gateway.ops.upgrade import ROLLBACK_FAILED, ROLLED_BACK, SUCCEEDED, UPGRADING, read_wheelhouse
from gateway.registry import access
from gateway.registry.auth import AnyRequest, client_node, store_of
from gateway.registry.store.upgrades import PIECE
from gateway.webkit.assets import NO_COMPRESSION
from gateway.wire import WHEEL_FILE, UpgradeAssignment, UpgradeReport, WheelFile

if TYPE_CHECKING:
    from gateway.registry.store import RegistryStore

PENDING, ASSIGNED, SKIPPED, CANCELLED, LOST = "pending", "assigned", "skipped", "cancelled", "lost"
RUNNING, STOPPING, STOPPED = "running", "stopping", "stopped"  # task states besides `succeeded` and `failed`
UNFINISHED = (RUNNING, STOPPING)
FAILED = (ROLLED_BACK, ROLLBACK_FAILED, LOST)
SILENCE_GRACE = 300.0  # seconds past a task's deadline an in-flight node may stay silent before it counts as lost
FINAL = (SUCCEEDED, *FAILED, SKIPPED, CANCELLED)
IN_FLIGHT = (ASSIGNED, UPGRADING)
MAX_WHEELS_BYTES = 512 * 1024 * 1024
GATEWAY, OS = "gateway", "os"  # task kinds: a gateway version (wheels), the appliance's system (an OS bundle)
ONE_KIND = "expected exactly one of --wheels, --os-bundle"
BASE64_TEXT = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_advancing = asyncio.Lock()  # one replica process moves tasks on at a time (heartbeats arrive concurrently)


class CreateUpgrade(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    version: str
    wheels: dict[str, str] = {}  # file name → base64 content
    os_bundle: dict[str, str] | None = None  # instead of wheels: one RAUC bundle, file name → base64 content
    nodes: list[str] | None = None
    labels: dict[str, str] | None = None
    group: str | None = None
    concurrency: Annotated[int, msgspec.Meta(ge=1)] = 1
    max_failures: Annotated[int, msgspec.Meta(ge=0)] = 0
    deadline: Annotated[float, msgspec.Meta(gt=0)] = 120.0
    workspace: str = access.DEFAULT_WORKSPACE


@dataclass(frozen=True)
class Bundle:
    """An OS bundle to record: its file name, size and its bytes in pieces of at most PIECE (read as they are
    stored, so that no more than a piece of a file is held)."""

    name: str
    size: int
    pieces: Callable[[], Iterable[bytes]]

    @classmethod
    def from_file(cls, path: Path) -> Bundle:
        if not path.is_file():
            raise ConfigError(f"--os-bundle {path}: no such file")

        def pieces() -> Iterator[bytes]:
            with path.open("rb") as source:
                while piece := source.read(PIECE):
                    yield piece

        return cls(path.name, path.stat().st_size, pieces)

    @classmethod
    def from_base64(cls, name: str, text: str) -> Bundle:
        """The bundle as the API takes it; ConfigError when `text` is not base64 (checked whole, before any of it is
        stored)."""
        if len(text) % 4 or not BASE64_TEXT.fullmatch(text):
            raise ConfigError("$.os_bundle: not base64 (the alphabet A-Z a-z 0-9 + /, padded with = to a multiple "
                              "of 4 characters)")
        step = PIECE // 3 * 4  # characters of whole 3-byte groups: each piece decodes alone

        def pieces() -> Iterator[bytes]:
            for start in range(0, len(text), step):
                yield base64.b64decode(text[start:start + step])

        padding = 2 if text.endswith("==") else 1 if text.endswith("=") else 0
        return cls(name, len(text) // 4 * 3 - padding, pieces)


def kind_of(files: Iterable[str]) -> str:
    """A task's kind from its file names: OS when its file is a bundle."""
    return OS if any(BUNDLE_FILE.match(name) for name in files) else GATEWAY


def check_bundle(bundle: Bundle) -> None:
    """An OS bundle's name and size; ConfigError says what is wrong (its signature is RAUC's to check, on the
    node)."""
    if not BUNDLE_FILE.match(bundle.name):
        raise ConfigError(f"--os-bundle: not a RAUC bundle's file name (expected NAME.raucb, the name of letters, "
                          f"digits and . _ + -): {bundle.name!r}")
    if bundle.size == 0:
        raise ConfigError(f"--os-bundle {bundle.name}: empty")
    if bundle.size > MAX_BUNDLE_BYTES:
        raise ConfigError(f"--os-bundle {bundle.name}: {bundle.size} bytes, more than the "
                          f"{MAX_BUNDLE_BYTES // 2**20} MiB an OS bundle may have")


# --- the registry side --------------------------------------------------------------------------------------------


def check_wheels(version: str, wheels: dict[str, bytes]) -> None:
    """The wheels must hold fieldgate at `version` (and each of its plugins once); ConfigError says why not."""
    pins = wheel_pins(wheels)
    if pins["fieldgate"] != version:
        raise ConfigError(f"--version {version}: the fieldgate wheel is version {pins['fieldgate']}")


def wheel_pins(wheels: dict[str, bytes]) -> dict[str, str]:
    """The fieldgate distributions among the wheels, name → version; ConfigError when they cannot be an upgrade."""
    if not wheels:
        raise ConfigError("--wheels: no .whl files in it")
    bad = sorted(name for name in wheels if not WHEEL_FILE.match(name))
    if bad:
        raise ConfigError(f"--wheels: not a wheel file name: {bad[0]!r}")
    if sum(len(content) for content in wheels.values()) > MAX_WHEELS_BYTES:
        raise ConfigError(f"--wheels: more than {MAX_WHEELS_BYTES // 2**20} MiB of wheels")
    with tempfile.TemporaryDirectory(prefix="fieldgate-wheels-") as directory:
        for name in wheels:
            (Path(directory) / name).touch()  # read_wheelhouse looks at the names only
        try:
            pins = read_wheelhouse(Path(directory))
        except ConfigError as exc:
            raise ConfigError(str(exc).replace(f"--from-wheels {directory}", "--wheels")) from None
    return pins


async def _targets(store: RegistryStore, spec: CreateUpgrade) -> list[str]:
    chosen = [name for name, given in (("--nodes", spec.nodes), ("--labels", spec.labels), ("--group", spec.group))
              if given]
    if len(chosen) != 1:
        raise ConfigError("expected exactly one of --nodes, --labels, --group" +
                          (f" (got {', '.join(chosen)})" if chosen else ""))
    nodes = {node["name"]: node for node in await store.nodes() if node["workspace"] == spec.workspace}
    if spec.nodes:
        unknown = [name for name in spec.nodes if name not in nodes]
        if unknown:
            raise ConfigError(f"--nodes: no node {unknown[0]} in workspace {spec.workspace}")
        return list(dict.fromkeys(spec.nodes))
    if spec.labels:
        labels = spec.labels
        targets = sorted(name for name, node in nodes.items()
                         if all(node["labels"].get(k) == v for k, v in labels.items()))
        if not targets:
            raise ConfigError(f"--labels {','.join(f'{k}={v}' for k, v in labels.items())}: matches no node")
        return targets
    if spec.group not in {group["name"] for group in await store.groups()}:
        raise ConfigError(f"--group {spec.group}: no such group")
    targets = sorted(name for name, node in nodes.items() if node["group"] == spec.group)
    if not targets:
        raise ConfigError(f"--group {spec.group}: has no nodes")
    return targets


async def create_task(store: RegistryStore, spec: CreateUpgrade, wheels: dict[str, bytes],
                      actor: access.Caller, bundle: Bundle | None = None) -> dict[str, Any]:
    """Check and record an upgrade task with its wheels, or with an OS bundle instead; its view. A refusal is
    audited with its reason."""
    selector = {"nodes": spec.nodes, "labels": spec.labels, "group": spec.group}
    detail = {"version": spec.version, **selector, "concurrency": spec.concurrency,
              "max_failures": spec.max_failures, "kind": GATEWAY if bundle is None else OS,
              "wheels": sorted(wheels) if bundle is None else [bundle.name]}
    try:
        if bundle is None:
            check_wheels(spec.version, wheels)
        elif wheels:
            raise ConfigError(f"{ONE_KIND} (got both)")
        else:
            check_bundle(bundle)
        await access.check_workspace(store, spec.workspace)
        targets = await _targets(store, spec)
    except (ConfigError, NotFound) as exc:
        await record_refused(store, actor, spec.workspace, str(exc), detail)
        raise
    task = f"up-{secrets.token_hex(4)}"
    async with access.audited(store, actor, "upgrade.create", f"upgrade/{task}",
                              access.workspace_scope(spec.workspace)) as entry:
        entry.detail = {**detail, "targets": targets}
        await store.upgrades.create(task, spec.version, selector, spec.concurrency, spec.max_failures, spec.deadline,
                                    spec.workspace, actor.actor, wheels, targets, PENDING, "not started yet",
                                    time.time(), bundle=None if bundle is None else (bundle.name, bundle.pieces()))
    await advance(store)
    return await task_view(store, task)


async def record_refused(store: RegistryStore, actor: access.Caller, workspace: str, reason: str,
                         detail: dict[str, Any]) -> None:
    """Audit an upgrade task refused before it existed (bad wheels, too big, bad names, no targets): action
    `upgrade.create`, object `upgrade`, outcome `refused: <reason>`; in the caller's scope when the workspace named
    is not one it sees."""
    scope = access.workspace_scope(workspace) if actor.sees(workspace) else str(actor.scope)
    await access.record(store, actor, scope, "upgrade.create", "upgrade", f"refused: {reason}", detail)


async def advance(store: RegistryStore) -> bool:
    """Move every running task on: skip, hand out up to `concurrency`, cancel past `max_failures`, finish; whether
    a task was unfinished (none: no node has an assignment)."""
    async with _advancing:
        running = await store.upgrades.running(UNFINISHED)
        if not running:
            return False
        nodes = {node["name"]: node for node in await store.nodes()}
        for task, version, concurrency, max_failures, deadline, state in running:
            kind = kind_of(name for name, _, _ in await store.upgrades.wheels(task))
            await _advance_task(store, task, version, concurrency, max_failures, deadline, nodes,
                                stopping=state == STOPPING, kind=kind)
        return True


async def _advance_task(store: RegistryStore, task: str, version: str, concurrency: int, max_failures: int,
                        deadline: float, nodes: dict[str, dict[str, Any]], *, stopping: bool = False,
                        kind: str = GATEWAY) -> None:
    rows = await store.upgrades.node_states(task)
    status = {node: state for node, state, _ in rows}
    now = time.time()
    changes: list[tuple[str, str, str, dict[str, float]]] = []

    def set_status(node: str, new: str, reason: str, **times: float) -> None:
        status[node] = new
        changes.append((node, new, reason, times))

    silent_after = deadline + SILENCE_GRACE
    for node, state, updated in rows:  # a node that went quiet mid-upgrade must not hold the task forever
        if state in IN_FLIGHT and updated is not None and now - float(updated) > silent_after:
            set_status(node, LOST, f"no report from the node for {silent_after:.0f} s ({state} until then)",
                       finished_at=now)
    failed = sum(1 for s in status.values() if s in FAILED)
    for node, _, _ in rows:
        if status[node] != PENDING:
            continue
        if stopping:
            set_status(node, CANCELLED, "the task was stopped before this node started", finished_at=now)
            continue
        if failed > max_failures:
            set_status(node, CANCELLED, f"{failed} node(s) failed, more than --max-failures {max_failures}",
                       finished_at=now)
            continue
        info = nodes.get(node)
        if info is not None and running_version(info, kind) == version:
            set_status(node, SKIPPED, f"already runs version {version}" if kind == GATEWAY else
                       f"its system already runs version {version}", finished_at=now)
        elif sum(1 for s in status.values() if s in IN_FLIGHT) >= concurrency:
            continue
        elif info is None:
            set_status(node, CANCELLED, "the node was removed", finished_at=now)
        elif info["status"] == "healthy":
            ran = (f"it ran version {info['version']}" if kind == GATEWAY else
                   f"its system ran version {running_version(info, kind)}" if running_version(info, kind) else
                   "it reported no A/B system")
            set_status(node, ASSIGNED, f"handed to the node ({ran})", started_at=now)
    outcome = None
    if all(s in FINAL for s in status.values()):
        succeeded = all(s in (SUCCEEDED, SKIPPED) for s in status.values())
        outcome = STOPPED if stopping else "succeeded" if succeeded else "failed"
    await store.upgrades.move_on(task, changes, outcome, now)


def running_version(node: dict[str, Any], kind: str) -> str | None:
    """The version a node runs, as its heartbeat reported it: the gateway's, or for an OS task the system's (`system`,
    reported by nodes that run the appliance image)."""
    if kind == GATEWAY:
        return node["version"]  # type: ignore[no-any-return]
    system = node.get("info", {}).get("system")
    version = system.get("version") if isinstance(system, dict) else None
    return version if isinstance(version, str) else None


async def stop_task(store: RegistryStore, task: str, actor: access.Caller) -> dict[str, Any]:
    """Stop a task: its nodes not started yet are cancelled, the ones upgrading finish; its view."""
    view = await task_view(store, task, actor)
    async with access.audited(store, actor, "upgrade.stop", f"upgrade/{task}",
                              access.workspace_scope(view["workspace"])) as entry:
        pending = [node["node"] for node in view["nodes"] if node["status"] == PENDING]
        entry.detail = {"cancelled": pending,
                        "finishing": [node["node"] for node in view["nodes"] if node["status"] in IN_FLIGHT]}
        if view["state"] not in UNFINISHED:
            raise ConfigError(f"upgrade {task}: already {view['state']}, nothing to stop")
        async with _advancing:  # not while a heartbeat hands a pending node out
            await store.upgrades.stop(task, STOPPING, PENDING, CANCELLED,
                                      f"stopped by {actor.actor} before this node started", time.time())
    await advance(store)
    return await task_view(store, task)


async def on_heartbeat(store: RegistryStore, node: str, report: UpgradeReport | None, upgrading: bool = True
                       ) -> UpgradeAssignment | None:
    """Record a node's upgrade report, move the tasks on; the node's assignment, if it has one. `upgrading`: False
    when the heartbeat's write saw no unfinished task (then, without a report, there is nothing to look at)."""
    if report is not None:
        await store.upgrades.report(report.task, node, report.status, report.reason, report.log, time.time(),
                                    report.status != UPGRADING, IN_FLIGHT)
    elif not upgrading:
        return None
    if not await advance(store):  # a node is assigned only in an unfinished task (most heartbeats: none)
        return None
    assigned = await store.upgrades.assignment(node, ASSIGNED)
    if assigned is None:
        return None
    task, version, deadline = assigned
    wheels = [WheelFile(name=name, sha256=digest, size=size)
              for name, digest, size in await store.upgrades.wheels(task)]
    return UpgradeAssignment(task=task, version=version, deadline=deadline, wheels=wheels,
                             kind=kind_of(wheel.name for wheel in wheels))


async def task_views(store: RegistryStore, caller: access.Caller | None = None) -> list[dict[str, Any]]:
    """Every upgrade task (newest last) with its per-node statuses."""
    return [await task_view(store, task) for task, workspace in await store.upgrades.tasks()
            if caller is None or caller.sees(workspace)]


async def task_view(store: RegistryStore, task: str, caller: access.Caller | None = None) -> dict[str, Any]:
    row = await store.upgrades.task(task)
    if row is None or (caller is not None and not caller.sees(row[6])):
        raise NotFound(f"no upgrade task {task}")
    version, selector, concurrency, max_failures, deadline, state, workspace, by, created, finished = row
    nodes = [{"node": node, "status": status, "reason": reason, "log": text, "started_at": started,
              "finished_at": ended, "updated_at": updated}
             for node, status, reason, text, started, ended, updated in await store.upgrades.task_nodes(task)]
    stored = await store.upgrades.wheels(task)
    names = [name for name, _, _ in stored]
    files = [{"name": name, "sha256": digest, "size": size} for name, digest, size in stored]
    return {"id": task, "kind": kind_of(names), "version": version, "selector": selector, "concurrency": concurrency,
            "max_failures": max_failures, "deadline": deadline, "state": state, "workspace": workspace,
            "created_by": by, "created_at": created, "finished_at": finished, "wheels": names, "files": files,
            "nodes": nodes}


@post("/api/v1/upgrades", summary="Create an upgrade task: wheels or an OS bundle (name → base64) to nodes, a few "
      "at a time (admin)", status_code=201,
      request_max_body_size=max(MAX_WHEELS_BYTES, MAX_BUNDLE_BYTES) * 4 // 3 + 2**20)
async def create_upgrade(request: AnyRequest, data: JSONBody[CreateUpgrade]) -> dict[str, Any]:
    caller = await access.require_caller(request, "upgrades.run")
    store = store_of(request)
    bundle = None
    try:
        if not caller.sees(data.workspace):
            raise ConfigError(f"workspace {data.workspace!r}: no such workspace")
        if bool(data.wheels) == bool(data.os_bundle):
            raise ConfigError(f"{ONE_KIND} (got both)" if data.wheels else ONE_KIND)
        if data.os_bundle:
            if len(data.os_bundle) != 1:
                raise ConfigError(f"$.os_bundle: expected one file (name → base64), got {len(data.os_bundle)}")
            bundle = Bundle.from_base64(*next(iter(data.os_bundle.items())))
        try:
            wheels = {name: base64.b64decode(content, validate=True) for name, content in data.wheels.items()}
        except ValueError as exc:
            raise ConfigError(f"$.wheels: not base64: {exc}") from None
    except ConfigError as exc:
        await record_refused(store, caller, data.workspace, str(exc), {"version": data.version,
                                                                       "wheels": sorted(data.wheels),
                                                                       "os_bundle": sorted(data.os_bundle or {})})
        raise
    return await create_task(store, data, wheels, caller, bundle)


@get("/api/v1/upgrades", summary="Upgrade tasks with the status of every node")
async def list_upgrades(request: AnyRequest) -> list[dict[str, Any]]:
    caller = await access.require_caller(request, "upgrades.read")
    return await task_views(store_of(request), caller)


@get("/api/v1/upgrades/{task:str}", summary="One upgrade task with the status of every node")
async def show_upgrade(request: AnyRequest, task: FromPath[str]) -> dict[str, Any]:
    caller = await access.require_caller(request, "upgrades.read")
    return await task_view(store_of(request), task, caller)


@get("/api/v1/upgrades/{task:str}/wheels/{name:str}", summary="A file of an upgrade task (a wheel, or the OS "
     "bundle), for its nodes (mTLS)", media_type="application/octet-stream", opt={NO_COMPRESSION: True})
async def upgrade_wheel(request: AnyRequest, task: FromPath[str], name: FromPath[str]) -> Stream:
    node = await client_node(request)
    store = store_of(request)
    if not await store.upgrades.is_target(task, node):
        raise NotFound(f"no upgrade task {task} for node {node}")
    sizes = {filename: size for filename, _, size in await store.upgrades.wheels(task)}
    if name not in sizes:
        raise NotFound(f"upgrade task {task}: no wheel {name}")
    # a bundle goes piece by piece from the database, never whole in memory
    return Stream(store.upgrades.content(task, name), media_type="application/octet-stream",
                  headers={"Content-Length": str(sizes[name])})


@post("/api/v1/upgrades/{task:str}/stop", summary="Stop an upgrade task: nodes not started yet are cancelled, nodes "
      "upgrading finish (admin)", status_code=200)
async def stop_upgrade(request: AnyRequest, task: FromPath[str]) -> dict[str, Any]:
    caller = await access.require_caller(request, "upgrades.run")
    return await stop_task(store_of(request), task, caller)


ROUTE_HANDLERS = [create_upgrade, list_upgrades, show_upgrade, stop_upgrade, upgrade_wheel]


# --- the command line (`fieldgate registry upgrade …`, configured in gateway.registry.cli) ------------------------


def read_wheel_dir(directory: Path) -> dict[str, bytes]:
    if not directory.is_dir():
        raise ConfigError(f"--wheels {directory}: no such directory")
    return {wheel.name: wheel.read_bytes() for wheel in sorted(directory.glob("*.whl"))}


async def run_command(store: RegistryStore, args: argparse.Namespace) -> None:
    """`registry upgrade create|list|show|stop`."""
    if args.upgrade_action == "create":
        spec = CreateUpgrade(version=args.version, wheels={}, nodes=args.nodes, labels=args.labels or None,
                             group=args.group, concurrency=args.concurrency, max_failures=args.max_failures,
                             deadline=args.deadline, workspace=args.workspace)
        if spec.concurrency < 1 or spec.max_failures < 0:
            raise ConfigError("--concurrency: expected 1 or more; --max-failures: expected 0 or more")
        if (args.wheels is None) == (args.os_bundle is None):
            raise ConfigError(f"{ONE_KIND} (got both)" if args.wheels else ONE_KIND)
        if args.os_bundle is not None:  # read piece by piece as it is stored
            view = await create_task(store, spec, {}, access.cli_caller(), Bundle.from_file(args.os_bundle))
        else:
            view = await create_task(store, spec, read_wheel_dir(args.wheels), access.cli_caller())
        _print_task(view, as_json=args.json)
    elif args.upgrade_action == "show":
        _print_task(await task_view(store, args.id), as_json=args.json)
    elif args.upgrade_action == "stop":
        _print_task(await stop_task(store, args.id, access.cli_caller()), as_json=args.json)
    else:
        for view in await task_views(store):
            counts: dict[str, int] = {}
            for node in view["nodes"]:
                counts[node["status"]] = counts.get(node["status"], 0) + 1
            print(json.dumps(view) if args.json else f"{view['id']:<12} {view['kind']:<8} {view['version']:<10} "
                  f"{view['state']:<10} " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))


def _print_task(view: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(view))
        return
    what = (f"OS bundle {view['files'][0]['name']}, {view['files'][0]['size']} bytes, sha256 "
            f"{view['files'][0]['sha256']}" if view["kind"] == OS else f"{len(view['files'])} wheel(s)")
    print(f"upgrade {view['id']}: version {view['version']}, {view['state']} (concurrency {view['concurrency']}, "
          f"max failures {view['max_failures']}; kind {view['kind']}: {what})")
    for node in view["nodes"]:
        print(f"  {node['node']:<20} {node['status']:<24} {node['reason']}")
