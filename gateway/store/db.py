"""The node's SQLite file (WAL) in the data dir: one aiosqlite connection shared by the parts of the store, its
PRAGMAs, one writing transaction at a time, a timeout on every call, and meta values queued for the next flush."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.errors import StoreError
from gateway.store.migrations import migrate

PRAGMAS = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000; PRAGMA foreign_keys=ON;"


def db_path(data_dir: Path) -> Path:
    return data_dir / "fieldgate.db"


class Database:
    """One connection; reads go straight to it, writes are serialised with the transactions on it."""

    def __init__(self, path: Path, *, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._connection: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()  # one transaction at a time on the shared connection
        self._meta: dict[str, str] = {}  # meta values to write with the next flush

    async def open(self) -> None:
        """Connect and bring the schema up to date (raises what sqlite3, the file system or the timeout raise)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        async with asyncio.timeout(self.timeout):
            self._connection = await aiosqlite.connect(self.path, isolation_level=None)
        await self._connection.executescript(PRAGMAS)
        await migrate(self)

    @property
    def is_open(self) -> bool:
        return self._connection is not None

    async def close(self) -> None:
        if self._connection is None:
            return
        with contextlib.suppress(sqlite3.Error):
            await self._connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        await self._connection.close()
        self._connection = None

    @property
    def connection(self) -> aiosqlite.Connection:
        if self._connection is None:
            raise StoreError(f"{self.path}: the store is not open")
        return self._connection

    async def rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run one query and return its rows."""
        try:
            async with asyncio.timeout(self.timeout):
                cursor = await self.connection.execute(sql, params)
            return list(await cursor.fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one writing statement (serialised with the transactions); returns how many rows it changed."""
        try:
            async with self._write_lock:
                async with asyncio.timeout(self.timeout):
                    cursor = await self.connection.execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        return max(cursor.rowcount, 0)

    async def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one INSERT (serialised like `execute`) and return the id of its row."""
        try:
            async with self._write_lock:
                async with asyncio.timeout(self.timeout):
                    cursor = await self.connection.execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        if cursor.lastrowid is None:
            raise StoreError(f"{self.path}: no row inserted by {sql.split('(', 1)[0].strip()}")
        return cursor.lastrowid

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """BEGIN … COMMIT on the shared connection, rolled back on any error; one at a time."""
        async with self._write_lock:
            connection = self.connection
            await connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await connection.execute("ROLLBACK")
                raise
            await connection.execute("COMMIT")

    # --- meta values ------------------------------------------------------------------------------------------

    async def meta(self, key: str) -> str | None:
        rows = await self.rows("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def queue_meta(self, key: str, value: str) -> None:
        """Queue a meta value; it is durable once the next flush commits (a newer value of the same key queued
        before then replaces it)."""
        self._meta[key] = value

    def take_meta(self) -> dict[str, str]:
        meta, self._meta = self._meta, {}
        return meta

    def restore_meta(self, meta: dict[str, str]) -> None:
        """Put back the values of a flush that failed (newer ones queued meanwhile win)."""
        self._meta = {**meta, **self._meta}

    @staticmethod
    async def write_meta(connection: aiosqlite.Connection, meta: dict[str, str]) -> None:
        await connection.executemany("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                                     "value = excluded.value", list(meta.items()))

    @property
    def meta_queued(self) -> bool:
        return bool(self._meta)
