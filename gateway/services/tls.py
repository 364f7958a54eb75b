"""TLS between the fleet's nodes with their own certificates (made by the registry's CA when they joined): who may
open a direct stream to a node's instances, and the same TLS inside streams the registry relays."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from pathlib import Path
from typing import Any

from gateway.channel import Stream, StreamError

HANDSHAKE_TIMEOUT = 10.0
PUMP_CHUNK = 1 << 16

log = logging.getLogger(__name__)


class PeerRefused(Exception):
    """The other side's certificate is not a node of this fleet (or not the node expected)."""


def identity_files(data_dir: Path) -> tuple[Path, Path, Path] | None:
    """(CA, certificate, key) of a node that joined a registry; None before it joined."""
    directory = data_dir / "registry"
    files = (directory / "ca.pem", directory / "node.pem", directory / "node.key")
    return files if all(f.is_file() for f in files) else None


def contexts(data_dir: Path) -> tuple[ssl.SSLContext, ssl.SSLContext] | None:
    """(client, server) contexts with the node's certificate that trust the fleet's CA only; None before a join."""
    files = identity_files(data_dir)
    if files is None:
        return None
    ca, cert, key = files
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False  # the peer's node name is checked against its certificate instead
    client.verify_mode = ssl.CERT_REQUIRED
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.verify_mode = ssl.CERT_REQUIRED
    try:
        for context in (client, server):
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_verify_locations(cafile=str(ca))
            context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:  # a damaged identity must not keep the gateway from starting
        log.error("the node's registry identity in %s cannot be used (%s): services across nodes are off until "
                  "the node joins again", ca.parent, exc)
        return None
    return client, server


def peer_node(ssl_object: Any, expected: str | None = None) -> str:
    """The node name of a verified peer; PeerRefused when its certificate is not a node's (a batch bundle's is a
    client certificate only) or names another node than `expected`."""
    from cryptography import x509  # here: 15 MB that a gateway without streams from other nodes never loads
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise PeerRefused("no peer certificate")
    cert = x509.load_der_x509_certificate(der)
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is None or ExtendedKeyUsageOID.SERVER_AUTH not in usages:
        raise PeerRefused("the peer's certificate is not a node certificate of this fleet")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = names[0].value if names else ""
    name = name if isinstance(name, str) else name.decode()
    if expected is not None and name != expected:
        raise PeerRefused(f"the peer is node {name!r}, not {expected!r}")
    return name


class StreamSocket:
    """One end of a socket pair whose other end is copied to and from a channel stream, so that asyncio's TLS can
    run over the stream; `sock` is the end to use, `close()` ends the copying."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.sock, self._other = socket.socketpair()
        self.sock.setblocking(False)
        self._other.setblocking(False)
        self._tasks: list[asyncio.Task[None]] = []
        self._other_writer: asyncio.StreamWriter | None = None
        # the TLS connection made on `sock`, set by whoever makes it: its transport owns the socket from then on
        self.writer: asyncio.StreamWriter | None = None

    async def start(self) -> StreamSocket:
        reader, writer = await asyncio.open_connection(sock=self._other)
        self._other_writer = writer
        self._tasks = [asyncio.create_task(self._down(writer), name="stream to socket"),
                       asyncio.create_task(self._up(reader), name="socket to stream")]
        return self

    async def _down(self, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await self.stream.receive():
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (StreamError, ConnectionError):
            writer.close()

    async def _up(self, reader: asyncio.StreamReader) -> None:
        try:
            while chunk := await reader.read(PUMP_CHUNK):
                await self.stream.send(chunk)
            await self.stream.close()
        except (StreamError, ConnectionError):
            with contextlib.suppress(StreamError):
                await self.stream.close("the local side went away")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # a socket a transport uses is closed by closing the transport (the loop forgets its descriptor then)
        if self._other_writer is not None:
            self._other_writer.close()
        else:
            self._other.close()
        if self.writer is not None:
            self.writer.close()
        else:
            with contextlib.suppress(OSError):
                self.sock.close()
        if self.stream.error is None:
            with contextlib.suppress(StreamError):
                await self.stream.close("closed")


async def accept_tls(sock: socket.socket, context: ssl.SSLContext
                     ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The server side of TLS over a connected socket (a relayed stream's socket pair)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=PUMP_CHUNK)
    protocol = asyncio.StreamReaderProtocol(reader)
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock=sock, ssl=context,
                                                      ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
