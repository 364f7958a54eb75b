"""The outboxes (gateway/store/outbox.py): the drop policy of a full outbox, messages handed to the runners from
memory, acknowledgements deleted with the next commit, flushes that survive their caller's cancellation."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from gateway.store import Store, db_path, outbox
from gateway.testing import store_sql


def age_messages(db_file: Path, sink: str, *, up_to: int, seconds: float) -> None:
    """Make the messages of a sink up to a sequence number older by `seconds`."""
    store_sql(db_file, "UPDATE outbox SET created = created - ? WHERE sink = ? AND seq <= ?", (seconds, sink, up_to))


def rows_in_file(db_file: Path) -> int:
    """Outbox rows in the store's file, delivered ones not deleted yet included."""
    return int(store_sql(db_file, "SELECT count(*) FROM outbox")[0][0])


async def test_full_outbox_drops_the_oldest_and_counts(tmp_path: Path) -> None:
    """The stated drop policy: beyond max_messages or max_age the oldest messages go, and only those."""
    store = Store(tmp_path)
    await store.open()
    try:
        for i in range(1500):
            store.outboxes.add("sink-a", "t", f"{i}".encode())
        store.outboxes.add("sink-b", "t", b"other")
        await store.flush()
        assert store.outboxes.depth == {"sink-a": 1500, "sink-b": 1}
        dropped = await store.outboxes.trim("sink-a", max_messages=1000, max_age=3600)
        assert dropped == 500
        rows = await store.outboxes.batch("sink-a", after=0, limit=2000)
        assert [int(payload) for _, _, payload, _ in rows] == list(range(500, 1500))  # the newest, in order
        assert store.outboxes.depth["sink-a"] == 1000
        age_messages(db_path(tmp_path), "sink-a", up_to=700, seconds=7200)
        assert await store.outboxes.trim("sink-a", max_messages=1000, max_age=3600) == 200
        assert (await store.outboxes.stats())["sink-b"]["depth"] == 1  # other outboxes untouched
    finally:
        await store.close()


async def test_delivered_messages_waiting_for_their_deletion_are_neither_dropped_nor_counted(tmp_path: Path) -> None:
    """Acknowledged messages stay in the file until the next commit deletes them: a trim meanwhile drops only
    undelivered ones (by age and by count), and the stored depth leaves the delivered out."""
    store = Store(tmp_path)
    await store.open()
    try:
        for i in range(1500):
            store.outboxes.add("sink-a", "t", f"{i}".encode())
        await store.flush()
        rows = await store.outboxes.batch("sink-a", after=0, limit=300)
        store.outboxes.ack("sink-a", rows[-1][0], len(rows))  # 300 delivered, still in the file
        assert rows_in_file(db_path(tmp_path)) == 1500
        assert (await store.outboxes.stats())["sink-a"]["depth"] == 1200
        assert await store.outboxes.trim("sink-a", max_messages=1000, max_age=3600) == 200  # not 500
        assert store.outboxes.depth["sink-a"] == 1000
        age_messages(db_path(tmp_path), "sink-a", up_to=rows[-1][0] + 50, seconds=7200)  # 300 delivered, 0 left
        assert await store.outboxes.trim("sink-a", max_messages=1000, max_age=3600) == 0
        assert store.outboxes.depth["sink-a"] == 1000
        await store.flush()  # the acknowledgement's deletion
        assert (await store.outboxes.stats())["sink-a"]["depth"] == 1000
        assert rows_in_file(db_path(tmp_path)) == 1000
    finally:
        await store.close()


async def test_committed_messages_reach_the_runner_from_memory_and_in_order(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A runner gets what a flush committed without reading it back; one that is behind (more than the memory
    holds) reads the file up to where memory takes over, and sees every message once, in order."""
    monkeypatch.setattr(outbox, "MEMORY_BYTES", 10)  # the 5 newest 2-byte payloads of sink-a
    store = Store(tmp_path)
    await store.open()
    try:
        for i in range(10, 20):
            store.outboxes.add("sink-a", "t", f"{i}".encode())
            store.outboxes.add("sink-b", "t", f"{i}".encode())
        await store.flush()
        # the rows leave the file behind the store's back: what memory holds is still served, the rest is not
        store_sql(db_path(tmp_path), "DELETE FROM outbox WHERE sink = 'sink-a' AND payload IN (CAST('12' AS BLOB), "
                  "CAST('16' AS BLOB))")
        seen: list[int] = []
        after = 0
        for _ in range(10):  # bounded: a batch of 5 at a time (the first from the file, up to where memory begins)
            rows = await store.outboxes.batch("sink-a", after, 5)
            if not rows:
                break
            seen += [int(payload) for _, _, payload, _ in rows]
            after = rows[-1][0]
        assert seen == [10, 11, 13, 14, 15, 16, 17, 18, 19]  # 12 came from the file, 16 from memory
        assert [int(p) for _, _, p, _ in await store.outboxes.batch("sink-b", 0, 100)] == list(range(10, 20))
    finally:
        await store.close()


async def test_acknowledged_messages_go_with_the_next_commit(tmp_path: Path) -> None:
    """An acknowledgement is not a commit of its own: the next flush deletes the messages; until then they are no
    longer handed out, nor counted as waiting."""
    store = Store(tmp_path)
    await store.open()
    try:
        for i in range(5):
            store.outboxes.add("sink", "t", f"{i}".encode())
        await store.flush()
        rows = await store.outboxes.batch("sink", 0, 3)
        store.outboxes.ack("sink", rows[-1][0], len(rows))
        assert [p for _, _, p, _ in await store.outboxes.batch("sink", 0, 10)] == [b"3", b"4"]
        assert store_sql(db_path(tmp_path), "SELECT count(*) FROM outbox")[0] == (5,)  # not deleted yet
        assert store.outboxes.depth == {"sink": 2}  # but delivered: no longer waiting
        await store.flush()
        assert store_sql(db_path(tmp_path), "SELECT count(*) FROM outbox")[0] == (2,)
        assert store.outboxes.depth == {"sink": 2}
    finally:
        await store.close()
    reopened = Store(tmp_path)
    await reopened.open()
    try:
        assert [p for _, _, p, _ in await reopened.outboxes.batch("sink", 0, 10)] == [b"3", b"4"]
        reopened.outboxes.add("sink", "t", b"5")
        await reopened.flush()  # the seqs go on after those of the last run: in order after a restart
        assert [p for _, _, p, _ in await reopened.outboxes.batch("sink", 0, 10)] == [b"3", b"4", b"5"]
    finally:
        await reopened.close()


async def test_a_cancelled_flush_still_ends_and_hands_over_what_it_committed(tmp_path: Path) -> None:
    """A caller cancelled in the middle of a flush (a stopping writer, a request whose client left) does not leave
    the connection inside a transaction, nor committed messages the runners never see, nor a seq given twice."""
    store = Store(tmp_path)
    await store.open()
    try:
        for round_ in range(20):
            for i in range(50):
                store.outboxes.add("sink", "t", f"{round_}-{i}".encode())
            flushing = asyncio.create_task(store.flush())
            for _ in range(round_ % 5):
                await asyncio.sleep(0)
            flushing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flushing
        await store.flush()
        rows = await store.outboxes.batch("sink", 0, 10_000)
        assert [p for _, _, p, _ in rows] == [f"{r}-{i}".encode() for r in range(20) for i in range(50)]
        assert store_sql(db_path(tmp_path), "SELECT count(*) FROM outbox")[0] == (1000,)
        assert store.health.ok, store.health.describe()
    finally:
        await store.close()
