"""The outboxes (gateway/store/outbox.py): the drop policy of a full outbox."""

from __future__ import annotations

from pathlib import Path

from gateway.store import Store, db_path
from gateway.testing import store_sql


def age_messages(db_file: Path, sink: str, *, up_to: int, seconds: float) -> None:
    """Make the messages of a sink up to a sequence number older by `seconds`."""
    store_sql(db_file, "UPDATE outbox SET created = created - ? WHERE sink = ? AND seq <= ?", (seconds, sink, up_to))


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
