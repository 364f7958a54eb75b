"""The registry's side of file bytes on the channel: the handler of the FILE_STREAM streams nodes open
(gateway.filestream says what goes on them). The same checks and records as the HTTPS routes of
gateway.registry.files, whose functions it calls; the bytes go through the same content store (directory or S3).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec
from litestar.exceptions import HTTPException

from gateway.channel import ChannelError, Stream, StreamError
from gateway.errors import ConfigError, NotFound
from gateway.filestream import CORRUPTED, DIGEST, REFUSED, PieceReader, check_pieces, frame_pieces, send_reply
from gateway.registry.files import (
    PROGRESS_EVERY,
    TRANSFERRING,
    announce_upload,
    finish_upload,
    node_target,
    node_upload,
    pending_offers,
    take_progress,
    upload_status,
)
from gateway.registry.filestore import ContentStore, OffsetMismatch
from gateway.registry.messages import MAX_WAIT, Waiters
from gateway.wire import FILE_ACK, FILE_PIECE, FileStreamRequest, UploadState

if TYPE_CHECKING:
    from gateway.registry.store import RegistryStore

log = logging.getLogger(__name__)
READ_AHEAD = 1 << 20  # bytes read from the content store (and hashed) at a time for a node
CHECK_EVERY = 256 << 10  # bytes of pieces from a node checked at a time (in a thread)
STAGES = FILE_ACK // CHECK_EVERY + 2  # blocks waiting to be checked and written: reading goes on during an fsync


class FileStreams:
    """`handle(stream)`: the FILE_STREAM handler of the channel hub, once the store is open."""

    def __init__(self, store: RegistryStore, content: ContentStore, counters: Any, waiters: Waiters) -> None:
        self.store = store
        self.content = content
        self.counters = counters
        self.waiters = waiters
        # one put stream per file at a time: a node back on a new connection waits for the old stream's last write
        self._puts: dict[str, asyncio.Lock] = {}
        self._waiting: collections.Counter[str] = collections.Counter()

    async def handle(self, stream: Stream) -> None:
        node = stream.mux.peer
        try:
            request = msgspec.convert(stream.meta, FileStreamRequest)
        except msgspec.ValidationError as exc:
            await stream.close(f"{REFUSED}the stream's request: {exc}")
            return
        try:
            if request.op == "get":
                await self._get(stream, node, request)
            elif request.op == "put":
                await self._put(stream, node, request)
            else:
                await send_reply(stream, await self._answer(node, request))
                await stream.close()
        except (ConfigError, NotFound) as exc:
            await stream.close(f"{REFUSED}{exc}")
        except HTTPException as exc:
            await stream.close(f"{REFUSED}{exc.status_code} {exc.detail}")

    async def _answer(self, node: str, request: FileStreamRequest) -> Any:
        if request.op == "offers":
            return await pending_offers(self.store, self.waiters, node, min(request.wait, MAX_WAIT))
        if request.op == "progress" and request.progress is not None and request.id is not None:
            return await take_progress(self.store, self.counters, node, request.id, request.progress)
        if request.op == "announce" and request.start is not None:
            return await announce_upload(self.store, self.content, self.counters, node, request.start)
        if request.op == "status" and request.id is not None:
            return await upload_status(self.store, self.content, node, request.id)
        raise ConfigError(f"op {request.op}: its fields are missing")

    async def _get(self, stream: Stream, node: str, request: FileStreamRequest) -> None:
        """A to-edge file's bytes from `offset` to its end, as pieces; the next block is read while one is sent."""
        if request.id is None:
            raise ConfigError("op get: expected the file's id")
        file_id: str = request.id
        record = await node_target(self.store, node, file_id)
        size = record["size"]
        if request.offset > size:
            raise ConfigError(f"offset {request.offset}: the file has {size} bytes")

        async def block(at: int) -> list[bytes]:
            data = await self.content.read(file_id, at, min(READ_AHEAD, size - at))
            if not data:
                raise ChannelError(f"file {file_id}: no bytes at {at} of {size} in {self.content.description}")
            return await asyncio.to_thread(frame_pieces, data)

        position = request.offset
        ahead = asyncio.create_task(block(position)) if position < size else None
        try:
            while ahead is not None:
                pieces = await ahead
                following = position + sum(len(piece) - DIGEST for piece in pieces)
                ahead = asyncio.create_task(block(following)) if following < size else None
                for piece in pieces:
                    await stream.send(piece)
                    self.counters["bytes_sent"] += len(piece) - DIGEST
                position = following
        finally:
            if ahead is not None:
                ahead.cancel()
                with contextlib.suppress(BaseException):
                    await ahead
        await stream.close()

    async def _put(self, stream: Stream, node: str, request: FileStreamRequest) -> None:
        """A from-edge file's pieces from the offset this replica holds: checked, appended, fsynced every FILE_ACK
        bytes and acknowledged; what was checked is written however the stream ends."""
        if request.id is None:
            raise ConfigError("op put: expected the file's id")
        file_id = request.id
        lock = self._puts.setdefault(file_id, asyncio.Lock())
        self._waiting[file_id] += 1
        try:
            async with lock:
                record = await node_upload(self.store, node, file_id)
                if record["state"] != TRANSFERRING:
                    await send_reply(stream, await upload_status(self.store, self.content, node, file_id))
                    await stream.close()
                    return
                await Upload(self, stream, node, record, request.window).run()
        finally:
            self._waiting[file_id] -= 1
            if not self._waiting[file_id]:
                del self._waiting[file_id]
                self._puts.pop(file_id, None)


