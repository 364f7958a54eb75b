"""The registry's storage interface: one SQL dialect (`?` placeholders) over SQLite (aiosqlite, one file in the data
dir) or PostgreSQL (asyncpg, shared by registry replicas), with numbered migrations for each recorded in a
`schema_version` table, and notifications (`notify`/`listen`) that stay in-process on SQLite and go through
PostgreSQL LISTEN/NOTIFY on PostgreSQL, so a message posted to one replica wakes the node links of every replica."""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from collections.abc import Awaitable, Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import aiosqlite

from gateway.errors import StoreError

if TYPE_CHECKING:
    import asyncpg  # type: ignore[import-untyped]

log = logging.getLogger(__name__)
TIMEOUT = 10.0
Listener = Callable[[str], None]
Statement = tuple[str, Sequence[Any]]

_SQLITE_TIME, _PG_TIME = "REAL", "DOUBLE PRECISION"
# (version, statements); {time} is REAL on SQLite and DOUBLE PRECISION on PostgreSQL (whose REAL is 4 bytes)
MIGRATIONS: list[tuple[int, str]] = [
    (1, """
CREATE TABLE IF NOT EXISTS join_tokens (id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, expires_at {time} NOT NULL,
    max_uses INTEGER NOT NULL, uses INTEGER NOT NULL DEFAULT 0, revoked INTEGER NOT NULL DEFAULT 0,
    labels TEXT NOT NULL, created_at {time} NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (name TEXT PRIMARY KEY, serial TEXT NOT NULL, labels TEXT NOT NULL,
    joined_at {time} NOT NULL, last_heartbeat {time}, interval {time} NOT NULL, info TEXT NOT NULL DEFAULT '{{}}');
CREATE TABLE IF NOT EXISTS revoked_certificates (serial TEXT PRIMARY KEY, node TEXT NOT NULL,
    revoked_at {time} NOT NULL);
CREATE TABLE IF NOT EXISTS documents (kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    node TEXT, document TEXT NOT NULL, updated_at {time} NOT NULL, PRIMARY KEY (kind, namespace, name));
"""),
    (2, """
CREATE TABLE api_tokens (id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, role TEXT NOT NULL,
    created_at {time} NOT NULL);
CREATE TABLE messages (id TEXT PRIMARY KEY, node TEXT NOT NULL, namespace TEXT NOT NULL, path TEXT NOT NULL,
    payload TEXT NOT NULL, created_at {time} NOT NULL, expires_at {time} NOT NULL);
CREATE INDEX messages_by_node ON messages (node, created_at);
ALTER TABLE nodes ADD COLUMN messages_expired INTEGER NOT NULL DEFAULT 0;
"""),
    (3, """
CREATE TABLE node_groups (name TEXT PRIMARY KEY, selector TEXT NOT NULL, created_at {time} NOT NULL);
CREATE TABLE group_members (node TEXT PRIMARY KEY, group_name TEXT NOT NULL);
"""),
    (4, """
CREATE TABLE workspaces (name TEXT PRIMARY KEY, folder TEXT NOT NULL, created_at {time} NOT NULL);
INSERT INTO workspaces (name, folder, created_at) VALUES ('default', 'default', 0);
ALTER TABLE nodes ADD COLUMN workspace TEXT NOT NULL DEFAULT 'default';
ALTER TABLE node_groups ADD COLUMN workspace TEXT NOT NULL DEFAULT 'default';
ALTER TABLE documents ADD COLUMN workspace TEXT NOT NULL DEFAULT 'default';
ALTER TABLE join_tokens ADD COLUMN workspace TEXT NOT NULL DEFAULT 'default';
ALTER TABLE api_tokens ADD COLUMN scope TEXT NOT NULL DEFAULT 'platform';
ALTER TABLE api_tokens ADD COLUMN description TEXT NOT NULL DEFAULT '';
ALTER TABLE api_tokens ADD COLUMN revoked_at {time};
CREATE TABLE registry_users (name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, role TEXT NOT NULL,
    scope TEXT NOT NULL, created_at {time} NOT NULL);
CREATE TABLE audit (id TEXT PRIMARY KEY, at {time} NOT NULL, actor TEXT NOT NULL, scope TEXT NOT NULL,
    action TEXT NOT NULL, object TEXT NOT NULL, outcome TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '');
CREATE INDEX audit_by_time ON audit (at);
"""),
    (5, """
CREATE TABLE batches (name TEXT PRIMARY KEY, serial TEXT NOT NULL, prefix TEXT NOT NULL, max_count INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0, revoked INTEGER NOT NULL DEFAULT 0, labels TEXT NOT NULL,
    expires_at {time} NOT NULL, created_at {time} NOT NULL, workspace TEXT NOT NULL DEFAULT 'default');
ALTER TABLE nodes ADD COLUMN batch TEXT;
ALTER TABLE nodes ADD COLUMN desired_version INTEGER NOT NULL DEFAULT 0;
CREATE TABLE device_twins (node TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL,
    state_reason TEXT NOT NULL, properties TEXT NOT NULL, reported_at {time} NOT NULL,
    PRIMARY KEY (node, namespace, name));
CREATE TABLE device_desired (node TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    property TEXT NOT NULL, value TEXT NOT NULL, version INTEGER NOT NULL, set_at {time} NOT NULL,
    delivered_at {time}, error TEXT, PRIMARY KEY (node, namespace, name, property));
CREATE INDEX device_desired_by_version ON device_desired (node, version);
"""),
    (6, """
CREATE TABLE node_metrics (node TEXT NOT NULL, minute INTEGER NOT NULL, beats INTEGER NOT NULL,
    cpu_percent_sum {time} NOT NULL, cpu_percent_n INTEGER NOT NULL,
    memory_used_sum {time} NOT NULL, memory_used_n INTEGER NOT NULL,
    memory_percent_sum {time} NOT NULL, memory_percent_n INTEGER NOT NULL,
    disk_percent_sum {time} NOT NULL, disk_percent_n INTEGER NOT NULL,
    disk_read_bps_sum {time} NOT NULL, disk_read_bps_n INTEGER NOT NULL,
    disk_write_bps_sum {time} NOT NULL, disk_write_bps_n INTEGER NOT NULL,
    net_rx_bps_sum {time} NOT NULL, net_rx_bps_n INTEGER NOT NULL,
    net_tx_bps_sum {time} NOT NULL, net_tx_bps_n INTEGER NOT NULL,
    process_rss_sum {time} NOT NULL, process_rss_n INTEGER NOT NULL,
    points_per_s_sum {time} NOT NULL, points_per_s_n INTEGER NOT NULL,
    outbox_depth_sum {time} NOT NULL, outbox_depth_n INTEGER NOT NULL,
    PRIMARY KEY (node, minute));
"""),
    (7, """
ALTER TABLE nodes ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;
CREATE TABLE workload_placements (namespace TEXT NOT NULL, name TEXT NOT NULL, node TEXT NOT NULL,
    source_kind TEXT NOT NULL, source TEXT NOT NULL, origin TEXT NOT NULL, placed_at {time} NOT NULL,
    PRIMARY KEY (namespace, name, node));
CREATE TABLE workload_status (node TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, status TEXT NOT NULL,
    reason TEXT NOT NULL, replicas INTEGER NOT NULL, ready INTEGER NOT NULL, restarts INTEGER NOT NULL,
    last_event TEXT NOT NULL, instances TEXT NOT NULL, reported_at {time} NOT NULL,
    PRIMARY KEY (node, namespace, name));
"""),
    (8, """
CREATE TABLE upgrade_tasks (id TEXT PRIMARY KEY, version TEXT NOT NULL, selector TEXT NOT NULL,
    concurrency INTEGER NOT NULL, max_failures INTEGER NOT NULL, deadline {time} NOT NULL, state TEXT NOT NULL,
    workspace TEXT NOT NULL, created_by TEXT NOT NULL, created_at {time} NOT NULL, finished_at {time});
CREATE TABLE upgrade_wheels (task TEXT NOT NULL, filename TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    content TEXT NOT NULL, PRIMARY KEY (task, filename));
CREATE TABLE upgrade_nodes (task TEXT NOT NULL, node TEXT NOT NULL, position INTEGER NOT NULL, status TEXT NOT NULL,
    reason TEXT NOT NULL, log TEXT NOT NULL, started_at {time}, finished_at {time}, updated_at {time} NOT NULL,
    PRIMARY KEY (task, node));
CREATE INDEX upgrade_nodes_by_node ON upgrade_nodes (node, status);
"""),
    (9, """
CREATE TABLE document_versions (kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    version INTEGER NOT NULL, document TEXT NOT NULL, created_at {time} NOT NULL, actor TEXT NOT NULL,
    note TEXT NOT NULL, PRIMARY KEY (kind, namespace, name, version));
CREATE TABLE workload_events (node TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, ts {time} NOT NULL,
    seq INTEGER NOT NULL, event TEXT NOT NULL, instance TEXT NOT NULL, reason TEXT NOT NULL,
    received_at {time} NOT NULL, PRIMARY KEY (node, namespace, name, ts, seq));
"""),
    (10, """
ALTER TABLE nodes ADD COLUMN alias TEXT NOT NULL DEFAULT '';
ALTER TABLE join_tokens ADD COLUMN prefix TEXT NOT NULL DEFAULT '';
ALTER TABLE device_twins ADD COLUMN model TEXT NOT NULL DEFAULT '';
ALTER TABLE device_twins ADD COLUMN units TEXT NOT NULL DEFAULT '{{}}';
"""),
    (11, """
CREATE TABLE route_counters (node TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    accepted BIGINT NOT NULL, delivered BIGINT NOT NULL, failed BIGINT NOT NULL, dropped BIGINT NOT NULL,
    queued BIGINT NOT NULL, state TEXT NOT NULL, last_error TEXT NOT NULL, reported_at {time} NOT NULL,
    PRIMARY KEY (node, namespace, name));
"""),
    (12, """
CREATE TABLE roles (name TEXT PRIMARY KEY, description TEXT NOT NULL, permissions TEXT NOT NULL,
    created_at {time} NOT NULL, updated_at {time} NOT NULL);
CREATE TABLE folders (name TEXT PRIMARY KEY, description TEXT NOT NULL DEFAULT '', created_at {time} NOT NULL);
INSERT INTO folders (name, description, created_at) SELECT DISTINCT folder, '', 0 FROM workspaces;
"""),
    (15, """
CREATE TABLE files (id TEXT PRIMARY KEY, name TEXT NOT NULL, size BIGINT NOT NULL, sha256 TEXT NOT NULL,
    content_type TEXT NOT NULL, labels TEXT NOT NULL, direction TEXT NOT NULL, path TEXT NOT NULL,
    source_node TEXT NOT NULL, targets TEXT NOT NULL, workspace TEXT NOT NULL, created_by TEXT NOT NULL,
    created_at {time} NOT NULL, expires_at {time}, state TEXT NOT NULL, received BIGINT NOT NULL DEFAULT 0,
    bytes_received BIGINT NOT NULL DEFAULT 0, reason TEXT NOT NULL DEFAULT '', done_at {time});
CREATE INDEX files_by_direction ON files (direction, created_at);
CREATE TABLE file_targets (file TEXT NOT NULL, node TEXT NOT NULL, state TEXT NOT NULL, position BIGINT NOT NULL,
    reason TEXT NOT NULL, bytes_sent BIGINT NOT NULL DEFAULT 0, updated_at {time} NOT NULL,
    PRIMARY KEY (file, node));
CREATE INDEX file_targets_by_node ON file_targets (node, state);
"""),
    (18, """
CREATE TABLE app_metrics (node TEXT NOT NULL, minute INTEGER NOT NULL, workload TEXT NOT NULL,
    instance TEXT NOT NULL, beats INTEGER NOT NULL,
    cpu_percent_sum {time} NOT NULL, cpu_percent_n INTEGER NOT NULL,
    memory_bytes_sum {time} NOT NULL, memory_bytes_n INTEGER NOT NULL,
    disk_read_bps_sum {time} NOT NULL, disk_read_bps_n INTEGER NOT NULL,
    disk_write_bps_sum {time} NOT NULL, disk_write_bps_n INTEGER NOT NULL,
    net_rx_bps_sum {time} NOT NULL, net_rx_bps_n INTEGER NOT NULL,
    net_tx_bps_sum {time} NOT NULL, net_tx_bps_n INTEGER NOT NULL,
    PRIMARY KEY (node, minute, workload, instance));
CREATE INDEX app_metrics_by_workload ON app_metrics (workload, minute);
"""),
    (19, """
CREATE TABLE workload_failures (namespace TEXT NOT NULL, name TEXT NOT NULL, node TEXT NOT NULL,
    since {time} NOT NULL, last_failed {time} NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (namespace, name, node));
CREATE TABLE workload_moves (namespace TEXT NOT NULL, name TEXT NOT NULL, node TEXT NOT NULL, moved_to TEXT NOT NULL,
    moved_at {time} NOT NULL, avoid_until {time} NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (namespace, name, node, moved_at));
"""),
    (24, """
CREATE TABLE node_requests (id TEXT PRIMARY KEY, node TEXT NOT NULL, path TEXT NOT NULL, created_at {time} NOT NULL,
    expires_at {time} NOT NULL, answer TEXT);
"""),
    (25, """
CREATE TABLE node_channels (node TEXT PRIMARY KEY, replica TEXT NOT NULL, peer TEXT NOT NULL, since {time} NOT NULL);
"""),
    (26, """
CREATE TABLE service_events (node TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, ts {time} NOT NULL,
    seq BIGINT NOT NULL, event TEXT NOT NULL, detail TEXT NOT NULL, received_at {time} NOT NULL,
    PRIMARY KEY (node, namespace, name, ts, seq));
"""),
    (27, """
CREATE TABLE registry_replicas (id TEXT PRIMARY KEY, peer TEXT NOT NULL, started_at {time} NOT NULL,
    seen_at {time} NOT NULL);
"""),
    # an OS bundle (up to 1 GiB) in pieces: one SQLite value holds at most 1e9 bytes, one PostgreSQL value 1 GB;
    # BYTEA is PostgreSQL's bytes, and SQLite keeps a blob as it is whatever the declared type
    (28, """
CREATE TABLE upgrade_chunks (task TEXT NOT NULL, filename TEXT NOT NULL, seq INTEGER NOT NULL, content BYTEA NOT NULL,
    PRIMARY KEY (task, filename, seq));
"""),
]


