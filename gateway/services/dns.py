"""The node's DNS responder for Services (dnslib for the wire format), over UDP and TCP on one port.

Names: `<service>.<namespace>.svc`, `<service>.<namespace>` and a bare `<service>` answer `A` with the address the
service's proxies listen on; `_<port>._<tcp|udp>.<service>.<namespace>.svc` answers `SRV` with that port's number and
the service's name (as Kubernetes does; `<port>` is the port's name, or its number when it has none), and an `SRV`
question for the service's own name lists every port. A name it knows but has no record of the type asked for
(`AAAA`, `ANY`, `TXT`, …) gets NOERROR without records, so a resolver goes on to its `A` question; a name it does not
know gets NXDOMAIN (apps keep their own resolver for the rest; a container given this responder as its DNS server
resolves service names only).

Sizes: an answer over UDP fits 512 bytes, or the size the query's EDNS record offers (at most 1232); a longer one is
sent truncated (TC bit, the question and no records) so that the resolver asks again over TCP. Over TCP each message
has a 2-byte length before it (RFC 1035 4.2.2); a connection may ask several questions, is closed after TCP_IDLE
seconds without a whole one, and at most TCP_CLIENTS are served at once (one more is closed at once). A query that is
not DNS is dropped (UDP) or ends its connection (TCP); nothing a client sends raises.

It listens on the first address of `services.addresses` at `services.dns_port` in the node's network namespace, and
on the same address at port 53 (UDP) inside the network namespace of every container on a bridge network (their
resolv.conf names it; gateway.services.mesh opens that socket there and hands it to `serve`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import TYPE_CHECKING, Any

from dnslib import EDNS0, QTYPE, RCODE, RR, SRV, A, DNSError, DNSLabel, DNSRecord

from gateway.resources.services import port_key

if TYPE_CHECKING:
    from gateway.resources.schema import ServicePort
    from gateway.services.mesh import ServiceMesh

log = logging.getLogger(__name__)
TTL = 5  # seconds: a service's address stays as long as the service, but a removed one should not linger
MAX_QUERY = 512  # a query datagram (a question for one name fits many times)
MAX_TCP_QUERY = 4096  # a query over TCP: a longer length prefix ends the connection
MAX_NAME = 253  # characters of a domain name written out (RFC 1035: 255 octets on the wire)
UDP_ANSWER = 512  # RFC 1035: an answer datagram without EDNS
EDNS_ANSWER_MAX = 1232  # the most an answer datagram takes whatever EDNS size the query offers (DNS flag day 2020)
TCP_ANSWER = 65535
TCP_CLIENTS = 64
TCP_IDLE = 10.0  # seconds a TCP client may wait before its next question (RFC 7766 asks for seconds, not minutes)
SRV_WEIGHT = 100
FREE_PORT_ATTEMPTS = 20
PROTOCOL_LABELS = {"_tcp": "TCP", "_udp": "UDP"}


class FramingError(Exception):
    """A TCP client sent a length no DNS query has."""


class Framing:
    """RFC 1035 TCP messages, bytes in and messages out: each a 2-byte length (1…limit), then the message."""

    def __init__(self, limit: int = MAX_TCP_QUERY) -> None:
        self.limit = limit
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The whole messages the bytes received so far complete; FramingError for a length out of bounds."""
        self.buffer += data
        messages = []
        while len(self.buffer) >= 2:
            size = struct.unpack_from("!H", self.buffer)[0]
            if not 0 < size <= self.limit:
                raise FramingError(f"a message of {size} bytes (1 to {self.limit})")
            if len(self.buffer) < 2 + size:
                break
            messages.append(bytes(self.buffer[2:2 + size]))
            del self.buffer[:2 + size]
        return messages


