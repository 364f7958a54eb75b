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
        assert not await store.channels.beat("replica-a", "10.0.0.1:9443")  # a new replica
        assert not await store.channels.beat("replica-b", "10.0.0.2:9443")
        await store.channels.hold("gw-1", "replica-a", "10.0.0.1:9443")
        await store.channels.hold("gw-2", "replica-a", "10.0.0.1:9443")
        assert (await store.channels.holder("gw-1") or ())[:2] == ("replica-a", "10.0.0.1:9443")
        # the node moved to replica B before A noticed its old channel closed: A's release leaves B's row
        await store.channels.hold("gw-1", "replica-b", "10.0.0.2:9443")
        await store.channels.release("gw-1", "replica-a")
        assert (await store.channels.holder("gw-1") or ())[:2] == ("replica-b", "10.0.0.2:9443")
        assert set(await store.channels.holders()) == {"gw-1", "gw-2"}
        await store.channels.release_all("replica-a")  # A stops
        assert await store.channels.holder("gw-2") is None
        assert (await store.channels.holder("gw-1") or ())[:2] == ("replica-b", "10.0.0.2:9443")
        await store.channels.release("gw-1", "replica-b")
        assert await store.channels.holder("gw-1") is None


async def test_service_events_are_kept_once_the_newest_per_node_and_service(db_url: str | None,
                                                                           tmp_path: Path) -> None:
    async with RegistryStore(tmp_path, db_url) as store:
        await store.add_node("gw-1", "ab", {}, 1.0)
        known = {("default", "echo"), ("plant", "db")}
        events = [("default", "echo", 100.0 + i, i, "endpoints", f"{i} of 9 ready") for i in range(6)]
        await store.services.record_events("gw-1", events, 4, 200.0, known)
        others = [("plant", "db", 1.0, 1, "listening", ""), ("default", "gone", 1.0, 2, "removed", "")]
        await store.services.record_events("gw-1", [*events[3:], *others], 4, 201.0,
                                           known)  # delivered again (an answer lost): kept once
        rows = await store.services.events(10)
        assert [(ns, name, seq) for ns, name, _, _, seq, _, _ in rows] == [
            ("default", "echo", 5), ("default", "echo", 4), ("default", "echo", 3), ("default", "echo", 2),
            ("plant", "db", 1)]  # the newest 4 of echo; not the one of a service the registry does not have
        assert [seq for *_, seq, _, _ in await store.services.events(2)] == [5, 4, 1]
        await store.services.record_events("gw-1", [("default", "echo", 300.0, 7, "removed", "")], 4, 300.0,
                                           {("default", "echo")})  # plant/db is gone at the registry
        assert {name for _, name, *_ in await store.services.events(10)} == {"echo"}
        await store.remove_node("gw-1")
        assert await store.services.events(10) == []


async def test_a_heartbeat_is_recorded_only_with_the_nodes_current_certificate(db_url: str | None,
                                                                              tmp_path: Path) -> None:
    """The channel checks the certificate in the heartbeat's own write: a replaced or revoked one records nothing
    (not even the app figures written in the same transaction) and is refused with the reason."""
    from gateway.wire import AppFigures

    figures = [AppFigures("default/app", "app-1", 1.0, 2.0, 0.0, 0.0, None, None)]
    async with RegistryStore(tmp_path, db_url) as store:
        await store.add_node("gw-1", "ab", {}, 7.0)
        beat = await store.beat("gw-1", {"version": "1"}, figures, serial="ab", unfinished_upgrades=("running",))
        assert beat == (7.0, 0, False)
        [(first,)] = await store.database.rows("SELECT last_heartbeat FROM nodes WHERE name='gw-1'")
        [(count,)] = await store.database.rows("SELECT COUNT(*) FROM app_metrics")
        with pytest.raises(AuthError, match="unknown node certificate"):  # an older certificate of the node
            await store.beat("gw-1", {"version": "2"}, figures, serial="aa")
        assert await store.database.rows("SELECT last_heartbeat, info FROM nodes WHERE name='gw-1'") == [
            (first, '{"version": "1"}')]
        assert await store.database.rows("SELECT COUNT(*) FROM app_metrics") == [(count,)]
        await store.database.write(
            "INSERT INTO upgrade_tasks VALUES ('t1', '2.0', '{}', 1, 0, 9e9, 'running', 'default', 'me', 1.0, NULL)")
        assert (await store.beat("gw-1", {}, serial="ab", unfinished_upgrades=("running",))).upgrading
        assert not (await store.beat("gw-1", {}, serial="ab", unfinished_upgrades=("stopping",))).upgrading
        await store.remove_node("gw-1")
        with pytest.raises(AuthError, match="certificate revoked"):
            await store.beat("gw-1", {}, figures, serial="ab")
        assert await store.beat("gw-9", {}) == (0.0, 0, False)  # no such node, no certificate to check: nothing