# The notification that what nodes should have changed (their documents, desired values): the payload names the
# nodes, comma-separated, or is EVERY_NODE; a change of documents starts with DOCUMENTS_MARK (so the channel's sweep
# knows a notification told of it). In-process on SQLite, PostgreSQL NOTIFY across replicas (whose payload holds
# less than 8000 bytes: more nodes than fit are EVERY_NODE); the registry's channel listens.
NODES_CHANNEL = "fieldgate_nodes"
EVERY_NODE = "*"
DOCUMENTS_MARK = "d:"
MAX_NODES_PAYLOAD = 7000


def nodes_payload(nodes: Collection[str] | None, *, documents: bool = False) -> str:
    """The NODES_CHANNEL payload for these nodes (None: every node)."""
    names = EVERY_NODE if nodes is None else ",".join(sorted(set(nodes)))
    if len(names) > MAX_NODES_PAYLOAD:
        names = EVERY_NODE
    return DOCUMENTS_MARK + names if documents else names


def payload_nodes(payload: str) -> tuple[set[str] | None, bool]:
    """The nodes a NODES_CHANNEL payload names (None: every node), and whether it tells of a change of documents."""
    documents = payload.startswith(DOCUMENTS_MARK)
    names = payload[len(DOCUMENTS_MARK):] if documents else payload
    return (None if names == EVERY_NODE else {name for name in names.split(",") if name}), documents


