"""File bytes over the registry channel (gateway.filestream says what goes on its streams): ChannelChunkTransport,
and UplinkTransport, which takes the channel while it is up and HTTPS (gateway.uplink.files.HttpsChunkTransport)
while the node polls over HTTPS (a proxy that blocks WebSockets, a registry without the channel).

Pieces of 64 KiB each carry their SHA-256, so a piece cut by a dropped link or changed on the way costs that piece
alone; the stream's credit keeps two pieces in flight, and the receiver fsyncs every FILE_ACK bytes."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from gateway.channel import ChannelError, Stream
from gateway.errors import ConfigError
from gateway.files import COUNTERS
from gateway.filestream import CORRUPTED, DIGEST, REFUSED, PieceReader, check_pieces, frame_pieces, read_reply
from gateway.uplink.files import (
    Acked,
    ChunkCorrupted,
    HttpsChunkTransport,
    LinkDown,
    Sink,
    Take,
)
from gateway.wire import (
    FILE_ACK,
    FILE_PIECE,
    FILE_STREAM,
    FILE_WINDOW,
    FileOffer,
    FileProgress,
    FileStreamRequest,
    UploadStart,
    UploadState,
)

if TYPE_CHECKING:
    from gateway.files.bucket import TokenBucket
    from gateway.uplink.channel import ChannelLink

CALL_TIMEOUT = 10.0  # seconds for a reply (beyond the wait of a poll for files)
STALL = 120.0  # seconds without a piece (or an acknowledgement) before a transfer counts as dropped
CHECK_EVERY = 256 << 10  # bytes of pieces checked (and written) at a time, in a thread, while the next ones come
STAGES = FILE_ACK // CHECK_EVERY + 2  # blocks waiting to be checked and written: reading goes on during an fsync
READ_AHEAD = 1 << 20  # bytes read from the outbox file (and hashed) at a time
BACK_SOON = 3.0  # seconds after a channel dropped that a request waits for it to come back, not HTTPS
T = TypeVar("T")


def _failure(exc: Exception) -> Exception:
    """A stream's end as the transfers see it: refused (ConfigError), a corrupted piece, or a dropped link."""
    text = str(exc)
    if REFUSED in text:
        return ConfigError(f"the registry refused: {text.split(REFUSED, 1)[1][:300]}")
    if CORRUPTED in text:
        return ChunkCorrupted(text.split(CORRUPTED, 1)[1][:300])
    return LinkDown(f"channel: {text[:300]}")