async def test_reads_see_one_state_of_the_database_in_one_trip(db_url: str | None, tmp_path: Path) -> None:
    async with RegistryStore(tmp_path, db_url) as store:
        await store.add_node("gw-1", "ab", {"site": "north"}, 1.0)
        await store.add_node("gw-2", "cd", {}, 2.0)
        statements = [("SELECT name FROM nodes ORDER BY name", ()),
                      ("SELECT interval FROM nodes WHERE name=?", ("gw-2",)),
                      ("SELECT name FROM nodes WHERE name=?", ("gw-3",))]
        assert await store.database.reads(statements) == [[("gw-1",), ("gw-2",)], [(2.0,)], []]
        if db_url is None:  # a heartbeat commits without waiting for the disk; later commits wait again
            await store.beat("gw-1", {})
            assert await store.database.rows("PRAGMA synchronous") == [(2,)]
            assert not store.database.db.in_transaction  # type: ignore[attr-defined]


async def test_a_replica_not_seen_for_the_bound_is_gone_with_its_channels(db_url: str | None, tmp_path: Path) -> None:
    async with RegistryStore(tmp_path, db_url) as store:
        store.channels.gone_after = 0.5
        await store.channels.beat("replica-a", "10.0.0.1:9443")
        await store.channels.beat("replica-b", "10.0.0.2:9443")
        await store.channels.hold("gw-1", "replica-a", "10.0.0.1:9443")
        await store.channels.hold("gw-2", "replica-b", "10.0.0.2:9443")
        await store.channels.hold("gw-3", "replica-old", "10.0.0.3:9443")  # a replica without a row
        assert await store.channels.beat("replica-a", "10.0.0.1:9443")
        assert await store.channels.forget_gone() == 1  # gw-3's
        replica, _, age = await store.channels.holder("gw-1") or ("", "", None)
        assert replica == "replica-a" and age is not None and age < 0.5
        assert set(await store.channels.holders()) == {"gw-1", "gw-2"}
        for name in ("gw-1", "gw-2", "gw-5"):
            await store.add_node(name, name, {}, 1.0)
        replicas = {node["name"]: node["replica"] for node in await store.nodes()}
        assert replicas["gw-1"]["peer"] == "10.0.0.1:9443" and replicas["gw-2"]["id"] == "replica-b"
        assert replicas["gw-5"] is None  # no channel open anywhere

        await asyncio.sleep(0.7)  # B is killed: only A refreshes its row
        assert await store.channels.beat("replica-a", "10.0.0.1:9443")
        _, _, age = await store.channels.holder("gw-2") or ("", "", None)
        assert age is not None and age > 0.5  # still there, and taken for gone
        assert set(await store.channels.holders()) == {"gw-1"}
        assert {node["name"]: node["replica"] for node in await store.nodes()}["gw-2"] is None
        assert await store.channels.forget_gone() == 1
        assert await store.channels.holder("gw-2") is None
        # B was only cut off from the database: its next refresh finds its row gone and records its channels again,
        # leaving a node that reconnected to A meanwhile to A
        await store.channels.hold("gw-4", "replica-a", "10.0.0.1:9443")
        assert not await store.channels.beat("replica-b", "10.0.0.2:9443")
        await store.channels.hold_again(["gw-2", "gw-4"], "replica-b", "10.0.0.2:9443")
        holders = await store.channels.holders()
        assert {node: holder["id"] for node, holder in holders.items()} == {
            "gw-1": "replica-a", "gw-2": "replica-b", "gw-4": "replica-a"}


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
