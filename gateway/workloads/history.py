"""Versions and events of workloads, kept in the store, and how far the registry has each workload's events, so that
what it has not got survives a restart."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.store import Store

KEEP_VERSIONS = 50
KEEP_EVENTS = 1000


class WorkloadHistory:
    def __init__(self, store: Store) -> None:
        self.records = store.workloads
        self._events_written = 0
        self._delivered: dict[str, int] = {}
        self._feed_start = 0

    async def latest(self, namespace: str, name: str) -> tuple[int, str] | None:
        return await self.records.latest_version(namespace, name)

    async def add_version(self, namespace: str, name: str, spec: str, *, actor: str = "", note: str = "") -> int:
        """Keep a deployed spec as the next version (the oldest beyond KEEP_VERSIONS are forgotten)."""
        return await self.records.add_version(namespace, name, spec, actor=actor, note=note, keep=KEEP_VERSIONS)

    async def versions(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return await self.records.versions(namespace, name)

    async def version(self, namespace: str, name: str, version: int) -> str | None:
        return await self.records.version(namespace, name, version)

    async def add_event(self, namespace: str, name: str, event: str, instance: str = "", reason: str = "", *,
                        ts: float | None = None) -> int:
        """Keep an event; its id, which keeps growing across restarts of the gateway."""
        event_id = await self.records.add_event(namespace, name, time.time() if ts is None else ts, event, instance,
                                                reason)
        self._events_written += 1
        if self._events_written % 100 == 0:
            await self.records.trim_events(namespace, name, KEEP_EVENTS)
        return event_id

    async def events(self, namespace: str, name: str, *, after: int = 0, limit: int = 200) -> list[dict[str, Any]]:
        """The newest `limit` events after id `after`, oldest first."""
        return await self.records.events(namespace, name, after=after, limit=limit)

    # --- delivery to the registry ---------------------------------------------------------------------------

    async def load_delivered(self) -> None:
        """Read how far the registry has each workload's events. The first time, the events stored until then count
        as delivered: the gateway that recorded them numbered them otherwise when it sent them."""
        self._feed_start, self._delivered = await self.records.delivery()

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
            self.records.queue_delivered(self._delivered)
