"""Registry workloads on the nodes: where the scheduler placed them (`workload_placements`), the status each node
reports of them (`workload_status`), their events (`workload_events`, the newest of each node and workload), since
when they have been failing on a node (`workload_failures`) and the moves away from a node they kept failing on
(`workload_moves`, which the scheduler avoids until `avoid_until`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gateway.registry.store.db import NODES_CHANNEL, Opened, Statement, Tables
from gateway.wire import EventReport

Placement = tuple[str, str, str]  # namespace, name, node
Status = tuple[str, str, str, str, int, int, int, str, str]  # namespace, name, status, reason, replicas, ready,
# restarts, last event, instances as JSON


def placements_on_statement(node: str) -> Statement:
    """The query of WorkloadTables.placements_on, for Database.reads; placements_on_rows makes its rows."""
    return ("SELECT namespace, name, source_kind, source, origin FROM workload_placements WHERE node=? "
            "ORDER BY namespace, name", (node,))


def placements_on_rows(rows: Sequence[tuple[Any, ...]]) -> list[tuple[str, str, str, str, str]]:
    return [(str(ns), str(name), str(kind), str(source), str(origin)) for ns, name, kind, source, origin in rows]


class WorkloadTables(Tables):
    def __init__(self, store: Opened) -> None:
        super().__init__(store)
        # held by whatever reads the placements and then writes them (the scheduler, a takeover's adoption), so
        # that neither writes from a reading the other has changed meanwhile
        self.placing = asyncio.Lock()

    async def placements(self) -> list[tuple[str, str, str, str, str, str, float]]:
        """(namespace, name, node, source kind, source, origin, placed at) of every placement, oldest first."""
        return [(str(ns), str(name), str(node), str(kind), str(source), str(origin), placed_at)
                for ns, name, node, kind, source, origin, placed_at in await self.database.rows(
                    "SELECT namespace, name, node, source_kind, source, origin, placed_at FROM workload_placements "
                    "ORDER BY placed_at, node")]

    async def placements_on(self, node: str) -> list[tuple[str, str, str, str, str]]:
        """(namespace, name, source kind, source, origin) of the workloads placed on a node."""
        sql, args = placements_on_statement(node)
        return placements_on_rows(await self.database.rows(sql, *args))

    async def placed_nodes(self, namespace: str, name: str) -> list[str]:
        return [str(node) for (node,) in await self.database.rows(
            "SELECT DISTINCT node FROM workload_placements WHERE namespace=? AND name=? ORDER BY node",
            namespace, name)]

    async def place(self, removed: Iterable[Placement], added: Mapping[Placement, tuple[str, str, str]],
                    now: float) -> None:
        """In one transaction: drop placements (and the status their nodes reported) and add new ones (source
        kind, source, origin); a placement another registry replica added meanwhile stays as it is."""
        statements: list[Statement] = []
        removed = list(removed)
        for key in removed:
            statements += [("DELETE FROM workload_placements WHERE namespace=? AND name=? AND node=?", key),
                           ("DELETE FROM workload_status WHERE namespace=? AND name=? AND node=?", key),
                           ("DELETE FROM workload_failures WHERE namespace=? AND name=? AND node=?", key)]
        for key, (kind, source, origin) in added.items():
            statements.append(("INSERT INTO workload_placements VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                               (*key, kind, source, origin, now)))
        if statements:
            await self.database.transaction(statements)
            for node in sorted({key[2] for key in removed} | {key[2] for key in added}):
                await self.database.notify(NODES_CHANNEL, node)  # the node's channel pushes its new workloads

    async def runs_on(self, node: str, namespace: str, name: str) -> bool:
        """Whether the registry placed the workload on the node or the node reports it."""
        return bool(await self.database.rows(
            "SELECT 1 FROM workload_placements WHERE node=? AND namespace=? AND name=? UNION "
            "SELECT 1 FROM workload_status WHERE node=? AND namespace=? AND name=?", *(node, namespace, name) * 2))

    # --- status and events --------------------------------------------------------------------------------------

    async def record_status(self, node: str, statuses: Sequence[Status],
                            events: Mapping[tuple[str, str], Sequence[EventReport]], keep_events: int,
                            now: float, failing: Iterable[str] = ()) -> None:
        """In one transaction: a node's whole set of workload statuses, and the events it reported (each once, the
        newest `keep_events` per workload; the events of workloads it no longer reports go); a workload whose status
        is one of `failing` keeps the time it began failing there, any other forgets it."""
        failing = set(failing)
        statements: list[Statement] = [("DELETE FROM workload_status WHERE node=?", (node,))]
        statements += [("INSERT INTO workload_status VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (node, *status, now))
                       for status in statuses]
        bad = {(status[0], status[1]): status for status in statuses if status[2] in failing}
        listed = {(status[0], status[1]) for status in statuses}
        for namespace, name in await self.database.rows(
                "SELECT namespace, name FROM workload_failures WHERE node=?", node):
            if (namespace, name) not in listed:
                statements.append(("DELETE FROM workload_failures WHERE namespace=? AND name=? AND node=?",
                                   (namespace, name, node)))
        for (namespace, name), status in bad.items():
            statements += [
                ("INSERT INTO workload_failures VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                 (namespace, name, node, now, now, status[2], status[3])),
                ("UPDATE workload_failures SET last_failed=?, status=?, reason=? WHERE namespace=? AND name=? AND "
                 "node=?", (now, status[2], status[3], namespace, name, node))]
        held = await self.database.rows("SELECT DISTINCT namespace, name FROM workload_events WHERE node=?", node)
        for namespace, name in held:
            if (namespace, name) not in events:
                statements.append(("DELETE FROM workload_events WHERE node=? AND namespace=? AND name=?",
                                   (node, namespace, name)))
        for (namespace, name), reported in events.items():
            if not reported:
                continue
            statements += [("INSERT INTO workload_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                            (node, namespace, name, e.ts, e.seq, e.event, e.instance, e.reason, now))
                           for e in reported]
            statements.append((
                "DELETE FROM workload_events WHERE node=? AND namespace=? AND name=? AND ts < (SELECT ts FROM "
                "workload_events WHERE node=? AND namespace=? AND name=? ORDER BY ts DESC, seq DESC LIMIT 1 "
                "OFFSET ?)", (node, namespace, name, node, namespace, name, keep_events - 1)))
        await self.database.transaction(statements)

    async def failures(self) -> dict[tuple[str, str, str], tuple[float, float, str, str]]:
        """(namespace, name, node) → (failing since, last reported failing, status, reason) of the workloads that
        began failing on their nodes and have not been forgotten."""
        return {(str(ns), str(name), str(node)): (float(since), float(last), str(status), str(reason))
                for ns, name, node, since, last, status, reason in await self.database.rows(
                    "SELECT namespace, name, node, since, last_failed, status, reason FROM workload_failures")}

    async def forget_failure(self, namespace: str, name: str, node: str) -> None:
        """End a failing streak: the workload has been well on the node for a while."""
        await self.database.write("DELETE FROM workload_failures WHERE namespace=? AND name=? AND node=?",
                                  namespace, name, node)

    async def record_move(self, namespace: str, name: str, node: str, moved_to: str, now: float, avoid_until: float,
                          reason: str, keep: float) -> None:
        """Keep that a workload was moved away from a node it kept failing on (moves older than `keep` go)."""
        await self.database.transaction([
            ("DELETE FROM workload_moves WHERE avoid_until < ?", (now - keep,)),
            ("INSERT INTO workload_moves VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
             (namespace, name, node, moved_to, now, avoid_until, reason)),
            ("DELETE FROM workload_failures WHERE namespace=? AND name=? AND node=?", (namespace, name, node))])

    async def avoided(self, now: float) -> dict[tuple[str, str], set[str]]:
        """(namespace, name) → the nodes a workload was moved away from and should not go back to before now."""
        result: dict[tuple[str, str], set[str]] = {}
        for ns, name, node in await self.database.rows(
                "SELECT namespace, name, node FROM workload_moves WHERE avoid_until > ?", now):
            result.setdefault((str(ns), str(name)), set()).add(str(node))
        return result

    async def moves(self, namespace: str, name: str) -> list[tuple[Any, ...]]:
        """(node, moved to, moved at, avoid until, reason) of a workload's moves, newest first."""
        return await self.database.rows(
            "SELECT node, moved_to, moved_at, avoid_until, reason FROM workload_moves WHERE namespace=? AND name=? "
            "ORDER BY moved_at DESC", namespace, name)

    async def statuses(self) -> list[tuple[Any, ...]]:
        """(node, namespace, name, status, reason, replicas, ready, restarts, last event, instances JSON, reported
        at) of every reported workload."""
        return await self.database.rows(
            "SELECT node, namespace, name, status, reason, replicas, ready, restarts, last_event, instances, "
            "reported_at FROM workload_status")

    async def node_events(self, node: str, limit: int) -> list[tuple[Any, ...]]:
        """(namespace, name, ts, event, instance, reason) of the newest events of every workload on a node, newest
        first."""
        return await self.database.rows(
            "SELECT namespace, name, ts, event, instance, reason FROM workload_events WHERE node=? "
            "ORDER BY ts DESC, seq DESC LIMIT ?", node, limit)

    async def events(self, namespace: str, name: str, node: str | None = None) -> list[tuple[Any, ...]]:
        """(node, ts, event, instance, reason) of a workload's events (on one node), newest first."""
        return await self.database.rows(
            "SELECT node, ts, event, instance, reason FROM workload_events WHERE namespace=? AND name=? "
            + ("AND node=? " if node else "") + "ORDER BY ts DESC, seq DESC, node DESC", namespace, name,
            *([node] if node else []))