class ChannelChunkTransport:
    """ChunkTransport over byte streams of the node's channel to the registry."""

    def __init__(self, link: ChannelLink, bucket: TokenBucket | None = None) -> None:
        self.link = link
        self.bucket = bucket
        self.bytes_in = 0
        self.bytes_out = 0

    @property
    def window(self) -> int:
        """Credit beyond the stream's own to ask for: with a bandwidth cap the stream's own is plenty."""
        return FILE_WINDOW if self.bucket is None or self.bucket.rate is None else 0

    async def _open(self, request: FileStreamRequest) -> Stream:
        try:
            return await self.link.open_stream(FILE_STREAM, msgspec.to_builtins(request))
        except ChannelError as exc:
            raise LinkDown(str(exc)) from None

    async def _call(self, request: FileStreamRequest, kind: type[T], timeout: float = CALL_TIMEOUT) -> T:
        stream = await self._open(request)
        try:
            async with asyncio.timeout(timeout):
                reply = await read_reply(stream, PieceReader(stream), kind)
            if reply is None:
                raise LinkDown(f"file stream {request.op}: ended without a reply")
            await stream.close()
            return reply
        except TimeoutError:
            await stream.close(f"no reply within {timeout:g} s")
            raise LinkDown(f"file stream {request.op}: no reply within {timeout:g} s") from None
        except ChannelError as exc:  # StreamError included
            raise _failure(exc) from None

    async def offers(self, wait: float) -> list[FileOffer]:
        return await self._call(FileStreamRequest(op="offers", wait=wait), list[FileOffer], wait + CALL_TIMEOUT)

    async def report(self, file_id: str, progress: FileProgress) -> None:
        await self._call(FileStreamRequest(op="progress", id=file_id, progress=progress), dict[str, Any])

    async def announce(self, start: UploadStart) -> UploadState:
        return await self._call(FileStreamRequest(op="announce", start=start), UploadState)

    async def status(self, file_id: str) -> UploadState:
        return await self._call(FileStreamRequest(op="status", id=file_id), UploadState)

    async def fetch(self, offer: FileOffer, offset: int, take: Take, sink: Sink) -> None:
        stream = await self._open(FileStreamRequest(op="get", id=offer.id, offset=offset))
        stream.widen(self.window)
        reader = PieceReader(stream)
        framed: list[bytes] = []
        # blocks of pieces checked and written in order, each after the one before, while the next ones come in
        stages: collections.deque[asyncio.Task[None]] = collections.deque()
        corrupted: list[bool] = []  # a bad piece seen: reading stops at once, the pieces before it are written

        async def stage(previous: asyncio.Task[None] | None, pieces: list[bytes]) -> None:
            good, bad = await asyncio.to_thread(check_pieces, pieces)
            if bad is not None:
                corrupted.append(True)
            if previous is not None:
                await previous
            if good:
                await sink(good)
            if bad is not None:
                raise ChunkCorrupted(f"file {offer.name}: a piece does not match its SHA-256")

        def submit() -> None:
            nonlocal framed
            if framed:
                stages.append(asyncio.create_task(stage(stages[-1] if stages else None, framed)))
                framed = []

        async def drain() -> None:
            while stages:
                await stages.popleft()

        try:
            position = offset
            while position < offer.size:
                size = min(FILE_PIECE, offer.size - position)
                await take(size)
                before = reader.taken
                try:
                    async with asyncio.timeout(STALL):
                        framed.append(await reader.piece(size))
                finally:
                    self._took(reader.taken - before)
                position += size
                while stages and stages[0].done():
                    stages.popleft().result()
                if corrupted:
                    await drain()  # raises ChunkCorrupted once the good pieces before the bad one are written
                if len(framed) * FILE_PIECE >= CHECK_EVERY:
                    submit()
                    if len(stages) > STAGES:
                        await stages.popleft()
            submit()
            await drain()
            await stream.close()
        except ChunkCorrupted:
            await stream.close("corrupted piece: the node asks again")
            raise
        except (ChannelError, TimeoutError) as exc:
            with contextlib.suppress(ChunkCorrupted):  # the whole pieces that came before the link dropped are kept
                submit()
                await drain()
            if isinstance(exc, TimeoutError):
                await stream.close(f"no piece within {STALL:g} s")
                raise LinkDown(f"file {offer.name}: no piece within {STALL:g} s") from None
            raise _failure(exc) from None
        finally:
            for task in stages:
                task.cancel()
            for task in stages:
                with contextlib.suppress(BaseException):
                    await task

    def _took(self, amount: int) -> None:
        self.bytes_in += amount
        COUNTERS["channel_bytes_received"] += amount

    async def send(self, file_id: str, path: Path, size: int, state: UploadState, take: Take, acked: Acked
                   ) -> UploadState:
        stream = await self._open(FileStreamRequest(op="put", id=file_id, window=self.window))
        reader = PieceReader(stream)
        answers: asyncio.Task[UploadState] | None = None

        async def reply() -> UploadState:
            async with asyncio.timeout(STALL):
                answer = await read_reply(stream, reader, UploadState)
            if answer is None:
                raise LinkDown(f"file stream put: ended without the registry's state of {path.name}")
            return answer

        async def acknowledgements() -> UploadState:
            while (answer := await reply()).state == "transferring":
                await acked(answer)
            return answer

        try:
            first = await reply()
            if first.state != "transferring":
                await stream.close()
                return first
            await acked(first)
            answers = asyncio.create_task(acknowledgements())
            await self._pieces(stream, path, first.offset, size, take, answers)
            if not answers.done():
                await stream.close()  # all sent: the registry's final state follows
            final = await answers
            await stream.close()
            return final
        except (ChannelError, TimeoutError) as exc:
            failure: BaseException = exc
            if answers is not None and answers.done() and not answers.cancelled() and answers.exception():
                failure = answers.exception() or exc  # the registry's reason, as its replies said it
            if isinstance(failure, TimeoutError):
                await stream.close(f"no acknowledgement within {STALL:g} s")
                raise LinkDown(f"file {path.name}: no acknowledgement within {STALL:g} s") from None
            if isinstance(failure, ChannelError):
                raise _failure(failure) from None
            raise failure from None
        finally:
            if answers is not None and not answers.done():
                answers.cancel()
                with contextlib.suppress(BaseException):
                    await answers

    async def _pieces(self, stream: Stream, path: Path, offset: int, size: int, take: Take,
                      answers: asyncio.Task[UploadState]) -> None:
        """The file's pieces from `offset` on the stream; the next block is read and hashed while one goes."""
        with path.open("rb") as source:
            def block(at: int) -> list[bytes]:
                source.seek(at)
                data = source.read(min(READ_AHEAD, size - at))
                if not data:
                    raise ConfigError(f"outbox file {path.name}: ends at {at}, before its {size} bytes")
                return frame_pieces(data)

            position = offset
            ahead = asyncio.create_task(asyncio.to_thread(block, position)) if position < size else None
            counted, whole = stream.bytes_sent, 0  # the file bytes handed to the link: a cut piece's part too

            def count() -> None:
                nonlocal counted
                sent = stream.bytes_sent - counted - DIGEST * whole
                counted += sent + DIGEST * whole
                self.bytes_out += sent
                COUNTERS["channel_bytes_sent"] += sent

            try:
                while ahead is not None:
                    pieces = await ahead
                    following = position + sum(len(piece) - DIGEST for piece in pieces)
                    ahead = asyncio.create_task(asyncio.to_thread(block, following)) if following < size else None
                    for piece in pieces:
                        if answers.done():  # the registry ended the stream (or answered its final state)
                            return
                        await take(len(piece) - DIGEST)
                        whole = 0
                        await stream.send(piece)
                        whole = 1
                        count()
                    position = following
            finally:
                whole = 0
                count()
                if ahead is not None:
                    ahead.cancel()
                    with contextlib.suppress(BaseException):
                        await ahead


