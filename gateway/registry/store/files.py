"""Files between the registry and nodes (`files`): cloud → edge files with one row per target node
(`file_targets`: its state, the offset it has written and the bytes the registry sent it), and edge → cloud files
with the offset the registry holds. The bytes themselves are in the registry's content store
(gateway.registry.filestore), by id."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gateway.registry.store.db import Statement, Tables

FILE_COLUMNS = ("id", "name", "size", "sha256", "content_type", "labels", "direction", "path", "source_node",
                "targets", "workspace", "created_by", "created_at", "expires_at", "state", "received",
                "bytes_received", "reason", "done_at")
TARGET_COLUMNS = ("node", "state", "position", "reason", "bytes_sent", "updated_at")
_SELECT = f"SELECT {', '.join(FILE_COLUMNS)} FROM files"


def _file(row: Sequence[Any]) -> dict[str, Any]:
    record = dict(zip(FILE_COLUMNS, row, strict=True))
    record["labels"] = json.loads(record["labels"])
    record["targets"] = json.loads(record["targets"])
    for key in ("size", "received", "bytes_received"):
        record[key] = int(record[key])
    return record


class FileTables(Tables):
    async def create(self, record: dict[str, Any], targets: Sequence[str], now: float) -> None:
        """Record a file (FILE_COLUMNS but the counters) with one `pending` row per target node, in one
        transaction."""
        values = {**record, "labels": json.dumps(record["labels"], sort_keys=True),
                  "targets": json.dumps(record["targets"], sort_keys=True), "received": record.get("received", 0),
                  "bytes_received": 0, "reason": record.get("reason", ""), "done_at": record.get("done_at")}
        marks = ", ".join("?" for _ in FILE_COLUMNS)
        statements: list[Statement] = [(f"INSERT INTO files ({', '.join(FILE_COLUMNS)}) VALUES ({marks})",
                                        tuple(values[c] for c in FILE_COLUMNS))]
        statements += [("INSERT INTO file_targets VALUES (?, ?, ?, ?, ?, ?, ?)", (record["id"], node, "pending", 0,
                                                                                   "", 0, now))
                       for node in targets]
        await self.database.transaction(statements)

    async def get(self, file_id: str) -> dict[str, Any] | None:
        rows = await self.database.rows(f"{_SELECT} WHERE id=?", file_id)
        return _file(rows[0]) if rows else None

    async def listing(self, direction: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """The newest files first (of one direction when given)."""
        if direction is None:
            rows = await self.database.rows(f"{_SELECT} ORDER BY created_at DESC LIMIT ?", limit)
        else:
            rows = await self.database.rows(f"{_SELECT} WHERE direction=? ORDER BY created_at DESC LIMIT ?",
                                            direction, limit)
        return [_file(row) for row in rows]

    async def targets(self, file_id: str) -> list[dict[str, Any]]:
        rows = await self.database.rows(f"SELECT {', '.join(TARGET_COLUMNS)} FROM file_targets WHERE file=? "
                                        "ORDER BY node", file_id)
        return [dict(zip(TARGET_COLUMNS, row, strict=True)) for row in rows]

    async def target_counts(self) -> dict[str, dict[str, int]]:
        """file id → state → how many target nodes are in it."""
        counts: dict[str, dict[str, int]] = {}
        for file_id, state, count in await self.database.rows(
                "SELECT file, state, COUNT(*) FROM file_targets GROUP BY file, state"):
            counts.setdefault(str(file_id), {})[str(state)] = int(count)
        return counts

    async def offers(self, node: str, now: float) -> list[dict[str, Any]]:
        """The to-edge files a node has not finished or refused, oldest first, with its position in each."""
        rows = await self.database.rows(
            f"SELECT {', '.join('f.' + c for c in FILE_COLUMNS)}, t.position FROM files f JOIN file_targets t "
            "ON t.file = f.id WHERE t.node=? AND t.state IN ('pending', 'transferring') AND f.state='ready' "
            "AND (f.expires_at IS NULL OR f.expires_at > ?) ORDER BY f.created_at", node, now)
        return [{**_file(row[:-1]), "position": int(row[-1])} for row in rows]

    async def target(self, file_id: str, node: str) -> dict[str, Any] | None:
        rows = await self.database.rows(f"SELECT {', '.join(TARGET_COLUMNS)} FROM file_targets WHERE file=? AND "
                                        "node=?", file_id, node)
        return dict(zip(TARGET_COLUMNS, rows[0], strict=True)) if rows else None

    async def progress(self, file_id: str, node: str, state: str, position: int, reason: str, taken: int,
                       now: float) -> int:
        """A node's progress with a file, with the bytes it took off the link for it; rows touched (0: not a
        target, or already done or refused)."""
        return await self.database.write(
            "UPDATE file_targets SET state=?, position=?, reason=?, bytes_sent=?, updated_at=? WHERE file=? AND "
            "node=? AND state IN ('pending', 'transferring')", state, position, reason, taken, now, file_id, node)

    async def set_state(self, file_id: str, state: str, reason: str = "", done_at: float | None = None) -> None:
        await self.database.write("UPDATE files SET state=?, reason=?, done_at=? WHERE id=?", state, reason,
                                  done_at, file_id)

    async def set_received(self, file_id: str, received: int, added: int) -> None:
        """An edge → cloud file's acknowledged offset, and the bytes that came for it (chunks taken)."""
        await self.database.write("UPDATE files SET received=?, bytes_received = bytes_received + ? WHERE id=?",
                                  received, added, file_id)

    async def delete(self, file_id: str) -> int:
        results = await self.database.transaction([("DELETE FROM file_targets WHERE file=?", (file_id,)),
                                                   ("DELETE FROM files WHERE id=? RETURNING id", (file_id,))])
        return len(results[1])

    async def expire(self, now: float) -> int:
        """To-edge targets past their file's TTL go to `expired`; how many."""
        return await self.database.write(
            "UPDATE file_targets SET state='expired', reason='the file expired before the node had it', "
            "updated_at=? WHERE state IN ('pending', 'transferring') AND file IN (SELECT id FROM files WHERE "
            "expires_at IS NOT NULL AND expires_at <= ?)", now, now)

    async def from_edge_done(self) -> list[tuple[str, float, int]]:
        """(id, done at, size) of the whole edge → cloud files, oldest first (for retention)."""
        return [(str(i), float(done), int(size)) for i, done, size in await self.database.rows(
            "SELECT id, done_at, size FROM files WHERE direction='from-edge' AND state='done' ORDER BY done_at, id")]
