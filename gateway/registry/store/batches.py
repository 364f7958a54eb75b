"""Batches that many nodes join with one bundle (`batches`: how many may join, how many did, until when)."""

from __future__ import annotations

import json
from typing import Any

from gateway.registry.store.db import Tables


class BatchTables(Tables):
    async def exists(self, name: str) -> bool:
        return bool(await self.database.rows("SELECT 1 FROM batches WHERE name=?", name))

    async def add(self, name: str, serial: str, prefix: str, count: int, labels: dict[str, str], expires_at: float,
                  now: float, workspace: str) -> None:
        await self.database.write(
            "INSERT INTO batches (name, serial, prefix, max_count, labels, expires_at, created_at, workspace) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", name, serial, prefix, count, json.dumps(labels), expires_at, now,
            workspace)

    async def listing(self) -> list[tuple[Any, ...]]:
        """(name, prefix, count, used, revoked, labels, expires at, created at, workspace) of every batch."""
        return [(*row[:5], json.loads(row[5]), *row[6:]) for row in await self.database.rows(
            "SELECT name, prefix, max_count, used, revoked, labels, expires_at, created_at, workspace FROM batches "
            "ORDER BY name")]

    async def get(self, name: str) -> tuple[Any, ...] | None:
        """(certificate serial, prefix, count, used, revoked, labels, expires at, workspace) of a batch."""
        rows = await self.database.rows("SELECT serial, prefix, max_count, used, revoked, labels, expires_at, "
                                        "workspace FROM batches WHERE name=?", name)
        return (*rows[0][:5], json.loads(rows[0][5]), *rows[0][6:]) if rows else None

    async def workspace(self, name: str) -> str | None:
        rows = await self.database.rows("SELECT workspace FROM batches WHERE name=?", name)
        return str(rows[0][0]) if rows else None

    async def revoke(self, name: str) -> bool:
        """Whether there was such a batch."""
        return bool(await self.database.write("UPDATE batches SET revoked=1 WHERE name=?", name))

    async def take_one(self, name: str) -> int | None:
        """Count one node against a batch that has a place left; its number (1…count), None when it has none."""
        # the WHERE clause keeps two nodes at once from both taking the last place
        [taken] = await self.database.transaction([(
            "UPDATE batches SET used=used+1 WHERE name=? AND used < max_count AND revoked=0 RETURNING used", (name,))])
        return int(taken[0][0]) if taken else None

    async def mark_node(self, node: str, batch: str) -> None:
        """Remember the batch a node joined with."""
        await self.database.write("UPDATE nodes SET batch=? WHERE name=?", batch, node)
