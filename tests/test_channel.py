"""The channel's multiplexer (gateway.channel) between two ends joined by an in-memory link of a given bandwidth:
byte streams arrive whole and in order within the credit granted, a reader that stops stops its sender, control
frames overtake a saturating bulk stream, aborts and unknown kinds reach the other side, unknown frames are skipped."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from gateway.channel import Multiplexer, Stream, StreamError, decode_frame, encode_frame
from gateway.wire import MAX_STREAM_CHUNK, STREAM_WINDOW, Ack, AnyFrame, StreamData


class Link:
    """Two multiplexers and a link between them: each direction a queue of a few frames (as a socket's buffers)
    drained at `bandwidth` bytes/s."""

    def __init__(self, bandwidth: float, handlers_b: dict[str, Any] | None = None) -> None:
        self.bandwidth = bandwidth
        self.queues: dict[str, asyncio.Queue[bytes]] = {"ab": asyncio.Queue(4), "ba": asyncio.Queue(4)}
        self.a = Multiplexer(self.queues["ab"].put, odd=True)
        self.b = Multiplexer(self.queues["ba"].put, odd=False, handlers=handlers_b or {})
        self.arrived_at_b: list[tuple[float, AnyFrame]] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def _carry(self, queue: asyncio.Queue[bytes], to: Multiplexer, log: list[tuple[float, AnyFrame]] | None
                     ) -> None:
        while True:
            data = await queue.get()
            await asyncio.sleep(len(data) / self.bandwidth)
            frame = decode_frame(data)
            assert frame is not None
            if log is not None:
                log.append((time.monotonic(), frame))
            to.dispatch(frame)

    async def __aenter__(self) -> Link:
        self.tasks = [asyncio.create_task(self.a.run_writer()), asyncio.create_task(self.b.run_writer()),
                      asyncio.create_task(self._carry(self.queues["ab"], self.b, self.arrived_at_b)),
                      asyncio.create_task(self._carry(self.queues["ba"], self.a, None))]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.a.close("test over")
        await self.b.close("test over")


@pytest.fixture
async def echo_link() -> AsyncIterator[Link]:
    async def sha_echo(stream: Stream) -> None:  # answers with what it read, reversed per chunk count
        import hashlib

        digest = hashlib.sha256()
        while chunk := await stream.receive():
            digest.update(chunk)
        await stream.send(digest.hexdigest().encode())

    async with Link(50e6, {"sha": sha_echo}) as link:
        yield link


async def test_a_stream_arrives_whole_and_the_other_side_answers(echo_link: Link) -> None:
    import hashlib

    data = os.urandom(3 * STREAM_WINDOW + 12345)  # more than the window: the sender waits for credit
    stream = await echo_link.a.open_stream("sha", {"name": "x.bin", "size": len(data)})
    await stream.send(data)
    await stream.close()
    answer = b""
    while chunk := await stream.receive():
        answer += chunk
    assert answer.decode() == hashlib.sha256(data).hexdigest()
    assert stream.bytes_sent == len(data)
    frames = [f for _, f in echo_link.arrived_at_b if isinstance(f, StreamData)]
    assert max(len(f.data) for f in frames) == MAX_STREAM_CHUNK  # bulk frames are bounded


async def test_a_reader_that_stops_stops_its_sender_at_the_window() -> None:
    taken = asyncio.Event()
    held: list[Stream] = []

    async def slow(stream: Stream) -> None:
        held.append(stream)
        await taken.wait()
        while await stream.receive():
            pass

    async with Link(100e6, {"slow": slow}) as link:
        stream = await link.a.open_stream("slow")
        sending = asyncio.create_task(stream.send(bytes(4 * STREAM_WINDOW)))
        await asyncio.sleep(0.5)
        assert not sending.done()
        assert stream.bytes_sent == STREAM_WINDOW  # exactly the credit the reader granted, not a byte more
        assert held[0].bytes_received == STREAM_WINDOW
        taken.set()  # the reader reads: credit flows back, the rest goes
        await asyncio.wait_for(sending, 10)
        assert stream.bytes_sent == 4 * STREAM_WINDOW


async def test_control_frames_overtake_a_saturating_bulk_stream() -> None:
    bandwidth = 1e6  # 1 MB/s: a 2 MB stream saturates the link for 2 s

    async def sink(stream: Stream) -> None:
        while await stream.receive():
            pass

    async with Link(bandwidth, {"sink": sink}) as link:
        stream = await link.a.open_stream("sink")
        bulk = asyncio.create_task(stream.send(bytes(2_000_000)))
        await asyncio.sleep(0.3)  # the link is full
        sent_at: dict[int, float] = {}
        for seq in range(1, 16):
            sent_at[seq] = time.monotonic()
            link.a.send_control(Ack(seq=seq))
            await asyncio.sleep(0.1)
        assert not bulk.done(), "the bulk stream should still be saturating the link"
        await asyncio.sleep(0.2)
        delays = [at - sent_at[f.seq] for at, f in link.arrived_at_b if isinstance(f, Ack)]
        assert len(delays) == 15
        # behind at most the bulk queue and the link's frames: (4 + 4 + 1) x 16 KiB at 1 MB/s is 0.15 s; the
        # whole stream would have been 2 s
        assert max(delays) < 0.5, delays
        bulk.cancel()


async def test_aborts_and_unknown_kinds_reach_the_other_side(echo_link: Link) -> None:
    unknown = await echo_link.a.open_stream("nobody-serves-this")
    with pytest.raises(StreamError, match="no handler for streams of kind 'nobody-serves-this'"):
        await asyncio.wait_for(unknown.receive(), 5)
    aborted = await echo_link.a.open_stream("sha")
    await aborted.send(b"partial")
    await aborted.close("the file changed while it was sent")
    with pytest.raises(StreamError, match="the file changed"):
        await aborted.send(b"more")
    await echo_link.a.close("link gone")
    with pytest.raises(StreamError, match="link gone"):
        await echo_link.a.open_stream("sha")


def test_frames_of_a_newer_peer_are_skipped_and_bad_ones_refused() -> None:
    from gateway.channel import ChannelError

    assert decode_frame(msgspec.msgpack.encode({"t": "something-newer", "x": 1})) is None
    assert decode_frame(encode_frame(Ack(seq=3))) == Ack(seq=3)
    with pytest.raises(ChannelError, match="bad frame"):
        decode_frame(msgspec.msgpack.encode({"t": "ack", "seq": "three"}))
    with pytest.raises(ChannelError, match="bad frame"):
        decode_frame(encode_frame(StreamData(stream=1, data=b"")) + b"\xff" * 3 + b"junk")
    too_big = msgspec.msgpack.encode({"t": "stream-data", "stream": 1, "data": bytes(MAX_STREAM_CHUNK + 1)})
    with pytest.raises(ChannelError, match="bad frame"):
        decode_frame(too_big)


async def test_every_blocked_sender_hears_of_a_closed_connection() -> None:
    async def never_reads(stream: Stream) -> None:
        await asyncio.sleep(3600)

    async with Link(1e5, {"stuck": never_reads}) as link:  # slow: the bulk queue fills and senders wait for room
        streams = [await link.a.open_stream("stuck") for _ in range(6)]
        sends = [asyncio.create_task(stream.send(bytes(4 * STREAM_WINDOW))) for stream in streams]
        await asyncio.sleep(0.3)
        assert not any(send.done() for send in sends)
        await link.a.close("connection lost")
        done, pending = await asyncio.wait(sends, timeout=5)
        assert not pending
        for send in done:
            with pytest.raises(StreamError, match="connection lost"):
                send.result()


async def test_a_peer_that_sends_beyond_the_credit_granted_breaks_the_protocol() -> None:
    """However the frames come, a stream takes no more than the window plus the credit its reader granted: a peer
    that ignores flow control is a protocol error, not a buffer that grows."""
    from gateway.channel import ChannelError
    from gateway.wire import StreamOpen

    release = asyncio.Event()
    taken: list[int] = []

    async def holds(stream: Stream) -> None:
        await release.wait()
        while chunk := await stream.receive():
            taken.append(len(chunk))

    sent: list[bytes] = []

    async def sink(data: bytes) -> None:
        sent.append(data)

    mux = Multiplexer(sink, odd=False, handlers={"held": holds})
    writer = asyncio.create_task(mux.run_writer())
    try:
        chunk = bytes(MAX_STREAM_CHUNK)
        for stream_id in (1, 3):
            mux.dispatch(StreamOpen(stream=stream_id, kind="held"))
            for _ in range(STREAM_WINDOW // MAX_STREAM_CHUNK):  # the whole window: taken
                mux.dispatch(StreamData(stream=stream_id, data=chunk))
        with pytest.raises(ChannelError, match="stream 1: 1 bytes beyond the credit granted"):
            mux.dispatch(StreamData(stream=1, data=b"x"))
        release.set()  # the readers read: the credit they grant lets as much again come
        for _ in range(200):
            if sum(taken) >= 2 * STREAM_WINDOW:
                break
            await asyncio.sleep(0.01)
        assert sum(taken) == 2 * STREAM_WINDOW
        for _ in range(STREAM_WINDOW // MAX_STREAM_CHUNK):
            mux.dispatch(StreamData(stream=3, data=chunk))
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await mux.close("done")


async def test_a_widened_stream_takes_the_extra_credit_it_granted_and_no_more() -> None:
    """A bulk reader widens its stream (files do): the peer may then send the window plus the extra before any
    credit comes back, and the receiver counts it so: not a byte of it is taken for a peer ignoring flow control."""
    from gateway.channel import ChannelError
    from gateway.wire import StreamOpen

    opened: list[Stream] = []
    hold = asyncio.Event()

    async def widens(stream: Stream) -> None:
        stream.widen(4 * MAX_STREAM_CHUNK)
        opened.append(stream)
        await hold.wait()

    sent: list[bytes] = []

    async def sink(data: bytes) -> None:
        sent.append(data)

    mux = Multiplexer(sink, odd=False, handlers={"bulk": widens})
    writer = asyncio.create_task(mux.run_writer())
    try:
        mux.dispatch(StreamOpen(stream=1, kind="bulk"))
        for _ in range(100):
            if opened:
                break
            await asyncio.sleep(0.01)
        assert opened
        chunk = bytes(MAX_STREAM_CHUNK)
        for _ in range(STREAM_WINDOW // MAX_STREAM_CHUNK + 4):  # the window and the extra: all taken
            mux.dispatch(StreamData(stream=1, data=chunk))
        assert opened[0].bytes_received == STREAM_WINDOW + 4 * MAX_STREAM_CHUNK
        with pytest.raises(ChannelError, match="stream 1: 1 bytes beyond the credit granted"):
            mux.dispatch(StreamData(stream=1, data=b"x"))
    finally:
        hold.set()
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