class Upload:
    """One put stream: pieces in, checked a block at a time in a thread while the next block comes, written and
    acknowledged every FILE_ACK bytes."""

    def __init__(self, streams: FileStreams, stream: Stream, node: str, record: dict[str, Any], window: int
                 ) -> None:
        self.streams = streams
        self.window = window
        self.stream = stream
        self.node = node
        self.record = record
        self.id: str = record["id"]
        self.size: int = record["size"]
        self.written = 0  # the part's size: written, fsynced, acknowledged
        self.checked = bytearray()  # pieces checked, not written yet
        self.taken = 0  # bytes that came for the file since its offset was last written to the database
        self.last_progress = 0.0
        self.broken = False
        self.corrupted = False  # a bad piece seen (its stage may still wait for the writes before it)

    async def run(self) -> None:
        content = self.streams.content
        self.written = await content.part_size(self.id)
        if self.written > self.size:
            await content.drop_part(self.id)
            self.written = 0
        await send_reply(self.stream, UploadState(id=self.id, offset=self.written, state=TRANSFERRING))
        self.stream.widen(self.window)
        reader = PieceReader(self.stream)
        position = self.written
        framed: list[bytes] = []
        stages: collections.deque[asyncio.Task[None]] = collections.deque()
        try:
            while position < self.size:
                length = min(FILE_PIECE, self.size - position)
                before = reader.taken
                try:
                    raw = await reader.piece(length)
                finally:
                    self.streams.counters["bytes_received"] += reader.taken - before
                    self.taken += reader.taken - before
                framed.append(raw)
                position += length
                while stages and stages[0].done():
                    stages.popleft().result()
                if self.corrupted:
                    while stages:  # the stage with the bad piece ends the stream once what was before it is written
                        await stages.popleft()
                if len(framed) * FILE_PIECE >= CHECK_EVERY or position == self.size:
                    if len(stages) >= STAGES:
                        await stages.popleft()
                    stages.append(asyncio.create_task(self._stage(stages[-1] if stages else None, framed,
                                                                  position == self.size)))
                    framed = []
            while stages:
                await stages.popleft()
        finally:
            # a stream that ended early (a dropped link, a stop): its whole pieces are checked and written all the same
            for stage in stages:
                with contextlib.suppress(BaseException):
                    await stage
            if framed and not self.broken:
                with contextlib.suppress(Exception):
                    good, bad = await asyncio.to_thread(check_pieces, framed)
                    for piece in good:
                        self.checked += piece
                    if bad is not None:
                        self.streams.counters["chunks_corrupted"] += 1
            if self.checked:  # a stage that failed kept nothing after it: what is here follows the part's end
                with contextlib.suppress(Exception):
                    await self._write(acknowledge=False)
        await self.streams.store.files.set_received(self.id, self.written, self.taken)
        self.taken = 0
        state = await finish_upload(self.streams.store, self.streams.content, self.streams.counters, self.node,
                                    self.record)
        await send_reply(self.stream, state)
        await self.stream.close()

    async def _stage(self, previous: asyncio.Task[None] | None, framed: list[bytes], last: bool) -> None:
        """Check a block of pieces (after the block before), keep the good ones, write every FILE_ACK bytes."""
        try:
            await self._check(previous, framed, last)
        except BaseException:
            self.broken = True  # no piece that came after this block is kept
            raise

    async def _check(self, previous: asyncio.Task[None] | None, framed: list[bytes], last: bool) -> None:
        good, bad = await asyncio.to_thread(check_pieces, framed)  # at once: a bad piece stops the reading
        if bad is not None:
            self.corrupted = True
        if previous is not None:
            await previous
        for piece in good:
            self.checked += piece
        if bad is not None:
            at = self.written + len(self.checked)
            self.streams.counters["chunks_corrupted"] += 1
            await self._write(acknowledge=False)
            reason = f"{CORRUPTED}the piece at offset {at} does not match its SHA-256: corrupted on the way"
            await self.stream.close(reason)
            raise StreamError(reason)
        if len(self.checked) >= FILE_ACK or last:
            await self._write()

    async def _write(self, *, acknowledge: bool = True) -> None:
        if not self.checked:
            return
        data, self.checked = bytes(self.checked), bytearray()
        try:
            self.written = await self.streams.content.append(self.id, self.written, data)
        except OffsetMismatch as exc:  # another stream wrote meanwhile (a race of two connections): resume
            self.written, self.broken = exc.offset, True
            await self.stream.close(str(exc))
            raise StreamError(str(exc)) from None
        if time.monotonic() - self.last_progress > PROGRESS_EVERY and self.written < self.size:
            self.last_progress = time.monotonic()
            await self.streams.store.files.set_received(self.id, self.written, self.taken)
            self.taken = 0
        if acknowledge and self.written < self.size:
            await send_reply(self.stream, UploadState(id=self.id, offset=self.written, state=TRANSFERRING))


__all__ = ["FileStreams"]
