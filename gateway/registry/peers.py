"""The relay between registry replicas: a node's `relay` stream (gateway.registry.services) whose target node has
its channel on another replica goes to that replica over a link of their own.

Each replica started with `--peer-listen HOST:PORT` listens there for the other replicas (TLS, both sides showing a
relay certificate the registry CA issued with the REPLICA_UNIT mark: node and batch certificates are refused) and
records in the database (`node_channels`) the nodes whose channels it holds and the address its replicas reach it
at (`--peer-advertise`, by default the listen address). The replica holding the source's `relay` stream connects
to the one holding the target's channel and says which node, and from whom; that one opens a `service` stream to
the target node and answers OK, or ABORT with the reason; then both copy bytes.

Frames on the link: a kind byte and a 4-byte length, then at most MAX_FRAME bytes: OPEN (JSON {"node", "from"}),
OK, DATA, END (no more data this way), ABORT (the reason). A replica reads the next DATA frame only once the
channel stream took the last one (its credit), and writes to the link only as fast as it drains, so a slow reader
at either end stops the writer at the other through the channel's credit and TCP's window: nothing piles up. What
travels is the nodes' own TLS connection: the replicas see ciphertext only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import ssl
import struct
import uuid
from typing import TYPE_CHECKING, Any

from gateway.channel import ChannelError, Stream, StreamError
from gateway.errors import ConfigError
from gateway.registry.ca import CertificateAuthority, is_replica
from gateway.wire import SERVICE_STREAM

if TYPE_CHECKING:
    from gateway.registry.store import RegistryStore

log = logging.getLogger(__name__)
HEADER = struct.Struct("!BI")
OPEN, OK, DATA, END, ABORT = b"HODEA"
KINDS = {OPEN, OK, DATA, END, ABORT}
MAX_FRAME = 1 << 20
MAX_OPEN = 4096  # bytes of an OPEN frame
CONNECT_TIMEOUT = 5.0  # seconds to reach the other replica, finish TLS and have its answer
OPEN_TIMEOUT = 10.0  # seconds a replica waits for the OPEN frame of a link it accepted


class PeerError(ChannelError):
    """The link between two replicas broke its protocol."""


def split_address(value: str, option: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{option}: expected HOST:PORT, got {value[:80]!r}")
    return host.strip("[]"), int(port)


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    kind, size = HEADER.unpack(await reader.readexactly(HEADER.size))
    if kind not in KINDS or size > MAX_FRAME:
        raise PeerError(f"bad frame from the other replica (kind {kind}, {size} bytes)")
    return kind, await reader.readexactly(size)


def write_frame(writer: asyncio.StreamWriter, kind: int, payload: bytes = b"") -> None:
    writer.write(HEADER.pack(kind, len(payload)) + payload)


class PeerRelay:
    """This replica's side of the relay between replicas: the listener (`start`), what channels it holds (`hold`,
    `release`), and `forward` for a relay stream whose target is at another replica. `counters` (for GET /metrics):
    streams out to other replicas and in from them, links refused or failed, bytes each way."""

    def __init__(self, hub: Any, store: RegistryStore, ca: CertificateAuthority, listen: str,
                 advertise: str = "") -> None:
        self.hub = hub
        self.store = store
        self.listen = split_address(listen, "--peer-listen")
        self.advertise = advertise or listen
        split_address(self.advertise, "--peer-advertise")
        self.replica = uuid.uuid4().hex
        self.counters: collections.Counter[str] = collections.Counter()
        cert_path, key_path = ca.write_replica_certificate()
        self._server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.cert_path))
        self._server_context.verify_mode = ssl.CERT_REQUIRED
        self._server_context.load_cert_chain(cert_path, key_path)
        self._client_context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca.cert_path))
        self._client_context.check_hostname = False  # an advertised address is any name: the mark is checked
        self._client_context.load_cert_chain(cert_path, key_path)
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._accepted, self.listen[0], self.listen[1],
                                                      ssl=self._server_context)
        except OSError as exc:
            raise ConfigError(f"--peer-listen {self.listen[0]}:{self.listen[1]}: {exc}") from None

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._links):
            task.cancel()
        if self._links:
            await asyncio.wait(list(self._links), timeout=5)
        with contextlib.suppress(Exception):
            await self.store.channels.release_all(self.replica)

    async def hold(self, node: str) -> None:
        try:
            await self.store.channels.hold(node, self.replica, self.advertise)
        except Exception as exc:  # the database away for a moment: relays to this node fail until it reconnects
            log.warning("could not record the channel of node %s: %s", node, exc)

    async def release(self, node: str) -> None:
        try:
            await self.store.channels.release(node, self.replica)
        except Exception as exc:
            log.warning("could not forget the channel of node %s: %s", node, exc)

    # --- the replica with the source's relay stream ------------------------------------------------------------

    async def forward(self, stream: Stream, source: str, target: str) -> None:
        """Carry a relay stream from `source` to `target`, whose channel another replica holds."""
        holder = await self.store.channels.holder(target)
        if holder is None or holder[0] == self.replica:
            await stream.close(f"relay: node {target} has no channel open")
            return
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                host, port = split_address(holder[1], "peer")
                reader, writer = await asyncio.open_connection(host, port, ssl=self._client_context)
                ssl_object = writer.get_extra_info("ssl_object")
                der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
                if not der or not is_replica(der):
                    raise PeerError("its certificate is not a registry replica's")
                write_frame(writer, OPEN, json.dumps({"node": target, "from": source}).encode())
                await writer.drain()
                kind, payload = await read_frame(reader)
        except (OSError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError, ConfigError, PeerError) as exc:
            self.counters["failed"] += 1
            if writer is not None:
                writer.close()
            await stream.close(f"relay: the replica holding node {target} ({holder[1]}) could not be reached: "
                               f"{str(exc)[:200] or type(exc).__name__}")
            return
        if kind != OK:
            self.counters["failed"] += 1
            writer.close()
            await stream.close(f"relay: {payload.decode(errors='replace')[:300]}" if kind == ABORT
                               else "relay: the other replica answered out of turn")
            return
        self.counters["streams_out"] += 1
        await self._bridge(stream, reader, writer, "out")

    # --- the replica with the target's channel -----------------------------------------------------------------

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._links.add(task)
            task.add_done_callback(self._links.discard)
        try:
            await self._serve_link(reader, writer)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, PeerError) as exc:
            self.counters["failed"] += 1
            log.info("relay link from another replica ended: %s", str(exc) or type(exc).__name__)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der or not is_replica(der):
            self.counters["refused"] += 1
            write_frame(writer, ABORT, b"a registry replica's certificate is required")
            await writer.drain()
            return
        async with asyncio.timeout(OPEN_TIMEOUT):
            kind, payload = await read_frame(reader)
        try:
            meta = json.loads(payload) if kind == OPEN and len(payload) <= MAX_OPEN else None
        except ValueError:
            meta = None
        target, source = (meta.get("node"), meta.get("from")) if isinstance(meta, dict) else (None, None)
        if not isinstance(target, str) or not isinstance(source, str):
            raise PeerError("expected OPEN with the node and from whom first")
        try:
            other = await self.hub.open_stream(target, SERVICE_STREAM, {"from": source})
        except ChannelError as exc:
            self.counters["refused"] += 1
            write_frame(writer, ABORT, str(exc)[:300].encode())
            await writer.drain()
            return
        write_frame(writer, OK)
        await writer.drain()
        self.counters["streams_in"] += 1
        await self._bridge(other, reader, writer, "in")

    # --- both ----------------------------------------------------------------------------------------------------

    async def _bridge(self, stream: Stream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      way: str) -> None:
        """Bytes between a channel stream and the link to the other replica, until both ways ended."""

        async def from_link() -> None:
            try:
                while True:
                    kind, payload = await read_frame(reader)
                    if kind == DATA:
                        await stream.send(payload)  # waits for the channel's credit: the next frame waits too
                        self.counters[f"bytes_{way}_received"] += len(payload)
                    elif kind == END:
                        await stream.close()
                        return
                    else:
                        await stream.close(f"relay: {payload.decode(errors='replace')[:200] or 'aborted'}")
                        return
            except StreamError:
                return  # the channel side aborted: to_link tells the other replica
            except (OSError, asyncio.IncompleteReadError, PeerError) as exc:
                await stream.close(f"relay: the link to the other replica broke: {str(exc)[:200]}")

        async def to_link() -> None:
            try:
                while chunk := await stream.receive():
                    write_frame(writer, DATA, chunk)
                    await writer.drain()
                    self.counters[f"bytes_{way}_sent"] += len(chunk)
                write_frame(writer, END)
                await writer.drain()
            except StreamError as exc:
                with contextlib.suppress(OSError):
                    write_frame(writer, ABORT, str(exc)[:200].encode())
                    await writer.drain()
            except OSError as exc:
                await stream.close(f"relay: the link to the other replica broke: {str(exc)[:200]}")

        try:
            await asyncio.gather(from_link(), to_link())
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
