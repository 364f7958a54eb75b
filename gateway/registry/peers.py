"""The relay between registry replicas: a node's `relay` stream (gateway.registry.services) whose target node has
its channel on another replica goes to that replica over a link of their own.

Each replica started with `--peer-listen HOST:PORT` listens there for the other replicas (TLS, both sides showing a
relay certificate the registry CA issued with the REPLICA_UNIT mark: node and batch certificates are refused) and
records in the database (gateway.registry.store.channels) itself, with the address its replicas reach it at
(`--peer-advertise`, by default the listen address), and the nodes whose channels it holds. It refreshes its row
every REPLICA_BEAT seconds; one not refreshed for REPLICA_GONE_AFTER (a replica killed, or cut off from the
database) counts as gone: a relay to a node whose channel was there is refused at once with that reason, and every
replica's refresh deletes the rows of the gone ones. A replica that finds its own row deleted (it was away from the
database that long) records itself and its channels again. A replica that stops deletes its rows.

The replica holding the source's `relay` stream connects to the one holding the target's channel and says which
node, and from whom; that one checks in the database that both nodes exist and share a workspace (it trusts no
other replica's word for it: a replica certificate is all a caller of its listener shows), opens a `service` stream
to the target node and answers OK, or ABORT with the reason; then both copy bytes.

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
from gateway.registry.services import relay_refusal
from gateway.registry.store.channels import REPLICA_BEAT, REPLICA_GONE_AFTER
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
    """This replica's side of the relay between replicas: the listener and the refresh of this replica's row
    (`start`), what channels it holds (`hold`, `release`), and `forward` for a relay stream whose target is at another
    replica. `counters` (for GET /metrics): streams out to other replicas and in from them, links refused (also by
    reason, `refused_<reason>`: certificate, workspace, channel) or failed, relay streams refused because the
    target's replica is gone (`refused_gone`), bytes each way, and `gone_rows`: channel rows of gone replicas this
    one deleted."""

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
        self._beating: asyncio.Task[None] | None = None
        self.beat_state = "starting"  # ok, or failing: <reason> (the database away)

    async def start(self) -> None:
        await self.store.channels.beat(self.replica, self.advertise)  # recorded before any channel is
        try:
            self._server = await asyncio.start_server(self._accepted, self.listen[0], self.listen[1],
                                                      ssl=self._server_context)
        except OSError as exc:
            with contextlib.suppress(Exception):
                await self.store.channels.release_all(self.replica)
            raise ConfigError(f"--peer-listen {self.listen[0]}:{self.listen[1]}: {exc}") from None
        self._beating = asyncio.create_task(self._beat(), name="replica refresh")

    async def _beat(self) -> None:
        """Refresh this replica's row and delete the rows of gone replicas, every REPLICA_BEAT seconds; a failure
        (the database away) is logged once and tried again at the next beat."""
        while True:
            await asyncio.sleep(REPLICA_BEAT)
            try:
                if not await self.store.channels.beat(self.replica, self.advertise):
                    held = list(self.hub.sessions)
                    log.warning("this registry replica was taken for gone (no refresh for %.0f s): recording it and "
                                "its %d channels again", REPLICA_GONE_AFTER, len(held))
                    await self.store.channels.hold_again(held, self.replica, self.advertise)
                self.counters["gone_rows"] += await self.store.channels.forget_gone()
            except Exception as exc:
                state = f"failing: {str(exc)[:200] or type(exc).__name__}"
                if not self.beat_state.startswith("failing"):
                    log.warning("the refresh of this registry replica's row failed (other replicas take it for gone "
                                "after %.0f s): %s", REPLICA_GONE_AFTER, state)
                self.beat_state = state
                continue
            if self.beat_state != "ok":
                if self.beat_state.startswith("failing"):
                    log.info("the refresh of this registry replica's row works again")
                self.beat_state = "ok"

    async def stop(self) -> None:
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating
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
        if holder[2] is None or holder[2] > self.store.channels.gone_after:
            self.counters["refused_gone"] += 1
            seen = "" if holder[2] is None else f", not seen for {holder[2]:.0f} s"
            await stream.close(f"relay: node {target} has no channel open: the registry replica it was linked to "
                               f"({holder[1]}) is gone{seen}, and the node has not reconnected to another yet")
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
            await self._refuse(writer, "certificate", "a registry replica's certificate is required")
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
            refusal = await relay_refusal(self.store, source, target)
        except Exception as exc:  # the database away: no stream it could not check
            self.counters["failed"] += 1
            write_frame(writer, ABORT, f"the other replica could not check the nodes: {str(exc)[:200]}".encode())
            await writer.drain()
            return
        if refusal is not None:
            log.warning("relay from another replica refused: %s", refusal)
            await self._refuse(writer, "workspace", refusal)
            return
        try:
            other = await self.hub.open_stream(target, SERVICE_STREAM, {"from": source})
        except ChannelError as exc:
            await self._refuse(writer, "channel", str(exc))
            return
        write_frame(writer, OK)
        await writer.drain()
        self.counters["streams_in"] += 1
        await self._bridge(other, reader, writer, "in")

    async def _refuse(self, writer: asyncio.StreamWriter, why: str, reason: str) -> None:
        """Answer a link with ABORT and the reason, counted as refused (and by `why`)."""
        self.counters["refused"] += 1
        self.counters[f"refused_{why}"] += 1
        write_frame(writer, ABORT, reason[:300].encode())
        await writer.drain()

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
