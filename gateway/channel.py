"""One channel connection's frames, both sides (the node's gateway.uplink.channel and the registry's
gateway.registry.channel): control frames go out before bulk ones, and byte streams with credit flow control.

A byte stream is what files (and later relayed service traffic) travel on. Either side opens one with
`await mux.open_stream(kind, meta)` and the other side's handler for that kind (`handlers[kind](stream)`, a
coroutine run in its own task) gets it::

    stream = await mux.open_stream("file", {"name": "a.bin", "size": 1000})
    await stream.send(data)        # waits for credit; data goes in frames of MAX_STREAM_CHUNK bytes
    await stream.close()           # no more data from this side
    reply = await stream.receive() # b"" once the other side closed; StreamError when it aborted

`receive()` hands out the chunks as they came and grants the sender more credit as the reader takes them, so a
reader that stops reading stops the sender after STREAM_WINDOW bytes and nothing piles up in memory. The streams
of a connection end (StreamError "channel closed") when it drops: whoever resumes a transfer does it by its own
offsets on a new stream.

Fairness: the writer sends every queued control frame (heartbeats, pushes, acknowledgements, credit) before the
next bulk frame, and the bulk queue holds at most a few frames, so a control frame waits behind at most those
frames and what the link's buffers hold.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec

from gateway.errors import FieldgateError
from gateway.wire import (
    MAX_STREAM_CHUNK,
    MAX_STREAM_META,
    STREAM_WINDOW,
    AnyFrame,
    ChannelFrame,
    StreamCredit,
    StreamData,
    StreamEnd,
    StreamOpen,
)

log = logging.getLogger(__name__)
BULK_QUEUE = 4  # stream data frames queued for the link at most
MAX_STREAMS = 64  # open streams per connection
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyFrame)


class ChannelError(FieldgateError):
    """The channel could not be used (refused, closed, a frame the other side should not have sent)."""


class StreamError(ChannelError):
    """A stream was aborted by either side or ended with its connection."""


def encode_frame(frame: ChannelFrame) -> bytes:
    return _encoder.encode(frame)


def decode_frame(data: bytes) -> AnyFrame | None:
    """A frame; None for a frame of a kind this version does not know (a newer peer's), which is skipped."""
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as exc:
        if "Invalid value" in str(exc) and "`$.t`" in str(exc):
            return None
        raise ChannelError(f"bad frame: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ChannelError(f"bad frame: {exc}") from None


StreamHandler = Callable[["Stream"], Awaitable[None]]


class Stream:
    """One byte stream of a channel connection: `send`, `receive`, `close`; usable as `async with`."""

    def __init__(self, mux: Multiplexer, stream_id: int, kind: str, meta: dict[str, Any]) -> None:
        self.mux = mux
        self.id = stream_id
        self.kind = kind
        self.meta = meta
        self.bytes_sent = 0
        self.bytes_received = 0
        self._credit = STREAM_WINDOW
        self._credit_changed = asyncio.Event()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._arrived = asyncio.Event()
        self._unacknowledged = 0  # bytes taken by the reader since credit was last granted
        self._granted = STREAM_WINDOW  # bytes the other side may have sent in all: the window and the credit since
        self._received_end = False
        self._sent_end = False
        self.error: str | None = None

    async def send(self, data: bytes) -> None:
        """Send bytes, in frames of at most MAX_STREAM_CHUNK, as fast as the other side's credit allows."""
        view = memoryview(data)
        while view:
            if self.error is not None:
                raise StreamError(f"stream {self.kind} {self.id}: {self.error}")
            if self._sent_end:
                raise StreamError(f"stream {self.kind} {self.id}: already closed for sending")
            if self._credit <= 0:
                self._credit_changed.clear()
                await self._credit_changed.wait()
                continue
            size = min(len(view), MAX_STREAM_CHUNK, self._credit)
            self._credit -= size
            await self.mux.send_bulk(StreamData(stream=self.id, data=bytes(view[:size])))
            self.bytes_sent += size
            view = view[size:]

    async def receive(self) -> bytes:
        """The next chunk of data; b"" once the other side closed the stream. StreamError when it was aborted."""
        while not self._chunks:
            if self.error is not None:
                raise StreamError(f"stream {self.kind} {self.id}: {self.error}")
            if self._received_end:
                return b""
            self._arrived.clear()
            await self._arrived.wait()
        chunk = self._chunks.popleft()
        self._unacknowledged += len(chunk)
        if self._unacknowledged >= STREAM_WINDOW // 2 and not self._received_end:
            self.mux.send_control(StreamCredit(stream=self.id, credit=self._unacknowledged))
            self._granted += self._unacknowledged
            self._unacknowledged = 0
        return chunk

    def widen(self, extra: int) -> None:
        """Let the other side send `extra` bytes beyond STREAM_WINDOW before it waits for credit (a bulk stream
        whose reader keeps up: more in flight rides out the scheduling delays of a busy machine)."""
        if extra > 0 and self.error is None and not self._received_end:
            self.mux.send_control(StreamCredit(stream=self.id, credit=extra))
            self._granted += extra  # what the other side may now send: counted, or its data would look like abuse

    async def close(self, error: str | None = None) -> None:
        """No more data from this side; with `error`, abort the stream both ways."""
        if error is not None and self.error is None:
            self.error = error
            self.mux.send_control(StreamEnd(stream=self.id, error=error[:1000]))
            self._wake()
            self.mux.forget(self.id)
            return
        if not self._sent_end and self.error is None:
            self._sent_end = True
            # after the data frames queued before it: the end goes the bulk way
            await self.mux.send_bulk(StreamEnd(stream=self.id))
        if self._received_end:
            self.mux.forget(self.id)

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is not None:
            await self.close(f"{type(exc).__name__}: {exc}")
        else:
            await self.close()

    # --- the connection's side -----------------------------------------------------------------------------------

    def _data(self, data: bytes) -> None:
        if self._received_end or self.error is not None:
            return
        if self.bytes_received + len(data) > self._granted:  # a peer that ignores flow control
            raise ChannelError(f"stream {self.id}: {self.bytes_received + len(data) - self._granted} bytes beyond "
                               "the credit granted")
        self.bytes_received += len(data)
        self._chunks.append(data)
        self._arrived.set()

    def _grant(self, credit: int) -> None:
        self._credit += credit
        self._credit_changed.set()

    def _end(self, error: str | None) -> None:
        if error is not None:
            self.error = error
        self._received_end = True
        self._wake()
        if self._sent_end or error is not None:
            self.mux.forget(self.id)

    def _wake(self) -> None:
        self._arrived.set()
        self._credit_changed.set()


class Multiplexer:
    """The frames of one connection: `send_control` (never waits), `send_bulk` (waits for room), the writer task
    that puts them on the link control first, and the streams (`open_stream`, `dispatch`)."""

    def __init__(self, send: Callable[[bytes], Awaitable[None]], *, odd: bool,
                 handlers: Mapping[str, StreamHandler] | None = None, peer: str = "") -> None:
        self._send = send
        self.peer = peer  # who is at the other end (the registry's side: the node's name), for the handlers
        self._control: collections.deque[bytes] = collections.deque()
        self._bulk: collections.deque[bytes] = collections.deque()
        self._room = asyncio.Event()  # the bulk queue has room (or the connection closed)
        self._ready = asyncio.Event()
        self._next_stream = 1 if odd else 2
        self.handlers: Mapping[str, StreamHandler] = handlers or {}
        self.streams: dict[int, Stream] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed: str | None = None
        self.bytes_out = 0
        self.bytes_in = 0  # stream data received

    def send_control(self, frame: ChannelFrame) -> None:
        if self.closed is None:
            self._control.append(encode_frame(frame))
            self._ready.set()

    async def send_bulk(self, frame: ChannelFrame) -> None:
        """Queue a bulk frame, waiting while BULK_QUEUE of them wait for the link; StreamError once closed."""
        while len(self._bulk) >= BULK_QUEUE and self.closed is None:
            self._room.clear()
            await self._room.wait()
        if self.closed is not None:
            raise StreamError(self.closed)
        self._bulk.append(encode_frame(frame))
        self._ready.set()

    async def run_writer(self) -> None:
        """Put the queued frames on the link until the connection closes (the caller cancels it)."""
        while True:
            if self._control:
                data = self._control.popleft()
            elif self._bulk:
                data = self._bulk.popleft()
                self._room.set()
            else:
                self._ready.clear()
                await self._ready.wait()
                continue
            await self._send(data)
            self.bytes_out += len(data)

    async def open_stream(self, kind: str, meta: dict[str, Any] | None = None) -> Stream:
        """A new stream to the other side's handler for `kind`."""
        if self.closed is not None:
            raise StreamError(self.closed)
        if len(self.streams) >= MAX_STREAMS:
            raise StreamError(f"{MAX_STREAMS} streams are open on this channel")
        meta = meta or {}
        if len(_encoder.encode(meta)) > MAX_STREAM_META:
            raise ChannelError(f"stream meta: more than {MAX_STREAM_META} bytes")
        stream = Stream(self, self._next_stream, kind, meta)
        self._next_stream += 2
        self.streams[stream.id] = stream
        self.send_control(StreamOpen(stream=stream.id, kind=kind, meta=meta))
        return stream

    def dispatch(self, frame: AnyFrame) -> bool:
        """Take a stream frame from the link; False for any other frame."""
        if isinstance(frame, StreamData):
            self.bytes_in += len(frame.data)
            stream = self.streams.get(frame.stream)
            if stream is not None:
                stream._data(frame.data)
            return True
        if isinstance(frame, StreamCredit):
            stream = self.streams.get(frame.stream)
            if stream is not None:
                stream._grant(frame.credit)
            return True
        if isinstance(frame, StreamEnd):
            stream = self.streams.get(frame.stream)
            if stream is not None:
                stream._end(frame.error)
            return True
        if isinstance(frame, StreamOpen):
            self._opened(frame)
            return True
        return False

    def _opened(self, frame: StreamOpen) -> None:
        handler = self.handlers.get(frame.kind)
        if frame.stream in self.streams or frame.stream % 2 == self._next_stream % 2:
            raise ChannelError(f"stream {frame.stream}: not an id the other side may open")
        if handler is None or len(self.streams) >= MAX_STREAMS:
            reason = f"no handler for streams of kind {frame.kind!r}" if handler is None else "too many streams"
            self.send_control(StreamEnd(stream=frame.stream, error=reason))
            return
        stream = Stream(self, frame.stream, frame.kind, frame.meta)
        self.streams[stream.id] = stream

        async def run() -> None:
            try:
                await handler(stream)
            except StreamError:
                pass
            except Exception as exc:
                log.warning("stream %s %d failed: %s", stream.kind, stream.id, exc)
                await stream.close(f"{type(exc).__name__}: {exc}")
            else:
                if stream.error is None and not stream._sent_end:
                    with contextlib.suppress(StreamError):
                        await stream.close()

        task = asyncio.create_task(run(), name=f"stream {frame.kind} {frame.stream}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def forget(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)

    async def close(self, reason: str) -> None:
        """The connection is gone: every stream ends with `reason`, their handlers are cancelled."""
        if self.closed is not None:
            return
        self.closed = reason
        self._room.set()
        self._bulk.clear()
        for stream in list(self.streams.values()):
            stream.error = stream.error or reason
            stream._wake()
        self.streams.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)


PROBE_KIND = "discard"  # a stream whose bytes the other side counts and drops: the channel's throughput probe


async def discard(stream: Stream) -> None:
    """The handler of PROBE_KIND streams, on both sides: count the bytes to the end, answer with the count (ASCII
    digits)."""
    count = 0
    while chunk := await stream.receive():
        count += len(chunk)
    await stream.send(str(count).encode())
    await stream.close()
