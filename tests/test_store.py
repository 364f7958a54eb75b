"""The SQLite store: durability across SIGKILL, history retention, twins across restarts."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from gateway.store import SCHEMA_VERSION, Store, db_path
from gateway.testing import stored_history, stored_reported
from gateway.web.auth import create_token
from tests.conftest import FIELDGATE, free_port
from tests.test_runtime import MODEL, virtual_device


def api_get(port: int, path: str, token: str) -> dict:  # type: ignore[type-arg]
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("gateway did not become healthy")


@pytest.mark.slow
def test_sigkill_keeps_every_completed_report(tmp_path: Path) -> None:
    """kill -9 at random moments: the store opens, is intact, and holds every twin value the API had shown
    more than one flush interval before the kill."""
    data = tmp_path / "data"
    port = free_port()
    devices = "".join(virtual_device(f"d{i}", interval="20ms") for i in range(10))
    config = tmp_path / "plant.yaml"
    config.write_text(MODEL.replace("test-gw", "kill-gw").replace("eventbus: {url: none}",
                      f"eventbus: {{url: none}}\nhttp: {{listen: \"127.0.0.1:{port}\"}}") + devices)
    token = subprocess.run([*FIELDGATE, "token", "create", "--role", "viewer", "--data-dir", str(data)],
                           check=True, capture_output=True, text=True).stdout.strip()
    rng = random.Random(7)
    for round_ in range(3):
        proc = subprocess.Popen([*FIELDGATE, "run", "-c", str(config), "--data-dir", str(data)],
                                stderr=subprocess.PIPE)
        try:
            wait_healthy(port, proc)
            time.sleep(rng.uniform(0.2, 0.8))
            seen = {f"default/d{i}": api_get(port, f"/api/v1/devices/default/d{i}", token)["twin"]["count"]["reported"]
                    for i in range(10)}
            time.sleep(0.3 + rng.uniform(0, 0.3))  # > the 50 ms flush interval: those reports are complete
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        with sqlite3.connect(db_path(data)) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = stored_reported(data, "count")
        for device, value in seen.items():
            assert value is not None
            assert stored[device] >= value, f"round {round_}: {device} lost reports"
        # the history holds every reading, the latest equal to the twin
        history = stored_history(db_path(data), "count")
        for device in seen:
            assert [v for d, _, v in history if d == device][-1] == stored[device]


@pytest.mark.slow
def test_sigterm_exits_zero_after_clean_shutdown(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "plant.yaml"
    config.write_text(MODEL.replace("eventbus: {url: none}", f"eventbus: {{url: none}}\nhttp: {{listen: "
                                    f"\"127.0.0.1:{port}\"}}") + virtual_device("d1", interval="10ms"))
    proc = subprocess.Popen([*FIELDGATE, "run", "-c", str(config), "--data-dir", str(tmp_path / "data"),
                             "--log-format", "json"], stderr=subprocess.PIPE, text=True)
    wait_healthy(port, proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    logs = [json.loads(line) for line in (proc.stderr.read() if proc.stderr else "").splitlines() if line]
    assert any(entry["message"] == "fieldgate stopped" for entry in logs)
    # no default password: a first start without users says how to add one
    assert any("no users yet" in entry["message"] and "fieldgate user add" in entry["message"] for entry in logs)
    # the WAL was checkpointed and every queued report written
    assert not (tmp_path / "data" / "fieldgate.db-wal").exists() or \
        os.path.getsize(tmp_path / "data" / "fieldgate.db-wal") == 0
    values = [value for _, _, value in stored_history(db_path(tmp_path / "data"), "count")]
    assert values == list(range(len(values)))  # counter 0..n, each reading stored exactly once, in order


async def test_retention_by_age_and_by_size(tmp_path: Path) -> None:
    store = Store(tmp_path)
    await store.open()
    try:
        now = time.time()
        for i in range(100):
            store.add_report("default/d", now - 3600 * 24 * 10 + i, {"p": i})
        for i in range(30_000):
            store.add_report("default/d", now - 10 + i * 1e-4, {"p": "x" * 200})
        await store.flush()
        deleted = await store.prune_history(max_age=86400 * 7, max_bytes=2 << 20)
        assert deleted >= 100
        rows = await store.history("default/d", "p", 0, now + 1, limit=100_000)
        assert all(ts >= now - 86400 * 7 for ts, _ in rows)  # nothing older than the age limit
        (pages,), (free,), (size,) = [(await store.rows(f"PRAGMA {p}"))[0]
                                      for p in ("page_count", "freelist_count", "page_size")]
        assert (pages - free) * size <= 2 << 20
        assert 0 < len(rows) < 30_000
        assert rows[-1][0] == pytest.approx(now - 10 + 29_999e-4, abs=1e-3)  # the newest are kept
    finally:
        await store.close()


async def test_tokens_are_stored_hashed(tmp_path: Path) -> None:
    store = Store(tmp_path)
    await store.open()
    try:
        token = await create_token(store, "viewer", "ci")
    finally:
        await store.close()
    assert token.encode() not in db_path(tmp_path).read_bytes()


async def test_full_outbox_drops_the_oldest_and_counts(tmp_path: Path) -> None:
    """The stated drop policy: beyond max_messages or max_age the oldest messages go, and only those."""
    store = Store(tmp_path)
    await store.open()
    try:
        for i in range(1500):
            store.add_outbox("sink-a", "t", f"{i}".encode())
        store.add_outbox("sink-b", "t", b"other")
        await store.flush()
        assert store.outbox_depth == {"sink-a": 1500, "sink-b": 1}
        dropped = await store.outbox_trim("sink-a", max_messages=1000, max_age=3600)
        assert dropped == 500
        rows = await store.outbox_batch("sink-a", after=0, limit=2000)
        assert [int(payload) for _, _, payload, _ in rows] == list(range(500, 1500))  # the newest, in order
        assert store.outbox_depth["sink-a"] == 1000
        await store.execute("UPDATE outbox SET created = created - 7200 WHERE sink = 'sink-a' AND seq <= 700")
        assert await store.outbox_trim("sink-a", max_messages=1000, max_age=3600) == 200
        assert (await store.outbox_stats())["sink-b"]["depth"] == 1  # other outboxes untouched
    finally:
        await store.close()


async def test_a_store_that_falls_behind_sheds_the_oldest_history_only(tmp_path: Path) -> None:
    store = Store(tmp_path, max_queued=1000)
    await store.open()
    try:
        for i in range(300):
            store.add_report("default/d", 1000.0 + i, {"a": i, "b": i, "c": i, "d": i, "e": i})
            store.add_outbox("sink", "t", str(i).encode())
        assert store.queued <= 1000
        assert store.history_dropped >= 500
        await store.flush()
        history = await store.history("default/d", "a", 0, 2000)
        assert [v for _, v in history] == list(range(300 - len(history), 300))  # the newest are kept
        assert len(await store.outbox_batch("sink", 0, 1000)) == 300  # outbox messages are never shed
        twins = await store.load_twins()
        assert twins["default/d"]["a"]["reported"] == 299
    finally:
        await store.close()


SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE series (id INTEGER PRIMARY KEY, device TEXT NOT NULL, property TEXT NOT NULL, UNIQUE (device, property));
CREATE TABLE twins (series INTEGER PRIMARY KEY REFERENCES series (id), desired TEXT, desired_at REAL, reported TEXT,
    reported_at REAL, quality TEXT NOT NULL DEFAULT 'unknown');
CREATE TABLE history (series INTEGER NOT NULL, ts INTEGER NOT NULL, value);
CREATE INDEX history_by_series ON history (series, ts);
INSERT INTO meta VALUES ('schema_version', '1');
"""


