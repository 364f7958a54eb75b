"""Requests the registry asks of a node (a log, a workload's log or action) while an API call waits for the answer
(`node_requests`): which node and what was asked, until when, and the answer once a replica took it. The replica
that asked may not be the one the node answers at (its channel or long-poll is at another replica): the answering
replica stores the answer here and notifies ANSWERS_CHANNEL with the request id, and the asking one reads it."""

from __future__ import annotations

import time

from gateway.registry.store.db import Tables

# the notification that a node answered a request (the payload is its id): in-process on SQLite, PostgreSQL NOTIFY
# to every replica; the replica whose call waits reads the answer
ANSWERS_CHANNEL = "fieldgate_answers"
KEEP_AFTER_EXPIRY = 60.0  # seconds a request stays past its deadline before a later one's cleanup drops it


class RequestTables(Tables):
    async def open(self, request_id: str, node: str, path: str, expires_at: float) -> None:
        """Record a request asked of a node (and drop those long past their deadline: a replica that stopped while
        waiting leaves its rows behind)."""
        now = time.time()
        await self.database.transaction([
            ("DELETE FROM node_requests WHERE expires_at < ?", (now - KEEP_AFTER_EXPIRY,)),
            ("INSERT INTO node_requests (id, node, path, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
             (request_id, node, path, now, expires_at))])

    async def path(self, request_id: str, node: str) -> str | None:
        """What was asked (a key of gateway.wire.ANSWERS), for a request of this node that waits for its answer."""
        rows = await self.database.rows("SELECT path FROM node_requests WHERE id=? AND node=? AND answer IS NULL "
                                        "AND expires_at >= ?", request_id, node, time.time())
        return str(rows[0][0]) if rows else None

    async def answer(self, request_id: str, node: str, answer: str) -> bool:
        """Keep a node's answer (JSON) for the replica that asked; False when the request is gone or answered."""
        return bool(await self.database.write("UPDATE node_requests SET answer=? WHERE id=? AND node=? AND "
                                              "answer IS NULL", answer, request_id, node))

    async def answered(self, request_id: str) -> str | None:
        """The answer (JSON) to a request, once a replica took it."""
        rows = await self.database.rows("SELECT answer FROM node_requests WHERE id=?", request_id)
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    async def close(self, request_id: str) -> None:
        """Forget a request: answered, or its time is up."""
        await self.database.write("DELETE FROM node_requests WHERE id=?", request_id)
