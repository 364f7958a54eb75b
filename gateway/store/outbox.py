"""The durable outbox of every sink: messages queued with the reports and committed by the same flush, then read,
acknowledged and trimmed in order by the sink's runner."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiosqlite

from gateway.store.db import Database, write_rows

Message = tuple[str, str, bytes, float]  # (sink, topic, payload, created) as queued


class Outboxes:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._queued: list[Message] = []
        self.depth: dict[str, int] = {}  # committed, not yet delivered, per outbox
        self.on_flush: list[Callable[[set[str]], None]] = []  # told which outboxes got new messages

    def add(self, sink: str, topic: str, payload: bytes) -> None:
        """Queue a message for a sink's outbox; it is durable once the next flush commits."""
        self._queued.append((sink, topic, payload, time.time()))

    # --- the flush's part --------------------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        return bool(self._queued)

    def take(self) -> list[Message]:
        messages, self._queued = self._queued, []
        return messages

    def restore(self, messages: list[Message]) -> None:
        """Put back the messages of a flush that failed, ahead of those queued meanwhile."""
        self._queued[:0] = messages

    async def write(self, db: aiosqlite.Connection, messages: list[Message], *, careful: bool = False
                    ) -> list[Message]:
        """Insert the messages inside the flush's transaction; those written (`careful`: all but the refused)."""
        refused = await write_rows(db, "INSERT INTO outbox (sink, topic, payload, created) VALUES (?, ?, ?, ?)",
                                   messages, careful=careful, health=self._db.health, part="outbox messages")
        if not refused:
            return messages
        left_out = set(refused)
        return [message for index, message in enumerate(messages) if index not in left_out]

    def committed(self, messages: list[Message]) -> None:
        for row in messages:
            self.depth[row[0]] = self.depth.get(row[0], 0) + 1
        sinks = {row[0] for row in messages}
        for listener in self.on_flush:
            listener(sinks)

    async def load(self) -> None:
        """At open: the depth of every outbox."""
        self.depth = {sink: info["depth"] for sink, info in (await self.stats()).items()}

    # --- the runners' part -------------------------------------------------------------------------------------

    async def batch(self, sink: str, after: int, limit: int) -> list[tuple[int, str, bytes, float]]:
        """The next messages of a sink's outbox, in order: (seq, topic, payload, created)."""
        rows = await self._db.rows("SELECT seq, topic, payload, created FROM outbox WHERE sink = ? AND seq > ? "
                                   "ORDER BY seq LIMIT ?", (sink, after, limit))
        return [(int(seq), str(topic), bytes(payload), float(created)) for seq, topic, payload, created in rows]

    async def ack(self, sink: str, up_to: int) -> None:
        """Forget the messages of a sink up to and including `up_to`: they were delivered."""
        async with self._db.transaction() as db:
            cursor = await db.execute("DELETE FROM outbox WHERE sink = ? AND seq <= ?", (sink, up_to))
            self.depth[sink] = max(self.depth.get(sink, 0) - max(cursor.rowcount, 0), 0)

    async def stats(self) -> dict[str, dict[str, Any]]:
        rows = await self._db.rows("SELECT sink, count(*), min(created) FROM outbox GROUP BY sink")
        return {sink: {"depth": int(count), "oldest": oldest} for sink, count, oldest in rows}

    async def trim(self, sink: str, max_messages: int, max_age: float) -> int:
        """Drop the oldest messages beyond the limits (the stated drop policy); returns how many."""
        dropped = 0
        async with self._db.transaction() as db:
            cursor = await db.execute("DELETE FROM outbox WHERE sink = ? AND created < ?",
                                      (sink, time.time() - max_age))
            dropped += max(cursor.rowcount, 0)
            cursor = await db.execute(
                "DELETE FROM outbox WHERE sink = ? AND seq <= (SELECT seq FROM outbox WHERE sink = ? "
                "ORDER BY seq DESC LIMIT 1 OFFSET ?)", (sink, sink, max_messages))
            dropped += max(cursor.rowcount, 0)
        self.depth[sink] = max(self.depth.get(sink, 0) - dropped, 0)
        return dropped