class UplinkTransport:
    """The channel's transport while the channel is up, HTTPS otherwise; chosen for each request."""

    def __init__(self, link: ChannelLink, https: HttpsChunkTransport, bucket: TokenBucket | None = None) -> None:
        self.link = link
        self.channel = ChannelChunkTransport(link, bucket)
        self.https = https

    @property
    def bytes_in(self) -> int:
        return self.channel.bytes_in + self.https.bytes_in

    @property
    def bytes_out(self) -> int:
        return self.channel.bytes_out + self.https.bytes_out

    async def _pick(self) -> ChannelChunkTransport | HttpsChunkTransport:
        if not self.link.up and self.link.connects and self.link.state in ("connecting", "unreachable"):
            left = BACK_SOON - (time.time() - self.link.since)  # a channel that just dropped is usually back at once
            if left > 0:
                await self.link.sleep_unless_up(left)
        return self.channel if self.link.up else self.https

    async def offers(self, wait: float) -> list[FileOffer]:
        return await (await self._pick()).offers(wait)

    async def fetch(self, offer: FileOffer, offset: int, take: Take, sink: Sink) -> None:
        await (await self._pick()).fetch(offer, offset, take, sink)

    async def report(self, file_id: str, progress: FileProgress) -> None:
        await (await self._pick()).report(file_id, progress)

    async def announce(self, start: UploadStart) -> UploadState:
        return await (await self._pick()).announce(start)

    async def status(self, file_id: str) -> UploadState:
        return await (await self._pick()).status(file_id)

    async def send(self, file_id: str, path: Path, size: int, state: UploadState, take: Take, acked: Acked
                   ) -> UploadState:
        return await (await self._pick()).send(file_id, path, size, state, take, acked)
