"""Registry routes on the nodes: the latest counters each node reported of each registry-owned route
(`route_counters`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.registry.store.db import Statement, Tables

Counters = tuple[str, str, int, int, int, int, int, str, str]  # namespace, name, accepted, delivered, failed,
# dropped, queued, state, last error


class RouteTables(Tables):
    async def record(self, node: str, counters: Sequence[Counters], now: float) -> None:
        """In one transaction: a node's whole set of route counters (routes it no longer reports go)."""
        statements: list[Statement] = [("DELETE FROM route_counters WHERE node=?", (node,))]
        statements += [("INSERT INTO route_counters VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (node, *row, now))
                       for row in counters]
        await self.database.transaction(statements)

    async def counters(self, namespace: str | None = None, name: str | None = None) -> list[tuple[Any, ...]]:
        """(node, namespace, name, accepted, delivered, failed, dropped, queued, state, last error, reported at)
        of the reported routes (of one route), by node."""
        where, args = ["1=1"], []
        for column, value in (("namespace", namespace), ("name", name)):
            if value is not None:
                where.append(f"{column}=?")
                args.append(value)
        return await self.database.rows(
            "SELECT node, namespace, name, accepted, delivered, failed, dropped, queued, state, last_error, "
            f"reported_at FROM route_counters WHERE {' AND '.join(where)} ORDER BY namespace, name, node", *args)
