"""Files both ways (tables file_inbox and file_outbox): the files the registry sends this node, with the offset
written and the state last reported to the registry, and the node's durable outbox of files it sends, kept until the
registry has them whole and verified."""

from __future__ import annotations

import json
import time
from typing import Any

from gateway.store.db import Database

INBOX_COLUMNS = ("id", "name", "path", "size", "sha256", "content_type", "labels", "state", "position", "reason",
                 "bytes_received", "created_at", "updated_at", "done_at", "reported")
OUTBOX_COLUMNS = ("id", "name", "size", "sha256", "content_type", "labels", "source", "state", "position",
                  "bytes_sent", "reason", "created_at", "updated_at", "done_at")


def _record(columns: tuple[str, ...], row: Any) -> dict[str, Any]:
    record = dict(zip(columns, tuple(row), strict=True))
    record["labels"] = json.loads(record["labels"])
    return record


class FileRecords:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- cloud → edge -------------------------------------------------------------------------------------------

    async def inbox(self, file_id: str) -> dict[str, Any] | None:
        rows = await self._db.rows(f"SELECT {', '.join(INBOX_COLUMNS)} FROM file_inbox WHERE id=?", (file_id,))
        return _record(INBOX_COLUMNS, rows[0]) if rows else None

    async def add_inbox(self, offer: dict[str, Any]) -> None:
        """A file the registry offers, `pending` at offset 0 (nothing when it is known already)."""
        now = time.time()
        await self._db.execute(
            f"INSERT INTO file_inbox ({', '.join(INBOX_COLUMNS)}) VALUES ({', '.join('?' for _ in INBOX_COLUMNS)}) "
            "ON CONFLICT(id) DO NOTHING",
            (offer["id"], offer["name"], offer["path"], offer["size"], offer["sha256"], offer["content_type"],
             json.dumps(offer["labels"], sort_keys=True), "pending", 0, "", 0, now, now, None, ""))

    async def update_inbox(self, file_id: str, *, state: str, position: int, reason: str = "",
                           received: int = 0) -> None:
        """A received file's state and written offset, and `received` more bytes taken off the link for it."""
        now = time.time()
        await self._db.execute(
            "UPDATE file_inbox SET state=?, position=?, reason=?, bytes_received = bytes_received + ?, updated_at=?, "
            "done_at = CASE WHEN ? IN ('done', 'refused') THEN ? ELSE done_at END WHERE id=?",
            (state, position, reason, received, now, state, now, file_id))

    async def mark_reported(self, file_id: str, state: str) -> None:
        """The registry has this state of the file."""
        await self._db.execute("UPDATE file_inbox SET reported=? WHERE id=?", (state, file_id))

    async def unreported(self) -> list[dict[str, Any]]:
        """Files done or refused whose final state the registry has not taken yet."""
        rows = await self._db.rows(f"SELECT {', '.join(INBOX_COLUMNS)} FROM file_inbox WHERE state IN "
                                   "('done', 'refused') AND reported != state")
        return [_record(INBOX_COLUMNS, row) for row in rows]

    async def received(self, limit: int = 500) -> list[dict[str, Any]]:
        rows = await self._db.rows(f"SELECT {', '.join(INBOX_COLUMNS)} FROM file_inbox ORDER BY created_at DESC "
                                   "LIMIT ?", (limit,))
        return [_record(INBOX_COLUMNS, row) for row in rows]

    # --- edge → cloud -------------------------------------------------------------------------------------------

    async def add_outbox(self, record: dict[str, Any]) -> None:
        now = time.time()
        await self._db.execute(
            f"INSERT INTO file_outbox ({', '.join(OUTBOX_COLUMNS)}) VALUES "
            f"({', '.join('?' for _ in OUTBOX_COLUMNS)})",
            (record["id"], record["name"], record["size"], record["sha256"], record["content_type"],
             json.dumps(record.get("labels", {}), sort_keys=True), record["source"], "queued", 0, 0, "", now, now,
             None))

    async def outbox(self, file_id: str) -> dict[str, Any] | None:
        rows = await self._db.rows(f"SELECT {', '.join(OUTBOX_COLUMNS)} FROM file_outbox WHERE id=?", (file_id,))
        return _record(OUTBOX_COLUMNS, rows[0]) if rows else None

    async def outbox_queue(self) -> list[dict[str, Any]]:
        """The files still to send, oldest first."""
        rows = await self._db.rows(f"SELECT {', '.join(OUTBOX_COLUMNS)} FROM file_outbox WHERE state IN "
                                   "('queued', 'sending') ORDER BY created_at, id")
        return [_record(OUTBOX_COLUMNS, row) for row in rows]

    async def sent_files(self, limit: int = 500) -> list[dict[str, Any]]:
        rows = await self._db.rows(f"SELECT {', '.join(OUTBOX_COLUMNS)} FROM file_outbox ORDER BY created_at DESC "
                                   "LIMIT ?", (limit,))
        return [_record(OUTBOX_COLUMNS, row) for row in rows]

    async def update_outbox(self, file_id: str, *, state: str, position: int, reason: str = "", sent: int = 0
                            ) -> None:
        now = time.time()
        await self._db.execute(
            "UPDATE file_outbox SET state=?, position=?, reason=?, bytes_sent = bytes_sent + ?, updated_at=?, "
            "done_at = CASE WHEN ? IN ('done', 'refused') THEN ? ELSE done_at END WHERE id=?",
            (state, position, reason, sent, now, state, now, file_id))

    async def outbox_bytes(self) -> int:
        """Bytes of the files still in the outbox."""
        rows = await self._db.rows("SELECT coalesce(sum(size), 0) FROM file_outbox WHERE state IN "
                                   "('queued', 'sending')")
        return int(rows[0][0])
