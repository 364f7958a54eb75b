"""Files both ways over the node's link to the registry, chunk by chunk and resumable.

Cloud → edge: the node long-polls for the files the registry has for it, fetches each from the offset it has
written (`<data dir>/file-transfers/incoming/<id>`, fsynced chunk by chunk, so a restart of either side resumes
there), checks every chunk's SHA-256 and, once whole, the file's; then it renames the file into its files area
(gateway.files.area: never outside it), publishes `fieldgate/<node>/files/received` on the eventbus and reports done.
A file over the quota, with a destination out of the area or a wrong SHA-256 is refused with the reason and nothing
is kept.

Edge → cloud: the files of the durable outbox (gateway.files.outbox) go one at a time: announced, then sent from the
offset the registry acknowledges (the receiver says where to resume, so no byte goes twice beyond a chunk lost on
the way), then removed from the outbox once the registry says the file is whole and verified.

Both directions draw from one token bucket (`files.bandwidth`), and go through a ChunkTransport: byte streams of the
registry channel while it is up (gateway.uplink.filechannel: 64 KiB pieces, each with its SHA-256, several in flight,
fsynced every 4 MiB), HTTPS requests over the node's mutual TLS (1 MiB chunks, one at a time) while the node polls
over HTTPS.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx
import msgspec

from gateway.decoding import decode_json
from gateway.durable import place
from gateway.errors import ConfigError, FieldgateError
from gateway.files import COUNTERS, files_area, transfers_dir
from gateway.files.area import Refused, destination, usage
from gateway.files.bucket import TokenBucket
from gateway.files.outbox import FolderWatcher, outbox_path
from gateway.wire import CHUNK_SHA256, FILE_ACK, FILE_CHUNK, FileOffer, FileProgress, UploadStart, UploadState

if TYPE_CHECKING:
    from gateway.api import GatewayAPI

log = logging.getLogger(__name__)
OFFER_WAIT = 25.0  # seconds a poll for files waits at the registry
REPORT_EVERY = 1.0  # seconds between two progress reports of one file
RETRY_MIN, RETRY_MAX = 0.2, 5.0  # seconds between two attempts on a failing link
SEND_BLOCK = 64 << 10  # bytes of a chunk written to the link at a time (and counted as sent)
CHUNK_ATTEMPTS = 5  # a chunk corrupted this many times in a row fails the transfer round


class LinkDown(FieldgateError):
    """The registry could not be reached or did not answer; the transfer resumes from its offset later."""


class ChunkCorrupted(FieldgateError):
    """A chunk arrived with another SHA-256 than its sender's: it is fetched or sent again."""


Take = Callable[[int], Awaitable[None]]  # waits until that many bytes fit the bandwidth cap
Sink = Callable[[list[bytes]], Awaitable[None]]  # takes the next checked bytes of a file, in order
Acked = Callable[[UploadState], Awaitable[None]]  # takes an offset the registry acknowledged


class ChunkTransport(Protocol):
    """How file bytes travel between a node and the registry; `bytes_in` and `bytes_out` count what crossed the
    link for files, cut pieces and chunks too."""

    @property
    def bytes_in(self) -> int: ...

    @property
    def bytes_out(self) -> int: ...

    async def offers(self, wait: float) -> list[FileOffer]:
        """The files the registry has for this node (waiting up to `wait` s for one)."""
        ...

    async def fetch(self, offer: FileOffer, offset: int, take: Take, sink: Sink) -> None:
        """The bytes of a file from `offset` to its end, handed to `sink` in order once checked against the
        sender's SHA-256, `take` drawn before each piece; ChunkCorrupted once the good bytes before a bad piece
        are in the sink, LinkDown when the link drops (the good bytes in the sink too)."""
        ...

    async def report(self, file_id: str, progress: FileProgress) -> None: ...

    async def announce(self, start: UploadStart) -> UploadState:
        """A file this node sends; the offset the registry holds of it."""
        ...

    async def status(self, file_id: str) -> UploadState:
        """The acknowledged offset of a file this node sends."""
        ...

    async def send(self, file_id: str, path: Path, size: int, state: UploadState, take: Take, acked: Acked
                   ) -> UploadState:
        """Send a file from the registry's offset (`state`'s, or the one it answers) until it is whole; `acked`
        with each offset the registry acknowledges (written and fsynced there); its final state (done or
        refused). ChunkCorrupted for a piece the registry found corrupted, LinkDown when the link drops."""
        ...


