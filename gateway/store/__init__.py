"""The SQLite store in the data dir (WAL): resources, twins, history, audit log, users and tokens.

Reports are queued and committed by one writer task every `flush_interval`: a report is complete once its
transaction commits, and a crash (even SIGKILL) leaves every completed report in the file.

History is one row per report (`reports`: device, time, a MessagePack map of series id to value), not one row per
value: a row per value kept a (series, time) index whose leaf pages every flush touched all over, which cost about
7 us of CPU and several KB of WAL per value. The latest reported values live in one row per device (`reported`),
and per-minute count/min/max/sum of numeric values in `rollups`, which the plots of long windows read.
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

SCHEMA_VERSION = 3  # 2: workload versions and events; 3: history one row per report
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
CREATE TABLE IF NOT EXISTS devices (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS reports (device INTEGER NOT NULL, ts INTEGER NOT NULL, vals BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS reports_by_device ON reports (device, ts);
CREATE TABLE IF NOT EXISTS reported (device INTEGER PRIMARY KEY, vals BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS rollups (
    series INTEGER NOT NULL, minute INTEGER NOT NULL, n INTEGER NOT NULL, low REAL NOT NULL, high REAL NOT NULL,
    total REAL NOT NULL, PRIMARY KEY (series, minute)) WITHOUT ROWID;
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
_pack = msgspec.msgpack.Encoder()
_unpack = msgspec.msgpack.Decoder()
HISTORY_PAGE = 2000  # report rows read a query
SNAPSHOT_EVERY = 5.0  # seconds between writes of the latest reported values (opening replays the reports since)
FOLD_EVERY = 1.0  # seconds between folds of committed reports into the latest values and the running minutes


def db_path(data_dir: Path) -> Path:
    return data_dir / "fieldgate.db"


def _numeric(value: Any) -> bool:
    kind = type(value)
    return kind is float or kind is int


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
        self._meta: dict[str, str] = {}  # meta values to write with the next flush
        self._queued = 0
        self.max_queued = max_queued
        self.history_dropped = 0
        self._shed_logged = 0.0
        self.on_flush: list[Callable[[set[str]], None]] = []  # told which outboxes got new messages
        self.outbox_depth: dict[str, int] = {}  # committed, not yet delivered, per outbox
        self._series: dict[tuple[str, str], int] = {}  # (device, property) -> series id: small integer keys
        self._device_ids: dict[str, int] = {}
        self._by_device: dict[str, dict[str, int]] = {}  # device -> property -> series id (the hot path's view)
        self._latest: dict[int, dict[int, Any]] = {}  # device id -> series id -> latest value
        self._latest_at: dict[int, dict[int, float]] = {}  # device id -> series id -> its time
        self._dirty: set[int] = set()  # devices whose latest values are newer than their `reported` row
        self._snapshot_at = 0.0  # monotonic time of the last `reported` snapshot
        self._open: dict[int, list[Any]] = {}  # series -> [minute, n, low, high, total]: its running minute
        self._closed: list[list[Any]] = []  # [series, minute, n, low, high, total] of minutes over, to write
        self._keys: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {}  # device -> its last key list, ids
        self._unfolded: list[tuple[int, float, tuple[int, ...], tuple[Any, ...]]] = []  # committed, not folded
        self._folded_at = 0.0
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
            await self._migrate()
            await self._load_ids()
            self.outbox_depth = {sink: info["depth"] for sink, info in (await self.outbox_stats()).items()}
        except (sqlite3.Error, OSError, TimeoutError) as exc:
            raise StoreError(f"{self.path}: cannot open the store: {exc}") from exc

    async def _migrate(self) -> None:
        """Up to schema 2, history was one row per value (`history`) and the reported values lived in `twins`: both
        move to the report rows and the per-device rows of schema 3 in one transaction, so an old store loses
        nothing. Newer tables are created by SCHEMA (IF NOT EXISTS); the recorded version only moves forward."""
        rows = await self.rows("SELECT value FROM meta WHERE key = 'schema_version'")
        version = int(rows[0][0]) if rows else SCHEMA_VERSION
        async with self.transaction() as db:
            if version < 3 and await (await db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'history'")).fetchall():
                moved = await self._migrate_history(db)
                log.info("store %s: moved %d history values to schema %d", self.path, moved, SCHEMA_VERSION)
            await db.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT(key) DO UPDATE SET "
                             "value = excluded.value WHERE CAST(value AS INTEGER) < CAST(excluded.value AS INTEGER)",
                             (str(SCHEMA_VERSION),))

    async def _migrate_history(self, db: aiosqlite.Connection) -> int:
        await db.execute("INSERT OR IGNORE INTO devices (name) SELECT DISTINCT device FROM series")
        await db.execute(
            "INSERT INTO rollups SELECT series, ts / 60000, count(*), min(value), max(value), sum(value) FROM history "
            "WHERE typeof(value) IN ('integer', 'real') GROUP BY series, ts / 60000")
        moved, after = 0, 0
        key: tuple[int, int] | None = None
        values: dict[int, Any] = {}
        rows_out: list[tuple[int, int, bytes]] = []
        while True:  # a report's values were written together: consecutive rows with one device and time
            cursor = await db.execute(
                "SELECT history.rowid, devices.id, history.ts, history.series, history.value FROM history "
                "JOIN series ON series.id = history.series JOIN devices ON devices.name = series.device "
                "WHERE history.rowid > ? ORDER BY history.rowid LIMIT 50000", (after,))
            chunk = list(await cursor.fetchall())
            for rowid, device, ts, series, value in chunk:
                if (device, ts) != key:
                    if key is not None:
                        rows_out.append((key[0], key[1], _pack.encode(values)))
                    key, values = (device, ts), {}
                values[series] = value
                after = rowid
            moved += len(chunk)
            await db.executemany("INSERT INTO reports VALUES (?, ?, ?)", rows_out)
            rows_out = []
            if len(chunk) < 50000:
                break
        if key is not None:
            await db.execute("INSERT INTO reports VALUES (?, ?, ?)", (key[0], key[1], _pack.encode(values)))
        latest: dict[int, dict[int, list[Any]]] = {}
        cursor = await db.execute(
            "SELECT devices.id, twins.series, twins.reported, twins.reported_at FROM twins "
            "JOIN series ON series.id = twins.series JOIN devices ON devices.name = series.device "
            "WHERE twins.reported IS NOT NULL")
        for device, series, reported, reported_at in await cursor.fetchall():
            latest.setdefault(device, {})[series] = [_unjson.decode(reported), reported_at]
        await db.executemany("INSERT OR REPLACE INTO reported VALUES (?, ?)",
                             [(device, _pack.encode(values)) for device, values in latest.items()])
        await db.execute("UPDATE twins SET reported = NULL, reported_at = NULL")
        await db.execute("INSERT INTO meta SELECT 'reported_rowid', coalesce(max(rowid), 0) FROM reports WHERE true "
                         "ON CONFLICT(key) DO UPDATE SET value = excluded.value")
        await db.execute("DROP TABLE history")
        return moved

    async def _load_ids(self) -> None:
        self._series = {(str(d), str(p)): int(i) for d, p, i in await self.rows("SELECT device, property, id "
                                                                                  "FROM series")}
        self._index_series()
        self._device_ids = {str(name): int(i) for i, name in await self.rows("SELECT id, name FROM devices")}
        self._latest, self._latest_at = {}, {}
        for device, vals in await self.rows("SELECT device, vals FROM reported"):
            for key, (value, at) in _unpack.decode(vals).items():
                self._latest.setdefault(int(device), {})[int(key)] = value
                self._latest_at.setdefault(int(device), {})[int(key)] = at
        # the snapshot is written every SNAPSHOT_EVERY seconds: the reports committed after it bring it up to date
        rows = await self.rows("SELECT value FROM meta WHERE key = 'reported_rowid'")
        after = int(rows[0][0]) if rows else 0
        for device, ts, vals in await self.rows("SELECT device, ts, vals FROM reports WHERE rowid > ? "
                                                "ORDER BY rowid", (after,)):
            values = _unpack.decode(vals)
            self._latest.setdefault(device, {}).update(values)
            self._latest_at.setdefault(device, {}).update(dict.fromkeys(values, ts / 1000))

    def _index_series(self) -> None:
        by_device: dict[str, dict[str, int]] = {}
        for (device, prop), series_id in self._series.items():
            by_device.setdefault(device, {})[prop] = series_id
        self._by_device = by_device
        self._keys = {}

    async def close(self) -> None:
        if self._db is None:
            return
        with contextlib.suppress(StoreError):
            await self.flush()
            await self._write_rollups(everything=True)
            if self._dirty:
                await self._write_snapshot()
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

    async def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one INSERT (serialised like `execute`) and return the id of its row."""
        try:
            async with self._write_lock:
                async with asyncio.timeout(self.timeout):
                    cursor = await self.db.execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        if cursor.lastrowid is None:
            raise StoreError(f"{self.path}: no row inserted by {sql.split('(', 1)[0].strip()}")
        return cursor.lastrowid

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

    def queue_meta(self, key: str, value: str) -> None:
        """Queue a value of the meta table; it is durable once the next flush commits (a newer value of the same
        key queued before then replaces it)."""
        self._meta[key] = value

    async def flush(self) -> int:
        """Commit every queued report, outbox message and meta value in one transaction; returns the values
        written."""
        if not self._pending and not self._outbox and not self._meta:
            return 0
        reports, self._pending = self._pending, deque()
        outbox, self._outbox = self._outbox, []
        meta, self._meta = self._meta, {}
        queued, self._queued = self._queued, 0
        encode = _pack.encode
        keys = self._keys
        written = 0
        try:
            async with self.transaction() as db:
                by_device = await self._series_for(db, reports)
                devices = await self._devices_for(db, {device for device, _, _ in reports})
                report_rows: list[tuple[int, int, bytes]] = []
                folded: list[tuple[int, float, tuple[int, ...], tuple[Any, ...]]] = []
                for device, ts, values in reports:
                    # a device reports the same properties in the same order cycle after cycle: their series ids
                    # are looked up once per key list, and the values are paired with them in C (zip)
                    names = tuple(values)
                    cached = keys.get(device)
                    if cached is None or cached[0] != names:
                        known = by_device[device]
                        cached = keys[device] = (names, tuple(known[name] for name in names))
                    ids = cached[1]
                    vals = tuple(values.values())
                    device_id = devices[device]
                    report_rows.append((device_id, int(ts * 1000), encode(dict(zip(ids, vals, strict=True)))))
                    folded.append((device_id, ts, ids, vals))
                    written += len(vals)
                if report_rows:
                    await db.executemany("INSERT INTO reports VALUES (?, ?, ?)", report_rows)
                if outbox:
                    await db.executemany("INSERT INTO outbox (sink, topic, payload, created) VALUES (?, ?, ?, ?)",
                                         outbox)
                if meta:
                    await db.executemany("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                                         "value = excluded.value", list(meta.items()))
        except sqlite3.Error as exc:
            self._pending.extendleft(reversed(reports))  # keep them for the next attempt
            self._outbox[:0] = outbox
            self._meta = {**meta, **self._meta}
            self._queued += queued
            raise StoreError(f"{self.path}: writing reports failed: {exc}") from exc
        self._unfolded += folded
        self.rows_written += written
        if outbox:
            for row in outbox:
                self.outbox_depth[row[0]] = self.outbox_depth.get(row[0], 0) + 1
            sinks = {row[0] for row in outbox}
            for listener in self.on_flush:
                listener(sinks)
        if time.monotonic() - self._folded_at >= FOLD_EVERY:
            self._fold()
        if self._closed:
            await self._write_rollups()
        if self._dirty and time.monotonic() - self._snapshot_at >= SNAPSHOT_EVERY:
            await self._write_snapshot()
        return written

    def _fold(self) -> None:
        """Bring the latest values and the running minutes up to the committed reports.

        Done every FOLD_EVERY seconds rather than per flush, so that a property's values of several flushes are
        folded together: its rows are grouped by key list and minute, and each column's count, low, high and
        total are computed by the builtins, not value by value.
        """
        rows, self._unfolded = self._unfolded, []
        self._folded_at = time.monotonic()
        if not rows:
            return
        groups: dict[tuple[int, int], tuple[tuple[int, ...], int, list[tuple[Any, ...]]]] = {}
        last: dict[int, dict[int, tuple[float, tuple[int, ...], tuple[Any, ...]]]] = {}
        for device_id, ts, ids, vals in rows:
            minute = int(ts * 1000) // 60000
            group = groups.get((id(ids), minute))
            if group is None:
                groups[(id(ids), minute)] = (ids, minute, [vals])
            else:
                group[2].append(vals)
            last.setdefault(device_id, {})[id(ids)] = (ts, ids, vals)
        for device_id, entries in last.items():
            latest = self._latest.get(device_id)
            if latest is None:
                latest = self._latest[device_id] = {}
                self._latest_at[device_id] = {}
            latest_at = self._latest_at[device_id]
            for ts, ids, vals in sorted(entries.values(), key=lambda entry: entry[0]):
                latest.update(zip(ids, vals, strict=True))
                latest_at.update(dict.fromkeys(ids, ts))
            self._dirty.add(device_id)
        running, closed = self._open, self._closed
        for ids, minute, block in groups.values():
            columns = zip(*block, strict=True) if len(block) > 1 else ((value,) for value in block[0])
            for key, column in zip(ids, columns, strict=True):
                kind = type(column[0])
                if kind is not float and kind is not int:
                    continue
                try:
                    n, low, high, total = len(column), min(column), max(column), sum(column)
                except TypeError:  # a column of mixed types: only its numbers count
                    numbers = [v for v in column if type(v) is float or type(v) is int]
                    n, low, high, total = len(numbers), min(numbers), max(numbers), sum(numbers)
                current = running.get(key)
                if current is None:
                    running[key] = [minute, n, low, high, total]
                elif current[0] != minute:
                    closed.append([key, *current])
                    running[key] = [minute, n, low, high, total]
                else:
                    current[1] += n
                    if low < current[2]:
                        current[2] = low
                    if high > current[3]:
                        current[3] = high
                    current[4] += total

    async def _write_snapshot(self) -> None:
        """The latest reported values of the devices that reported since the last snapshot, one row each, and the
        last report row they include: opening the store replays only the reports after it."""
        self._fold()
        dirty, self._dirty = self._dirty, set()
        self._snapshot_at = time.monotonic()
        encode = _pack.encode
        rows = []
        for device_id in dirty:
            at = self._latest_at[device_id]
            rows.append((device_id, encode({key: (value, at[key]) for key, value in self._latest[device_id].items()})))
        try:
            async with self.transaction() as db:
                await db.executemany(
                    "INSERT INTO reported VALUES (?, ?) ON CONFLICT(device) DO UPDATE SET vals = excluded.vals", rows)
                await db.execute("INSERT INTO meta SELECT 'reported_rowid', coalesce(max(rowid), 0) FROM reports "
                                 "WHERE true ON CONFLICT(key) DO UPDATE SET value = excluded.value")
        except sqlite3.Error as exc:
            self._dirty |= dirty
            raise StoreError(f"{self.path}: writing the reported values failed: {exc}") from exc

    async def _write_rollups(self, *, everything: bool = False) -> None:
        """Write the per-minute buckets of minutes that are over (and the running ones when the store closes); a
        bucket written twice (a restart within its minute) is merged, not replaced."""
        if everything:
            self._fold()
        ready = self._closed + ([[key, *bucket] for key, bucket in self._open.items()] if everything else [])
        if not ready:
            return
        try:
            async with self.transaction() as db:
                await db.executemany(
                    "INSERT INTO rollups VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(series, minute) DO UPDATE SET "
                    "n = n + excluded.n, low = min(low, excluded.low), high = max(high, excluded.high), "
                    "total = total + excluded.total", ready)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: writing rollups failed: {exc}") from exc
        self._closed = []
        if everything:
            self._open = {}

    async def _series_ids(self, db: aiosqlite.Connection, keys: Iterable[tuple[str, str]]
                          ) -> dict[tuple[str, str], int]:
        """Series ids for (device, property) pairs, creating the missing ones (inside the caller's transaction)."""
        missing = [key for key in keys if key not in self._series]
        if missing:
            await db.executemany("INSERT OR IGNORE INTO series (device, property) VALUES (?, ?)", missing)
            cursor = await db.execute("SELECT device, property, id FROM series")
            self._series = {(device, prop): sid for device, prop, sid in await cursor.fetchall()}
            self._index_series()
        return self._series

    async def _series_for(self, db: aiosqlite.Connection, reports: Iterable[tuple[str, float, dict[str, Any]]]
                          ) -> dict[str, dict[str, int]]:
        """Property -> series id per device, creating the series these reports bring first."""
        by_device = self._by_device
        missing: set[tuple[str, str]] = set()
        for device, _, values in reports:
            known = by_device.get(device)
            if known is None or not values.keys() <= known.keys():
                missing.update((device, name) for name in values if known is None or name not in known)
        if missing:
            await self._series_ids(db, missing)
        return self._by_device

    async def _devices_for(self, db: aiosqlite.Connection, names: Iterable[str]) -> dict[str, int]:
        missing = [(name,) for name in names if name not in self._device_ids]
        if missing:
            await db.executemany("INSERT OR IGNORE INTO devices (name) VALUES (?)", missing)
            cursor = await db.execute("SELECT id, name FROM devices")
            self._device_ids = {name: device_id for device_id, name in await cursor.fetchall()}
        return self._device_ids

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
        """Stored twin values by device and property: desired from `twins`, reported from `reported`."""
        result: dict[str, dict[str, dict[str, Any]]] = {}

        def entry(device: str, prop: str) -> dict[str, Any]:
            return result.setdefault(device, {}).setdefault(prop, {
                "desired": None, "desired_at": None, "reported": None, "reported_at": None, "quality": "unknown"})

        for device, prop, desired, desired_at in await self.rows(
            "SELECT device, property, desired, desired_at FROM twins JOIN series ON series.id = twins.series "
            "WHERE desired IS NOT NULL"
        ):
            item = entry(device, prop)
            item["desired"], item["desired_at"] = _unjson.decode(desired), desired_at
        self._fold()
        names = {series_id: key for key, series_id in self._series.items()}
        for device_id, values in self._latest.items():
            at = self._latest_at[device_id]
            for series_id, value in values.items():
                device, prop = names[series_id]
                item = entry(device, prop)
                item["reported"], item["reported_at"], item["quality"] = value, at[series_id], "good"
        return result

    async def history(self, device: str, prop: str, since: float, until: float, limit: int = 10_000
                      ) -> list[tuple[float, Any]]:
        """The newest `limit` values of one property between two times, oldest first."""
        found: list[tuple[float, Any]] = []
        async for ts, value in self._history_newest_first(device, prop, since, until):
            found.append((ts, value))
            if len(found) >= limit:
                break
        found.reverse()
        return found

    async def _history_newest_first(self, device: str, prop: str, since: float, until: float
                                    ) -> AsyncIterator[tuple[float, Any]]:
        series_id, device_id = self._series.get((device, prop)), self._device_ids.get(device)
        if series_id is None or device_id is None:
            return
        low, high, rowid = int(since * 1000), int(until * 1000), 1 << 62
        while True:  # pages in index order, resumed after the last (ts, rowid) seen
            rows = await self.rows(
                "SELECT rowid, ts, vals FROM reports WHERE device = ? AND ts >= ? AND (ts < ? OR (ts = ? AND "
                "rowid < ?)) ORDER BY ts DESC, rowid DESC LIMIT ?",
                (device_id, low, high, high, rowid, HISTORY_PAGE))
            for rowid, high, vals in rows:  # noqa: B007 - the last row's rowid and ts resume the next page
                values = _unpack.decode(vals)
                if series_id in values:
                    yield high / 1000, values[series_id]
            if len(rows) < HISTORY_PAGE:
                return

    async def history_buckets(self, device: str, prop: str, since: float, until: float, buckets: int = 240
                              ) -> list[tuple[float, float, float, float]]:
        """(time, min, max, mean) of the numeric values of one property in `buckets` equal slices of a window:
        from the reports for windows up to an hour, from the per-minute rollups beyond."""
        since_ms, until_ms = int(since * 1000), int(until * 1000)
        width = max((until_ms - since_ms) // buckets, 1)
        slices: dict[int, list[float]] = {}

        def add(ts_ms: int, n: int, low: float, high: float, total: float) -> None:
            index = (ts_ms - since_ms) // width
            acc = slices.get(index)
            if acc is None:
                slices[index] = [n, low, high, total]
            else:
                acc[0] += n
                acc[1] = min(acc[1], low)
                acc[2] = max(acc[2], high)
                acc[3] += total

        if until_ms - since_ms <= 3_600_000 or width < 60_000:
            async for ts, value in self._history_newest_first(device, prop, since, until):
                if type(value) is float or type(value) is int:
                    add(int(ts * 1000), 1, value, value, value)
        else:
            series_id = self._series.get((device, prop))
            if series_id is None:
                return []
            rows = await self.rows("SELECT minute, n, low, high, total FROM rollups WHERE series = ? AND minute >= ? "
                                   "AND minute <= ?", (series_id, since_ms // 60000, until_ms // 60000))
            self._fold()
            pending = [row[1:] for row in self._closed if row[0] == series_id]
            if series_id in self._open:
                pending.append(self._open[series_id])
            for minute, n, low, high, total in [*rows, *pending]:
                add(max(int(minute) * 60000, since_ms), int(n), float(low), float(high), float(total))
        return [((since_ms + (index + 0.5) * width) / 1000, float(low), float(high), float(total) / n)
                for index, (n, low, high, total) in sorted(slices.items()) if 0 <= index < buckets]

    async def prune_history(self, max_age: float, max_bytes: int) -> int:
        """Delete reports older than max_age, then the oldest while the file's used size exceeds max_bytes.

        Reports are appended in time order, so the cut-off is found by a binary search over rowids instead of a
        scan. Returns how many report rows went.
        """
        cutoff_ms = int((time.time() - max_age) * 1000)
        deleted = await self._delete_reports_before(await self._first_rowid_at(cutoff_ms))
        await self.execute("DELETE FROM rollups WHERE minute < ?", (cutoff_ms // 60000,))
        for _ in range(20):
            (pages,), (free,), (page_size,) = [
                (await self.rows(f"PRAGMA {p}"))[0] for p in ("page_count", "freelist_count", "page_size")
            ]
            if (pages - free) * page_size <= max_bytes:
                break
            ((low, high),) = await self.rows("SELECT min(rowid), max(rowid) FROM reports")
            if low is None:
                break
            deleted += await self._delete_reports_before(low + max((high - low + 1) // 10, 1))
        if deleted:
            log.info("history retention removed %d reports", deleted)
        return deleted

    async def _first_rowid_at(self, ts_ms: int) -> int:
        ((low, high),) = await self.rows("SELECT min(rowid), max(rowid) FROM reports")
        if low is None:
            return 0
        high += 1
        while low < high:
            middle = (low + high) // 2
            rows = await self.rows("SELECT ts FROM reports WHERE rowid >= ? ORDER BY rowid LIMIT 1", (middle,))
            if rows and rows[0][0] < ts_ms:
                low = middle + 1
            else:
                high = middle
        return int(low)

    async def _delete_reports_before(self, rowid: int) -> int:
        async with self.transaction() as db:
            cursor = await db.execute("DELETE FROM reports WHERE rowid < ?", (rowid,))
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

    async def has_users(self) -> bool:
        """Whether anybody can log in to the web UI yet."""
        return bool(await self.rows("SELECT 1 FROM users LIMIT 1"))

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
