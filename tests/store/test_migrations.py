"""The schema and its numbered migrations (gateway/store/migrations.py): older stores open with everything kept."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

import pytest

from gateway.store import SCHEMA_VERSION, Store, db_path
from gateway.testing import store_sql

SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE series (id INTEGER PRIMARY KEY, device TEXT NOT NULL, property TEXT NOT NULL, UNIQUE (device, property));
CREATE TABLE twins (series INTEGER PRIMARY KEY REFERENCES series (id), desired TEXT, desired_at REAL, reported TEXT,
    reported_at REAL, quality TEXT NOT NULL DEFAULT 'unknown');
CREATE TABLE history (series INTEGER NOT NULL, ts INTEGER NOT NULL, value);
CREATE INDEX history_by_series ON history (series, ts);
INSERT INTO meta VALUES ('schema_version', '1');
"""


def write_schema_1_store(db_file: Path, now: int) -> None:
    """A store written one history row per value: two devices, 300 reports each, two twins."""
    with contextlib.closing(sqlite3.connect(db_file)) as db, db:
        db.executescript(SCHEMA_1)
        db.executemany("INSERT INTO series VALUES (?, ?, ?)", [(1, "default/a", "t"), (2, "default/a", "s"),
                                                                (3, "default/b", "t")])
        rows = []
        for i in range(300):  # a report of a (t and s) and one of b, every second
            ts = (now - 300 + i) * 1000
            rows += [(1, ts, 20.0 + i), (2, ts, "on" if i % 2 else "off"), (3, ts, i)]
        db.executemany("INSERT INTO history VALUES (?, ?, ?)", rows)
        db.execute("INSERT INTO twins VALUES (1, '25.5', 10.0, '319.0', ?, 'good')", (now - 1.0,))
        db.execute("INSERT INTO twins VALUES (3, NULL, NULL, '299', ?, 'good')", (now - 1.0,))


def schema_version(db_file: Path) -> tuple[object, ...]:
    return store_sql(db_file, "SELECT value FROM meta WHERE key = 'schema_version'")[0]


def has_table(db_file: Path, name: str) -> bool:
    return bool(store_sql(db_file, "SELECT 1 FROM sqlite_master WHERE name = ?", (name,)))


def as_a_schema_3_store(db_file: Path, *, version: str = "3") -> None:
    """The store as written before the UI settings had their own migration."""
    store_sql(db_file, "DROP TABLE ui_settings")
    store_sql(db_file, "UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))


async def test_a_schema_1_store_moves_its_history_and_twins_over(tmp_path: Path) -> None:
    """Stores written one history row per value open with every value, twin and plot bucket still there."""
    now = int(time.time())
    write_schema_1_store(db_path(tmp_path), now)
    store = Store(tmp_path)
    await store.open()
    try:
        values = [v for _, v in await store.history.values("default/a", "t", 0, now + 1)]
        assert values == [20.0 + i for i in range(300)]
        assert [v for _, v in await store.history.values("default/a", "s", 0, now + 1, limit=2)] == ["off", "on"]
        assert len(await store.history.values("default/b", "t", 0, now + 1)) == 300
        twins = await store.twins.load()
        assert twins["default/a"]["t"] == {"desired": 25.5, "desired_at": 10.0, "reported": 319.0,
                                           "reported_at": now - 1.0, "quality": "good"}
        assert twins["default/b"]["t"]["reported"] == 299
        buckets = await store.history.buckets("default/b", "t", now - 86400, now, buckets=24)
        assert sum(1 for _ in buckets) >= 1 and buckets[-1][2] == 299  # the rollups came along: max of b
        store.history.add_report("default/a", now + 0.5, {"t": 1.0})
        await store.flush()
        assert (await store.history.values("default/a", "t", 0, now + 1))[-1] == (pytest.approx(now + 0.5), 1.0)
    finally:
        await store.close()
    assert schema_version(db_path(tmp_path)) == (str(SCHEMA_VERSION),)
    assert not has_table(db_path(tmp_path), "history")


async def test_the_ui_settings_table_is_made_once_when_the_store_opens(tmp_path: Path) -> None:
    store = Store(tmp_path)
    await store.open()
    try:
        assert has_table(db_path(tmp_path), "ui_settings")  # a new store has it before anything asks for it
        await store.settings.put({"plot.window": "1h"}, "admin")
    finally:
        await store.close()
    as_a_schema_3_store(db_path(tmp_path))
    store = Store(tmp_path)
    await store.open()
    try:
        assert has_table(db_path(tmp_path), "ui_settings")
        assert await store.settings.get("plot.") == {}
    finally:
        await store.close()
    assert schema_version(db_path(tmp_path)) == (str(SCHEMA_VERSION),)


async def test_a_store_written_by_a_newer_gateway_keeps_its_version(tmp_path: Path) -> None:
    store = Store(tmp_path)
    await store.open()
    await store.close()
    store_sql(db_path(tmp_path), "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    store = Store(tmp_path)
    await store.open()
    await store.close()
    assert schema_version(db_path(tmp_path)) == (str(SCHEMA_VERSION + 1),)
