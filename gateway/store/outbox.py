"""The durable outbox of every sink: messages queued with the reports and committed by the same flush, then read,
acknowledged and trimmed in order by the sink's runner.

The messages a flush commits are also kept in memory, per outbox, so that a sink's runner delivers them straight
after the commit without reading them back from the file; only a runner that is behind (a backlog, a restart, an
outbox trimmed) reads from the file. Acknowledgements are deleted by the writer's next flush, in the same group
commit as the new messages: delivered messages whose deletion a crash lost are delivered again (at least once).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import aiosqlite

from gateway.store.db import Database, write_rows

Message = tuple[str, str, bytes, float]  # (sink, topic, payload, created) as queued
Row = tuple[int, str, bytes, float]  # (seq, topic, payload, created) as committed
ACK_DELAY = 0.1  # seconds an acknowledgement may wait for a commit of new messages before it has one of its own
MEMORY_BYTES = 4 << 20  # payload bytes of committed messages kept in memory per outbox for its runner, at most


class Outboxes:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._queued: list[Message] = []
        self.depth: dict[str, int] = {}  # committed, not yet delivered, per outbox
        self.on_flush: list[Callable[[set[str]], None]] = []  # told which outboxes got new messages
        self._last_seq = 0  # the seq of the last message committed: the next ones follow it
        self._base = 0  # the last seq at open: messages up to it are only in the file
        self._recent: dict[str, deque[Row]] = {}  # committed and not acknowledged, the newest of each outbox
        self._recent_bytes: dict[str, int] = {}
        self._floor: dict[str, int] = {}  # `_recent` holds every committed message of the outbox past this seq
        self._acks: dict[str, int] = {}  # delivered up to this seq: deleted by the next flush
        self._delivered: dict[str, int] = {}  # delivered up to this seq (deleted, or to be by the next flush)
        self._ack_timer: asyncio.TimerHandle | None = None

    def add(self, sink: str, topic: str, payload: bytes) -> None:
        """Queue a message for a sink's outbox; it is durable once the next flush commits."""
        self._queued.append((sink, topic, payload, time.time()))
        self._db.wake_writer()

    # --- the flush's part --------------------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        return bool(self._queued) or bool(self._acks)

    def take(self) -> list[Message]:
        messages, self._queued = self._queued, []
        return messages

    def restore(self, messages: list[Message]) -> None:
        """Put back the messages of a flush that failed, ahead of those queued meanwhile. Whatever that flush did,
        the runners read the file from now on until they are past it."""
        self._queued[:0] = messages
        self._base = self._last_seq
        self._floor = {sink: self._last_seq for sink in self._floor}
        self._recent.clear()
        self._recent_bytes.clear()
        self._db.wake_writer()

    def take_acks(self) -> dict[str, int]:
        acks, self._acks = self._acks, {}
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        return acks

    def restore_acks(self, acks: dict[str, int]) -> None:
        """Put back the acknowledgements of a flush that failed (newer ones given meanwhile win)."""
        for sink, up_to in acks.items():
            self._acks[sink] = max(up_to, self._acks.get(sink, 0))
        self._db.wake_writer()

    async def write(self, db: aiosqlite.Connection, messages: list[Message], *, careful: bool = False
                    ) -> list[tuple[int, str, str, bytes, float]]:
        """Insert the messages inside the flush's transaction; those written (`careful`: all but the refused), each
        with its seq. The seqs are given here, in order after the last one committed, so that the runners can
        have the messages without reading them back."""
        first = self._last_seq + 1
        rows = [(first + index, *message) for index, message in enumerate(messages)]
        self._last_seq += len(rows)  # used up, whatever becomes of the transaction: a seq is never given twice
        refused = await write_rows(db, "INSERT INTO outbox (seq, sink, topic, payload, created) VALUES "
                                   "(?, ?, ?, ?, ?)", rows, careful=careful, health=self._db.health,
                                   part="outbox messages")
        if not refused:
            return rows
        left_out = set(refused)
        return [row for index, row in enumerate(rows) if index not in left_out]

    async def delete_acknowledged(self, db: aiosqlite.Connection, acks: dict[str, int]) -> None:
        """Delete what the runners acknowledged, inside the flush's transaction."""
        for sink, up_to in acks.items():
            await db.execute("DELETE FROM outbox WHERE sink = ? AND seq <= ?", (sink, up_to))

    def committed(self, rows: list[tuple[int, str, str, bytes, float]]) -> None:
        """After the flush committed: count the messages, keep them for the runners and wake those."""
        for seq, sink, topic, payload, created in rows:
            self.depth[sink] = self.depth.get(sink, 0) + 1
            recent = self._recent.get(sink)
            if recent is None:
                recent = self._recent[sink] = deque()
                self._recent_bytes[sink] = 0
            recent.append((seq, topic, payload, created))
            self._recent_bytes[sink] += len(payload)
        sinks = {row[1] for row in rows}
        for sink in sinks:
            self._bound(sink)
        for listener in self.on_flush:
            listener(sinks)

    def _bound(self, sink: str) -> None:
        """Keep at most MEMORY_BYTES of an outbox in memory (a runner that is behind reads the rest from the file)."""
        recent = self._recent[sink]
        while self._recent_bytes[sink] > MEMORY_BYTES and recent:
            seq, _, payload, _ = recent.popleft()
            self._recent_bytes[sink] -= len(payload)
            self._floor[sink] = max(self._floor.get(sink, self._base), seq)

    def _forget(self, sink: str, up_to: int) -> None:
        """Drop an outbox's messages up to `up_to` from memory: they are delivered or dropped."""
        self._floor[sink] = max(self._floor.get(sink, self._base), up_to)
        recent = self._recent.get(sink)
        while recent and recent[0][0] <= up_to:
            self._recent_bytes[sink] -= len(recent.popleft()[2])

    async def load(self) -> None:
        """At open: the depth of every outbox, and where its seqs go on."""
        self.depth = {sink: info["depth"] for sink, info in (await self.stats()).items()}
        rows = await self._db.rows("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'")
        self._last_seq = self._base = int(rows[0][0]) if rows else 0
        self._recent.clear()
        self._recent_bytes.clear()
        self._floor.clear()
        self._acks.clear()
        self._delivered.clear()

    # --- the runners' part -------------------------------------------------------------------------------------

    async def batch(self, sink: str, after: int, limit: int) -> list[Row]:
        """The next messages of a sink's outbox, in order: (seq, topic, payload, created)."""
        after = max(after, self._delivered.get(sink, 0))  # delivered ones are gone, even before their deletion
        if after >= self._floor.get(sink, self._base):  # every message past `after` is in memory
            rows: list[Row] = []
            for row in self._recent.get(sink, ()):
                if row[0] > after:
                    rows.append(row)
                    if len(rows) == limit:
                        break
            return rows
        stored = await self._db.rows("SELECT seq, topic, payload, created FROM outbox WHERE sink = ? AND seq > ? "
                                     "ORDER BY seq LIMIT ?", (sink, after, limit))
        return [(int(seq), str(topic), bytes(payload), float(created)) for seq, topic, payload, created in stored]

    def ack(self, sink: str, up_to: int, count: int) -> None:
        """Forget the `count` messages of a sink up to and including `up_to`: they were delivered (and no longer
        count in its depth). The writer's next flush deletes them from the file, within ACK_DELAY (until then a
        crash has them delivered again)."""
        self.depth[sink] = max(self.depth.get(sink, 0) - count, 0)
        self._forget(sink, up_to)
        self._delivered[sink] = max(up_to, self._delivered.get(sink, 0))
        self._acks[sink] = max(up_to, self._acks.get(sink, 0))
        # Under load the next commit of new messages comes soon and deletes them with it; a commit of their own, at
        # once, would double the commits.
        if self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY, self._db.wake_writer)

    async def stats(self) -> dict[str, dict[str, Any]]:
        """Depth and oldest message per outbox, as stored: delivered messages the next flush deletes left out."""
        rows = await self._db.rows(
            "SELECT sink, count(*), min(created) FROM outbox WHERE seq > coalesce((SELECT value FROM json_each(?) "
            "WHERE key = sink), 0) GROUP BY sink", (json.dumps(self._delivered),))
        return {sink: {"depth": int(count), "oldest": oldest} for sink, count, oldest in rows}

    async def trim(self, sink: str, max_messages: int, max_age: float) -> int:
        """Drop the oldest messages beyond the limits (the stated drop policy); returns how many."""
        dropped = 0
        delivered = self._delivered.get(sink, 0)  # delivered messages the next flush deletes are not dropped
        async with self._db.transaction() as db:
            cursor = await db.execute("DELETE FROM outbox WHERE sink = ? AND seq > ? AND created < ?",
                                      (sink, delivered, time.time() - max_age))
            dropped += max(cursor.rowcount, 0)
            cursor = await db.execute(
                "DELETE FROM outbox WHERE sink = ? AND seq > ? AND seq <= (SELECT seq FROM outbox WHERE sink = ? "
                "AND seq > ? ORDER BY seq DESC LIMIT 1 OFFSET ?)", (sink, delivered, sink, delivered, max_messages))
            dropped += max(cursor.rowcount, 0)
        if dropped:  # what is left is read from the file from now on
            self._forget(sink, self._last_seq)
        self.depth[sink] = max(self.depth.get(sink, 0) - dropped, 0)
        return dropped