class NothingMatched(StoreError):
    """The guarded statement of a transaction touched no row (a condition lost to another writer); nothing was
    written."""


class KeyTaken(StoreError):
    """A statement of a transaction would have written a key that is taken; nothing was written."""


class Database(Protocol):
    """What the registry store needs from a database."""

    dialect: str

    async def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...

    async def write(self, sql: str, *args: Any) -> int:
        """Run one statement and commit; the number of rows it touched."""
        ...

    async def transaction(self, statements: Sequence[Statement], *, guard: int | None = None, durable: bool = True
                          ) -> list[list[tuple[Any, ...]]]:
        """Run statements in one transaction; the rows each returned. When statement number `guard` (an UPDATE …
        RETURNING with a condition) returns no row, roll back and raise NothingMatched; a unique key taken rolls
        back and raises KeyTaken. `durable=False` is for state a node sends again at its next heartbeat: the
        commit does not wait for the disk (a power cut may lose it, never corrupt the database, and the next
        durable commit makes it durable too)."""
        ...

    async def reads(self, statements: Sequence[Statement]) -> list[list[tuple[Any, ...]]]:
        """Run read-only statements together (one trip where the database allows it); the rows of each."""
        ...

    async def notify(self, channel: str, payload: str) -> None: ...

    async def listen(self, channel: str, listener: Listener) -> None: ...

    async def close(self) -> None: ...


