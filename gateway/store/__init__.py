"""The node's store: one SQLite file (WAL) in the data dir, and the only code of the node that writes SQL.

`Store` opens the database and composes one part per concern, each a class of typed methods over the shared
database: `history` (reports, the latest values, rollups, retention), `twins` (desired values, and the twins as
stored), `outboxes`, `resources`, `users` (and API tokens), `audit`, `settings` (of the local UI), `workloads`
(their versions and events) and `files` (received files and the durable file outbox). Callers go through those
parts (`store.history.add_report(...)`); the store itself only
opens, flushes and closes.

Reports and outbox messages are queued and committed by one writer task, in one transaction as soon as the previous
one is done (a group commit: what is queued meanwhile goes into the next); under load, or with a `flush_interval`,
at most one commit every few milliseconds or every interval. A report is complete once its transaction commits,
and a crash (even SIGKILL) leaves every completed report in the file. The outbox messages a commit holds go to
their sinks right after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
from pathlib import Path

from gateway.errors import StoreError
from gateway.store.audit import AuditLog
from gateway.store.db import Database, StoreHealth, db_path, is_row_error
from gateway.store.files import FileRecords
from gateway.store.history import History
from gateway.store.migrations import SCHEMA_VERSION
from gateway.store.outbox import Outboxes
from gateway.store.resources import DocumentSealer, NoSecretKey, Resources
from gateway.store.settings import Settings
from gateway.store.twins import Twins
from gateway.store.users import Users
from gateway.store.workloads import WorkloadRecords

__all__ = ["SCHEMA_VERSION", "DocumentSealer", "Store", "StoreHealth", "db_path"]

WRITER_MAX_BACKOFF = 1.0  # seconds between two attempts of a failing writer at most
# Under load, commits are spaced so that they grow rather than multiply (each commit costs about as much CPU as
# several reports): from BUSY_RATE reports a second on, one commit every BUSY_GAP at most. Below it, a report is
# committed at once. (PostgreSQL's commit_delay with commit_siblings makes the same trade.)
BUSY_RATE = 200.0
BUSY_GAP = 0.01
RATE_WINDOW = 0.5  # seconds over which the report rate is measured


class Store:
    """One connection, one writer task; every call has a timeout.

    `secrets` seals the Secret documents it stores (the node's `SecretBox`); without it, a Secret is refused.
    """

    def __init__(self, data_dir: Path, *, flush_interval: float = 0.0, timeout: float = 10.0,
                 max_queued: int = 500_000, secrets: DocumentSealer | None = None, sync: str = "full") -> None:
        self.data_dir = data_dir
        self.path = db_path(data_dir)
        self.flush_interval = flush_interval
        self._db = Database(self.path, timeout=timeout, sync=sync)
        self.history = History(self._db, max_queued=max_queued)
        self.twins = Twins(self._db, self.history)
        self.outboxes = Outboxes(self._db)
        self.resources = Resources(self._db, secrets or NoSecretKey())
        self.users = Users(self._db)
        self.audit = AuditLog(self._db)
        self.settings = Settings(self._db)
        self.workloads = WorkloadRecords(self._db)
        self.files = FileRecords(self._db)
        self._flushing: asyncio.Future[int] | None = None  # the last flush started

    async def open(self) -> None:
        try:
            await self._db.open()
            await self.history.load()
            await self.outboxes.load()
        except (sqlite3.Error, OSError, TimeoutError) as exc:
            raise StoreError(f"{self.path}: cannot open the store: {exc}") from exc

    async def close(self) -> None:
        if not self._db.is_open:
            return
        with contextlib.suppress(StoreError):
            await self.flush()
            await self.history.close()
        await self._db.close()

    async def flush(self) -> int:
        """Commit every queued report, outbox message, acknowledgement and meta value in one transaction; returns
        the values written.

        A caller that is cancelled (a stopping writer, a request whose client went away) does not cut the flush
        short: it runs to its end on its own, so that what it committed reaches the sinks and what it did not
        stays queued, and the connection is never left inside a transaction.

        A row SQLite or the encoder refuses (one bad value) fails the fast attempt; the retry writes row by row and
        leaves out only what is refused (counted in `health`), so it never blocks the others. A failure of the
        database itself keeps everything queued for the next flush and shows in `health`. The rollups and the
        latest values written after the commit never fail the flush: theirs shows in `health` too.
        """
        if not self.history.pending and not self.outboxes.pending and not self._db.meta_queued:
            if self._flushing is not None and not self._flushing.done():  # what was queued is being committed
                await asyncio.shield(self._flushing)  # its failure is the caller's too: what it queued is not stored
            return 0
        flushing = self._flushing = asyncio.ensure_future(self._flush())  # committed after any flush before it
        flushing.add_done_callback(_retrieve)  # its error is the caller's, unless the caller is gone
        return await asyncio.shield(flushing)

    async def _flush(self) -> int:
        history, outboxes, db = self.history, self.outboxes, self._db
        reports, queued = history.take()
        messages = outboxes.take()
        acks = outboxes.take_acks()
        meta = db.take_meta()
        for careful in (False, True):
            try:
                async with db.transaction() as connection:
                    folded = await history.write(connection, reports, careful=careful)
                    written = await outboxes.write(connection, messages, careful=careful) if messages else []
                    if acks:
                        await outboxes.delete_acknowledged(connection, acks)
                    if meta:
                        await db.write_meta(connection, meta, careful=careful)
                break
            except Exception as exc:
                if not careful and is_row_error(exc):
                    continue  # one row was refused: again, one row at a time
                history.restore(reports, queued)  # kept for the next attempt
                outboxes.restore(messages)  # and the runners read the file until they are past this flush
                outboxes.restore_acks(acks)
                db.restore_meta(meta)
                error = f"{type(exc).__name__}: {exc}"
                db.health.failed("reports", error)
                raise StoreError(f"{self.path}: writing reports failed: {error}") from exc
        db.health.succeeded("reports")
        if messages:
            outboxes.committed(written)  # the runners publish them now, before the folding below
        return await history.committed(folded)

    @property
    def health(self) -> StoreHealth:
        """Which writes fail now and what was left out (/healthz, the status)."""
        return self._db.health

    async def run_writer(self) -> None:
        """The writer task (supervised by the runtime): a group commit as soon as something is queued and the
        previous commit is done, so what the pipeline queues while one commits goes together into the next one;
        under load (BUSY_RATE) or with a `flush_interval`, one commit every BUSY_GAP or interval at most. A failing
        flush is retried within WRITER_MAX_BACKOFF, not after the supervisor's long backoff: the readings wait in
        memory meanwhile, and `health` says the store is failing."""
        loop = asyncio.get_running_loop()
        queued, history = self._db.queued, self.history
        backoff = 0.0
        started = -math.inf  # no commit yet: the first is at once (loop.time() may be small, shortly after boot)
        window_start, window_reports, busy = loop.time(), history.reports_added, False
        while True:
            await queued.wait()
            now = loop.time()
            if now - window_start >= RATE_WINDOW:
                busy = (history.reports_added - window_reports) / (now - window_start) > BUSY_RATE
                window_start, window_reports = now, history.reports_added
            gap = max(self.flush_interval, BUSY_GAP if busy else 0.0)
            if gap > 0:
                await asyncio.sleep(max(started + gap - now, 0))
            queued.clear()  # before the flush: what is queued while it commits sets it again
            started = loop.time()
            try:
                await self.flush()
                backoff = 0.0
            except StoreError:
                backoff = min(max(backoff * 2, 0.05, self.flush_interval), WRITER_MAX_BACKOFF)
                await asyncio.sleep(backoff)


def _retrieve(task: asyncio.Future[int]) -> None:
    if not task.cancelled():
        task.exception()
