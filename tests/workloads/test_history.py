"""Workload versions and events in the SQLite store, and the store's move to schema version 2."""

from __future__ import annotations

from pathlib import Path

from gateway.store import SCHEMA_VERSION, Store, db_path
from gateway.testing import store_sql
from gateway.workloads import history
from gateway.workloads.history import WorkloadHistory


def as_a_version_1_store(db_file: Path) -> None:
    """The store as written before workloads existed."""
    store_sql(db_file, "DROP TABLE workload_versions")
    store_sql(db_file, "DROP TABLE workload_events")
    store_sql(db_file, "UPDATE meta SET value='1' WHERE key='schema_version'")


def schema_version(db_file: Path) -> str:
    return str(store_sql(db_file, "SELECT value FROM meta WHERE key='schema_version'")[0][0])


async def test_a_version_1_store_gets_the_workload_tables(tmp_path: Path) -> None:
    store = Store(tmp_path)
    await store.open()
    await store.close()
    as_a_version_1_store(db_path(tmp_path))
    store = Store(tmp_path)
    await store.open()
    try:
        assert schema_version(db_path(tmp_path)) == str(SCHEMA_VERSION)
        assert await WorkloadHistory(store).versions("default", "app") == []
    finally:
        await store.close()


async def test_versions_are_numbered_and_the_oldest_forgotten(tmp_path: Path) -> None:
    store = Store(tmp_path)
    await store.open()
    try:
        kept = WorkloadHistory(store)
        for i in range(history.KEEP_VERSIONS + 5):
            assert await kept.add_version("default", "app", f'{{"n":{i}}}', actor="admin") == i + 1
        versions = await kept.versions("default", "app")
        assert len(versions) == history.KEEP_VERSIONS and versions[0]["version"] == 6
        last = history.KEEP_VERSIONS + 5
        assert await kept.latest("default", "app") == (last, f'{{"n":{last - 1}}}')
        assert await kept.version("default", "app", 1) is None
        assert await kept.add_version("default", "other", "{}") == 1, "numbered per workload"

        for i in range(250):
            await kept.add_event("default", "app", "started", "app-1-0", f"pid {i}")
        events = await kept.events("default", "app", limit=3)
        assert [e["reason"] for e in events] == ["pid 247", "pid 248", "pid 249"]
        later = await kept.events("default", "app", after=events[1]["id"])
        assert [e["reason"] for e in later] == ["pid 249"]
    finally:
        await store.close()