def _statements(script: str, time_type: str) -> list[str]:
    return [s.strip() for s in script.format(time=time_type).split(";") if s.strip()]


_SQLITE_NORMAL, _SQLITE_FULL = 1, 2  # PRAGMA synchronous: in WAL mode, NORMAL syncs at checkpoints only


def _sqlite_transaction(connection: sqlite3.Connection, path: Path, statements: list[Statement], guard: int | None,
                        synchronous: int, restore: int) -> list[list[tuple[Any, ...]]]:
    """One transaction, in the connection's thread (see Database.transaction)."""
    if connection.in_transaction:  # never expected: a transaction left open holds the database's write lock
        log.error("%s: a transaction was left open; rolled back", path)
        connection.execute("ROLLBACK")
    if synchronous != restore:
        connection.execute(f"PRAGMA synchronous={int(synchronous)}")
    results: list[list[tuple[Any, ...]]] = []
    try:
        connection.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in statements:
                try:
                    results.append(connection.execute(sql, tuple(args)).fetchall())
                except sqlite3.IntegrityError as exc:
                    if "UNIQUE" not in str(exc):
                        raise
                    raise KeyTaken(str(exc)) from exc
                if len(results) - 1 == guard and not results[-1]:
                    raise NothingMatched(sql)
            connection.execute("COMMIT")  # inside: a COMMIT that fails rolls back too, never leaves it open
        except BaseException:
            if connection.in_transaction:  # (SQLite rolls back by itself after some errors)
                connection.execute("ROLLBACK")
            raise
    finally:
        if synchronous != restore:
            connection.execute(f"PRAGMA synchronous={int(restore)}")
    return results


