"""The history (gateway/store/history.py): retention, shedding when the disk falls behind, paging through reports,
plot buckets from reports and from rollups."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from gateway.store import Store, db_path
from gateway.testing import store_sql


def used_bytes(db_file: Path) -> int:
    """The bytes of a store's file in use (its pages less the free ones)."""
    (pages,), (free,), (size,) = [store_sql(db_file, f"PRAGMA {p}")[0]
                                  for p in ("page_count", "freelist_count", "page_size")]
    return int(pages - free) * int(size)


async def test_retention_by_age_and_by_size(tmp_path: Path) -> None:
    store = Store(tmp_path)
    await store.open()
    try:
        now = time.time()
        for i in range(100):
            store.history.add_report("default/d", now - 3600 * 24 * 10 + i, {"p": i})
        for i in range(30_000):
            store.history.add_report("default/d", now - 10 + i * 1e-4, {"p": "x" * 200})
        await store.flush()
        deleted = await store.history.prune(max_age=86400 * 7, max_bytes=2 << 20)
        assert deleted >= 100
        rows = await store.history.values("default/d", "p", 0, now + 1, limit=100_000)
        assert all(ts >= now - 86400 * 7 for ts, _ in rows)  # nothing older than the age limit
        assert used_bytes(db_path(tmp_path)) <= 2 << 20
        assert 0 < len(rows) < 30_000
        assert rows[-1][0] == pytest.approx(now - 10 + 29_999e-4, abs=1e-3)  # the newest are kept
    finally:
        await store.close()


async def test_a_store_that_falls_behind_sheds_the_oldest_history_only(tmp_path: Path) -> None:
    store = Store(tmp_path, max_queued=1000)
    await store.open()
    try:
        for i in range(300):
            store.history.add_report("default/d", 1000.0 + i, {"a": i, "b": i, "c": i, "d": i, "e": i})
            store.outboxes.add("sink", "t", str(i).encode())
        assert store.history.queued <= 1000
        assert store.history.dropped >= 500
        await store.flush()
        history = await store.history.values("default/d", "a", 0, 2000)
        assert [v for _, v in history] == list(range(300 - len(history), 300))  # the newest are kept
        assert len(await store.outboxes.batch("sink", 0, 1000)) == 300  # outbox messages are never shed
        twins = await store.twins.load()
        assert twins["default/d"]["a"]["reported"] == 299
    finally:
        await store.close()


async def test_history_pages_through_sparse_reports_and_keeps_types(tmp_path: Path) -> None:
    store = Store(tmp_path)
    await store.open()
    try:
        for i in range(5000):  # `rare` is in one report of 7: a query pages past reports without it
            values: dict[str, object] = {"often": i}
            if i % 7 == 0:
                values["rare"] = {"n": i, "ok": i % 2 == 0}
            store.history.add_report("default/d", 1000.0 + i / 10, values)
        store.history.add_report("default/d", 2000.0, {"flag": True, "text": "x", "none": None})
        await store.flush()
        rare = await store.history.values("default/d", "rare", 0, 3000, limit=10_000)
        assert [v["n"] for _, v in rare] == list(range(0, 5000, 7))
        assert rare[1] == (pytest.approx(1000.7), {"n": 7, "ok": False})
        assert [v for _, v in await store.history.values("default/d", "often", 0, 3000, limit=3)] == [4997, 4998, 4999]
        assert await store.history.values("default/d", "flag", 0, 3000) == [(2000.0, True)]
        assert await store.history.values("default/d", "none", 0, 3000) == [(2000.0, None)]
        assert await store.history.values("default/d", "missing", 0, 3000) == []
        assert await store.history.values("default/nobody", "often", 0, 3000) == []
    finally:
        await store.close()


