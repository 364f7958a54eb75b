"""Settings of the local UI: string values by key, with who changed them last and when."""

from __future__ import annotations

import time

from gateway.store.db import Database


class Settings:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, prefix: str) -> dict[str, str]:
        """The values whose keys start with `prefix`."""
        rows = await self._db.rows("SELECT key, value FROM ui_settings WHERE key LIKE ? || '%'", (prefix,))
        return {str(k): str(v) for k, v in rows}

    async def put(self, values: dict[str, str], actor: str) -> None:
        now = time.time()
        async with self._db.transaction() as db:
            await db.executemany(
                "INSERT INTO ui_settings VALUES (?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value, "
                "updated_at=excluded.updated_at, updated_by=excluded.updated_by",
                [(key, value, now, actor) for key, value in values.items()],
            )