def _sqlite_reads(connection: sqlite3.Connection, statements: list[Statement]) -> list[list[tuple[Any, ...]]]:
    """Read-only statements in one read transaction (one snapshot of the database), in the connection's thread."""
    connection.execute("BEGIN")
    try:
        return [connection.execute(sql, tuple(args)).fetchall() for sql, args in statements]
    finally:
        connection.execute("COMMIT")


class SQLiteDatabase:
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._listeners: dict[str, list[Listener]] = {}
        # one connection: a statement of one request must not run inside another request's open transaction
        self._lock = asyncio.Lock()
        self._synchronous = _SQLITE_FULL  # as opened: what a durable commit uses

    async def open(self) -> SQLiteDatabase:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = await aiosqlite.connect(self.path, timeout=5.0, isolation_level=None)
            await self._db.execute("PRAGMA journal_mode=WAL")
            [(synchronous,)] = await self._db.execute_fetchall("PRAGMA synchronous")
            self._synchronous = int(synchronous)
            await self._migrate()
        except Exception as exc:
            raise StoreError(f"{self.path}: cannot open the registry database: {exc}") from exc
        return self

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("the registry store is not open")
        return self._db

    async def _migrate(self) -> None:
        await self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        applied = {int(version) for version, in await self.rows("SELECT version FROM schema_version")}
        for version, script in MIGRATIONS:
            if version not in applied:  # by number, not above the highest: a step numbered in between runs too
                statements: list[Statement] = [(s, ()) for s in _statements(script, _SQLITE_TIME)]
                await self.transaction([*statements, ("INSERT INTO schema_version VALUES (?)", (version,))])

    async def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with self._lock:  # execute_fetchall: one trip to the connection's thread, not three
            return [tuple(row) for row in await self.db.execute_fetchall(sql, args)]

    async def write(self, sql: str, *args: Any) -> int:
        async with self._lock:
            cursor = await self.db.execute(sql, args)
        return int(cursor.rowcount)

    async def transaction(self, statements: Sequence[Statement], *, guard: int | None = None, durable: bool = True
                          ) -> list[list[tuple[Any, ...]]]:
        # shielded: a caller that gives up (a channel closed, a request cancelled) does not stop the transaction
        # between two statements; it commits or rolls back as a whole, and the lock is held until it has
        return await asyncio.shield(self._locked_transaction(list(statements), guard, durable))

    async def _locked_transaction(self, statements: list[Statement], guard: int | None, durable: bool
                                  ) -> list[list[tuple[Any, ...]]]:
        async with self._lock:
            return await self._in_thread(_sqlite_transaction, self.path, statements, guard,
                                         self._synchronous if durable else _SQLITE_NORMAL, self._synchronous)

    async def _in_thread(self, function: Callable[..., list[list[tuple[Any, ...]]]], *args: Any
                         ) -> list[list[tuple[Any, ...]]]:
        """function(the sqlite3 connection, *args) in the connection's thread, in one trip there (a trip costs
        several times what a small statement does); through aiosqlite's own way of running its calls."""
        connection = self.db
        run: Callable[..., Awaitable[Any]] = connection._execute  # untyped in aiosqlite
        return cast(list[list[tuple[Any, ...]]], await run(function, connection._conn, *args))

    async def reads(self, statements: Sequence[Statement]) -> list[list[tuple[Any, ...]]]:
        async with self._lock:
            return await self._in_thread(_sqlite_reads, list(statements))

    async def notify(self, channel: str, payload: str) -> None:
        for listener in self._listeners.get(channel, []):
            listener(payload)

    async def listen(self, channel: str, listener: Listener) -> None:
        self._listeners.setdefault(channel, []).append(listener)

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None


