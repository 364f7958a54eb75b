"""The store as a whole (gateway/store/__init__.py): durability across SIGKILL, a clean close on SIGTERM, one flush
for reports, outbox messages and meta values."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from gateway.errors import ResourceError, StoreError
from gateway.plugins import get_plugin_manager
from gateway.protocols.registry import protocol_registry
from gateway.resources.loader import check_documents, parse_yaml
from gateway.store import Store, db_path
from gateway.testing import store_sql, stored_history, stored_reported, wait_until
from tests.conftest import FIELDGATE, free_port
from tests.test_runtime import MODEL, virtual_device


def integrity_check(db_file: Path) -> tuple[object, ...]:
    return store_sql(db_file, "PRAGMA integrity_check")[0]


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
        assert integrity_check(db_path(data)) == ("ok",)
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


async def test_one_flush_commits_reports_outbox_messages_and_meta_values_together(tmp_path: Path) -> None:
    store = Store(tmp_path)
    await store.open()
    try:
        store.history.add_report("default/d", 1000.0, {"a": 1, "b": 2.5})
        store.outboxes.add("sink", "t", b"m")
        store.workloads.queue_delivered({"default/app": 7})
        assert await store.flush() == 2
        assert await store.flush() == 0  # nothing queued: nothing to do
        assert await store.history.values("default/d", "b", 0, 2000) == [(1000.0, 2.5)]
        assert store.outboxes.depth == {"sink": 1}
        assert (await store.workloads.delivery())[1] == {"default/app": 7}
    finally:
        await store.close()
    store = Store(tmp_path)  # and all of it is there after a restart
    await store.open()
    try:
        assert (await store.twins.load())["default/d"]["a"]["reported"] == 1
        assert store.outboxes.depth == {"sink": 1}
        assert (await store.workloads.delivery())[1] == {"default/app": 7}
    finally:
        await store.close()


async def test_the_writer_commits_as_soon_as_it_is_free_or_once_an_interval(tmp_path: Path) -> None:
    """No timer between a reading and its commit: each thing queued is committed by the running writer (and its
    outbox's runners woken); with a flush_interval, at most one commit an interval."""
    store = Store(tmp_path)
    await store.open()
    commits: list[set[str]] = []
    store.outboxes.on_flush.append(commits.append)
    writer = asyncio.create_task(store.run_writer())
    try:
        for i in range(5):
            store.outboxes.add("sink", "t", f"{i}".encode())
            await wait_until(lambda i=i: len(commits) > i, timeout=10)
        store.history.add_report("default/d", 1000.0, {"a": 1})
        await wait_until(lambda: store.history.values_written == 1, timeout=10)
    finally:
        writer.cancel()
        await store.close()
    store = Store(tmp_path / "slow", flush_interval=3600)
    await store.open()
    commits.clear()
    store.outboxes.on_flush.append(commits.append)
    writer = asyncio.create_task(store.run_writer())
    try:
        store.outboxes.add("sink", "t", b"first")
        await wait_until(lambda: len(commits) == 1, timeout=10)  # the first at once
        store.outboxes.add("sink", "t", b"second")
        await asyncio.sleep(0.5)
        assert len(commits) == 1 and store.outboxes.pending  # the next one an interval after it
    finally:
        writer.cancel()
        await store.close()
    assert commits == [{"sink"}, {"sink"}]  # closing commits what waited


async def test_the_first_commit_with_an_interval_is_at_once_shortly_after_boot(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop's clock is the monotonic one, which starts near 0 at boot: the writer took "no commit yet" for a
    commit at 0 s, and on a machine up for less than its flush_interval the first commit waited for the clock to
    pass the interval (found on a test machine up for 26 minutes, with an interval of an hour)."""
    loop = asyncio.get_running_loop()
    clock = loop.time
    booted = clock() - 2.0
    monkeypatch.setattr(loop, "time", lambda: clock() - booted)  # up for 2 s; timers keep to the same clock
    store = Store(tmp_path, flush_interval=60)
    await store.open()
    commits: list[set[str]] = []
    store.outboxes.on_flush.append(commits.append)
    writer = asyncio.create_task(store.run_writer())
    try:
        store.outboxes.add("sink", "t", b"first")
        await wait_until(lambda: len(commits) == 1, timeout=10)
    finally:
        writer.cancel()
        await store.close()


async def test_commits_are_on_the_disk_before_they_count_unless_told_otherwise(tmp_path: Path) -> None:
    """sync: full (the default) has SQLite fsync the log at every commit, so what the store counted survives a power
    cut (tests/image/test_boot.py cuts the power of a booted appliance to check it); normal only at checkpoints."""
    modes = {}
    for sync in ("full", "normal"):
        store = Store(tmp_path / sync) if sync == "full" else Store(tmp_path / sync, sync=sync)
        await store.open()
        try:
            modes[sync] = [tuple(row) for row in await store._db.rows("PRAGMA synchronous")]
        finally:
            await store.close()
    assert modes == {"full": [(2,)], "normal": [(1,)]}
    with pytest.raises(ValueError, match="store sync 'fast': expected one of full, normal"):
        Store(tmp_path / "fast", sync="fast")
    with pytest.raises(ResourceError) as caught:
        check_documents(parse_yaml(MODEL.replace("store: {flush_interval: 50ms}", "store: {sync: fast}"), "gw.yaml"),
                        protocol_registry(get_plugin_manager()))
    assert caught.value.problems[0].startswith("gw.yaml: document 1 (Gateway test-gw): $.store.sync: Invalid enum "
                                               "value 'fast'"), caught.value.problems


def break_inserts(db_file: Path, table: str) -> None:
    """From a second connection: every insert into `table` fails as a broken database fails (a trigger whose body
    names a table that does not exist)."""
    store_sql(db_file, f"CREATE TRIGGER broken_{table} BEFORE INSERT ON {table} BEGIN INSERT INTO nowhere VALUES (1); "
              "END")


def repair_inserts(db_file: Path, table: str) -> None:
    store_sql(db_file, f"DROP TRIGGER broken_{table}")


async def test_writes_that_failed_work_again_once_the_file_is_repaired(tmp_path: Path) -> None:
    """Before, the store's connection kept the trigger another connection had dropped (SQLite had failed to prepare
    the insert it fires, and did not look at the file's schema again): every flush failed until some read on the
    connection happened to reload the schema, and on a node whose sinks read from memory none did."""
    store = Store(tmp_path)
    await store.open()
    db_file = db_path(tmp_path)
    try:
        store.history.add_report("default/d", 1000.0, {"a": 1})
        assert await store.flush() == 1
        break_inserts(db_file, "reports")
        for ts in (1001.0, 1002.0):  # failing again and again, with nothing but flushes on the connection
            store.history.add_report("default/d", ts, {"a": int(ts) - 1000 + 1})
            with pytest.raises(StoreError, match="no such table"):
                await store.flush()
        assert not store.health.ok
        repair_inserts(db_file, "reports")
        assert await store.flush() == 2  # the first flush after the repair
        assert store.health.ok
        assert [value for _, value in await store.history.values("default/d", "a", 0, 2000)] == [1, 2, 3]

        break_inserts(db_file, "audit")  # a single write, outside the flush's transaction
        for _ in range(2):
            with pytest.raises(StoreError, match="no such table"):
                await store.audit.record("admin", "user.create", "ann")
        repair_inserts(db_file, "audit")
        await store.audit.record("admin", "user.create", "ann")
        assert [entry["target"] for entry in await store.audit.recent()] == ["ann"]
    finally:
        await store.close()


async def test_values_and_rows_the_store_cannot_keep_are_left_out_alone(tmp_path: Path) -> None:
    """Before, one value the encoder refuses (a plugin's report) failed the flush and lost the whole batch."""
    store = Store(tmp_path)
    await store.open()
    try:
        store.history.add_report("default/d", 1000.0, {"a": 1, "odd": object(), "huge": 1 << 70})
        store.history.add_report("default/d", math.nan, {"a": 2})  # no time
        store.history.add_report("default/d", 1001.0, {"a": 3})
        store.outboxes.add("sink", "t", b"one")
        store.outboxes.add("sink", "t", {"not": "bytes"})  # type: ignore[arg-type]  # SQLite cannot take it
        store.outboxes.add("sink", "t", b"two")
        assert await store.flush() == 2
        assert await store.history.values("default/d", "a", 0, 2000) == [(1000.0, 1), (1001.0, 3)]
        assert [payload for _, _, payload, _ in await store.outboxes.batch("sink", 0, 10)] == [b"one", b"two"]
        assert store.outboxes.depth == {"sink": 2}
        assert store.health.ok and store.health.refused == {"values": 2, "reports": 1, "outbox messages": 1}
        store.history.add_report("default/d", 1002.0, {"a": 4})
        assert await store.flush() == 1  # and the next flush goes the fast way again
    finally:
        await store.close()
