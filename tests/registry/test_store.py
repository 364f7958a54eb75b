"""The registry store on both databases: migrations with a schema_version, messages with a TTL, API tokens, and
notifications (in-process on SQLite, LISTEN/NOTIFY across connections on PostgreSQL)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.errors import AuthError, ConfigError
from gateway.registry.store import NameTaken, RegistryStore, TokenRefused
from gateway.registry.store.db import MIGRATIONS


async def test_store_messages_tokens_and_notifications(db_url: str | None, tmp_path: Path) -> None:
    async with RegistryStore(tmp_path, db_url) as store:
        assert await store.database.rows("SELECT MAX(version) FROM schema_version") == [(MIGRATIONS[-1][0],)]
        await store.add_node("gw-1", "ab", {"site": "north"}, 1.0)
        assert not await store.node_online("gw-1")
        kept = await store.queue_message("gw-1", "plant", "alarms", b"\x00\xffbytes", 60.0)
        await store.queue_message("gw-1", "plant", "alarms", b"old", 0.0)
        await asyncio.sleep(0.01)
        pending = await store.pending_messages("gw-1")
        assert [m["id"] for m in pending] == [kept["id"]] and pending[0]["payload"] == "AP9ieXRlcw=="
        assert (await store.nodes())[0]["messages_expired"] == 1
        assert await store.ack_messages("gw-1", [kept["id"], "unknown"]) == 1
        assert await store.pending_messages("gw-1") == []

        token = await store.create_api_token("operator")
        assert await store.api_token_role(token) == "operator"
        with pytest.raises(AuthError):
            await store.api_token_role(token + "x")
        with pytest.raises(ConfigError):
            await store.create_api_token("root")

        woken: asyncio.Queue[str] = asyncio.Queue()
        await store.database.listen("fieldgate_test", woken.put_nowait)
        await store.database.notify("fieldgate_test", "gw-1")
        assert await asyncio.wait_for(woken.get(), 5) == "gw-1"
    # migrations run once: opening again finds the schema current
    async with RegistryStore(tmp_path, db_url) as store:
        assert await store.database.rows("SELECT COUNT(*) FROM schema_version") == [(len(MIGRATIONS),)]


async def test_a_join_spends_a_token_use_only_with_its_node(db_url: str | None, tmp_path: Path) -> None:
    async with RegistryStore(tmp_path, db_url) as store:
        token_id, secret = await store.create_token(60, 3, {"site": "north"})
        assert await store.check_token(token_id, secret) == {"site": "north"}  # checking spends nothing
        await store.join_node(token_id, "gw-1", "a1", {}, 1.0)
        with pytest.raises(NameTaken, match="node name gw-1 is taken"):
            await store.join_node(token_id, "gw-1", "a2", {}, 1.0)
        assert await store.database.rows("SELECT uses FROM join_tokens WHERE id=?", token_id) == [(1,)]
        # joins at once take no more uses than the token has left
        results = await asyncio.gather(*(store.join_node(token_id, f"gw-{n}", f"b{n}", {}, 1.0)
                                         for n in range(2, 7)), return_exceptions=True)
        assert [str(r) for r in results if isinstance(r, Exception)] == ["used up"] * 3
        assert await store.database.rows("SELECT uses FROM join_tokens WHERE id=?", token_id) == [(3,)]
        assert len(await store.node_names()) == 3
        with pytest.raises(TokenRefused, match="used up"):
            await store.check_token(token_id, secret)


async def test_which_replica_holds_a_nodes_channel(db_url: str | None, tmp_path: Path) -> None:
    async with RegistryStore(tmp_path, db_url) as store:
        assert await store.channels.holder("gw-1") is None
        await store.channels.hold("gw-1", "replica-a", "10.0.0.1:9443")
        await store.channels.hold("gw-2", "replica-a", "10.0.0.1:9443")
        assert await store.channels.holder("gw-1") == ("replica-a", "10.0.0.1:9443")
        # the node moved to replica B before A noticed its old channel closed: A's release leaves B's row
        await store.channels.hold("gw-1", "replica-b", "10.0.0.2:9443")
        await store.channels.release("gw-1", "replica-a")
        assert await store.channels.holder("gw-1") == ("replica-b", "10.0.0.2:9443")
        await store.channels.release_all("replica-a")  # A stops
        assert await store.channels.holder("gw-2") is None
        assert await store.channels.holder("gw-1") == ("replica-b", "10.0.0.2:9443")
        await store.channels.release("gw-1", "replica-b")
        assert await store.channels.holder("gw-1") is None


def test_a_transaction_whose_commit_fails_leaves_the_database_free_for_the_next_one_and_other_processes(
        tmp_path: Path) -> None:
    """A COMMIT that raises (here a deferred foreign key) rolls back: the registry's connection is not left inside
    a transaction holding the write lock, its next transaction runs, and another process (the CLI) can write."""
    import sqlite3

    from gateway.registry.store.db import SQLiteDatabase

    async def run() -> None:
        database = await SQLiteDatabase(tmp_path / "registry.db").open()
        try:
            await database.write("PRAGMA foreign_keys=ON")
            await database.write("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
            await database.write("CREATE TABLE child (parent INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY "
                                 "DEFERRED)")
            with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
                await database.transaction([("INSERT INTO child VALUES (?)", (7,))])
            assert not database.db.in_transaction
            with sqlite3.connect(tmp_path / "registry.db", timeout=1.0, isolation_level=None) as other:
                other.execute("BEGIN IMMEDIATE")
                other.execute("INSERT INTO parent VALUES (1)")
                other.execute("COMMIT")
            other.close()
            await database.transaction([("INSERT INTO child VALUES (?)", (1,))])
            assert await database.rows("SELECT parent FROM child") == [(1,)]
        finally:
            await database.close()

    asyncio.run(run())


def test_a_transaction_whose_caller_gives_up_still_commits_or_rolls_back_as_a_whole(tmp_path: Path) -> None:
    """A caller cancelled between two statements (a channel closed meanwhile): the transaction goes on to its end,
    and the next one is not run inside it."""
    from gateway.registry.store.db import SQLiteDatabase

    async def run() -> None:
        database = await SQLiteDatabase(tmp_path / "registry.db").open()
        try:
            await database.write("CREATE TABLE t (k INTEGER PRIMARY KEY)")
            for round_ in range(50):
                task = asyncio.create_task(database.transaction(
                    [("INSERT INTO t VALUES (?)", (round_ * 10 + i,)) for i in range(5)]))
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await database.transaction([("SELECT 1", ())])
                count = (await database.rows("SELECT count(*) FROM t WHERE k/10=?", round_))[0][0]
                assert count in (0, 5), (round_, count)
                assert not database.db.in_transaction
        finally:
            await database.close()

    asyncio.run(run())
