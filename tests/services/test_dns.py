"""The DNS responder of Services: A and SRV records, known names without records of a type, truncation, TCP framing,
mangled queries and hostile TCP clients (on loopback sockets)."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.resources.schema import Service, ServicePort
from gateway.services.dns import MAX_TCP_QUERY, DnsResponder, Framing, FramingError, frame
from gateway.services.netns import Listen, open_sockets
from gateway.testing import free_port
from tests.services.test_local_services import ask_tcp

ECHO_SERVICE = Service(name="echo", workload="echo", ports=[
    ServicePort(name="http", port=80), ServicePort(name="dgram", port=9000, protocol="UDP")])
ONE_SERVICE = Service(name="one", workload="echo", ports=[ServicePort(port=7)])
WIDE_SERVICE = Service(name="wide", workload="echo", ports=[ServicePort(name=f"port-{n}", port=1000 + n)
                                                            for n in range(30)])


class _Mesh:
    def lookup(self, name: str) -> tuple[str, Service] | None:
        name = name.lower()
        if name in ("echo", "echo.default", "echo.default.svc"):
            return "127.77.0.9", ECHO_SERVICE
        if name == "one.default.svc":
            return "127.77.0.11", ONE_SERVICE
        if name in ("wide", "wide.default", "wide.default.svc"):
            return "127.77.0.10", WIDE_SERVICE
        return None


def ask(dns: DnsResponder, name: str, qtype: str = "A", *, tcp: bool = False, edns: int | None = None
        ) -> DNSRecord:
    question = DNSRecord.question(name, qtype)
    if edns is not None:
        question.add_ar(EDNS0(udp_len=edns))
    answer = dns.answer(question.pack(), tcp=tcp)
    assert answer is not None and len(answer) <= (65535 if tcp else max(512, min(edns or 0, 1232)))
    return DNSRecord.parse(answer)


def test_the_dns_responder_answers_service_names_only() -> None:
    dns = DnsResponder(_Mesh())  # type: ignore[arg-type]
    answer = ask(dns, "echo.default.svc")
    assert [(rr.rtype, str(rr.rdata)) for rr in answer.rr] == [(QTYPE.A, "127.77.0.9")]
    missing = ask(dns, "example.com")
    assert missing.header.rcode == RCODE.NXDOMAIN and missing.rr == []
    too_long = b"".join(bytes([63]) + b"a" * 63 for _ in range(5)) + b"\x00"  # 320 characters: no DNS name
    for junk in (b"", b"\x00" * 11, b"\xff" * 40, b"x" * 600, DNSRecord.question("echo").reply().pack(),
                 struct.pack("!6H", 1, 0x0100, 1, 0, 0, 0) + too_long + struct.pack("!2H", 1, 1)):
        assert dns.answer(junk) is None  # no query: no answer, never an exception
    notify = DNSRecord.question("echo")
    notify.header.opcode = 4
    assert DNSRecord.parse(dns.answer(notify.pack())).header.rcode == RCODE.NOTIMP


@pytest.mark.parametrize("qtype", ["AAAA", "ANY", "TXT", "MX"])
def test_a_known_name_without_records_of_the_type_is_noerror_and_empty(qtype: str) -> None:
    """NXDOMAIN would tell a resolver that the name does not exist at all, and it would not ask for the A record."""
    dns = DnsResponder(_Mesh())  # type: ignore[arg-type]
    for name in ("echo", "echo.default", "echo.default.svc", "_http._tcp.echo.default.svc"):
        answer = ask(dns, name, qtype)
        assert answer.header.rcode == RCODE.NOERROR and answer.rr == [], (name, answer)
    assert ask(dns, "nope.default.svc", qtype).header.rcode == RCODE.NXDOMAIN


def test_srv_records_name_the_ports_as_kubernetes_does() -> None:
    dns = DnsResponder(_Mesh())  # type: ignore[arg-type]
    answer = ask(dns, "_http._tcp.echo.default.svc", "SRV")
    assert [(rr.rtype, rr.rdata.port, str(rr.rdata.target)) for rr in answer.rr] == [
        (QTYPE.SRV, 80, "echo.default.svc.")]
    assert [(str(rr.rname), str(rr.rdata)) for rr in answer.ar] == [("echo.default.svc.", "127.77.0.9")]
    assert [rr.rdata.port for rr in ask(dns, "_dgram._udp.echo.default.svc", "SRV").rr] == [9000]
    assert [rr.rdata.port for rr in ask(dns, "_7._tcp.ONE.Default.svc.", "SRV").rr] == [7]  # a port without a name
    everything = ask(dns, "echo.default.svc", "SRV")
    assert sorted(rr.rdata.port for rr in everything.rr) == [80, 9000]
    for wrong in ("_http._udp.echo.default.svc", "_dgram._tcp.echo.default.svc", "_nope._tcp.echo.default.svc",
                  "_http._sctp.echo.default.svc", "_http._tcp.nope.default.svc", "_http._tcp.echo.default.x"):
        assert ask(dns, wrong, "SRV").header.rcode == RCODE.NXDOMAIN, wrong


def test_a_udp_answer_over_512_bytes_is_truncated_and_whole_over_tcp_or_with_edns() -> None:
    dns = DnsResponder(_Mesh())  # type: ignore[arg-type]
    short = ask(dns, "wide.default.svc", "SRV")
    assert short.header.tc == 1 and short.rr == [] and str(short.q.qname) == "wide.default.svc."
    whole = ask(dns, "wide.default.svc", "SRV", tcp=True)
    assert whole.header.tc == 0 and sorted(rr.rdata.port for rr in whole.rr) == list(range(1000, 1030))
    edns = ask(dns, "wide.default.svc", "SRV", edns=1232)
    assert edns.header.tc == 0 and len(edns.rr) == 30
    assert [rr.rtype for rr in edns.ar] == [QTYPE.A, QTYPE.OPT]  # EDNS answered with EDNS
    assert ask(dns, "wide.default.svc", "SRV", edns=256).header.tc == 1  # less than 512 offered: 512 all the same
    assert ask(dns, "wide.default.svc").header.tc == 0
    assert dns.truncated == 2


def test_tcp_framing_splits_and_joins_messages_and_refuses_bad_lengths() -> None:
    query = bytes(DNSRecord.question("echo").pack())
    framed = frame(query) * 3
    framing = Framing()
    assert [m for b in framed for m in framing.feed(bytes([b]))] == [query] * 3  # a byte at a time
    assert Framing().feed(framed + frame(query)[:5]) == [query] * 3
    for bad in (b"\x00\x00", struct.pack("!H", MAX_TCP_QUERY + 1)):
        with pytest.raises(FramingError):
            Framing().feed(bad)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["echo.default.svc", "echo", "a" * 63 + ".b", "x.y.z", "ECHO.Default.SVC",
                        "_http._tcp.echo.default.svc", "wide.default.svc"]),
       st.sampled_from(["A", "AAAA", "ANY", "SRV", "TXT"]),
       st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), max_size=6),
       st.integers(0, 600), st.binary(max_size=20), st.booleans())
def test_the_dns_responder_never_raises_on_mangled_queries(name: str, qtype: str, flips: list[tuple[int, int]],
                                                           cut: int, tail: bytes, tcp: bool) -> None:
    """Valid queries with bytes flipped, cut short or followed by junk: an answer or nothing, never an exception
    (an exception in the datagram callback would be logged for every packet a hostile sender sends)."""
    dns = DnsResponder(_Mesh())  # type: ignore[arg-type]
    data = bytearray(DNSRecord.question(name, qtype).pack())
    for offset, value in flips:
        if data:
            data[offset % len(data)] = value
    mangled = bytes(data[:cut]) + tail
    answer = dns.answer(mangled, tcp=tcp)
    assert answer is None or (isinstance(answer, bytes) and len(answer) <= (65535 if tcp else 1232))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(
    st.binary(max_size=40),
    st.sampled_from([frame(bytes(DNSRecord.question(n, "SRV").pack()))
                     for n in ("echo", "wide.default.svc", "_http._tcp.echo.default.svc")]),
    st.integers(0, 65535).map(lambda n: struct.pack("!H", n))), max_size=8),
    st.integers(1, 50))
def test_tcp_framing_never_raises_but_framing_error(pieces: list[bytes], chunk: int) -> None:
    """A TCP client's bytes, cut anywhere: whole messages, each answered or dropping the client, or a FramingError
    (which ends the connection) — nothing else, and the buffer never holds more than one message."""
    dns = DnsResponder(_Mesh())  # type: ignore[arg-type]
    data = b"".join(pieces)
    framing = Framing()
    try:
        for start in range(0, len(data), chunk):
            for message in framing.feed(data[start:start + chunk]):
                assert 0 < len(message) <= MAX_TCP_QUERY
                answer = dns.answer(message, tcp=True)
                assert answer is None or len(answer) <= 65535
            assert len(framing.buffer) < MAX_TCP_QUERY + 2 + chunk
    except FramingError:
        pass


async def closed(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether the responder closes the connection within `within` seconds (reading what it sends until then)."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def test_tcp_and_udp_on_one_port_and_hostile_tcp_clients() -> None:
    dns = DnsResponder(_Mesh(), tcp_clients=4, tcp_idle=1.0)  # type: ignore[arg-type]
    await dns.start("127.0.0.1", 0)
    port = int(dns.address.rsplit(":", 1)[1])
    try:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # UDP: the 512-byte answer is truncated
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, DNSRecord.question("wide.default.svc", "SRV").pack())
            assert DNSRecord.parse(await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)).header.tc == 1
        whole = await ask_tcp("127.0.0.1", port, "wide.default.svc", "SRV")  # so the resolver asks again over TCP
        assert whole.header.tc == 0 and len(whole.rr) == 30
        assert [str(rr.rdata) for rr in (await ask_tcp("127.0.0.1", port, "echo")).rr] == ["127.77.0.9"]

        # several questions on one connection, one of them sent a byte at a time
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for byte in frame(bytes(DNSRecord.question("echo.default.svc").pack())):
            writer.write(bytes([byte]))
            await writer.drain()
        writer.write(frame(bytes(DNSRecord.question("nope").pack())))
        answers = []
        for _ in range(2):
            size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 5))[0]
            answers.append(DNSRecord.parse(await asyncio.wait_for(reader.readexactly(size), 5)))
        assert [a.header.rcode for a in answers] == [RCODE.NOERROR, RCODE.NXDOMAIN]
        writer.close()

        # junk, a length no query has, a length and then silence: each connection is closed, nothing raises
        for junk in (frame(b"\xff" * 40), struct.pack("!H", 0), struct.pack("!H", 60000) + b"x" * 100,
                     b"\x00\x20abc"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(junk)
            await writer.drain()
            assert await closed(reader, 5.0), junk
            writer.close()

        # a byte now and then is idle all the same: a question must be whole within tcp_idle
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = asyncio.get_running_loop().time()
        trickle = frame(bytes(DNSRecord.question("echo").pack()))
        ended = False
        for byte in trickle[:-1]:  # 0.3 s apart: the whole question would take 7 s
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                ended = True
            if ended or await closed(reader, 0.3):
                ended = True
                break
        assert ended and asyncio.get_running_loop().time() - started < 5.0
        writer.close()

        # at most tcp_clients at once: one more is closed at once, and a place taken again once one leaves
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await closed(reader, 2.0) and dns.tcp_refused >= 1
        writer.close()
        assert all([await closed(r, 5.0) for r, _ in held])  # idle for tcp_idle: closed
        for _, w in held:
            w.close()
        assert dns.clients == set()
        assert [str(rr.rdata) for rr in (await ask_tcp("127.0.0.1", port, "echo")).rr] == ["127.77.0.9"]
    finally:
        dns.stop()
    with pytest.raises(OSError):
        await ask_tcp("127.0.0.1", port, "echo")


async def test_sockets_handed_over_answer_over_udp_and_tcp() -> None:
    """What a container's namespace gets (`serve`, sockets opened there): the UDP one and the TCP one a resolver
    asks again on when the UDP answer was truncated; closing what `serve` returned closes each."""
    dns = DnsResponder(_Mesh())  # type: ignore[arg-type]
    port = free_port()
    opened = open_sockets([Listen("127.0.0.1", port, "UDP"), Listen("127.0.0.1", port, "TCP")])
    assert all(isinstance(sock, socket.socket) for sock in opened), opened
    served = [await dns.serve(sock) for sock in opened if isinstance(sock, socket.socket)]
    try:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, DNSRecord.question("wide.default.svc", "SRV").pack())
            assert DNSRecord.parse(await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)).header.tc == 1
        whole = await ask_tcp("127.0.0.1", port, "wide.default.svc", "SRV")
        assert whole.header.tc == 0 and len(whole.rr) == 30
    finally:
        for server in served:
            server.close()
    with pytest.raises(OSError):
        await ask_tcp("127.0.0.1", port, "echo")