def frame(message: bytes) -> bytes:
    return struct.pack("!H", len(message)) + message


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
    """Answers queries for service names over UDP and TCP."""

    def __init__(self, mesh: ServiceMesh, *, tcp_clients: int = TCP_CLIENTS, tcp_idle: float = TCP_IDLE) -> None:
        self.mesh = mesh
        self.tcp_clients = tcp_clients
        self.tcp_idle = tcp_idle
        self.transport: asyncio.DatagramTransport | None = None
        self.server: asyncio.Server | None = None
        self.clients: set[asyncio.Task[Any]] = set()
        self.address = ""
        self.queries = 0
        self.answered = 0
        self.truncated = 0
        self.tcp_refused = 0

    async def start(self, host: str, port: int) -> None:
        """Listen on UDP and TCP `host:port` (port 0: a free one, the same for both); OSError when either cannot."""
        loop = asyncio.get_running_loop()
        for attempt in range(1 if port else FREE_PORT_ATTEMPTS):
            transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), local_addr=(host, port))
            bound = transport.get_extra_info("sockname")[1]
            try:
                self.server = await asyncio.start_server(self._client, host, bound)
            except OSError:
                transport.close()
                if port or attempt == FREE_PORT_ATTEMPTS - 1:
                    raise
                continue  # the free UDP port's number is taken for TCP: another one
            break
        port = bound
        self.transport = transport
        self.address = f"{host}:{port}"
        log.info("services: DNS responder on %s (UDP and TCP)", self.address)

    async def serve(self, sock: socket.socket) -> asyncio.DatagramTransport | asyncio.Server:
        """Answer on one more socket, bound already (UDP) or listening (TCP), in a container's network namespace;
        closing the transport or server closes it."""
        if sock.type == socket.SOCK_STREAM:
            return await asyncio.start_server(self._client, sock=sock)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        return transport

    def stop(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        if self.server is not None:
            self.server.close()
            self.server = None
        for task in list(self.clients):
            task.cancel()

    # --- TCP ----------------------------------------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self.clients) >= self.tcp_clients or task is None:
            self.tcp_refused += 1
            writer.close()
            return
        self.clients.add(task)  # held here: asyncio's server does not, and stop() ends them
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError, FramingError, OSError):
            pass
        finally:
            self.clients.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Questions until the client closes; each must be whole within tcp_idle of the last answer (a client
        trickling bytes is idle too)."""
        loop = asyncio.get_running_loop()
        framing = Framing()
        deadline = loop.time() + self.tcp_idle
        while chunk := await asyncio.wait_for(reader.read(MAX_TCP_QUERY + 2), deadline - loop.time()):
            for message in framing.feed(chunk):
                answer = self.answer(message, tcp=True)
                if answer is None:
                    return  # not DNS: this client is done
                writer.write(frame(answer))
                await asyncio.wait_for(writer.drain(), self.tcp_idle)
                deadline = loop.time() + self.tcp_idle

    # --- the answer ---------------------------------------------------------------------------------------------

    def answer(self, data: bytes, *, tcp: bool = False) -> bytes | None:
        """The reply to one query message; None for what is not a query."""
        if len(data) > (MAX_TCP_QUERY if tcp else MAX_QUERY):
            return None
        try:
            query = DNSRecord.parse(data)
            if query.header.qr or len(query.questions) != 1:
                return None
            question = query.questions[0]
            name = str(question.qname).rstrip(".")
        except (DNSError, ValueError, IndexError, UnicodeDecodeError, struct.error):
            return None
        if len(name) > MAX_NAME:  # dnslib reads such a name but cannot write it into the answer
            return None
        self.queries += 1
        reply = query.reply()
        edns = next((rr for rr in query.ar if rr.rtype == QTYPE.OPT), None)
        if query.header.opcode != 0:  # QUERY only: no NOTIFY, UPDATE, …
            reply.header.rcode = RCODE.NOTIMP
        else:
            self._fill(reply, question.qname, name, question.qtype)
        if edns is not None:
            reply.add_ar(EDNS0(udp_len=EDNS_ANSWER_MAX))
        packed = bytes(reply.pack())
        limit = TCP_ANSWER if tcp else (min(max(edns.rclass, UDP_ANSWER), EDNS_ANSWER_MAX) if edns is not None
                                        else UDP_ANSWER)
        if len(packed) > limit:
            self.truncated += 1
            short = query.reply()
            short.header.rcode = reply.header.rcode
            short.header.tc = 1
            if edns is not None:
                short.add_ar(EDNS0(udp_len=EDNS_ANSWER_MAX))
            packed = bytes(short.pack())
        return packed

    def _fill(self, reply: DNSRecord, qname: DNSLabel, name: str, qtype: int) -> None:
        """The records of a known name, or NXDOMAIN."""
        found = self.mesh.lookup(name)
        ports: list[ServicePort] = []
        if found is not None:  # the service's name: A, or SRV of every port
            ports = found[1].ports
        else:  # _<port>._<tcp|udp>.<service>.<namespace>.svc: SRV of that port
            labels = name.lower().split(".")
            protocol = PROTOCOL_LABELS.get(labels[1]) if len(labels) == 5 and labels[0].startswith("_") else None
            found = self.mesh.lookup(".".join(labels[2:])) if protocol is not None and labels[4] == "svc" else None
            ports = [p for p in found[1].ports if p.protocol == protocol and port_key(p) == labels[0][1:]
                     ] if found is not None else []
            if not ports:
                reply.header.rcode = RCODE.NXDOMAIN
                return
            if qtype == QTYPE.A:
                return  # the name is there, without an address of its own
        assert found is not None
        address, service = found
        if qtype == QTYPE.A:
            reply.add_answer(RR(qname, QTYPE.A, rdata=A(address), ttl=TTL))
            self.answered += 1
        elif qtype == QTYPE.SRV:
            target = DNSLabel(f"{service.name}.{service.namespace}.svc")
            for port in ports:
                reply.add_answer(RR(qname, QTYPE.SRV, ttl=TTL, rdata=SRV(0, SRV_WEIGHT, port.port, target)))
            reply.add_ar(RR(target, QTYPE.A, rdata=A(address), ttl=TTL))
            self.answered += 1
        # AAAA, ANY and the rest: the name is there, without records of that type (NOERROR, no answer)
