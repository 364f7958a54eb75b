"""The audit log: who did what to which target, when and from where."""

from __future__ import annotations

import time
from typing import Any

from gateway.store.db import Database

FIELDS = ("id", "ts", "actor", "action", "target", "detail", "address")


class AuditLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(self, actor: str, action: str, target: str, detail: str = "", address: str = "") -> None:
        await self._db.execute(
            "INSERT INTO audit (ts, actor, action, target, detail, address) VALUES (?, ?, ?, ?, ?, ?)",
            (time.time(), actor, action, target, detail, address),
        )

    async def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest entries first: ts, actor, action, target, detail, address."""
        rows = await self._db.rows(
            "SELECT ts, actor, action, target, detail, address FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [dict(zip(FIELDS[1:], row, strict=True)) for row in rows]

    async def page(self, limit: int, before: int | None = None, actor: str = "") -> list[dict[str, Any]]:
        """A page of entries, the newest first, with their ids: those before an id, of one actor when given."""
        sql = "SELECT id, ts, actor, action, target, detail, address FROM audit WHERE 1=1"
        params: list[Any] = []
        if before is not None:
            sql += " AND id < ?"
            params.append(before)
        if actor:
            sql += " AND actor = ?"
            params.append(actor)
        rows = await self._db.rows(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))
        return [dict(zip(FIELDS, row, strict=True)) for row in rows]
