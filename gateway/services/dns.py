"""The node's DNS responder for Services (dnslib for the wire format): `<service>.<namespace>.svc`,
`<service>.<namespace>` and a bare `<service>` answer with the address the service's proxies listen on.

It listens on the first address of `services.addresses` at `services.dns_port` in the node's network namespace, and
on the same address at port 53 inside the network namespace of every container on a bridge network (their
resolv.conf names it; gateway.services.mesh opens that socket there and hands it to `serve`).

It answers the names of services only: a name it does not know gets NXDOMAIN (apps keep their own resolver for the
rest; a container given this responder as its DNS server resolves service names only). A query that is not DNS is
dropped; nothing it receives can make it answer more than one datagram.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any

from dnslib import QTYPE, RCODE, RR, A, DNSError, DNSRecord

if TYPE_CHECKING:
    from gateway.services.mesh import ServiceMesh

log = logging.getLogger(__name__)
TTL = 5  # seconds: a service's address stays as long as the service, but a removed one should not linger
MAX_QUERY = 512


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, responder: DnsResponder) -> None:
        self.responder = responder
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        answer = self.responder.answer(data)
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)


class DnsResponder:
    """Answers queries for service names over UDP."""

    def __init__(self, mesh: ServiceMesh) -> None:
        self.mesh = mesh
        self.transport: asyncio.DatagramTransport | None = None
        self.queries = 0
        self.answered = 0

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), local_addr=(host, port))
        self.transport = transport
        log.info("services: DNS responder on %s:%d", host, port)

    async def serve(self, sock: socket.socket) -> asyncio.DatagramTransport:
        """Answer on one more socket, bound already (in a container's network namespace); closing the transport
        closes it."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        return transport

    def stop(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def answer(self, data: bytes) -> bytes | None:
        """The reply to one query datagram; None for what is not a query."""
        if len(data) > MAX_QUERY:
            return None
        try:
            query = DNSRecord.parse(data)
        except (DNSError, ValueError, IndexError, UnicodeDecodeError):
            return None
        if query.header.qr or len(query.questions) != 1:
            return None
        self.queries += 1
        reply = query.reply()
        question = query.questions[0]
        name = str(question.qname).rstrip(".")
        address = self.mesh.resolve(name)
        if address is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif question.qtype in (QTYPE.A, QTYPE.ANY):
            reply.add_answer(RR(question.qname, QTYPE.A, rdata=A(address), ttl=TTL))
            self.answered += 1
        return bytes(reply.pack())
