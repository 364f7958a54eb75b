"""Services on the nodes: the events each node reported of each Service (`service_events`, the newest of each node
and service)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from gateway.registry.store.db import Statement, Tables

Event = tuple[str, str, float, int, str, str]  # namespace, name, ts, seq, event, detail


class ServiceTables(Tables):
    async def record_events(self, node: str, events: Sequence[Event], keep: int, now: float,
                            known: Collection[tuple[str, str]]) -> None:
        """In one transaction: a node's new events of the services in `known` (each once: the same node, service,
        time and seq again is ignored), the newest `keep` per service; the events of services no longer known go."""
        statements: list[Statement] = []
        for namespace, name in await self.database.rows(
                "SELECT DISTINCT namespace, name FROM service_events WHERE node=?", node):
            if (namespace, name) not in known:
                statements.append(("DELETE FROM service_events WHERE node=? AND namespace=? AND name=?",
                                   (node, namespace, name)))
        services = set()
        for namespace, name, ts, seq, event, detail in events:
            if (namespace, name) in known:
                services.add((namespace, name))
                statements.append(("INSERT INTO service_events VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                                   (node, namespace, name, ts, seq, event, detail, now)))
        for namespace, name in sorted(services):
            statements.append((
                "DELETE FROM service_events WHERE node=? AND namespace=? AND name=? AND ts < (SELECT ts FROM "
                "service_events WHERE node=? AND namespace=? AND name=? ORDER BY ts DESC, seq DESC LIMIT 1 OFFSET ?)",
                (node, namespace, name, node, namespace, name, keep - 1)))
        if statements:
            await self.database.transaction(statements)

    async def events(self, limit: int) -> list[tuple[Any, ...]]:
        """(namespace, name, node, ts, seq, event, detail) of the newest `limit` events of each service, newest
        first."""
        return await self.database.rows(
            "SELECT namespace, name, node, ts, seq, event, detail FROM (SELECT namespace, name, node, ts, seq, event, "
            "detail, ROW_NUMBER() OVER (PARTITION BY namespace, name ORDER BY ts DESC, seq DESC, node DESC) AS n "
            "FROM service_events) AS newest WHERE n <= ? ORDER BY namespace, name, ts DESC, seq DESC, node DESC",
            limit)
