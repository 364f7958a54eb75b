"""The history of reported values: the write path (queue, shedding, the report rows of a flush), the folding of
committed reports into the latest values and per-minute rollups, the queries the API and the plots make, retention.

History is one row per report (`reports`: device, time, a MessagePack map of series id to value), not one row per
value: a row per value kept a (series, time) index whose leaf pages every flush touched all over, which cost about
7 us of CPU and several KB of WAL per value. The latest reported values live in one row per device (`reported`),
and per-minute count/min/max/sum of numeric values in `rollups`, which the plots of long windows read.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import aiosqlite
import msgspec

from gateway.store.db import Database, is_row_error, write_rows

log = logging.getLogger(__name__)

_pack = msgspec.msgpack.Encoder()
_unpack = msgspec.msgpack.Decoder()
HISTORY_PAGE = 2000  # report rows read a query
SNAPSHOT_EVERY = 5.0  # seconds between writes of the latest reported values (opening replays the reports since)
FOLD_EVERY = 1.0  # seconds between folds of committed reports into the latest values and the running minutes
ROLL_BUDGET = 2000  # series a flush rolls up into their running minutes at most (about a millisecond)
RETRY_EVERY = 1.0  # seconds before rollups or latest values that failed to write are tried again
ROW_OVERHEAD = 24  # bytes a report row costs beside its values: its header, rowid, time and index entry
MAX_TS = 1 << 52  # seconds: beyond, a report's time in milliseconds no longer fits a SQLite integer exactly

Report = tuple[str, float, dict[str, Any]]  # (device, ts, values) as queued
Folded = tuple[int, float, tuple[int, ...], tuple[Any, ...]]  # (device id, ts, series ids, values), committed


def _packable(value: Any) -> bool:
    try:
        _pack.encode(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


class History:
    """Reports queued by the pipeline, written by the store's flush, and read back by device and property."""

    def __init__(self, db: Database, *, max_queued: int = 500_000) -> None:
        self._db = db
        self.max_queued = max_queued
        self.dropped = 0  # values whose history was shed because the disk could not keep up
        self.values_written = 0
        self.reports_added = 0  # reports queued since the start (the writer's measure of the load)
        self._pending: deque[Report] = deque()
        self._queued = 0
        self._shed_logged = -math.inf  # the first shed is logged, however soon after boot
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
        self._unfolded: list[Folded] = []  # committed, not folded
        self._to_roll: deque[tuple[tuple[int, ...], int, list[tuple[Any, ...]]]] = deque()  # gathered, not rolled up
        self._folded_at = 0.0
        self._retry_at = 0.0  # monotonic time before which failed rollups are not tried again
        self._usage: dict[int, int] | None = None  # device id -> bytes of its report rows, once retention needs it
        self._written: dict[int, int] = {}  # device id -> bytes of the rows of the flush under way

    # --- the write path ---------------------------------------------------------------------------------------

    def add_report(self, device: str, ts: float, values: dict[str, Any]) -> None:
        """Queue one report's values; the writer commits them with its next flush, as soon as it is free.

        When the disk cannot keep up, the queue is bounded: the oldest reports' history goes first (logged and
        counted in `dropped`); outbox messages are never dropped here, and the twins keep the latest values since
        newer reports stay queued.
        """
        self._pending.append((device, ts, values))
        self._queued += len(values)
        self.reports_added += 1
        self._db.wake_writer()
        if self._queued > self.max_queued:
            self._shed()

    def _shed(self) -> None:
        dropped = 0
        while self._queued > self.max_queued * 0.9 and self._pending:
            _, _, values = self._pending.popleft()
            self._queued -= len(values)
            dropped += len(values)
        self.dropped += dropped
        now = time.monotonic()
        if now - self._shed_logged > 60:
            self._shed_logged = now
            log.warning("the store is %d values behind the devices: dropped the history of the oldest %d queued "
                        "values (%d so far); reduce the load or the report rate", self._queued, dropped, self.dropped)

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def take(self) -> tuple[deque[Report], int]:
        """The queued reports and their value count, for a flush; the queue starts over."""
        reports, self._pending = self._pending, deque()
        queued, self._queued = self._queued, 0
        return reports, queued

    def restore(self, reports: deque[Report], queued: int) -> None:
        """Put back the reports of a flush that failed, ahead of those queued meanwhile."""
        self._pending.extendleft(reversed(reports))
        self._queued += queued
        self._db.wake_writer()

    async def write(self, db: aiosqlite.Connection, reports: deque[Report], *, careful: bool = False
                    ) -> list[Folded]:
        """Insert the report rows inside the flush's transaction; what to fold once it commits. A value the encoder
        cannot take is left out of its report, and `careful` (the flush's retry) leaves out a row SQLite refuses."""
        encode = _pack.encode
        keys = self._keys
        self._written = {}
        by_device = await self._series_for(db, reports)
        devices = await self._devices_for(db, {device for device, _, _ in reports})
        report_rows: list[tuple[int, int, bytes]] = []
        folded: list[Folded] = []
        for device, ts, values in reports:
            # a device reports the same properties in the same order cycle after cycle: their series ids are looked
            # up once per key list, and the values are paired with them in C (zip)
            names = tuple(values)
            cached = keys.get(device)
            if cached is None or cached[0] != names:
                known = by_device[device]
                cached = keys[device] = (names, tuple(known[name] for name in names))
            ids = cached[1]
            vals = tuple(values.values())
            device_id = devices[device]
            try:
                row = (device_id, int(ts * 1000), encode(dict(zip(ids, vals, strict=True))))
            except (TypeError, ValueError, OverflowError):
                encodable = self._encodable(device, ts, ids, vals)
                if encodable is None:
                    continue
                ids, vals, row = encodable[0], encodable[1], (device_id, int(ts * 1000), encodable[2])
            report_rows.append(row)
            folded.append((device_id, ts, ids, vals))
        if report_rows:
            refused = await write_rows(db, "INSERT INTO reports VALUES (?, ?, ?)", report_rows, careful=careful,
                                       health=self._db.health, part="reports")
            if refused:
                left_out = set(refused)
                folded = [row for index, row in enumerate(folded) if index not in left_out]
            if self._usage is not None:  # counted once retention needs it: until then this costs nothing
                written: dict[int, int] = {}
                for device_id, _, blob in report_rows:
                    written[device_id] = written.get(device_id, 0) + len(blob) + ROW_OVERHEAD
                self._written = written
        return folded

    def _encodable(self, device: str, ts: float, ids: tuple[int, ...], vals: tuple[Any, ...]
                   ) -> tuple[tuple[int, ...], tuple[Any, ...], bytes] | None:
        """The part of a report the store can keep (ids, values, row blob): without the values the encoder refuses;
        None when the time itself is no time. Plugins publish reports too: one bad value must not cost the rest."""
        health = self._db.health
        if not isinstance(ts, int | float) or not math.isfinite(ts) or abs(ts) > MAX_TS:
            health.left_out("reports", 1, f"{device}: the time {ts!r} is no time")
            return None
        kept = [(key, value) for key, value in zip(ids, vals, strict=True) if _packable(value)]
        if len(kept) < len(ids):
            health.left_out("values", len(ids) - len(kept), f"{device}: values the store cannot encode")
        if not kept:
            return None
        return tuple(k for k, _ in kept), tuple(v for _, v in kept), _pack.encode(dict(kept))

    async def committed(self, folded: list[Folded]) -> int:
        """After the flush committed: count, and fold, roll up and snapshot when due; returns the values written.
        Writing the rollups or the latest values may fail without failing the flush: the store's health says so,
        and they are written again with a later flush."""
        written = sum(len(row[3]) for row in folded)
        if self._usage is not None:
            for device_id, size in self._written.items():
                self._usage[device_id] = self._usage.get(device_id, 0) + size
        self._written = {}
        self._unfolded += folded
        self.values_written += written
        now = time.monotonic()
        if now - self._folded_at >= FOLD_EVERY:
            self._roll(None)  # what the last round left (flushes were few): the rollups never fall behind
            self._gather()
        if self._to_roll:
            self._roll(ROLL_BUDGET)
        if self._closed and now >= self._retry_at:
            await self._write_rollups()
        if self._dirty and now - self._snapshot_at >= SNAPSHOT_EVERY:
            await self._write_snapshot()
        return written

    def _fold(self) -> None:
        """Bring the latest values and the running minutes up to the committed reports (all of them, now)."""
        self._gather()
        self._roll(None)

    def _gather(self) -> None:
        """Bring the latest values up to the committed reports, and group their rows for the rollups (`_roll`).

        Done every FOLD_EVERY seconds rather than per flush, so that a property's values of several flushes are
        rolled up together: the rows are grouped by key list and minute, and each column's count, low, high and
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
        self._to_roll.extend(groups.values())

    def _roll(self, budget: int | None) -> None:
        """Roll the gathered groups up into the running minutes: about `budget` series at most (None: all). A flush
        rolls a share, so that the loop is never held up long (the telemetry waiting to be published behind it)."""
        running, closed, to_roll = self._open, self._closed, self._to_roll
        rolled = 0
        while to_roll and (budget is None or rolled < budget):
            ids, minute, block = to_roll.popleft()
            rolled += len(ids)
            columns = zip(*block, strict=True) if len(block) > 1 else ((value,) for value in block[0])
            for key, column in zip(ids, columns, strict=True):
                kind = type(column[0])
                if kind is not float and kind is not int:
                    continue
                try:
                    n, low, high, total = len(column), min(column), max(column), sum(column)
                    if total - total != 0:  # a NaN or an infinity: no bucket may hold one (SQLite stores NaN as NULL)
                        raise TypeError
                except TypeError:  # a column of mixed types, or not all finite: only its finite numbers count
                    numbers = [v for v in column if (type(v) is float or type(v) is int) and v - v == 0]
                    if not numbers:
                        continue
                    n, low, high, total = len(numbers), min(numbers), max(numbers), sum(numbers)
                    if total - total != 0:  # finite values whose sum is not (near the largest floats)
                        continue
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
        self._gather()
        dirty, self._dirty = self._dirty, set()
        self._snapshot_at = time.monotonic()
        encode = _pack.encode
        rows = []
        for device_id in dirty:
            at = self._latest_at[device_id]
            latest = self._latest[device_id]
            try:
                rows.append((device_id, encode({key: (value, at[key]) for key, value in latest.items()})))
            except (TypeError, ValueError, OverflowError):  # cannot happen for values that went into a report row
                rows.append((device_id, encode({key: (value, at[key]) for key, value in latest.items()
                                                if _packable(value)})))
        await self._write("reported values", "INSERT INTO reported VALUES (?, ?) ON CONFLICT(device) DO UPDATE SET "
                          "vals = excluded.vals", rows, after="INSERT INTO meta SELECT 'reported_rowid', "
                          "coalesce(max(rowid), 0) FROM reports WHERE true ON CONFLICT(key) DO UPDATE SET "
                          "value = excluded.value")
        if "reported values" in self._db.health.failing:
            self._dirty |= dirty

    async def _write_rollups(self, *, everything: bool = False) -> None:
        """Write the per-minute buckets of minutes that are over (and the running ones when the store closes); a
        bucket written twice (a restart within its minute) is merged, not replaced."""
        if everything:
            self._fold()
        ready = self._closed + ([[key, *bucket] for key, bucket in self._open.items()] if everything else [])
        if not ready:
            return
        rows = [(key, minute, n, float(low), float(high), float(total)) for key, minute, n, low, high, total in ready]
        await self._write("rollups", "INSERT INTO rollups VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(series, minute) DO "
                          "UPDATE SET n = n + excluded.n, low = min(low, excluded.low), high = max(high, "
                          "excluded.high), total = total + excluded.total", rows)
        if "rollups" in self._db.health.failing:
            return
        self._closed = []
        if everything:
            self._open = {}

    async def _write(self, part: str, sql: str, rows: list[tuple[Any, ...]], *, after: str | None = None) -> None:
        """Rows of a part written after a flush, in their own transaction: a refused row is left out on a careful
        second attempt; a failure of the database shows in the store's health, and the part is tried again later
        (RETRY_EVERY). Never raises: the readings' own commits go on."""
        health = self._db.health
        for careful in (False, True):
            try:
                async with self._db.transaction() as db:
                    await write_rows(db, sql, rows, careful=careful, health=health, part=part)
                    if after is not None:
                        await db.execute(after)
            except Exception as exc:
                if not careful and is_row_error(exc):
                    continue
                health.failed(part, f"{type(exc).__name__}: {exc}")
                self._retry_at = time.monotonic() + RETRY_EVERY
                return
            health.succeeded(part)
            return

    # --- ids and the latest values ----------------------------------------------------------------------------

    async def load(self) -> None:
        """At open: the series and device ids, and the latest values (the snapshot and the reports after it)."""
        self._series = {(str(d), str(p)): int(i) for d, p, i in await self._db.rows("SELECT device, property, id "
                                                                                    "FROM series")}
        self._index_series()
        self._device_ids = {str(name): int(i) for i, name in await self._db.rows("SELECT id, name FROM devices")}
        self._latest, self._latest_at = {}, {}
        for device, vals in await self._db.rows("SELECT device, vals FROM reported"):
            for key, (value, at) in _unpack.decode(vals).items():
                self._latest.setdefault(int(device), {})[int(key)] = value
                self._latest_at.setdefault(int(device), {})[int(key)] = at
        # the snapshot is written every SNAPSHOT_EVERY seconds: the reports committed after it bring it up to date
        after = int(await self._db.meta("reported_rowid") or 0)
        for device, ts, vals in await self._db.rows("SELECT device, ts, vals FROM reports WHERE rowid > ? "
                                                    "ORDER BY rowid", (after,)):
            values = _unpack.decode(vals)
            self._latest.setdefault(device, {}).update(values)
            self._latest_at.setdefault(device, {}).update(dict.fromkeys(values, ts / 1000))

    async def close(self) -> None:
        """At close, after the last flush: every running minute and the latest values are written."""
        await self._write_rollups(everything=True)
        if self._dirty:
            await self._write_snapshot()

    def _index_series(self) -> None:
        by_device: dict[str, dict[str, int]] = {}
        for (device, prop), series_id in self._series.items():
            by_device.setdefault(device, {})[prop] = series_id
        self._by_device = by_device
        self._keys = {}

    async def series_ids(self, db: aiosqlite.Connection, keys: Iterable[tuple[str, str]]
                         ) -> dict[tuple[str, str], int]:
        """Series ids for (device, property) pairs, creating the missing ones (inside the caller's transaction)."""
        missing = [key for key in keys if key not in self._series]
        if missing:
            await db.executemany("INSERT OR IGNORE INTO series (device, property) VALUES (?, ?)", missing)
            cursor = await db.execute("SELECT device, property, id FROM series")
            self._series = {(device, prop): sid for device, prop, sid in await cursor.fetchall()}
            self._index_series()
        return self._series

    async def _series_for(self, db: aiosqlite.Connection, reports: Iterable[Report]) -> dict[str, dict[str, int]]:
        """Property -> series id per device, creating the series these reports bring first."""
        by_device = self._by_device
        missing: set[tuple[str, str]] = set()
        for device, _, values in reports:
            known = by_device.get(device)
            if known is None or not values.keys() <= known.keys():
                missing.update((device, name) for name in values if known is None or name not in known)
        if missing:
            await self.series_ids(db, missing)
        return self._by_device

    async def _devices_for(self, db: aiosqlite.Connection, names: Iterable[str]) -> dict[str, int]:
        missing = [(name,) for name in names if name not in self._device_ids]
        if missing:
            await db.executemany("INSERT OR IGNORE INTO devices (name) VALUES (?)", missing)
            cursor = await db.execute("SELECT id, name FROM devices")
            self._device_ids = {name: device_id for device_id, name in await cursor.fetchall()}
        return self._device_ids

    def latest(self) -> Iterator[tuple[str, str, Any, float]]:
        """(device, property, value, time) of every committed latest reported value."""
        self._fold()
        names = {series_id: key for key, series_id in self._series.items()}
        for device_id, values in self._latest.items():
            at = self._latest_at[device_id]
            for series_id, value in values.items():
                device, prop = names[series_id]
                yield device, prop, value, at[series_id]

    # --- queries ----------------------------------------------------------------------------------------------

    async def values(self, device: str, prop: str, since: float, until: float, limit: int = 10_000
                     ) -> list[tuple[float, Any]]:
        """The newest `limit` values of one property between two times, oldest first."""
        found: list[tuple[float, Any]] = []
        async for ts, value in self._newest_first(device, prop, since, until):
            found.append((ts, value))
            if len(found) >= limit:
                break
        found.reverse()
        return found

    async def _newest_first(self, device: str, prop: str, since: float, until: float
                            ) -> AsyncIterator[tuple[float, Any]]:
        series_id, device_id = self._series.get((device, prop)), self._device_ids.get(device)
        if series_id is None or device_id is None:
            return
        low, high, rowid = int(since * 1000), int(until * 1000), 1 << 62
        while True:  # pages in index order, resumed after the last (ts, rowid) seen
            rows = await self._db.rows(
                "SELECT rowid, ts, vals FROM reports WHERE device = ? AND ts >= ? AND (ts < ? OR (ts = ? AND "
                "rowid < ?)) ORDER BY ts DESC, rowid DESC LIMIT ?",
                (device_id, low, high, high, rowid, HISTORY_PAGE))
            for rowid, high, vals in rows:  # noqa: B007 - the last row's rowid and ts resume the next page
                values = _unpack.decode(vals)
                if series_id in values:
                    yield high / 1000, values[series_id]
            if len(rows) < HISTORY_PAGE:
                return

    async def buckets(self, device: str, prop: str, since: float, until: float, buckets: int = 240
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
            async for ts, value in self._newest_first(device, prop, since, until):
                if type(value) is float or type(value) is int:
                    add(int(ts * 1000), 1, value, value, value)
        else:
            series_id = self._series.get((device, prop))
            if series_id is None:
                return []
            rows = await self._db.rows("SELECT minute, n, low, high, total FROM rollups WHERE series = ? AND "
                                       "minute >= ? AND minute <= ?", (series_id, since_ms // 60000, until_ms // 60000))
            self._fold()
            pending = [row[1:] for row in self._closed if row[0] == series_id]
            if series_id in self._open:
                pending.append(self._open[series_id])
            for minute, n, low, high, total in [*rows, *pending]:
                add(max(int(minute) * 60000, since_ms), int(n), float(low), float(high), float(total))
        return [((since_ms + (index + 0.5) * width) / 1000, float(low), float(high), float(total) / n)
                for index, (n, low, high, total) in sorted(slices.items()) if 0 <= index < buckets]

    # --- retention --------------------------------------------------------------------------------------------

    async def prune(self, max_age: float, max_bytes: int) -> int:
        """Delete reports older than max_age, then, while the file's used size exceeds max_bytes, the oldest reports
        of the devices that use the most: one device's flood costs its own history, never another device's.

        Reports are appended in time order, so the age cut-off is found by a binary search over rowids instead of a
        scan. Returns how many report rows went.
        """
        cutoff_ms = int((time.time() - max_age) * 1000)
        deleted = await self._delete_reports_before(await self._first_rowid_at(cutoff_ms))
        await self._db.execute("DELETE FROM rollups WHERE minute < ?", (cutoff_ms // 60000,))
        for _ in range(20):
            (pages,), (free,), (page_size,) = [
                (await self._db.rows(f"PRAGMA {p}"))[0] for p in ("page_count", "freelist_count", "page_size")
            ]
            used = (pages - free) * page_size
            if used <= max_bytes:
                break
            usage = await self._usage_by_device()
            cuts = fair_cuts(usage, used - max_bytes + max_bytes // 20)  # 5% below: not pruned again at once
            if not cuts:
                break
            for device_id, amount in cuts.items():
                deleted += await self._delete_oldest(device_id, amount)
        if deleted:
            log.info("history retention removed %d reports", deleted)
        return deleted

    async def _usage_by_device(self) -> dict[int, int]:
        """Bytes of report rows by device: counted once, when retention first needs it, then kept up to date by
        the flushes (`committed`) and the deletes. Counted inside a transaction, so no flush is half counted."""
        if self._usage is None:
            async with self._db.transaction() as db:
                cursor = await db.execute(f"SELECT device, sum(length(vals)) + count(*) * {ROW_OVERHEAD} FROM "
                                          "reports GROUP BY device")
                self._usage = {int(device): int(size) for device, size in await cursor.fetchall()}
        return self._usage

    async def _delete_oldest(self, device_id: int, amount: int) -> int:
        """Delete about `amount` bytes of one device's oldest reports; how many rows went."""
        found, after, cutoff = 0, -(1 << 62), None
        while found < amount:
            rows = await self._db.rows(f"SELECT ts, length(vals) + {ROW_OVERHEAD} FROM reports WHERE device = ? AND "
                                       "ts > ? ORDER BY ts LIMIT ?", (device_id, after, HISTORY_PAGE))
            for ts, size in rows:
                found += size
                cutoff = after = ts
                if found >= amount:
                    break
            if len(rows) < HISTORY_PAGE:
                break
        if cutoff is None:
            return 0
        async with self._db.transaction() as db:
            cursor = await db.execute(f"SELECT count(*), coalesce(sum(length(vals)), 0) + count(*) * {ROW_OVERHEAD} "
                                      "FROM reports WHERE device = ? AND ts <= ?", (device_id, cutoff))
            ((rows_gone, bytes_gone),) = await cursor.fetchall()
            await db.execute("DELETE FROM reports WHERE device = ? AND ts <= ?", (device_id, cutoff))
        if self._usage is not None:
            self._usage[device_id] = max(self._usage.get(device_id, 0) - int(bytes_gone), 0)
        return int(rows_gone)

    async def _first_rowid_at(self, ts_ms: int) -> int:
        ((low, high),) = await self._db.rows("SELECT min(rowid), max(rowid) FROM reports")
        if low is None:
            return 0
        high += 1
        while low < high:
            middle = (low + high) // 2
            rows = await self._db.rows("SELECT ts FROM reports WHERE rowid >= ? ORDER BY rowid LIMIT 1", (middle,))
            if rows and rows[0][0] < ts_ms:
                low = middle + 1
            else:
                high = middle
        return int(low)

    async def _delete_reports_before(self, rowid: int) -> int:
        async with self._db.transaction() as db:
            if self._usage is not None:
                cursor = await db.execute(f"SELECT device, sum(length(vals)) + count(*) * {ROW_OVERHEAD} FROM "
                                          "reports WHERE rowid < ? GROUP BY device", (rowid,))
                for device_id, size in await cursor.fetchall():
                    self._usage[device_id] = max(self._usage.get(device_id, 0) - int(size), 0)
            cursor = await db.execute("DELETE FROM reports WHERE rowid < ?", (rowid,))
            return max(cursor.rowcount, 0)


def fair_cuts(usage: dict[int, int], excess: int) -> dict[int, int]:
    """Bytes each device gives up so that `excess` bytes go, the largest users first: every device is cut down to
    one common cap, and those under it keep everything (a flood from one device is paid by that device alone)."""
    ranked = sorted(((size, device) for device, size in usage.items() if size > 0), reverse=True)
    total = 0
    for count, (size, _) in enumerate(ranked, start=1):
        total += size
        below = ranked[count][0] if count < len(ranked) else 0
        if total - count * below >= excess:  # cutting these `count` devices down to a cap >= `below` is enough
            cap = max((total - excess) // count, below)
            return {device: size - cap for size, device in ranked[:count] if size > cap}
    return {device: size for size, device in ranked}  # not enough in reports to free: all of it
