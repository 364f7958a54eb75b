"""The SQLite store in the data dir (WAL): resources, twins, history, audit log, users and tokens.

Reports are queued and committed by one writer task every `flush_interval`: a report is complete once its
transaction commits, and a crash (even SIGKILL) leaves every completed report in the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec

from gateway.errors import StoreError
from gateway.workloads.secrets import SecretBox

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: workload versions and events
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    document TEXT NOT NULL, source TEXT NOT NULL DEFAULT 'file', updated_at REAL NOT NULL,
    PRIMARY KEY (kind, namespace, name));
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY, device TEXT NOT NULL, property TEXT NOT NULL, UNIQUE (device, property));
CREATE TABLE IF NOT EXISTS twins (
    series INTEGER PRIMARY KEY REFERENCES series (id),
    desired TEXT, desired_at REAL, reported TEXT, reported_at REAL, quality TEXT NOT NULL DEFAULT 'unknown');
CREATE TABLE IF NOT EXISTS history (series INTEGER NOT NULL, ts INTEGER NOT NULL, value);
CREATE INDEX IF NOT EXISTS history_by_series ON history (series, ts);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL,
    created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_by_sink ON outbox (sink, seq);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    target TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '', address TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT, token_hash TEXT NOT NULL UNIQUE, role TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS workload_versions (
    namespace TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, spec TEXT NOT NULL,
    created_at REAL NOT NULL, actor TEXT NOT NULL DEFAULT '', note TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (namespace, name, version));
CREATE TABLE IF NOT EXISTS workload_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, namespace TEXT NOT NULL, name TEXT NOT NULL, ts REAL NOT NULL,
    event TEXT NOT NULL, instance TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS workload_events_by_name ON workload_events (namespace, name, id);
"""

_json = msgspec.json.Encoder()
_unjson = msgspec.json.Decoder()


def db_path(data_dir: Path) -> Path:
    return data_dir / "fieldgate.db"


def _history_value(value: Any) -> Any:
    kind = type(value)
    if kind is float or kind is int or kind is str:
        return value
    if kind is bool:
        return int(value)
    if isinstance(value, int | float | str | bytes) or value is None:
        return value
    return _json.encode(value).decode()