async def test_a_schema_1_store_moves_its_history_and_twins_over(tmp_path: Path) -> None:
    """Stores written one history row per value open with every value, twin and plot bucket still there."""
    now = int(time.time())
    with sqlite3.connect(db_path(tmp_path)) as db:
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
    store = Store(tmp_path)
    await store.open()
    try:
        assert [v for _, v in await store.history("default/a", "t", 0, now + 1)] == [20.0 + i for i in range(300)]
        assert [v for _, v in await store.history("default/a", "s", 0, now + 1, limit=2)] == ["off", "on"]
        assert len(await store.history("default/b", "t", 0, now + 1)) == 300
        twins = await store.load_twins()
        assert twins["default/a"]["t"] == {"desired": 25.5, "desired_at": 10.0, "reported": 319.0,
                                           "reported_at": now - 1.0, "quality": "good"}
        assert twins["default/b"]["t"]["reported"] == 299
        buckets = await store.history_buckets("default/b", "t", now - 86400, now, buckets=24)
        assert sum(1 for _ in buckets) >= 1 and buckets[-1][2] == 299  # the rollups came along: max of b
        store.add_report("default/a", now + 0.5, {"t": 1.0})
        await store.flush()
        assert (await store.history("default/a", "t", 0, now + 1))[-1] == (pytest.approx(now + 0.5), 1.0)
    finally:
        await store.close()
    with sqlite3.connect(db_path(tmp_path)) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
        assert not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'history'").fetchall()


async def test_history_pages_through_sparse_reports_and_keeps_types(tmp_path: Path) -> None:
    store = Store(tmp_path)
    await store.open()
    try:
        for i in range(5000):  # `rare` is in one report of 7: a query pages past reports without it
            values: dict[str, object] = {"often": i}
            if i % 7 == 0:
                values["rare"] = {"n": i, "ok": i % 2 == 0}
            store.add_report("default/d", 1000.0 + i / 10, values)
        store.add_report("default/d", 2000.0, {"flag": True, "text": "x", "none": None})
        await store.flush()
        rare = await store.history("default/d", "rare", 0, 3000, limit=10_000)
        assert [v["n"] for _, v in rare] == list(range(0, 5000, 7))
        assert rare[1] == (pytest.approx(1000.7), {"n": 7, "ok": False})
        assert [v for _, v in await store.history("default/d", "often", 0, 3000, limit=3)] == [4997, 4998, 4999]
        assert await store.history("default/d", "flag", 0, 3000) == [(2000.0, True)]
        assert await store.history("default/d", "none", 0, 3000) == [(2000.0, None)]
        assert await store.history("default/d", "missing", 0, 3000) == []
        assert await store.history("default/nobody", "often", 0, 3000) == []
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
            store.add_report("default/d", start + i * 5, {"v": i % 120, "s": "text"})
        await store.flush()
        await store.close()  # writes the rollups of every minute
        await store.open()
        long = await store.history_buckets("default/d", "v", start, start + 3 * 3600, buckets=3)
        short = [await store.history_buckets("default/d", "v", start + h * 3600, start + (h + 1) * 3600, buckets=1)
                 for h in range(3)]
        assert [b[1:] for b in long] == [s[0][1:] for s in short]
        assert long[0][1:] == (0.0, 119.0, pytest.approx(59.5))
        assert await store.history_buckets("default/d", "s", start, start + 3 * 3600) == []  # not numeric
    finally:
        await store.close()