class HttpsChunkTransport:
    """ChunkTransport over HTTPS with the node certificate (gateway.registry.files' node routes). Counts the bytes
    that cross the link, partial chunks too."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.bytes_in = 0
        self.bytes_out = 0

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise LinkDown(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500 or response.status_code in (401, 403, 429):
            raise LinkDown(f"{response.status_code} {response.text.strip()[:200]}")
        return response

    async def offers(self, wait: float) -> list[FileOffer]:
        timeout = httpx.Timeout(10.0, read=wait + 10.0)
        response = await self._call("GET", "/api/v1/nodes/self/files", params={"wait": f"{wait:g}"},
                                    timeout=timeout)
        _raise_for(response)
        offers: list[FileOffer] = decode_json(response.content, list[FileOffer], what="the registry's files")
        return offers

    async def get_chunk(self, file_id: str, offset: int, size: int) -> bytes:
        data = bytearray()
        try:
            async with self.client.stream("GET", f"/api/v1/nodes/self/files/{file_id}/content",
                                          params={"offset": str(offset), "size": str(size)}) as response:
                if response.status_code != 200:
                    await response.aread()
                    if response.status_code >= 500:
                        raise LinkDown(f"{response.status_code} {response.text.strip()[:200]}")
                    _raise_for(response)
                expected = response.headers.get(CHUNK_SHA256, "")
                async for block in response.aiter_raw():
                    self.bytes_in += len(block)
                    data += block
        except httpx.HTTPError as exc:
            raise LinkDown(f"{type(exc).__name__}: {exc}") from exc
        if hashlib.sha256(data).hexdigest() != expected:
            raise ChunkCorrupted(f"the chunk of file {file_id} at {offset} does not match its SHA-256")
        return bytes(data)

    async def fetch(self, offer: FileOffer, offset: int, take: Take, sink: Sink) -> None:
        while offset < offer.size:
            size = min(FILE_CHUNK, offer.size - offset)
            await take(size)
            data = await self.get_chunk(offer.id, offset, size)
            if not data:
                raise LinkDown(f"file {offer.name}: the registry sent no bytes at {offset} of {offer.size}")
            await sink([data])
            offset += len(data)

    async def send(self, file_id: str, path: Path, size: int, state: UploadState, take: Take, acked: Acked
                   ) -> UploadState:
        with path.open("rb") as stream:
            while state.state == "transferring":
                stream.seek(state.offset)
                data = await asyncio.to_thread(stream.read, FILE_CHUNK)
                if not data:
                    raise ConfigError(f"outbox file {path.name}: ends at {state.offset}, before its {size} bytes")
                await take(len(data))
                state = await self.put_chunk(file_id, state.offset, data)
                if state.state == "transferring":
                    await acked(state)
        return state

    async def report(self, file_id: str, progress: FileProgress) -> None:
        response = await self._call("POST", f"/api/v1/nodes/self/files/{file_id}/progress",
                                    content=msgspec.json.encode(progress),
                                    headers={"Content-Type": "application/json"})
        _raise_for(response)

    async def announce(self, start: UploadStart) -> UploadState:
        response = await self._call("POST", "/api/v1/nodes/self/uploads", content=msgspec.json.encode(start),
                                    headers={"Content-Type": "application/json"})
        _raise_for(response)
        return _state(response)

    async def status(self, file_id: str) -> UploadState:
        response = await self._call("GET", f"/api/v1/nodes/self/uploads/{file_id}")
        _raise_for(response)
        return _state(response)

    async def put_chunk(self, file_id: str, offset: int, data: bytes) -> UploadState:
        async def blocks() -> Any:  # counted as handed to the link: a chunk cut on the way was sent in part
            for start in range(0, len(data), SEND_BLOCK):
                block = data[start:start + SEND_BLOCK]
                self.bytes_out += len(block)
                yield block

        response = await self._call("PUT", f"/api/v1/nodes/self/uploads/{file_id}", params={"offset": str(offset)},
                                    content=blocks(), headers={CHUNK_SHA256: hashlib.sha256(data).hexdigest(),
                                                               "Content-Type": "application/octet-stream",
                                                               "Content-Length": str(len(data))})
        if response.status_code == 422 and "corrupted" in response.text:
            raise ChunkCorrupted(response.text.strip()[:200])
        if response.status_code == 409:  # not at the registry's offset: its answer says where to go on
            return _state(response)
        _raise_for(response)
        return _state(response)


def _state(response: httpx.Response) -> UploadState:
    state: UploadState = decode_json(response.content, UploadState, what="the registry's upload state")
    return state


def _raise_for(response: httpx.Response) -> None:
    if response.status_code >= 300:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text.strip()[:200]
        raise ConfigError(f"the registry refused: {response.status_code} {str(detail)[:300]}")


def _sha256_file(path: Path, length: int) -> Any:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        left = length
        while left > 0 and (block := stream.read(min(left, 1 << 20))):
            digest.update(block)
            left -= len(block)
    return digest


class IncomingFile:
    """A file being received: checked bytes appended at `offset` (with the file's digest), fsynced every FILE_ACK
    bytes and by `sync`. Its methods block: they run in a thread."""

    def __init__(self, path: Path, offset: int, digest: Any) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        self.offset = offset
        self.digest = digest
        self.unsynced = 0

    def write(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            os.pwrite(self.fd, piece, self.offset)
            self.digest.update(piece)
            self.offset += len(piece)
            self.unsynced += len(piece)
        if self.unsynced >= FILE_ACK:
            self.sync()

    def sync(self) -> None:
        if self.unsynced:
            os.fsync(self.fd)
            self.unsynced = 0

    def close(self) -> None:
        try:
            self.sync()
        finally:
            os.close(self.fd)


class FileSync:
    """The node's file transfers with the registry (one file at a time each way)."""

    def __init__(self, gateway: GatewayAPI, transport: ChunkTransport, bucket: TokenBucket | None = None) -> None:
        self.gateway = gateway
        self.transport = transport
        self.store = gateway.store
        self.data_dir = gateway.data_dir
        self.bucket = bucket or TokenBucket(None)
        self.state = {"in": "idle", "out": "idle"}
        self.moved = {"in": 0, "out": 0}  # chunks that went through, each way: a failure after some is a new one

    @property
    def settings(self) -> Any:
        return self.gateway.config.gateway.files

    def _configure(self) -> None:
        rate = self.settings.bandwidth
        if rate != self.bucket.rate:
            self.bucket.configure(float(rate) if rate else None)

    async def _take(self, amount: int) -> None:
        self._configure()
        await self.bucket.take(amount)

    def _failed(self, direction: str, exc: Exception) -> None:
        """Logged once per state change; tried again with backoff."""
        state = f"waiting: {exc}"
        if not self.state[direction].startswith("waiting"):
            log.warning("files %s the registry: %s (trying again)", "from" if direction == "in" else "to", exc)
        self.state[direction] = state

    # --- cloud → edge ---------------------------------------------------------------------------------------------

    async def run_incoming(self) -> None:
        """Poll for files and fetch them, forever; a dropped link is tried again with backoff."""
        delay, moved = RETRY_MIN, self.moved["in"]
        while True:
            try:
                await self.report_finished()
                for offer in await self.transport.offers(OFFER_WAIT):
                    await self.receive(offer)
                delay = RETRY_MIN
            except (LinkDown, ConfigError) as exc:
                if self.moved["in"] != moved:  # chunks came since the last failure: a drop, not a dead link
                    delay, moved = RETRY_MIN, self.moved["in"]
                self._failed("in", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def report_finished(self) -> None:
        """Tell the registry the final state of files whose report did not get through."""
        for record in await self.store.files.unreported():
            try:
                await self.transport.report(record["id"], FileProgress(
                    offset=record["position"], state=record["state"], reason=record["reason"][:1000],
                    bytes_received=record["bytes_received"]))
            except ConfigError as exc:  # refused (the file deleted at the registry): nobody waits for the report
                log.info("the registry did not take the final state of file %s: %s", record["name"], exc)
            await self.store.files.mark_reported(record["id"], record["state"])

    async def receive(self, offer: FileOffer) -> None:
        """Fetch one file from where it stands, verify it and put it in place (or refuse it)."""
        await self.store.files.add_inbox(msgspec.structs.asdict(offer))
        record = await self.store.files.inbox(offer.id)
        assert record is not None
        if record["state"] in ("done", "refused"):
            await self.report_finished()
            return
        incoming = transfers_dir(self.data_dir) / "incoming" / offer.id
        area = files_area(self.data_dir)
        try:
            final = destination(area, offer.path, offer.name)
            in_flight = sum(p.stat().st_size for p in incoming.parent.glob("*") if p != incoming) \
                if incoming.parent.exists() else 0
            used = await asyncio.to_thread(usage, area) + in_flight
            replaced = final.stat().st_size if final.exists() else 0
            quota = int(self.settings.quota)
            if used - replaced + offer.size > quota:
                raise Refused(f"the file has {offer.size} bytes; the files area holds {used} of its quota of "
                              f"{quota} (files.quota)")
        except Refused as exc:
            await self._refuse(offer, record["position"], str(exc), incoming)
            return
        incoming.parent.mkdir(parents=True, exist_ok=True)
        incoming.touch(mode=0o600)  # an empty file is whole at once
        offset = incoming.stat().st_size
        if offset > offer.size:
            incoming.unlink()
            offset = 0
        digest = await asyncio.to_thread(_sha256_file, incoming, offset) if offset else hashlib.sha256()
        self.state["in"] = f"receiving {offer.name}"
        if offset:
            log.info("file %s: resuming at %d of %d bytes", offer.name, offset, offer.size)
        writer = await asyncio.to_thread(IncomingFile, incoming, offset, digest)
        self._configure()  # the cap decides how much the transport keeps in flight
        last_report = time.monotonic()
        corrupted = 0
        counted = self.transport.bytes_in

        async def count() -> None:
            nonlocal counted
            received, counted = self.transport.bytes_in - counted, self.transport.bytes_in
            COUNTERS["bytes_received"] += received
            await self.store.files.update_inbox(offer.id, state="transferring", position=writer.offset,
                                                received=received)

        current: dict[str, Any] = record

        async def sink(pieces: list[bytes]) -> None:
            nonlocal corrupted, last_report, current
            corrupted = 0
            self.moved["in"] += 1
            await asyncio.to_thread(writer.write, pieces)
            await count()
            if time.monotonic() - last_report > REPORT_EVERY:
                last_report = time.monotonic()
                current = await self.store.files.inbox(offer.id) or current
                await self.transport.report(offer.id, FileProgress(offset=writer.offset,
                                                                   bytes_received=current["bytes_received"]))

        try:
            while writer.offset < offer.size:
                try:
                    await self.transport.fetch(offer, writer.offset, self._take, sink)
                except ChunkCorrupted:
                    corrupted += 1
                    COUNTERS["chunks_corrupted"] += 1
                    if corrupted >= CHUNK_ATTEMPTS:
                        raise LinkDown(f"file {offer.name}: {corrupted} corrupted pieces in a row at "
                                       f"{writer.offset}") from None
                finally:
                    await count()
        finally:
            await asyncio.to_thread(writer.close)  # what was written is fsynced, however the fetch ended
        offset = writer.offset
        if digest.hexdigest() != offer.sha256:
            await self._refuse(offer, offset, f"the file's SHA-256 is {digest.hexdigest()}, not the {offer.sha256} "
                                              "the registry announced: refused, nothing kept", incoming)
            return
        try:
            final = destination(area, offer.path, offer.name)  # again: the area may have changed meanwhile
            await asyncio.to_thread(place, incoming, final)
        except Refused as exc:
            await self._refuse(offer, offset, str(exc), incoming)
            return
        await self.store.files.update_inbox(offer.id, state="done", position=offset)
        COUNTERS["files_received"] += 1
        self.state["in"] = "idle"
        relative = str(final.relative_to(area.resolve()))
        log.info("file %s (%d bytes) from the registry is at %s", offer.name, offer.size, relative)
        await self.gateway.eventbus_publish(
            f"fieldgate/{self.gateway.node_name}/files/received",
            msgspec.json.encode({"id": offer.id, "name": offer.name, "path": relative, "size": offer.size,
                                 "sha256": offer.sha256, "content_type": offer.content_type,
                                 "labels": offer.labels, "ts": int(time.time() * 1000)}), qos=1)
        await self.report_finished()

    async def _refuse(self, offer: FileOffer, offset: int, reason: str, incoming: Path) -> None:
        await asyncio.to_thread(incoming.unlink, missing_ok=True)
        log.warning("file %s from the registry refused: %s", offer.name, reason)
        await self.store.files.update_inbox(offer.id, state="refused", position=offset, reason=reason)
        COUNTERS["files_refused"] += 1
        await self.report_finished()

    # --- edge → cloud ---------------------------------------------------------------------------------------------

    async def run_outgoing(self) -> None:
        """Send the outbox's files, forever; a dropped link is tried again with backoff."""
        delay, moved = RETRY_MIN, self.moved["out"]
        while True:
            try:
                queue = await self.store.files.outbox_queue()
                for record in queue:
                    try:
                        await self.send(record)
                    except ConfigError as exc:  # the registry refuses the file itself: the next ones go on
                        await self.store.files.update_outbox(record["id"], state="refused",
                                                             position=record["position"], reason=str(exc))
                        await asyncio.to_thread(outbox_path(self.data_dir, record["id"]).unlink, missing_ok=True)
                        COUNTERS["files_sent_refused"] += 1
                        log.error("file %s was refused by the registry: %s", record["name"], exc)
                delay = RETRY_MIN
                if not queue:
                    self.state["out"] = "idle"
                    await asyncio.sleep(RETRY_MIN)
            except (LinkDown, ConfigError, OSError) as exc:
                if self.moved["out"] != moved:  # chunks went since the last failure: a drop, not a dead link
                    delay, moved = RETRY_MIN, self.moved["out"]
                self._failed("out", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def send(self, record: dict[str, Any]) -> None:
        """Send one outbox file from the registry's offset until it is whole, then drop it from the outbox."""
        file_id = record["id"]
        path = outbox_path(self.data_dir, file_id)
        state = await self.transport.announce(UploadStart(
            id=file_id, name=record["name"], size=record["size"], sha256=record["sha256"],
            content_type=record["content_type"], labels=record["labels"]))
        self.state["out"] = f"sending {record['name']}"
        self._configure()
        corrupted = 0
        counted = self.transport.bytes_out

        async def count() -> None:
            nonlocal counted
            sent, counted = self.transport.bytes_out - counted, self.transport.bytes_out
            COUNTERS["bytes_sent"] += sent
            await self.store.files.update_outbox(file_id, state="sending", position=state.offset, sent=sent)

        async def acked(acknowledged: UploadState) -> None:
            nonlocal state, corrupted
            state, corrupted = acknowledged, 0
            self.moved["out"] += 1
            await count()

        while state.state == "transferring":
            try:
                state = await self.transport.send(file_id, path, record["size"], state, self._take, acked)
            except ChunkCorrupted:
                corrupted += 1
                COUNTERS["chunks_corrupted"] += 1
                if corrupted >= CHUNK_ATTEMPTS:
                    raise LinkDown(f"{corrupted} corrupted chunks in a row at {state.offset}") from None
            finally:
                await count()
        if state.state == "done":
            await self.store.files.update_outbox(file_id, state="done", position=record["size"])
            await asyncio.to_thread(path.unlink, missing_ok=True)
            COUNTERS["files_sent"] += 1
            log.info("file %s (%d bytes) is at the registry, whole and verified", record["name"], record["size"])
        else:
            await self.store.files.update_outbox(file_id, state="refused", position=state.offset, reason=state.reason)
            await asyncio.to_thread(path.unlink, missing_ok=True)
            COUNTERS["files_sent_refused"] += 1
            log.error("file %s was refused by the registry: %s", record["name"], state.reason)


async def run_folder(gateway: GatewayAPI) -> None:
    """Look at the outbox folder every `files.outbox_poll` seconds and move what is complete into the outbox."""
    folder = gateway.config.gateway.files.outbox_folder
    watcher = FolderWatcher(gateway.store, gateway.data_dir, Path(folder) if folder else None)
    while True:
        settings = gateway.config.gateway.files
        await watcher.look(int(settings.max_upload), int(settings.outbox_quota))
        await asyncio.sleep(float(settings.outbox_poll))