class Store:
    """One connection, one writer task; every call has a timeout."""

    def __init__(self, data_dir: Path, *, flush_interval: float = 0.1, timeout: float = 10.0,
                 max_queued: int = 500_000) -> None:
        self.data_dir = data_dir
        self.path = db_path(data_dir)
        self.flush_interval = flush_interval
        self.timeout = timeout
        self._db: aiosqlite.Connection | None = None
        self._pending: deque[tuple[str, float, dict[str, Any]]] = deque()  # (device, ts, values) per report
        self._outbox: list[tuple[str, str, bytes, float]] = []  # (sink, topic, payload, created)
        self._queued = 0
        self.max_queued = max_queued
        self.history_dropped = 0
        self._shed_logged = 0.0
        self.on_flush: list[Callable[[set[str]], None]] = []  # told which outboxes got new messages
        self.outbox_depth: dict[str, int] = {}  # committed, not yet delivered, per outbox
        self._series: dict[tuple[str, str], int] = {}  # (device, property) -> series id: small integer keys
        self._write_lock = asyncio.Lock()  # one transaction at a time on the shared connection
        self.secrets = SecretBox(data_dir)  # Secret documents are stored encrypted
        self.rows_written = 0

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            async with asyncio.timeout(self.timeout):
                self._db = await aiosqlite.connect(self.path, isolation_level=None)
            await self._db.executescript(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;"
                "PRAGMA foreign_keys=ON;"
            )
            await self._db.executescript(f"BEGIN; {SCHEMA} COMMIT;")
            await self._db.execute(
                "INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT(key) DO NOTHING", (str(SCHEMA_VERSION),)
            )
            # Newer tables are created above (IF NOT EXISTS); the recorded version only ever moves forward.
            await self._db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version' "
                                   "AND CAST(value AS INTEGER) < ?", (str(SCHEMA_VERSION), SCHEMA_VERSION))
            self.outbox_depth = {sink: info["depth"] for sink, info in (await self.outbox_stats()).items()}
        except (sqlite3.Error, OSError, TimeoutError) as exc:
            raise StoreError(f"{self.path}: cannot open the store: {exc}") from exc

    async def close(self) -> None:
        if self._db is None:
            return
        with contextlib.suppress(StoreError):
            await self.flush()
        with contextlib.suppress(sqlite3.Error):
            await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        await self._db.close()
        self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError(f"{self.path}: the store is not open")
        return self._db

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one writing statement (serialised with the transactions on the shared connection)."""
        try:
            async with self._write_lock:
                async with asyncio.timeout(self.timeout):
                    await self.db.execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc

    async def rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run one query and return its rows."""
        try:
            async with asyncio.timeout(self.timeout):
                cursor = await self.db.execute(sql, params)
            return list(await cursor.fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """BEGIN … COMMIT on the shared connection, rolled back on any error; one at a time."""
        async with self._write_lock:
            db = self.db
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")

    # --- reports: twins and history ------------------------------------------------------------------------

    def add_report(self, device: str, ts: float, values: dict[str, Any]) -> None:
        """Queue one report's values; the writer commits them within one flush interval.

        When the disk cannot keep up, the queue is bounded: the oldest reports' history goes first (logged and
        counted in `history_dropped`); outbox messages are never dropped here, and the twins keep the latest
        values since newer reports stay queued.
        """
        self._pending.append((device, ts, values))
        self._queued += len(values)
        if self._queued > self.max_queued:
            self._shed()

    def _shed(self) -> None:
        dropped = 0
        while self._queued > self.max_queued * 0.9 and self._pending:
            _, _, values = self._pending.popleft()
            self._queued -= len(values)
            dropped += len(values)
        self.history_dropped += dropped
        now = time.monotonic()
        if now - self._shed_logged > 60:
            self._shed_logged = now
            log.warning("the store is %d values behind the devices: dropped the history of the oldest %d queued "
                        "values (%d so far); reduce the load or the report rate", self._queued, dropped,
                        self.history_dropped)

    @property
    def queued(self) -> int:
        return self._queued

    def add_outbox(self, sink: str, topic: str, payload: bytes) -> None:
        """Queue a message for a sink's outbox; it is durable once the next flush commits."""
        self._outbox.append((sink, topic, payload, time.time()))

    async def flush(self) -> int:
        """Commit every queued report and outbox message in one transaction; returns the values written."""
        if not self._pending and not self._outbox:
            return 0
        reports, self._pending = self._pending, deque()
        outbox, self._outbox = self._outbox, []
        queued, self._queued = self._queued, 0
        encode = _json.encode
        try:
            async with self.transaction() as db:
                series = await self._series_ids(db, {(d, name) for d, _, values in reports for name in values})
                latest: dict[int, tuple[int, str, float]] = {}
                history_rows: list[tuple[int, int, Any]] = []
                for device, ts, values in reports:
                    ts_ms = int(ts * 1000)
                    for name, value in values.items():
                        key = series[(device, name)]
                        latest[key] = (key, encode(value).decode(), ts)
                        history_rows.append((key, ts_ms, _history_value(value)))
                if latest:
                    await db.executemany(
                        "INSERT INTO twins (series, reported, reported_at, quality) VALUES (?, ?, ?, 'good') "
                        "ON CONFLICT(series) DO UPDATE SET reported=excluded.reported, "
                        "reported_at=excluded.reported_at, quality='good'",
                        list(latest.values()),
                    )
                    await db.executemany("INSERT INTO history VALUES (?, ?, ?)", history_rows)
                if outbox:
                    await db.executemany("INSERT INTO outbox (sink, topic, payload, created) VALUES (?, ?, ?, ?)",
                                         outbox)
        except sqlite3.Error as exc:
            self._pending.extendleft(reversed(reports))  # keep them for the next attempt
            self._outbox[:0] = outbox
            self._queued += queued
            raise StoreError(f"{self.path}: writing reports failed: {exc}") from exc
        self.rows_written += len(history_rows)
        if outbox:
            for row in outbox:
                self.outbox_depth[row[0]] = self.outbox_depth.get(row[0], 0) + 1
            sinks = {row[0] for row in outbox}
            for listener in self.on_flush:
                listener(sinks)
        return len(history_rows)

    async def _series_ids(self, db: aiosqlite.Connection, keys: Iterable[tuple[str, str]]
                          ) -> dict[tuple[str, str], int]:
        """Series ids for (device, property) pairs, creating the missing ones (inside the caller's transaction)."""
        missing = [key for key in keys if key not in self._series]
        if missing:
            await db.executemany("INSERT OR IGNORE INTO series (device, property) VALUES (?, ?)", missing)
            cursor = await db.execute("SELECT device, property, id FROM series")
            self._series = {(device, prop): sid for device, prop, sid in await cursor.fetchall()}
        return self._series

    async def run_writer(self) -> None:
        """The writer task: flush every interval, forever (supervised by the runtime)."""
        while True:
            await asyncio.sleep(self.flush_interval)
            await self.flush()

    async def save_desired(self, device: str, prop: str, value: Any, at: float) -> None:
        async with self.transaction() as db:
            series = (await self._series_ids(db, [(device, prop)]))[(device, prop)]
            await db.execute(
                "INSERT INTO twins (series, desired, desired_at) VALUES (?, ?, ?) "
                "ON CONFLICT(series) DO UPDATE SET desired=excluded.desired, desired_at=excluded.desired_at",
                (series, _json.encode(value).decode(), at),
            )

    async def load_twins(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Stored twin rows by device and property, values decoded."""
        result: dict[str, dict[str, dict[str, Any]]] = {}
        for device, prop, desired, desired_at, reported, reported_at, quality in await self.rows(
            "SELECT device, property, desired, desired_at, reported, reported_at, quality "
            "FROM twins JOIN series ON series.id = twins.series"
        ):
            result.setdefault(device, {})[prop] = {
                "desired": _unjson.decode(desired) if desired is not None else None,
                "desired_at": desired_at,
                "reported": _unjson.decode(reported) if reported is not None else None,
                "reported_at": reported_at,
                "quality": quality,
            }
        return result

    async def history(self, device: str, prop: str, since: float, until: float, limit: int = 10_000
                      ) -> list[tuple[float, Any]]:
        rows = await self.rows(
            "SELECT ts, value FROM history WHERE series = (SELECT id FROM series WHERE device=? AND property=?) "
            "AND ts>=? AND ts<=? ORDER BY ts DESC LIMIT ?",
            (device, prop, int(since * 1000), int(until * 1000), limit),
        )
        return [(ts / 1000, value) for ts, value in reversed(rows)]

    async def prune_history(self, max_age: float, max_bytes: int) -> int:
        """Delete history older than max_age, then the oldest rows while the file's used size exceeds max_bytes.

        Rows are appended in time order, so the cut-off is found by a binary search over rowids instead of a scan.
        """
        deleted = await self._delete_history_before(await self._first_rowid_at(int((time.time() - max_age) * 1000)))
        for _ in range(20):
            (pages,), (free,), (page_size,) = [
                (await self.rows(f"PRAGMA {p}"))[0] for p in ("page_count", "freelist_count", "page_size")
            ]
            if (pages - free) * page_size <= max_bytes:
                break
            ((low, high),) = await self.rows("SELECT min(rowid), max(rowid) FROM history")
            if low is None:
                break
            deleted += await self._delete_history_before(low + max((high - low + 1) // 10, 1))
        if deleted:
            log.info("history retention removed %d values", deleted)
        return deleted

    async def _first_rowid_at(self, ts_ms: int) -> int:
        ((low, high),) = await self.rows("SELECT min(rowid), max(rowid) FROM history")
        if low is None:
            return 0
        high += 1
        while low < high:
            middle = (low + high) // 2
            rows = await self.rows("SELECT ts FROM history WHERE rowid >= ? ORDER BY rowid LIMIT 1", (middle,))
            if rows and rows[0][0] < ts_ms:
                low = middle + 1
            else:
                high = middle
        return int(low)

    async def _delete_history_before(self, rowid: int) -> int:
        async with self.transaction() as db:
            cursor = await db.execute("DELETE FROM history WHERE rowid < ?", (rowid,))
            return max(cursor.rowcount, 0)

    # --- outboxes --------------------------------------------------------------------------------------------

    async def outbox_batch(self, sink: str, after: int, limit: int) -> list[tuple[int, str, bytes, float]]:
        """The next messages of a sink's outbox, in order: (seq, topic, payload, created)."""
        rows = await self.rows("SELECT seq, topic, payload, created FROM outbox WHERE sink = ? AND seq > ? "
                               "ORDER BY seq LIMIT ?", (sink, after, limit))
        return [(int(seq), str(topic), bytes(payload), float(created)) for seq, topic, payload, created in rows]

    async def outbox_ack(self, sink: str, up_to: int) -> None:
        """Forget the messages of a sink up to and including `up_to`: they were delivered."""
        async with self.transaction() as db:
            cursor = await db.execute("DELETE FROM outbox WHERE sink = ? AND seq <= ?", (sink, up_to))
            self.outbox_depth[sink] = max(self.outbox_depth.get(sink, 0) - max(cursor.rowcount, 0), 0)

    async def outbox_stats(self) -> dict[str, dict[str, Any]]:
        rows = await self.rows("SELECT sink, count(*), min(created) FROM outbox GROUP BY sink")
        return {sink: {"depth": int(count), "oldest": oldest} for sink, count, oldest in rows}

    async def outbox_trim(self, sink: str, max_messages: int, max_age: float) -> int:
        """Drop the oldest messages beyond the limits (the stated drop policy); returns how many."""
        dropped = 0
        async with self.transaction() as db:
            cursor = await db.execute("DELETE FROM outbox WHERE sink = ? AND created < ?",
                                      (sink, time.time() - max_age))
            dropped += max(cursor.rowcount, 0)
            cursor = await db.execute(
                "DELETE FROM outbox WHERE sink = ? AND seq <= (SELECT seq FROM outbox WHERE sink = ? "
                "ORDER BY seq DESC LIMIT 1 OFFSET ?)", (sink, sink, max_messages))
            dropped += max(cursor.rowcount, 0)
        self.outbox_depth[sink] = max(self.outbox_depth.get(sink, 0) - dropped, 0)
        return dropped

    # --- resources ------------------------------------------------------------------------------------------

    async def save_resources(self, documents: Iterable[tuple[str, str, str, bytes]], source: str = "file") -> None:
        now = time.time()
        async with self.transaction() as db:
            await db.execute("DELETE FROM resources WHERE source = ?", (source,))
            await db.executemany(
                "INSERT OR REPLACE INTO resources VALUES (?, ?, ?, ?, ?, ?)",
                [(kind, ns, name, self.secrets.seal_document(kind, doc).decode(), source, now)
                 for kind, ns, name, doc in documents],
            )

    async def put_resource(self, kind: str, namespace: str, name: str, document: bytes, source: str) -> None:
        await self.execute("INSERT OR REPLACE INTO resources VALUES (?, ?, ?, ?, ?, ?)",
                           (kind, namespace, name, self.secrets.seal_document(kind, document).decode(), source,
                            time.time()))

    def resource_document(self, kind: str, document: str | bytes) -> Any:
        """A stored resource document as raw data (a Secret's values decrypted)."""
        return self.secrets.unseal_document(kind, document)

    async def delete_resource(self, kind: str, namespace: str, name: str) -> None:
        await self.execute("DELETE FROM resources WHERE kind=? AND namespace=? AND name=?", (kind, namespace, name))

    # --- audit ----------------------------------------------------------------------------------------------

    async def audit(self, actor: str, action: str, target: str, detail: str = "", address: str = "") -> None:
        await self.execute(
            "INSERT INTO audit (ts, actor, action, target, detail, address) VALUES (?, ?, ?, ?, ?, ?)",
            (time.time(), actor, action, target, detail, address),
        )

    async def audit_log(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self.rows(
            "SELECT ts, actor, action, target, detail, address FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        )
        keys = ("ts", "actor", "action", "target", "detail", "address")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    # --- users and tokens ------------------------------------------------------------------------------------

    async def put_user(self, name: str, role: str, password_hash: str) -> None:
        await self.execute(
            "INSERT INTO users VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET role=excluded.role, "
            "password_hash=excluded.password_hash",
            (name, role, password_hash, time.time()),
        )

    async def get_user(self, name: str) -> tuple[str, str] | None:
        rows = await self.rows("SELECT role, password_hash FROM users WHERE name = ?", (name,))
        return (rows[0][0], rows[0][1]) if rows else None

    async def add_token(self, token_hash: str, role: str, description: str) -> int:
        async with self.transaction() as db:
            cursor = await db.execute(
                "INSERT INTO tokens (token_hash, role, description, created_at) VALUES (?, ?, ?, ?)",
                (token_hash, role, description, time.time()),
            )
            return int(cursor.lastrowid or 0)

    async def token_role(self, token_hash: str) -> tuple[int, str] | None:
        rows = await self.rows("SELECT id, role FROM tokens WHERE token_hash = ? AND revoked = 0", (token_hash,))
        return (int(rows[0][0]), str(rows[0][1])) if rows else None