_PLACEHOLDER = re.compile(r"\?")


def _postgres_sql(sql: str) -> str:
    """`?` placeholders as `$1`, `$2`, … (no statement here has a `?` inside a string literal)."""
    counter = iter(range(1, 1000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


def _count(status: str) -> int:
    """Rows touched, from asyncpg's command status (`UPDATE 3`, `INSERT 0 1`)."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class PostgresDatabase:
    dialect = "postgresql"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._pool: asyncpg.Pool | None = None
        self._listen_connection: asyncpg.Connection | None = None

    async def open(self) -> PostgresDatabase:
        import asyncpg

        try:
            self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=8, timeout=TIMEOUT,
                                                   command_timeout=TIMEOUT)
            await self._migrate()
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            await self.close()
            raise StoreError(f"{_safe(self.dsn)}: cannot open the registry database: {exc}") from exc
        return self

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("the registry store is not open")
        return self._pool

    async def _migrate(self) -> None:
        async with self.pool.acquire() as connection, connection.transaction():
            # one replica migrates at a time; the others wait here and then find nothing to do
            await connection.execute("SELECT pg_advisory_xact_lock(7246)")
            await connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            applied = {int(row[0]) for row in await connection.fetch("SELECT version FROM schema_version")}
            for version, script in MIGRATIONS:
                if version not in applied:
                    for statement in _statements(script, _PG_TIME):
                        await connection.execute(statement)
                    await connection.execute("INSERT INTO schema_version VALUES ($1)", version)

    async def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in await self.pool.fetch(_postgres_sql(sql), *args)]

    async def write(self, sql: str, *args: Any) -> int:
        return _count(await self.pool.execute(_postgres_sql(sql), *args))

    async def transaction(self, statements: Sequence[Statement], *, guard: int | None = None, durable: bool = True
                          ) -> list[list[tuple[Any, ...]]]:
        import asyncpg

        results: list[list[tuple[Any, ...]]] = []
        async with self.pool.acquire() as connection:
            # not durable: the commit does not wait for the WAL's flush (set with the BEGIN, in its round trip)
            await connection.execute("BEGIN" if durable else "BEGIN; SET LOCAL synchronous_commit TO OFF")
            try:
                for sql, args in statements:
                    try:
                        results.append([tuple(row) for row in await connection.fetch(_postgres_sql(sql), *args)])
                    except asyncpg.UniqueViolationError as exc:
                        raise KeyTaken(str(exc)) from exc
                    if len(results) - 1 == guard and not results[-1]:
                        raise NothingMatched(sql)
                await connection.execute("COMMIT")
            except BaseException:
                if connection.is_in_transaction():
                    await connection.execute("ROLLBACK")
                raise
        return results

    async def reads(self, statements: Sequence[Statement]) -> list[list[tuple[Any, ...]]]:
        async with self.pool.acquire() as connection:
            return [[tuple(row) for row in await connection.fetch(_postgres_sql(sql), *args)]
                    for sql, args in statements]

    async def notify(self, channel: str, payload: str) -> None:
        await self.pool.execute("SELECT pg_notify($1, $2)", channel, payload)

    async def listen(self, channel: str, listener: Listener) -> None:
        import asyncpg

        if self._listen_connection is None:
            self._listen_connection = await asyncpg.connect(self.dsn, timeout=TIMEOUT)

        def deliver(connection: Any, pid: int, channel: str, payload: str) -> None:
            listener(payload)

        await self._listen_connection.add_listener(channel, deliver)

    async def close(self) -> None:
        if self._listen_connection is not None:
            await self._listen_connection.close(timeout=TIMEOUT)
            self._listen_connection = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


def _safe(dsn: str) -> str:
    """A DSN without its password, for messages."""
    return re.sub(r"://([^:@/]+):[^@/]*@", r"://\1:***@", dsn)


async def open_database(data_dir: Path, url: str | None = None) -> SQLiteDatabase | PostgresDatabase:
    """SQLite in the data dir, or PostgreSQL when `url` is a postgresql:// URL."""
    if url and url.startswith(("postgresql://", "postgres://")):
        return await PostgresDatabase(url).open()
    if url:
        raise StoreError(f"--db {_safe(url)}: expected a postgresql:// URL (or none for SQLite in the data dir)")
    return await SQLiteDatabase(data_dir / "registry.db").open()


class Opened(Protocol):
    """What a group of tables needs of the store: its open database."""

    @property
    def database(self) -> Database: ...


class Tables:
    """One area's tables with the typed methods that read and write them (on the store's database once it is open)."""

    def __init__(self, store: Opened) -> None:
        self._store = store

    @property
    def database(self) -> Database:
        return self._store.database