async def test_plot_buckets_agree_between_reports_and_rollups(tmp_path: Path) -> None:
    """Short windows are bucketed from the reports, long ones from per-minute rollups: same min, max, mean."""
    now = time.time()
    start = (int(now) // 3600 - 3) * 3600  # three whole hours ago, on an hour
    store = Store(tmp_path)
    await store.open()
    try:
        for i in range(3 * 3600 // 5):  # every 5 s for three hours: a sawtooth 0..119
            store.history.add_report("default/d", start + i * 5, {"v": i % 120, "s": "text"})
        await store.flush()
        await store.close()  # writes the rollups of every minute
        await store.open()
        long = await store.history.buckets("default/d", "v", start, start + 3 * 3600, buckets=3)
        short = [await store.history.buckets("default/d", "v", start + h * 3600, start + (h + 1) * 3600, buckets=1)
                 for h in range(3)]
        assert [b[1:] for b in long] == [s[0][1:] for s in short]
        assert long[0][1:] == (0.0, 119.0, pytest.approx(59.5))
        assert await store.history.buckets("default/d", "s", start, start + 3 * 3600) == []  # not numeric
    finally:
        await store.close()


def rollups_of(db_file: Path, device: str, prop: str) -> list[tuple[int, int, float, float, float]]:
    """(minute, n, low, high, total) of one property's rollups, as stored."""
    return [(int(m), int(n), lo, hi, total) for m, n, lo, hi, total in store_sql(
        db_file, "SELECT minute, n, low, high, total FROM rollups JOIN series ON series.id = rollups.series "
                 "WHERE series.device = ? AND series.property = ? ORDER BY minute", (device, prop))]


async def test_a_nan_among_good_values_blocks_neither_the_flush_nor_the_rollups(tmp_path: Path) -> None:
    """Before, a NaN folded into a minute made its total NaN, which SQLite stores as NULL: `NOT NULL constraint
    failed: rollups.total` failed every flush after it, and every other series' minutes went unwritten."""
    start = (int(time.time()) // 60 - 10) * 60  # on a minute, ten minutes ago
    store = Store(tmp_path)
    await store.open()
    try:
        for i in range(120):  # one report a second for two minutes
            store.history.add_report("default/d", start + i, {
                "good": float(i), "sometimes": math.nan if i % 7 == 0 else 1.0, "inf": math.inf if i == 3 else 2.0,
                "never": math.nan})
        assert await store.flush() == 480  # the history keeps what the pipeline published, NaN included
        store.history.add_report("default/d", start + 130, {"good": 0.0})
        assert await store.flush() == 1
        assert store.health.ok
        await store.close()  # writes the running minutes too
        db_file = db_path(tmp_path)
        minute = start // 60
        assert rollups_of(db_file, "default/d", "good") == [
            (minute, 60, 0.0, 59.0, float(sum(range(60)))), (minute + 1, 60, 60.0, 119.0, float(sum(range(60, 120)))),
            (minute + 2, 1, 0.0, 0.0, 0.0)]
        assert rollups_of(db_file, "default/d", "sometimes") == [(minute, 51, 1.0, 1.0, 51.0),
                                                                 (minute + 1, 51, 1.0, 1.0, 51.0)]
        assert rollups_of(db_file, "default/d", "inf")[0] == (minute, 59, 2.0, 2.0, 118.0)
        assert rollups_of(db_file, "default/d", "never") == []
    finally:
        await store.close()


async def test_a_flood_from_one_device_costs_only_its_own_history(tmp_path: Path) -> None:
    """Before, retention deleted the oldest reports of every device while the file was over its limit: one device
    sending huge values took every other device's history with it."""
    limit = 2 << 20
    now = time.time()
    store = Store(tmp_path)
    await store.open()
    try:
        for i in range(360):  # the last hour, every 10 s: a small device and a flooding one, interleaved
            ts = now - 3600 + i * 10
            store.history.add_report("default/quiet", ts, {"t": 20.0 + i / 100})
            for j in range(3):
                store.history.add_report("default/flood", ts + j, {"blob": f"{i}-{j}-" + "z" * 4000})
        await store.flush()
        assert used_bytes(db_path(tmp_path)) > limit  # about 4.5 MB
        await store.history.prune(max_age=86400, max_bytes=limit)
        assert used_bytes(db_path(tmp_path)) <= limit
        quiet = await store.history.values("default/quiet", "t", 0, now + 1)
        assert len(quiet) == 360  # the last hour of the quiet device, whole
        flood = await store.history.values("default/flood", "blob", 0, now + 1, limit=100_000)
        assert 0 < len(flood) < 3 * 360 and flood[-1][1].startswith("359-2-")  # the flood lost its oldest
        # and again, with the flood going on: counted from the writes now, not scanned
        for i in range(200):
            store.history.add_report("default/flood", now + i, {"blob": "w" * 4000})
        await store.flush()
        await store.history.prune(max_age=86400, max_bytes=limit)
        assert used_bytes(db_path(tmp_path)) <= limit
        assert len(await store.history.values("default/quiet", "t", 0, now + 1)) == 360
    finally:
        await store.close()
