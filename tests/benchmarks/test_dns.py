"""Benchmark: the services' DNS responder (gateway.services.dns) in a gateway-like loop, asked by a client in another
process: A questions over UDP, over TCP on one connection, and over TCP with a connection per question (a resolver
retrying after a truncated answer), and the SRV answer of a 30-port service.

Run: .venv/bin/pytest -m benchmark tests/benchmarks/test_dns.py -s
Knob: FIELDGATE_BENCH_QUERIES (3000 per way of asking).

Reported per way: questions per second, one at a time, and the round trip p50/p99.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from gateway.services.dns import DnsResponder
from tests.services.test_dns import _Mesh

pytestmark = pytest.mark.benchmark
QUERIES = int(os.environ.get("FIELDGATE_BENCH_QUERIES", "3000"))

CLIENT = r"""
import json, socket, statistics, struct, sys, time
from dnslib import DNSRecord
port, count = int(sys.argv[1]), int(sys.argv[2])

def framed(name, qtype):
    data = DNSRecord.question(name, qtype).pack()
    return struct.pack("!H", len(data)) + data

def read_framed(sock):
    head = b""
    while len(head) < 2:
        head += sock.recv(2 - len(head))
    size, body = struct.unpack("!H", head)[0], b""
    while len(body) < size:
        body += sock.recv(size - len(body))
    return body

def run(ask):
    times = []
    started = time.perf_counter()
    for _ in range(count):
        t = time.perf_counter()
        answer = ask()
        times.append(time.perf_counter() - t)
        assert answer.header.rcode == 0 and answer.rr, answer
    total = time.perf_counter() - started
    times.sort()
    return {"per_s": round(count / total), "p50_us": round(times[len(times) // 2] * 1e6),
            "p99_us": round(times[int(len(times) * 0.99)] * 1e6)}

udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.connect(("127.0.0.1", port))
query = DNSRecord.question("echo.default.svc").pack()
def over_udp():
    udp.send(query)
    return DNSRecord.parse(udp.recv(4096))

tcp = socket.create_connection(("127.0.0.1", port))
def over_tcp():
    tcp.sendall(framed("echo.default.svc", "A"))
    return DNSRecord.parse(read_framed(tcp))

def tcp_each():
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(framed("echo.default.svc", "A"))
        return DNSRecord.parse(read_framed(sock))

def srv_tcp():
    tcp.sendall(framed("wide.default.svc", "SRV"))
    return DNSRecord.parse(read_framed(tcp))

print(json.dumps({"udp": run(over_udp), "tcp, one connection": run(over_tcp),
                  "tcp, a connection each": run(tcp_each), "SRV of 30 ports, tcp": run(srv_tcp)}))
"""


async def test_dns_questions_per_second() -> None:
    dns = DnsResponder(_Mesh())  # type: ignore[arg-type]
    await dns.start("127.0.0.1", 0)
    port = dns.address.rsplit(":", 1)[1]
    try:
        client = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT, port, str(QUERIES),
                                                      stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(client.communicate(), 300)
        assert client.returncode == 0
    finally:
        dns.stop()
    results = json.loads(out)
    print(f"\nDNS responder, {QUERIES} questions each, one at a time:")
    for way, figures in results.items():
        print(f"  {way:24} {figures['per_s']:>7} /s   p50 {figures['p50_us']:>5} µs   p99 {figures['p99_us']:>6} µs")
    assert all(figures["per_s"] > 0 for figures in results.values())
