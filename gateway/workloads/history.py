"""Versions and events of workloads, kept in the store (tables workload_versions and workload_events)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.store import Store

KEEP_VERSIONS = 50
KEEP_EVENTS = 1000


class WorkloadHistory:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._events_written = 0

    async def latest(self, namespace: str, name: str) -> tuple[int, str] | None:
        rows = await self.store.rows("SELECT version, spec FROM workload_versions WHERE namespace=? AND name=? "
                                     "ORDER BY version DESC LIMIT 1", (namespace, name))
        return (int(rows[0][0]), str(rows[0][1])) if rows else None

    async def add_version(self, namespace: str, name: str, spec: str, *, actor: str = "", note: str = "") -> int:
        """Keep a deployed spec as the next version (the oldest beyond KEEP_VERSIONS are forgotten)."""
        async with self.store.transaction() as db:
            cursor = await db.execute("SELECT coalesce(max(version), 0) FROM workload_versions "
                                      "WHERE namespace=? AND name=?", (namespace, name))
            row = await cursor.fetchone()
            version = int(row[0]) + 1 if row else 1
            await db.execute("INSERT INTO workload_versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (namespace, name, version, spec, time.time(), actor, note))
            await db.execute("DELETE FROM workload_versions WHERE namespace=? AND name=? AND version <= ?",
                             (namespace, name, version - KEEP_VERSIONS))
        return version

    async def versions(self, namespace: str, name: str) -> list[dict[str, Any]]:
        rows = await self.store.rows("SELECT version, spec, created_at, actor, note FROM workload_versions "
                                     "WHERE namespace=? AND name=? ORDER BY version", (namespace, name))
        return [{"version": int(v), "spec": spec, "created_at": created, "actor": actor, "note": note}
                for v, spec, created, actor, note in rows]

    async def version(self, namespace: str, name: str, version: int) -> str | None:
        rows = await self.store.rows("SELECT spec FROM workload_versions WHERE namespace=? AND name=? AND version=?",
                                     (namespace, name, version))
        return str(rows[0][0]) if rows else None

    async def add_event(self, namespace: str, name: str, event: str, instance: str = "", reason: str = "") -> None:
        await self.store.execute("INSERT INTO workload_events (namespace, name, ts, event, instance, reason) "
                                 "VALUES (?, ?, ?, ?, ?, ?)", (namespace, name, time.time(), event, instance, reason))
        self._events_written += 1
        if self._events_written % 100 == 0:
            await self.store.execute(
                "DELETE FROM workload_events WHERE namespace=? AND name=? AND id <= (SELECT id FROM workload_events "
                "WHERE namespace=? AND name=? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (namespace, name, namespace, name, KEEP_EVENTS))

    async def events(self, namespace: str, name: str, *, after: int = 0, limit: int = 200) -> list[dict[str, Any]]:
        """The newest `limit` events after id `after`, oldest first."""
        rows = await self.store.rows(
            "SELECT id, ts, event, instance, reason FROM workload_events WHERE namespace=? AND name=? AND id > ? "
            "ORDER BY id DESC LIMIT ?", (namespace, name, after, limit))
        return [{"id": int(i), "ts": ts, "event": event, "instance": instance, "reason": reason}
                for i, ts, event, instance, reason in reversed(rows)]
