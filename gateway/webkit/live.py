"""Live pages: the server-sent event streams of both web apps, bounded so that no browser slows the app down or
holds on to what it may no longer see.

- A stream belongs to a session (or a bearer token): a session holds at most `MAX_PER_SESSION` streams (one more
  ends its oldest, whose page is told so and stops), the app at most `MAX_STREAMS` (503 beyond).
- A stream ends when its session does: at once on logout, and within `CHECK_EVERY` seconds when the session times
  out or its user loses the right to see the page (the app's `allowed` check).
- A comment line every `KEEPALIVE` quiet seconds keeps proxies from closing the stream and notices a browser gone.
- Whoever produces updates never waits for a browser: bus deliveries go through a `Mailbox` (bounded; the oldest
  update is dropped when it is full), and lists are sent as the changes between snapshots (`changes`), so a slow
  browser sees fewer updates, never late ones, and the server keeps one snapshot per stream.

The data of an event is a JSON object of groups the pages' script (webkit/static/live.js) applies to elements
marked `data-live`: a group is a record (`{"counts": {"online": 3, …}}`), rows by id (`{"nodes": {"gw-7":
{"status": "healthy", …}}}`) or a list of records, sent whole when it changed (`{"alerts": [{"kind": …}, …]}`);
`removed` lists, per group, the rows gone since the previous event.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec
from litestar.exceptions import ServiceUnavailableException
from litestar.response import ServerSentEvent, ServerSentEventMessage

from gateway.webkit.assets import NO_COMPRESSION

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_PER_SESSION = 4  # a browser has 6 connections per host over HTTP/1.1: leave two for pages and assets
MAX_STREAMS = 256
KEEPALIVE = 15.0
CHECK_EVERY = 15.0
RETRY_MS = 3000  # how long a browser waits before it reconnects a stream that broke
SSE_OPT = {NO_COMPRESSION: True}  # `opt` of a streaming route: events are small and must not wait in a compressor
SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}

Update = ServerSentEventMessage | None  # None: nothing new this time round (the stream may send a keepalive)
Snapshot = dict[str, Any]


class Mailbox(Generic[T]):
    """A bounded queue a publisher fills without ever waiting: when it is full, the oldest item goes."""

    def __init__(self, size: int) -> None:
        self._items: deque[T] = deque(maxlen=size)
        self._ready = asyncio.Event()
        self.dropped = 0

    def put(self, item: T) -> None:
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append(item)
        self._ready.set()

    async def take(self, timeout: float) -> list[T]:
        """Everything waiting, oldest first; [] when nothing came within `timeout` seconds."""
        if not self._items:
            try:
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
            except TimeoutError:
                return []
        items = list(self._items)
        self._items.clear()
        self._ready.clear()
        return items


def stream_key(session_id: str | None, bearer: str | None = None) -> str:
    """Whom a stream counts against: the session, else the bearer token (hashed, so no secret is kept here)."""
    if session_id:
        return session_id
    return "bearer:" + hashlib.sha256((bearer or "").encode()).hexdigest()[:24]


@dataclass(eq=False)
class _Stream:
    key: str
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""

    def end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.reason = reason
            self.ended.set()


def closed(reason: str) -> ServerSentEventMessage:
    """The last event of a stream the server ends on purpose: the page stops listening and says why."""
    return ServerSentEventMessage(event="closed", data=reason)


class LiveStreams:
    """The open streams of one app, by session."""

    def __init__(self, per_session: int = MAX_PER_SESSION, total: int = MAX_STREAMS) -> None:
        self.per_session = per_session
        self.total = total
        self._streams: dict[str, list[_Stream]] = {}  # oldest first

    @property
    def count(self) -> int:
        return sum(len(streams) for streams in self._streams.values())

    def of(self, key: str) -> int:
        return len(self._streams.get(key, ()))

    def end(self, key: str, reason: str = "the session ended") -> None:
        """End every stream of a session (its logout)."""
        for stream in self._streams.pop(key, []):
            stream.end(reason)

    def check(self) -> None:
        """Refuse a new stream when the app has as many as it takes (before the answer starts, so it is a 503)."""
        if self.count >= self.total:
            raise ServiceUnavailableException(f"{self.total} live pages are open already: try again later")

    def _open(self, key: str) -> _Stream | None:
        if self.count >= self.total:
            return None
        streams = self._streams.setdefault(key, [])
        while len(streams) >= self.per_session:
            streams.pop(0).end(f"this session opened more than {self.per_session} live pages: this one stopped")
        stream = _Stream(key)
        streams.append(stream)
        return stream

    def _close(self, stream: _Stream) -> None:
        streams = self._streams.get(stream.key)
        if streams is not None and stream in streams:
            streams.remove(stream)
            if not streams:
                del self._streams[stream.key]

    def respond(self, key: str, updates: AsyncIterator[Update], allowed: Callable[[], Awaitable[bool]]
                ) -> ServerSentEvent:
        """The streaming answer: `updates` (yielding at least every few seconds, None when there is nothing new)
        sent while the stream is open and `allowed()` (checked every CHECK_EVERY seconds) says yes."""
        self.check()
        return ServerSentEvent(self._run(key, updates, allowed), headers=SSE_HEADERS)

    async def _run(self, key: str, updates: AsyncIterator[Update], allowed: Callable[[], Awaitable[bool]]
                   ) -> AsyncIterator[ServerSentEventMessage]:
        # The stream is counted from its first step on: an answer the client dropped before it started holds
        # nothing (a count taken in the handler would never be given back).
        stream = self._open(key)
        if stream is None:
            yield closed(f"{self.total} live pages are open already: reload later")
            return
        loop = asyncio.get_running_loop()
        last_sent = last_check = loop.time()
        first = True
        try:
            async for update in updates:
                if stream.ended.is_set():
                    yield closed(stream.reason)
                    return
                now = loop.time()
                if now - last_check >= CHECK_EVERY:
                    last_check = now
                    if not await allowed():
                        yield closed("the session ended: log in again")
                        return
                if update is not None:
                    if first:
                        update.retry, first = RETRY_MS, False
                    yield update
                    last_sent = now
                elif now - last_sent >= KEEPALIVE:
                    yield ServerSentEventMessage(comment="keepalive")
                    last_sent = now
        finally:
            self._close(stream)
            close = getattr(updates, "aclose", None)
            if close is not None:
                await close()


def event(name: str, data: Any) -> ServerSentEventMessage:
    return ServerSentEventMessage(event=name, data=msgspec.json.encode(data).decode())


def diff(previous: Snapshot | None, current: Snapshot, volatile: frozenset[str] = frozenset()) -> Snapshot:
    """What changed from `previous` to `current`: whole records that differ, the rows of row groups that differ,
    and under `removed` the ids of rows gone. Everything when there is no `previous`. A row whose only changes are
    in `volatile` fields (a text saying how long ago something was) counts as unchanged."""
    if previous is None:
        return dict(current)
    changed: Snapshot = {}
    removed: dict[str, list[str]] = {}
    for group, value in current.items():
        before = previous.get(group)
        if value == before:
            continue
        if isinstance(before, dict) and _is_rows(value) and _is_rows(before):
            rows = {key: row for key, row in value.items() if not _same(before.get(key), row, volatile)}
            gone = [key for key in before if key not in value]
            if rows:
                changed[group] = rows
            if gone:
                removed[group] = gone
        else:
            changed[group] = value
    if removed:
        changed["removed"] = removed
    return changed


def _same(before: dict[str, Any] | None, row: dict[str, Any], volatile: frozenset[str]) -> bool:
    if before is None or before.keys() != row.keys():
        return False
    return all(before[key] == value for key, value in row.items() if key not in volatile)


def _is_rows(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(row, dict) for row in value.values())


async def changes(snapshot: Callable[[], Awaitable[Snapshot | None]], every: float, name: str,
                  volatile: frozenset[str] = frozenset()) -> AsyncIterator[Update]:
    """Every `every` seconds, what changed in `snapshot()` since the last event, as an event `name` (the first
    event has everything); None when nothing changed. Ends when `snapshot()` gives None (what it shows is gone).
    Rows changed only in `volatile` fields are not sent."""
    previous: Snapshot | None = None
    while True:
        current = await snapshot()
        if current is None:
            return
        changed = diff(previous, current, volatile)
        previous = current
        yield event(name, changed) if changed else None
        await asyncio.sleep(every)
