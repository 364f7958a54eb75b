"""Versions and events of workloads, kept in the store (tables workload_versions and workload_events), and how far
the registry has each workload's events (meta values), so that what it has not got survives a restart."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.store import Store

KEEP_VERSIONS = 50
KEEP_EVENTS = 1000
DELIVERED = "registry_events_delivered"  # meta: workload id -> the id of its newest event the registry has
FEED_START = "registry_events_from"  # meta: the newest event id when the node began to keep DELIVERED


class WorkloadHistory:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._events_written = 0
        self._delivered: dict[str, int] = {}
        self._feed_start = 0

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

    async def add_event(self, namespace: str, name: str, event: str, instance: str = "", reason: str = "", *,
                        ts: float | None = None) -> int:
        """Keep an event; its id, which keeps growing across restarts of the gateway."""
        event_id = await self.store.insert(
            "INSERT INTO workload_events (namespace, name, ts, event, instance, reason) VALUES (?, ?, ?, ?, ?, ?)",
            (namespace, name, time.time() if ts is None else ts, event, instance, reason))
        self._events_written += 1
        if self._events_written % 100 == 0:
            await self.store.execute(
                "DELETE FROM workload_events WHERE namespace=? AND name=? AND id <= (SELECT id FROM workload_events "
                "WHERE namespace=? AND name=? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (namespace, name, namespace, name, KEEP_EVENTS))
        return event_id

    async def events(self, namespace: str, name: str, *, after: int = 0, limit: int = 200) -> list[dict[str, Any]]:
        """The newest `limit` events after id `after`, oldest first."""
        rows = await self.store.rows(
            "SELECT id, ts, event, instance, reason FROM workload_events WHERE namespace=? AND name=? AND id > ? "
            "ORDER BY id DESC LIMIT ?", (namespace, name, after, limit))
        return [{"id": int(i), "ts": ts, "event": event, "instance": instance, "reason": reason}
                for i, ts, event, instance, reason in reversed(rows)]

    # --- delivery to the registry ---------------------------------------------------------------------------

    async def load_delivered(self) -> None:
        """Read how far the registry has each workload's events. The first time, the events stored until then count
        as delivered: the gateway that recorded them numbered them otherwise when it sent them."""
        await self.store.execute("INSERT INTO meta SELECT ?, coalesce(max(id), 0) FROM workload_events WHERE true "
                                 "ON CONFLICT(key) DO NOTHING", (FEED_START,))
        values = {str(key): str(value) for key, value in await self.store.rows(
            "SELECT key, value FROM meta WHERE key IN (?, ?)", (FEED_START, DELIVERED))}
        self._feed_start = int(values[FEED_START])
        self._delivered = {str(k): int(v) for k, v in json.loads(values.get(DELIVERED, "{}")).items()}

    def delivered_up_to(self, workload: str) -> int:
        """The id of the newest event of a workload (`<namespace>/<name>`) the registry has."""
        return self._delivered.get(workload, self._feed_start)

    def mark_delivered(self, newest: Mapping[str, int]) -> None:
        """The registry has these workloads' events up to these ids; durable with the store's next flush (until
        then a restart sends them again, which the registry ignores)."""
        before = dict(self._delivered)
        for workload, event_id in newest.items():
            self._delivered[workload] = max(event_id, self.delivered_up_to(workload))
        if self._delivered != before:
            self.store.queue_meta(DELIVERED, json.dumps(self._delivered, sort_keys=True))
