"""The store's schema and its numbered migrations.

SCHEMA is the baseline (schema 3) every store gets at open: IF NOT EXISTS, so an older store also gets the tables
it lacks. A numbered step changes what the baseline cannot (moving data) or adds what came later; each runs once,
when the recorded schema version is below its number, and all of them in one transaction with the new version.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite
import msgspec

if TYPE_CHECKING:
    from gateway.store.db import Database

log = logging.getLogger(__name__)

SCHEMA_VERSION = 5  # 2: workload versions and events; 3: history one row per report; 4: UI settings; 5: files
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

_pack = msgspec.msgpack.Encoder()
_unjson = msgspec.json.Decoder()


async def _history_per_report(db: aiosqlite.Connection, path: Path) -> None:
    """Up to schema 2, history was one row per value (`history`) and the reported values lived in `twins`: both move
    to the report rows and the per-device rows of schema 3, so an old store loses nothing."""
    if not await (await db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'history'")
                  ).fetchall():
        return
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
    log.info("store %s: moved %d history values to schema 3", path, moved)


async def _ui_settings(db: aiosqlite.Connection, path: Path) -> None:
    """Settings of the local UI (until schema 4 the web app created this table on each request)."""
    await db.execute("CREATE TABLE IF NOT EXISTS ui_settings (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
                     "updated_at REAL NOT NULL, updated_by TEXT NOT NULL)")


async def _files(db: aiosqlite.Connection, path: Path) -> None:
    """Files both ways: those the registry sends (`file_inbox`, with the offset written) and the durable outbox of
    those the node sends (`file_outbox`, kept until the registry has them whole and verified)."""
    await db.execute("CREATE TABLE IF NOT EXISTS file_inbox (id TEXT PRIMARY KEY, name TEXT NOT NULL, path TEXT NOT "
                     "NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL, content_type TEXT NOT NULL, labels TEXT NOT "
                     "NULL, state TEXT NOT NULL, position INTEGER NOT NULL, reason TEXT NOT NULL, bytes_received "
                     "INTEGER NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL, done_at REAL, "
                     "reported TEXT NOT NULL DEFAULT '')")
    await db.execute("CREATE TABLE IF NOT EXISTS file_outbox (id TEXT PRIMARY KEY, name TEXT NOT NULL, size INTEGER "
                     "NOT NULL, sha256 TEXT NOT NULL, content_type TEXT NOT NULL, labels TEXT NOT NULL, source TEXT "
                     "NOT NULL, state TEXT NOT NULL, position INTEGER NOT NULL, bytes_sent INTEGER NOT NULL, reason "
                     "TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL, done_at REAL)")


MIGRATIONS: tuple[tuple[int, Callable[[aiosqlite.Connection, Path], Awaitable[None]]], ...] = (
    (3, _history_per_report),
    (4, _ui_settings),
    (5, _files),
)


async def migrate(database: Database) -> None:
    """Create the baseline tables, then run the steps newer than the recorded version; the version only moves
    forward (a store written by a newer gateway keeps its number)."""
    await database.connection.executescript(f"BEGIN; {SCHEMA} COMMIT;")
    recorded = await database.meta("schema_version")
    version = int(recorded) if recorded is not None else 0
    async with database.transaction() as db:
        for number, step in MIGRATIONS:
            if version < number:
                await step(db, database.path)
        await db.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT(key) DO UPDATE SET "
                         "value = excluded.value WHERE CAST(value AS INTEGER) < CAST(excluded.value AS INTEGER)",
                         (str(SCHEMA_VERSION),))
