"""Versions and events of workloads (tables workload_versions and workload_events), and how far the registry has
each workload's events (meta values), so that what it has not got survives a restart."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from gateway.store.db import Database

DELIVERED = "registry_events_delivered"  # meta: workload id -> the id of its newest event the registry has
FEED_START = "registry_events_from"  # meta: the newest event id when the node began to keep DELIVERED


class WorkloadRecords:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- versions ---------------------------------------------------------------------------------------------

    async def latest_version(self, namespace: str, name: str) -> tuple[int, str] | None:
        """(version, spec) of the newest version of a workload."""
        rows = await self._db.rows("SELECT version, spec FROM workload_versions WHERE namespace=? AND name=? "
                                   "ORDER BY version DESC LIMIT 1", (namespace, name))
        return (int(rows[0][0]), str(rows[0][1])) if rows else None

    async def add_version(self, namespace: str, name: str, spec: str, *, actor: str, note: str, keep: int) -> int:
        """Keep a spec as the next version and forget those older than the newest `keep`; its number."""
        async with self._db.transaction() as db:
            cursor = await db.execute("SELECT coalesce(max(version), 0) FROM workload_versions "
                                      "WHERE namespace=? AND name=?", (namespace, name))
            row = await cursor.fetchone()
            version = int(row[0]) + 1 if row else 1
            await db.execute("INSERT INTO workload_versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (namespace, name, version, spec, time.time(), actor, note))
            await db.execute("DELETE FROM workload_versions WHERE namespace=? AND name=? AND version <= ?",
                             (namespace, name, version - keep))
        return version

    async def versions(self, namespace: str, name: str) -> list[dict[str, Any]]:
        rows = await self._db.rows("SELECT version, spec, created_at, actor, note FROM workload_versions "
                                   "WHERE namespace=? AND name=? ORDER BY version", (namespace, name))
        return [{"version": int(v), "spec": spec, "created_at": created, "actor": actor, "note": note}
                for v, spec, created, actor, note in rows]

    async def version(self, namespace: str, name: str, version: int) -> str | None:
        """The spec of one version; None when it is not kept."""
        rows = await self._db.rows("SELECT spec FROM workload_versions WHERE namespace=? AND name=? AND version=?",
                                   (namespace, name, version))
        return str(rows[0][0]) if rows else None

    # --- events -----------------------------------------------------------------------------------------------

    async def add_event(self, namespace: str, name: str, ts: float, event: str, instance: str, reason: str) -> int:
        """Keep an event; its id, which keeps growing across restarts of the gateway."""
        return await self._db.insert(
            "INSERT INTO workload_events (namespace, name, ts, event, instance, reason) VALUES (?, ?, ?, ?, ?, ?)",
            (namespace, name, ts, event, instance, reason))

    async def trim_events(self, namespace: str, name: str, keep: int) -> None:
        """Forget the events of a workload older than its newest `keep`."""
        await self._db.execute(
            "DELETE FROM workload_events WHERE namespace=? AND name=? AND id <= (SELECT id FROM workload_events "
            "WHERE namespace=? AND name=? ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (namespace, name, namespace, name, keep))

    async def events(self, namespace: str, name: str, *, after: int, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` events after id `after`, oldest first."""
        rows = await self._db.rows(
            "SELECT id, ts, event, instance, reason FROM workload_events WHERE namespace=? AND name=? AND id > ? "
            "ORDER BY id DESC LIMIT ?", (namespace, name, after, limit))
        return [{"id": int(i), "ts": ts, "event": event, "instance": instance, "reason": reason}
                for i, ts, event, instance, reason in reversed(rows)]

    # --- delivery to the registry -----------------------------------------------------------------------------

    async def delivery(self) -> tuple[int, dict[str, int]]:
        """Where the feed to the registry starts (the newest event id when the node began to keep deliveries,
        recorded the first time this is asked) and the newest event id the registry has, per workload."""
        await self._db.execute("INSERT INTO meta SELECT ?, coalesce(max(id), 0) FROM workload_events WHERE true "
                               "ON CONFLICT(key) DO NOTHING", (FEED_START,))
        values = {str(key): str(value) for key, value in await self._db.rows(
            "SELECT key, value FROM meta WHERE key IN (?, ?)", (FEED_START, DELIVERED))}
        delivered = {str(k): int(v) for k, v in json.loads(values.get(DELIVERED, "{}")).items()}
        return int(values[FEED_START]), delivered

    def queue_delivered(self, delivered: Mapping[str, int]) -> None:
        """Keep the newest event id the registry has per workload; durable with the store's next flush."""
        self._db.queue_meta(DELIVERED, json.dumps(dict(delivered), sort_keys=True))
