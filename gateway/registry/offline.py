"""Offline failover, the registry's part: the plan a group with a consensus store needs to move apps off a dead member
while the registry is away, and the takeovers its members report when it is back.

A group has a plan when every node of it has reported consensus settings (`consensus:` of its Gateway document: the
peer and client URLs of its etcd member) with its heartbeats: its members with those URLs, and the placements of the
BatchWorkloads with `failover:` on the group's nodes (where the registry placed each instance, and the Workload with
the ConfigItems and Secrets it uses, so that a member can start it without the registry), and the receiving member's
own etcd certificate from the group's CA (gateway.registry.consensus_ca; never another member's key). The plan goes
down with a heartbeat answer when its version differs from the node's (gateway.wire.FailoverPlan). The node's part is
gateway.uplink.failover.

A member that took over a placement in the group reports it (gateway.wire.Takeover) with each heartbeat until the
plan names it as the host: the registry adopts it, so its placement agrees with the group, audited as
`failover.offline` by `node:<name>`. A takeover of a placement the registry no longer has, or of an origin outside the
reporting node's group, is refused and audited as such; the plan the node gets then tells it where the app belongs.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

import msgspec

from gateway.registry import access
from gateway.registry.consensus_ca import member_tls, url_hosts
from gateway.registry.store import RegistryStore
from gateway.registry.workloads import _refs, expand
from gateway.resources.schema import BatchWorkload, Workload, dec_hook
from gateway.wire import (
    MAX_FAILOVER_PLACEMENTS,
    MAX_GROUP_MEMBERS,
    FailoverPlacement,
    FailoverPlan,
    GroupMember,
    HeartbeatRequest,
    Takeover,
)
from gateway.workloads.secrets import SecretBox

log = logging.getLogger(__name__)
NO_PLAN = FailoverPlan(version="none", group="", members=[], placements=[])


def _consensus(info: dict[str, Any]) -> tuple[str, str] | None:
    """A node's etcd URLs as it reported them: https only (the group's etcd runs with mutual TLS; a node that still
    reports `http://` URLs counts as one without consensus settings, so its group has no plan)."""
    settings = info.get("consensus")
    if not isinstance(settings, dict):
        return None
    peer, client = settings.get("peer_url"), settings.get("client_url")
    if not isinstance(peer, str) or not isinstance(client, str) or len(peer) > 300 or len(client) > 300:
        return None
    if not peer.startswith("https://") or not client.startswith("https://") or not url_hosts(peer) \
            or not url_hosts(client):
        return None
    return peer, client


async def group_plan(store: RegistryStore, node: str) -> FailoverPlan | None:
    """The failover plan of the node's group; None when the group has none (no group, or a node of it without
    consensus settings)."""
    groups = await store.group_members()
    group = groups.get(node)
    if group is None:
        return None
    names = sorted(member for member, name in groups.items() if name == group)[:MAX_GROUP_MEMBERS]
    infos = await store.node_infos()
    members = []
    for name in names:
        urls = _consensus(infos.get(name, {}))
        if urls is None:
            return None  # every member, or none: a member missing would split the group's store
        members.append(GroupMember(name=name, peer_url=urls[0], client_url=urls[1]))
    if len(members) < 2:
        return None
    own = next(m for m in members if m.name == node)
    tls = await asyncio.to_thread(member_tls, store.data_dir, group, node, own.peer_url, own.client_url)
    placements: list[FailoverPlacement] = []
    batches: dict[tuple[str, str], BatchWorkload | None] = {}
    box = SecretBox(store.data_dir)
    for namespace, name, host, kind, source, origin, _ in await store.workloads.placements():
        if kind != "BatchWorkload" or origin not in names or len(placements) >= MAX_FAILOVER_PLACEMENTS:
            continue
        if (namespace, source) not in batches:
            document = await store.documents.get(kind, namespace, source)
            batches[(namespace, source)] = None if document is None else msgspec.json.decode(
                document, type=BatchWorkload, dec_hook=dec_hook)
        batch = batches[(namespace, source)]
        if batch is None or batch.failover is None:
            continue
        override = next((o for o in batch.groups if o.group == group), None)
        if override is None:
            continue
        raw = expand(batch, override, origin)
        try:
            workload = msgspec.convert(raw, Workload, dec_hook=dec_hook)
        except msgspec.ValidationError:
            continue  # stored before a schema change: it does not run anywhere
        used = []
        for ref_kind, ref in _refs(workload):
            stored = await store.documents.get(ref_kind, namespace, ref)
            if stored is not None:
                used.append(box.unseal_document(ref_kind, stored))
        placements.append(FailoverPlacement(workload=f"{namespace}/{name}", origin=origin, host=host,
                                            after=float(batch.failover.after), documents=[raw, *used]))
    body = msgspec.json.encode([group, members, placements, tls.ca, tls.cert])
    version = hashlib.sha256(body).hexdigest()[:32]
    return FailoverPlan(version=version, group=group, members=members, placements=placements, tls=tls)


async def plan_for(store: RegistryStore, node: str, beat: HeartbeatRequest) -> FailoverPlan | None:
    """The plan to send with the answer to a heartbeat: None when the node has it already (or neither has one). A
    heartbeat with takeovers always gets it, which settles them; one of a node without consensus settings (most
    nodes) costs no query."""
    if _consensus(beat.info) is None and beat.failover_version in ("", NO_PLAN.version) and not beat.takeovers:
        return None
    known = "" if beat.takeovers else beat.failover_version
    plan = await group_plan(store, node)
    if plan is None:
        return NO_PLAN if known != NO_PLAN.version and (known or beat.takeovers) else None
    return None if plan.version == known else plan


async def adopt(store: RegistryStore, node: str, takeovers: list[Takeover] | None) -> None:
    """Make the registry's placements agree with what the node took over in its group, each audited."""
    if not takeovers:
        return
    async with store.workloads.placing:
        await _adopt(store, node, takeovers)


async def _adopt(store: RegistryStore, node: str, takeovers: list[Takeover]) -> None:
    groups = await store.group_members()
    placements = {(ns, name): (host, kind, source, origin)
                  for ns, name, host, kind, source, origin, _ in await store.workloads.placements()}
    scope = access.workspace_scope(await store.node_workspace(node))
    for takeover in takeovers:
        namespace, _, name = takeover.workload.partition("/")
        found = placements.get((namespace, name))
        detail = {"node": node, "origin": takeover.origin, "previous": takeover.previous, "at": takeover.at}
        target = f"Workload/{takeover.workload}"
        if found is None or found[1] != "BatchWorkload" or found[3] != takeover.origin \
                or groups.get(takeover.origin) is None or groups.get(takeover.origin) != groups.get(node):
            await access.record(store, f"node:{node}", scope, "failover.offline", target,
                                "refused: no such placement in the node's group", detail)
            continue
        host, kind, source, origin = found
        if host == node:
            continue  # adopted already (the node reports until its plan names it)
        await store.workloads.place([(namespace, name, host)], {(namespace, name, node): (kind, source, origin)},
                                    time.time())
        log.info("workload %s taken over by node %s from %s while the registry was away", takeover.workload, node,
                 host)
        await access.record(store, f"node:{node}", scope, "failover.offline", target, "ok",
                            {**detail, "previous": host})

