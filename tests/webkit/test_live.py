"""The live streams' bounds: a mailbox that drops the oldest, a stream limit per session and per app, streams
ended with their session or when their caller may no longer see them, keepalives, and lists sent as changes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from litestar.exceptions import ServiceUnavailableException
from litestar.response import ServerSentEventMessage

from gateway.webkit import live
from gateway.webkit.live import LiveStreams, Mailbox, Update, changes, diff, stream_key
from gateway.webkit.sessions import BrowserSessions


async def test_a_full_mailbox_drops_its_oldest_items_and_never_waits() -> None:
    mailbox: Mailbox[int] = Mailbox(4)
    for n in range(10):
        mailbox.put(n)  # a bus handler: returns at once however slow the reader is
    assert await mailbox.take(1.0) == [6, 7, 8, 9] and mailbox.dropped == 6
    assert await mailbox.take(0.01) == []


def test_lists_are_sent_as_their_changes() -> None:
    before = {"counts": {"total": 2, "online": 2},
              "devices": {"a": {"state": "online", "v": 1}, "b": {"state": "online", "v": 1}}}
    assert diff(None, before) == before
    assert diff(before, before) == {}
    after = {"counts": {"total": 1, "online": 1}, "devices": {"a": {"state": "offline", "v": 1}}}
    assert diff(before, after) == {"counts": {"total": 1, "online": 1}, "devices": {"a": {"state": "offline", "v": 1}},
                                   "removed": {"devices": ["b"]}}
    # a text that only says how long ago something was is no change on its own
    ticking = {"nodes": {"a": {"status": "healthy", "reason": "last heartbeat 0.2s ago"}}}
    later = {"nodes": {"a": {"status": "healthy", "reason": "last heartbeat 0.9s ago"}}}
    assert diff(ticking, later, frozenset({"reason"})) == {}
    gone = {"nodes": {"a": {"status": "offline", "reason": "no heartbeat for 31s"}}}
    assert diff(ticking, gone, frozenset({"reason"})) == gone


async def updates(count: int | None = None, every: float = 0.01) -> AsyncIterator[Update]:
    """`count` numbered events (forever without a count), one every `every` seconds."""
    n = 0
    while count is None or n < count:
        yield ServerSentEventMessage(event="update", data=str(n))
        n += 1
        await asyncio.sleep(every)


async def allow() -> bool:
    return True


async def test_a_session_holds_at_most_its_share_of_streams_and_the_oldest_one_goes() -> None:
    streams = LiveStreams(per_session=2, total=10)
    opened = [streams._run("s1", updates(), allow) for _ in range(3)]
    first = [await anext(stream) for stream in opened[:2]]
    assert [message.retry for message in first] == [live.RETRY_MS] * 2 and streams.of("s1") == 2
    await anext(opened[2])  # a third page of the same session
    assert streams.of("s1") == 2
    last = await anext(opened[0])  # the oldest stream says why it stops, and stops
    assert last.event == "closed" and "more than 2 live pages" in str(last.data)
    with pytest.raises(StopAsyncIteration):
        await anext(opened[0])
    assert (await anext(opened[1])).event == "update"  # the others go on
    for stream in opened[1:]:
        await stream.aclose()
    assert streams.count == 0


async def test_an_app_refuses_streams_beyond_its_total() -> None:
    streams = LiveStreams(per_session=5, total=2)
    opened = [streams._run(f"s{n}", updates(), allow) for n in range(2)]
    for stream in opened:
        await anext(stream)
    with pytest.raises(ServiceUnavailableException):
        streams.check()  # what respond() answers before a stream starts: 503
    late = streams._run("s9", updates(), allow)  # one that got past the check meanwhile ends at once
    assert (await anext(late)).event == "closed"
    for stream in opened:
        await stream.aclose()
    streams.check()


async def test_a_logout_ends_the_sessions_streams_and_only_those() -> None:
    sessions = BrowserSessions("c", "l")
    sid, _ = sessions.store.create("ann")
    other, _ = sessions.store.create("bob")
    mine, theirs = (sessions.live._run(key, updates(), allow) for key in (sid, other))
    await anext(mine)
    await anext(theirs)
    sessions.store.end(sid)  # what /logout does
    closing = await anext(mine)
    assert closing.event == "closed" and "session ended" in str(closing.data)
    assert (await anext(theirs)).event == "update"
    await theirs.aclose()


async def test_a_stream_whose_caller_lost_the_right_ends_and_a_quiet_one_keeps_alive(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "KEEPALIVE", 0.0)
    monkeypatch.setattr(live, "CHECK_EVERY", 0.05)
    allowed = [True]

    async def still() -> bool:
        return allowed[0]

    async def quiet() -> AsyncIterator[Update]:
        yield ServerSentEventMessage(event="update", data="{}")
        while True:
            await asyncio.sleep(0.02)
            yield None

    stream = LiveStreams()._run("s1", quiet(), still)
    await anext(stream)
    assert (await anext(stream)).comment == "keepalive"
    allowed[0] = False  # the user was removed, or the session timed out
    for _ in range(20):
        message = await anext(stream)
        if message.event == "closed":
            break
    assert message.event == "closed" and "log in again" in str(message.data)


async def test_changes_sends_everything_first_then_only_what_changed() -> None:
    state = {"counts": {"n": 1}, "rows": {"a": {"v": 1}}}

    async def snapshot() -> dict[str, object] | None:
        return json.loads(json.dumps(state)) if state else None

    stream = changes(snapshot, 0.0, "update")
    first = await anext(stream)
    assert first is not None and json.loads(str(first.data)) == state
    assert await anext(stream) is None  # nothing changed: the stream may send a keepalive instead
    state["rows"]["a"]["v"] = 2  # type: ignore[index]
    second = await anext(stream)
    assert second is not None and json.loads(str(second.data)) == {"rows": {"a": {"v": 2}}}
    state.clear()  # what it showed is gone: the stream ends
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


def test_streams_count_against_the_session_or_a_hash_of_the_token() -> None:
    assert stream_key("sid-1") == "sid-1"
    key = stream_key(None, "fgt_secret")
    assert key.startswith("bearer:") and "secret" not in key and key == stream_key(None, "fgt_secret")


def test_a_list_group_is_sent_whole_when_it_changed_and_not_at_all_when_it_did_not() -> None:
    from gateway.webkit.live import diff

    before = {"alerts": [{"kind": "node offline", "subject": "gw-1"}], "counts": {"total": 1}}
    assert diff(before, {**before}) == {}
    after = {"alerts": [{"kind": "workload failed", "subject": "pump"}, *before["alerts"]], "counts": {"total": 1}}
    assert diff(before, after) == {"alerts": after["alerts"]}
    assert diff(after, {**after, "alerts": []}) == {"alerts": []}
