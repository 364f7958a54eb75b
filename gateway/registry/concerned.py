"""Which nodes a change of registry documents can concern, so that only their channels look again
(gateway.registry.channel): a Device its node (before and after), a DeviceModel the nodes of the Devices that use it,
a Workload or BatchWorkload the nodes it is placed on (the scheduler tells the nodes a new placement concerns), a
ConfigItem or Secret the nodes with a workload of its namespace, an Endpoint or Route the nodes it goes to by node,
group, workspace and selector (before and after) and, for an Endpoint, those of the Routes that use it. None: the
change cannot be narrowed (every channel looks)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gateway.registry.routes import placed_on

if TYPE_CHECKING:
    from gateway.registry.store import RegistryStore

Change = tuple[str, str, str, str | None, bytes | None]  # kind, namespace, name, node, the new JSON (None: deleted)
NARROWED = ("Device", "DeviceModel", "Workload", "BatchWorkload", "ConfigItem", "Secret", "Endpoint", "Route")


def _json(text: str | bytes | None) -> dict[str, Any]:
    try:
        raw = json.loads(text) if text else {}
    except ValueError:
        return {}
    return raw if isinstance(raw, dict) else {}


async def nodes_concerned(store: RegistryStore, changes: Sequence[Change], workspace: str) -> set[str] | None:
    """The nodes whose documents the changes (about to be stored in `workspace`, or deleted) may alter; read before
    the change is stored, so what a node had and what it will have both count. None when they cannot be narrowed."""
    if any(kind not in NARROWED for kind, *_ in changes):
        return None
    nodes: set[str] = set()
    placements: list[tuple[str, str, str, str, str, str, float]] | None = None
    routing: tuple[dict[str, tuple[dict[str, str], str]], dict[str, str]] | None = None
    for kind, namespace, name, node_named, body in changes:
        stored = await store.documents.stored(kind, namespace, name)
        if kind == "Device":
            nodes |= {node for node in (stored[0] if stored else None, node_named) if node}
        elif kind == "DeviceModel":
            nodes |= {node for node, document in await store.documents.devices_in(namespace)
                      if _json(document).get("model") == name}
        elif kind in ("Workload", "BatchWorkload", "ConfigItem", "Secret"):
            if placements is None:
                placements = await store.workloads.placements()
            nodes |= {node for ns, _, node, source_kind, source, _, _ in placements if ns == namespace and (
                kind in ("ConfigItem", "Secret") or (source_kind == kind and source == name))}
        else:  # Endpoint, Route
            if routing is None:
                routing = ({node: (labels, ws) for node, labels, _, _, _, _, ws in await store.placement_nodes()},
                           await store.group_members())
            info, groups = routing
            placed = [(_json(stored[1]), stored[2])] if stored else []
            if body is not None:
                placed.append((_json(body), workspace))
            if kind == "Endpoint":  # sent too where a Route that uses it goes
                placed += [(raw, ws) for _, _, _, document, ws in await store.documents.of_kinds(("Route",), namespace)
                           if name in ((raw := _json(document)).get("source"), raw.get("target"))]
            for raw, document_workspace in placed:
                nodes |= {node for node, (labels, node_workspace) in info.items()
                          if placed_on(raw, document_workspace, node, labels, node_workspace, groups.get(node))}
    return nodes
