"""The node's SQLite file (WAL) in the data dir: one aiosqlite connection shared by the parts of the store, its
PRAGMAs, one writing transaction at a time, a timeout on every call, meta values queued for the next flush, and the
health of the store's writes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.errors import StoreError
from gateway.store.migrations import migrate

log = logging.getLogger(__name__)

# What a refused row raises (a constraint, a value SQLite cannot bind or the encoder cannot take): that row is left
# out and the others are written. Anything else (sqlite3.OperationalError: disk full, I/O, locked) is the database's
# own failure, and the whole write waits for the next attempt.
ROW_ERRORS: tuple[type[Exception], ...] = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError,
                                           sqlite3.DataError, ValueError, TypeError, OverflowError)

PRAGMAS = "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=5000; PRAGMA foreign_keys=ON;"
# synchronous=FULL in WAL mode: every commit fsyncs the log, so a commit the store counted survives a power cut.
# NORMAL fsyncs only at checkpoints: an application crash still loses nothing, a power cut the last commits (the
# file stays consistent either way).
SYNC_MODES = ("full", "normal")
# A statement that reads a table has SQLite compare the connection's copy of the schema with the file's and reload it
# when another connection changed it (a trigger or table created or dropped). A statement that fails to prepare
# because of that copy does not always do so (a trigger whose body names a table that is gone fails inside its own
# parse, which SQLite does not count as a reason to look): after a failed write, the next one reads this first.
SCHEMA_CHECK = "SELECT 1 FROM sqlite_master LIMIT 0"


def db_path(data_dir: Path) -> Path:
    return data_dir / "fieldgate.db"


def is_row_error(exc: BaseException) -> bool:
    """A row was refused, rather than the database failing (see ROW_ERRORS; a closed connection is no row's fault)."""
    if not isinstance(exc, ROW_ERRORS) or isinstance(exc, sqlite3.OperationalError):
        return False
    text = str(exc)
    return "closed database" not in text and "no active connection" not in text


class StoreHealth:
    """Which parts of the store's writes fail now (reports, rollups, reported values, …) and what they left out:
    shown by /healthz and the status, logged once per change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.failing: dict[str, tuple[str, float]] = {}  # part -> (error, since)
        self.refused: dict[str, int] = {}  # part -> rows left out because SQLite or the encoder refused them
        self._pending: list[tuple[str, int, str]] = []  # left out by the transaction under way

    def failed(self, part: str, error: str) -> None:
        if part not in self.failing:
            log.error("store %s: writing %s fails, retrying: %s", self.path, part, error)
            self.failing[part] = (error, time.time())
        elif self.failing[part][0] != error:
            self.failing[part] = (error, self.failing[part][1])

    def succeeded(self, part: str) -> None:
        if self.failing.pop(part, None) is not None:
            log.info("store %s: writing %s works again", self.path, part)

    def left_out(self, part: str, count: int, reason: str) -> None:
        """Rows that can never be written are left out of the transaction under way so that the others are:
        counted and logged once it commits (a transaction rolled back and tried again counts them once)."""
        self._pending.append((part, count, reason))

    def settle(self, committed: bool) -> None:
        """The transaction under way ended: count what it left out if it committed."""
        pending, self._pending = self._pending, []
        for part, count, reason in pending if committed else ():
            self.refused[part] = self.refused.get(part, 0) + count
            log.error("store %s: %d %s left out, refused: %s (%d so far)", self.path, count, part, reason,
                      self.refused[part])

    @property
    def ok(self) -> bool:
        return not self.failing

    def describe(self) -> dict[str, Any]:
        return {"state": "ok" if self.ok else "failing",
                "failing": {part: {"error": error, "since": since} for part, (error, since) in self.failing.items()},
                "refused": dict(self.refused)}


class Database:
    """One connection; reads go straight to it, writes are serialised with the transactions on it."""

    def __init__(self, path: Path, *, timeout: float = 10.0, sync: str = "full") -> None:
        if sync not in SYNC_MODES:
            raise ValueError(f"store sync {sync!r}: expected one of {', '.join(SYNC_MODES)}")
        self.path = path
        self.timeout = timeout
        self.sync = sync
        self._connection: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()  # one transaction at a time on the shared connection
        self._check_schema = False  # a write failed: the next one first makes sure the schema it uses is current
        self._meta: dict[str, str] = {}  # meta values to write with the next flush
        self.health = StoreHealth(path)
        self.queued = asyncio.Event()  # set when something waits for the writer's next flush

    def wake_writer(self) -> None:
        """Something was queued for the next flush: the writer commits it as soon as it is free."""
        self.queued.set()

    async def open(self) -> None:
        """Connect and bring the schema up to date (raises what sqlite3, the file system or the timeout raise)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        async with asyncio.timeout(self.timeout):
            self._connection = await aiosqlite.connect(self.path, isolation_level=None)
        await self._connection.executescript(f"{PRAGMAS} PRAGMA synchronous={self.sync.upper()};")
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

    async def _write(self, sql: str, params: Sequence[Any]) -> aiosqlite.Cursor:
        """One writing statement, serialised with the transactions on the shared connection."""
        try:
            async with self._write_lock:
                async with asyncio.timeout(self.timeout):
                    await self._current_schema(self.connection)
                    return await self.connection.execute(sql, params)
        except sqlite3.Error as exc:
            self._check_schema = True
            raise StoreError(f"{self.path}: {exc}") from exc

    async def _current_schema(self, connection: aiosqlite.Connection) -> None:
        """After a failed write, bring the connection's copy of the schema up to the file's (see SCHEMA_CHECK), so
        that a write that failed because of a schema changed since (a trigger dropped) works on the next attempt."""
        if self._check_schema:
            cursor = await connection.execute(SCHEMA_CHECK)
            await cursor.close()
            self._check_schema = False

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one writing statement; returns how many rows it changed."""
        cursor = await self._write(sql, params)
        return max(cursor.rowcount, 0)

    async def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one INSERT and return the id of its row."""
        cursor = await self._write(sql, params)
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
                await self._current_schema(connection)  # inside the transaction: the file's newest schema
                yield connection
                await connection.execute("COMMIT")
            except BaseException as exc:
                if isinstance(exc, sqlite3.Error):
                    self._check_schema = True
                self.health.settle(False)
                with contextlib.suppress(sqlite3.Error):
                    await connection.execute("ROLLBACK")
                raise
            self.health.settle(True)

    # --- meta values ------------------------------------------------------------------------------------------

    async def meta(self, key: str) -> str | None:
        rows = await self.rows("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def queue_meta(self, key: str, value: str) -> None:
        """Queue a meta value; it is durable once the next flush commits (a newer value of the same key queued
        before then replaces it)."""
        self._meta[key] = value
        self.wake_writer()

    def take_meta(self) -> dict[str, str]:
        meta, self._meta = self._meta, {}
        return meta

    def restore_meta(self, meta: dict[str, str]) -> None:
        """Put back the values of a flush that failed (newer ones queued meanwhile win)."""
        self._meta = {**meta, **self._meta}
        self.wake_writer()

    async def write_meta(self, connection: aiosqlite.Connection, meta: dict[str, str], *,
                         careful: bool = False) -> None:
        await write_rows(connection, "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                         "value = excluded.value", list(meta.items()), careful=careful, health=self.health,
                         part="meta values")

    @property
    def meta_queued(self) -> bool:
        return bool(self._meta)


async def write_rows(connection: aiosqlite.Connection, sql: str, rows: Sequence[Sequence[Any]], *, careful: bool,
                     health: StoreHealth, part: str) -> list[int]:
    """Insert rows inside the caller's transaction; the indexes of those refused.

    Fast (one executemany) unless `careful`: a refused row then fails the whole call, and the caller's retry comes
    careful, one row at a time, leaving out only the rows refused (counted in `health`). A failure of the database
    itself is raised either way.
    """
    if not careful:
        await connection.executemany(sql, rows)
        return []
    refused: list[int] = []
    reason = ""
    for index, row in enumerate(rows):
        try:
            await connection.execute(sql, row)
        except Exception as exc:
            if not is_row_error(exc):
                raise
            refused.append(index)
            reason = reason or f"{type(exc).__name__}: {exc}"
    if refused:
        health.left_out(part, len(refused), reason)
    return refused
