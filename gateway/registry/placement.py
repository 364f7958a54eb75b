"""Where registry workloads run: the scheduler, a supervised task of the registry (every half heartbeat interval,
and after every apply), brings `workload_placements` in step with the documents and the nodes.

A Workload with `node:` runs on that node, one with `node_selector:` on every node of its workspace whose labels
match and that has room for it; a BatchWorkload runs as one Workload `<name>.<node>` on every node of its groups
(with the group's `replicas`). A placement takes what the workload requests — `requests.cpu` and `requests.memory`
per instance, its `accelerators` per instance, times its replicas — from what the node reported as allocatable,
less what is placed there already (what runs keeps its share first); when no candidate node has room it is not
placed and its status says which resource is short on which node, and by how much. A node that has not reported
what it offers takes no workload that requests anything (a workload that requests nothing goes anywhere). A paused
node keeps what it has and gets nothing new.

Failover (a BatchWorkload's `failover`) moves a node's instances to the node of its group with the fewest that has
room for them: when the node has been offline for `after` (and back when it returns if `move_back` says so), and
when they have kept failing on a healthy node (status failed or restarting, or reported so within `after`) for
`after` — that move is audited (`workload.move`), shown as an event, and the node is avoided by those instances
for `avoid_for`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from gateway.registry import access
from gateway.registry.store import OFFLINE_AFTER, RegistryStore
from gateway.resources.schema import BatchWorkload, Requests, dec_hook
from gateway.workloads.accelerators import as_counts

log = logging.getLogger(__name__)
FAILING = ("failed", "restarting")  # statuses that start (and keep) a failing streak
MOVES_KEPT = 7 * 86400.0  # seconds a move is kept after it stopped being avoided
Placement = tuple[str, str, str]  # namespace, name, node
Source = tuple[str, str, str]  # source kind, source, origin


@dataclass
class Need:
    """What placing a workload on a node takes from it: cores, bytes of memory, accelerators by name."""

    cpu: float = 0.0
    memory: float = 0.0
    accelerators: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.cpu or self.memory or self.accelerators)

    def add(self, other: Need) -> None:
        self.cpu += other.cpu
        self.memory += other.memory
        for name, count in other.accelerators.items():
            self.accelerators[name] = self.accelerators.get(name, 0) + count

    def describe(self) -> str:
        parts = [f"{_cores(self.cpu)} cores"] if self.cpu else []
        parts += [f"{_mib(self.memory)} memory"] if self.memory else []
        parts += [f"{count} x {name}" for name, count in sorted(self.accelerators.items())]
        return ", ".join(parts) or "nothing"


def _number(value: float, places: int) -> str:
    return f"{value:.{places}f}".rstrip("0").rstrip(".")


def _cores(value: float) -> str:
    return _number(value, 3)


def _mib(value: float) -> str:
    """Bytes in GiB from 1 GiB up, else in MiB: `1.5 GiB`, `512 MiB`."""
    if value >= 1 << 30:
        return f"{_number(value / (1 << 30), 1)} GiB"
    return f"{_number(value / (1 << 20), 1)} MiB"


def need_of(raw: dict[str, Any], replicas: Any = None) -> Need:
    """What one node running a raw Workload (or a BatchWorkload's template) needs: its requests and accelerators per
    instance times its replicas (`replicas`, a group's override, over the document's)."""
    count = replicas if replicas is not None else raw.get("replicas", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
        return Need()
    try:
        requests = msgspec.convert(raw.get("requests") or {}, Requests, dec_hook=dec_hook)
    except msgspec.ValidationError:  # the apply checked it; one stored before a schema change requests nothing
        requests = Requests()
    wanted = raw.get("accelerators") or {}
    accelerators = {str(k): v * count for k, v in wanted.items()
                    if isinstance(v, int) and not isinstance(v, bool) and v > 0} if isinstance(wanted, dict) else {}
    return Need(cpu=(requests.cpu or 0.0) * count, memory=float(requests.memory or 0) * count,
                accelerators=accelerators)


class PlacementNode(msgspec.Struct):
    name: str
    labels: dict[str, str]
    workspace: str
    paused: bool
    healthy: bool
    down_for: float  # seconds without a heartbeat (since it joined, if it never sent one); 0 when healthy
    accelerators: dict[str, int] | None = None  # what the node offers; None before it reported
    cpu: float | None = None  # allocatable cores; None before the node reported them
    memory: float | None = None  # allocatable bytes
    version: str | None = None  # the fieldgate version of its last heartbeat


def _amount(raw: Any) -> float | None:
    return float(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) and raw >= 0 else None


async def placement_nodes(store: RegistryStore, since: float = 0.0) -> dict[str, PlacementNode]:
    """The nodes as placement sees them; a node not heard from since `since` (the registry's start: the time the
    registry was away is not the nodes' downtime) counts as down only once the registry has been up for
    OFFLINE_AFTER heartbeat intervals."""
    now = time.time()
    nodes = {}
    infos = await store.node_infos()
    for name, labels, joined_at, last, interval, paused, workspace in await store.placement_nodes():
        healthy = last is not None and now - last <= OFFLINE_AFTER * interval
        # a node is down once it has missed OFFLINE_AFTER heartbeats, and not before the registry (back since
        # `since`) has been up as long: a node it has not heard from yet may be waiting out its backoff
        down_since = max(last or joined_at, since) + (OFFLINE_AFTER * interval if since > (last or joined_at) else 0)
        info = infos.get(name, {})
        reported = info.get("allocatable")
        allocatable: dict[str, Any] = reported if isinstance(reported, dict) else {}
        accelerators = info.get("accelerators", allocatable.get("accelerators"))
        version = info.get("version")
        nodes[name] = PlacementNode(
            name, labels, workspace, paused, healthy, 0.0 if healthy else max(0.0, now - down_since),
            as_counts(accelerators) if accelerators is not None else None, _amount(allocatable.get("cpu")),
            _amount(allocatable.get("memory")), str(version)[:64] if version is not None else None)
    return nodes


def short_of(need: Need, node: PlacementNode, used: Need | None) -> list[str]:
    """What `node` lacks to take `need` besides what is placed there (`used`), each as text; empty when it fits."""
    used = used or Need()
    lacks = []
    if need.cpu or need.memory:
        if node.cpu is None or node.memory is None:
            lacks.append("has not reported its allocatable CPU and memory yet")
        else:
            free = node.cpu - used.cpu
            if need.cpu > free + 1e-9:
                lacks.append(f"cpu {_cores(max(free, 0))} of {_cores(node.cpu)} cores free, "
                             f"{_cores(need.cpu - free)} short")
            free = node.memory - used.memory
            if need.memory > free:
                lacks.append(f"memory {_mib(max(free, 0))} of {_mib(node.memory)} free, {_mib(need.memory - free)} "
                             "short")
    if need.accelerators:
        if node.accelerators is None:
            lacks.append("has not reported its accelerators yet")
        else:
            for name, count in sorted(need.accelerators.items()):
                have = node.accelerators.get(name, 0)
                free = have - used.accelerators.get(name, 0)
                if count > free:
                    lacks.append(f"{name} {max(free, 0)} of {have} free, {count - free} short")
    return lacks


def shortfall(need: Need, nodes: list[PlacementNode], used: dict[str, Need]) -> str:
    """Why none of `nodes` takes a workload that needs `need`, for its status."""
    per_node = [f"{node.name}: " + ", ".join(short_of(need, node, used.get(node.name)) or ["paused"])
                for node in sorted(nodes, key=lambda n: n.name)]
    return (f"pending: needs {need.describe()} on a node; none has it free ("
            + ("; ".join(per_node) or "no nodes") + ")")


@dataclass
class Ask:
    """One placement the documents want: where it may go, in order."""

    namespace: str
    name: str
    source: Source
    need: Need
    hosts: list[str]  # tried first, in order
    spread: list[str] = field(default_factory=list)  # then the one of these with the fewest placements
    fallback: list[str] = field(default_factory=list)  # then these (it stays where it is)
    failed_on: str | None = None  # the node it keeps failing on and is moving away from
    failure: str = ""  # why it is moving, for the audit and the event
    avoid_for: float = 0.0  # how long it stays away from `failed_on` once moved
    workspace: str = access.DEFAULT_WORKSPACE


@dataclass
class Move:
    namespace: str
    name: str
    node: str
    moved_to: str
    reason: str
    avoid_for: float
    workspace: str


@dataclass
class Plan:
    wanted: dict[Placement, Source] = field(default_factory=dict)
    # why a placement was not made, and its source (node None: a Workload placed nowhere, or a batch instance)
    pending: dict[tuple[str, str, str | None], tuple[str, Source]] = field(default_factory=dict)
    moves: list[Move] = field(default_factory=list)
    used: dict[str, Need] = field(default_factory=dict)  # what the placements take from each node
    nodes: dict[str, PlacementNode] = field(default_factory=dict)
    ended: list[Placement] = field(default_factory=list)  # failing streaks that are over (the app is well again)


async def plan(store: RegistryStore, now: float | None = None, since: float = 0.0) -> Plan:
    """The placements the documents and the nodes call for, without changing any."""
    now = time.time() if now is None else now
    nodes = await placement_nodes(store, since)
    result = Plan(nodes=nodes)
    members: dict[str, list[str]] = {}
    for member, group_name in (await store.group_members()).items():
        members.setdefault(group_name, []).append(member)
    current: dict[Placement, Source] = {
        (ns, name, node): (kind, source, origin)
        for ns, name, node, kind, source, origin, _ in await store.workloads.placements()}
    placed: dict[tuple[str, str], str] = {}
    for ns, name, node in current:  # the first placement counts, should two registry replicas have raced
        placed.setdefault((ns, name), node)
    failures = await store.workloads.failures()
    statuses = {(ns, name, node): status for node, ns, name, status, *_ in await store.workloads.statuses()}
    avoided = await store.workloads.avoided(now)
    asks: list[Ask] = []
    selector_asks: dict[tuple[str, str], list[Ask]] = {}
    for kind, namespace, name, document, workspace in await store.documents.of_kinds(("Workload", "BatchWorkload")):
        if kind == "Workload":
            raw = json.loads(document)
            selector = raw.get("node_selector") or {}
            targets = ([raw["node"]] if raw.get("node") else
                       [n.name for n in nodes.values() if n.workspace == workspace and
                        all(n.labels.get(k) == v for k, v in selector.items())] if selector else [])
            need = need_of(raw)
            for target in targets:
                if target in nodes:
                    ask = Ask(namespace, name, ("Workload", name, target), need, [target])
                    asks.append(ask)
                    selector_asks.setdefault((namespace, name), []).append(ask)
            continue
        batch = msgspec.json.decode(document, type=BatchWorkload, dec_hook=dec_hook)
        failover = batch.failover
        for override in batch.groups:
            group = [n for n in members.get(override.group, []) if n in nodes and nodes[n].workspace == workspace]
            down = {n for n in group if failover is not None and not nodes[n].healthy
                    and nodes[n].down_for >= float(failover.after)}
            need = need_of(batch.template, override.replicas)
            for origin in sorted(group):
                instance = f"{batch.name}.{origin}"
                previous = placed.get((namespace, instance))
                ask = Ask(namespace, instance, ("BatchWorkload", batch.name, origin), need, [],
                          workspace=workspace)
                away = set(avoided.get((namespace, instance), set()))
                streak = failures.get((namespace, instance, previous or ""))
                if failover is not None and previous is not None and streak is not None:
                    since, last, status, reason = streak
                    if statuses.get((namespace, instance, previous)) not in FAILING and \
                            now - last >= float(failover.after):
                        result.ended.append((namespace, instance, previous))  # well again for a while
                    elif nodes[previous].healthy and now - since >= float(failover.after):
                        away.add(previous)
                        ask.failed_on, ask.avoid_for = previous, float(failover.avoid_for)
                        ask.failure = f"{status} on {previous} for {now - since:.0f}s" + (f": {reason}" if reason
                                                                                          else "")
                _candidates(ask, origin, previous, down, away, group, nodes,
                            failover.move_back if failover else True)
                asks.append(ask)
    _allocate(result, asks, current, nodes)
    # a Workload runs where it fits among the nodes it names; placed nowhere, it is pending with one line for all
    for (namespace, name), group_asks in selector_asks.items():
        for ask in group_asks:
            result.pending.pop((namespace, name, ask.hosts[0]), None)
        placed_somewhere = any((namespace, name, ask.hosts[0]) in result.wanted for ask in group_asks)
        if not placed_somewhere and group_asks[0].need and any(not nodes[a.hosts[0]].paused for a in group_asks):
            result.pending[(namespace, name, None)] = (shortfall(
                group_asks[0].need, [nodes[a.hosts[0]] for a in group_asks], result.used), ("Workload", name, ""))
    for ask in asks:
        if ask.failed_on is None:
            continue
        host = next((node for ns, name, node in result.wanted if (ns, name) == (ask.namespace, ask.name)), None)
        if host is not None and host != ask.failed_on:
            result.moves.append(Move(ask.namespace, ask.name, ask.failed_on, host, ask.failure, ask.avoid_for,
                                     ask.workspace))
    return result


def _candidates(ask: Ask, origin: str, previous: str | None, down: set[str], away: set[str], group: list[str],
                nodes: dict[str, PlacementNode], move_back: bool) -> None:
    """Where the instances of a batch workload's node `origin` may run now, in order, into `ask`."""
    usable = [n for n in group if n != origin and n not in down and n not in away and nodes[n].healthy
              and not nodes[n].paused]
    if origin not in down and origin not in away:
        if previous is None or previous == origin or (move_back and not nodes[origin].paused):
            ask.hosts = [origin]
        else:
            ask.hosts = [previous] if previous in usable else [origin]  # moved and staying there
        return
    if previous is not None and previous != origin and previous in usable:
        ask.hosts = [previous]
    ask.spread = usable
    ask.fallback = [previous or origin]  # nowhere else to go: it stays, and runs when its node is back


def _allocate(result: Plan, asks: list[Ask], current: dict[Placement, Source],
              nodes: dict[str, PlacementNode]) -> None:
    """Give each ask the first of its candidates that has room, what runs first (it keeps its share)."""
    load: dict[str, int] = {}

    def runs(ask: Ask) -> bool:
        return any((ask.namespace, ask.name, node) in current for node in ask.hosts)

    for ask in sorted(asks, key=lambda a: (not runs(a), a.namespace, a.name, a.hosts)):
        spread = sorted(ask.spread, key=lambda n: (load.get(n, 0), n))
        tried: list[PlacementNode] = []
        chosen = None
        for node in dict.fromkeys([*ask.hosts, *spread, *ask.fallback]):
            info = nodes.get(node)
            if info is None:
                continue
            key = (ask.namespace, ask.name, node)
            tried.append(info)
            if key not in current and info.paused:  # a paused node keeps what it has and gets nothing new
                continue
            if not short_of(ask.need, info, result.used.get(node)):
                chosen = key
                break
        if chosen is None:
            if ask.need and any(not info.paused or (ask.namespace, ask.name, info.name) in current
                                for info in tried):
                target = ask.hosts[0] if ask.source[0] == "Workload" else None
                result.pending[(ask.namespace, ask.name, target)] = (shortfall(ask.need, tried, result.used),
                                                                      ask.source)
            continue
        result.wanted[chosen] = ask.source
        result.used.setdefault(chosen[2], Need()).add(ask.need)
        if ask.source[0] == "BatchWorkload":
            load[chosen[2]] = load.get(chosen[2], 0) + 1


async def schedule(store: RegistryStore, since: float = 0.0) -> int:
    """Bring the placements in step with the documents and the nodes; how many placements changed. A node counts
    as down since `since` at the earliest (the registry's start: the time it was away is not the nodes' downtime)."""
    async with store.workloads.placing:
        if not await store.workloads.placements() and not await store.documents.of_kinds(
                ("Workload", "BatchWorkload")):
            return 0  # nothing placed and nothing to place: no need to read every node (a fleet without apps)
        now = time.time()
        result = await plan(store, now, since)
        current = {(ns, name, node) for ns, name, node, *_ in await store.workloads.placements()}
        wanted = result.wanted
        removed, added = current - wanted.keys(), wanted.keys() - current
        if removed or added:
            await store.workloads.place(removed, {key: wanted[key] for key in added}, now)
        for namespace, name, node in sorted(added):
            log.info("workload %s/%s placed on node %s", namespace, name, node)
    for key in result.ended:
        await store.workloads.forget_failure(*key)
    for move in result.moves:
        reason = f"kept failing ({move.reason}); moved to {move.moved_to}"
        await store.workloads.record_move(move.namespace, move.name, move.node, move.moved_to, now,
                                          now + move.avoid_for, reason[:500], MOVES_KEPT)
        await access.record(store, "registry:scheduler", access.workspace_scope(move.workspace), "workload.move",
                            f"Workload/{move.namespace}/{move.name}", "ok",
                            {"from": move.node, "to": move.moved_to, "reason": reason[:400]})
        log.warning("workload %s/%s moved from node %s to %s: %s", move.namespace, move.name, move.node,
                    move.moved_to, move.reason)
    return len(current ^ wanted.keys())


@contextlib.asynccontextmanager
async def scheduling(store: RegistryStore, interval: float) -> AsyncIterator[None]:
    """Run the scheduler every half heartbeat interval (0.5 s to 5 s) while the registry serves."""
    period = min(max(interval / 2, 0.5), 5.0)
    started = time.time()

    async def loop() -> None:
        failing = False
        while True:
            try:
                await schedule(store, started)
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
