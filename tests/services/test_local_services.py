"""Services on one node, on loopback: the proxy spreads connections over the ready instances (round-robin), keeps a
client on its instance with ClientIP affinity, carries UDP, names services in DNS, gives apps the
`<SERVICE>_SERVICE_HOST`/`_PORT` variables and counts everything in the API and /metrics."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from gateway.services.dns import frame
from gateway.testing import free_port
from tests.services.conftest import ECHO, PYTHON, service_network

DEADLINE = 30.0


def documents(network: str, affinity: str = "None", replicas: int = 2) -> tuple[str, str]:
    settings = f"services: {{addresses: {network}, dns_port: {free_port()}}}\n"
    docs = f"""\
kind: Workload
name: echo
labels: {{app: echo}}
command: [{PYTHON}, {ECHO}]
replicas: {replicas}
ports: [{{name: echo}}, {{name: dgram, protocol: udp}}]
health: {{type: tcp, port: echo, interval: 200ms}}
---
kind: Service
name: echo
selector: {{app: echo}}
session_affinity: {affinity}
ports:
  - {{name: tcp, port: 7000, target_port: echo}}
  - {{name: udp, port: 7001, target_port: dgram, protocol: UDP}}
"""
    return settings, docs


async def ask(address: str, port: int, payload: bytes = b"who") -> str:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), 5)
    writer.write(payload)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    return answer.decode()


async def ask_udp(address: str, port: int, payload: bytes = b"who") -> str:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, (address, port))
        for _ in range(20):  # a datagram may go before the flow's endpoint answers: ask again
            await loop.sock_sendall(sock, payload)
            try:
                return (await asyncio.wait_for(loop.sock_recv(sock, 4096), 0.5)).decode()
            except TimeoutError:
                continue
    raise AssertionError("no UDP answer")


async def query(server: str, port: int, name: str, qtype: str = "A") -> DNSRecord:
    """A DNS question over UDP, without blocking the loop the responder runs on."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, (server, port))
        await loop.sock_sendall(sock, DNSRecord.question(name, qtype).pack())
        return DNSRecord.parse(await asyncio.wait_for(loop.sock_recv(sock, 4096), 5))


async def ask_tcp(server: str, port: int, name: str, qtype: str = "A") -> DNSRecord:
    """A DNS question over TCP (a 2-byte length before each message)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(server, port), 5)
    try:
        writer.write(frame(bytes(DNSRecord.question(name, qtype).pack())))
        size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 5))[0]
        return DNSRecord.parse(await asyncio.wait_for(reader.readexactly(size), 5))
    finally:
        writer.close()


async def ready_instances(node: Any, count: int) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        workload = await node.workload("echo")
        if workload["ready"] >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"echo not ready: {workload}")


async def test_round_robin_affinity_udp_dns_env_and_counters(start_node: Callable[..., Any]) -> None:
    network = service_network()
    settings, docs = documents(network)
    node = await start_node(docs, settings=settings)
    await ready_instances(node, 2)
    services = (await node.api.get("/api/v1/services")).json()
    address = services[0]["address"]
    assert address.startswith(network.rsplit(".", 1)[0] + "."), services
    assert services[0]["dns"] == "echo.default.svc"
    answers = [await ask(address, 7000) for _ in range(6)]
    instances = {a.split("|")[0] for a in answers}
    assert len(instances) == 2, answers
    assert all(a.split("|")[0] != b.split("|")[0] for a, b in itertools.pairwise(answers)), answers
    assert len({(await ask_udp(address, 7001)).split("|")[0] for _ in range(1)}) == 1

    # the DNS responder names the service three ways and nothing else
    dns_port = node.gateway.config.gateway.services.dns_port
    dns = str(node.gateway.services.dns_address())
    for name in ("echo.default.svc", "echo.default", "echo", "ECHO.default.svc."):
        reply = await query(dns, dns_port, name)
        assert [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A] == [address], (name, reply)
    missing = await query(dns, dns_port, "nope.default.svc")
    assert missing.header.rcode == RCODE.NXDOMAIN
    srv = await ask_tcp(dns, dns_port, "_udp._udp.echo.default.svc", "SRV")  # TCP on the same port, SRV as k8s
    assert [(rr.rdata.port, str(rr.rdata.target)) for rr in srv.rr] == [(7001, "echo.default.svc.")]
    assert [str(rr.rdata) for rr in srv.ar] == [address]
    aaaa = await query(dns, dns_port, "echo.default.svc", "AAAA")
    assert aaaa.header.rcode == RCODE.NOERROR and aaaa.rr == []

    # the apps were given the service's address and port
    logs = (await node.api.get("/api/v1/workloads/default/echo/logs")).text
    assert f"'ECHO_SERVICE_HOST': '{address}'" in logs and "'ECHO_SERVICE_PORT': '7000'" in logs, logs[:2000]

    view = (await node.api.get("/api/v1/services/default/echo")).json()
    local = [c for c in view["counters"] if c["path"] == "local" and c["port"] == "tcp"]
    assert sum(c["connections"] for c in local) == 6 and len(local) == 2, view["counters"]
    assert sum(c["bytes_out"] for c in local) == sum(len(a) for a in answers)
    assert any(c["port"] == "udp" and c["connections"] >= 1 for c in view["counters"])
    metrics = (await node.api.get("/metrics")).text
    assert 'fieldgate_service_connections_total{endpoint="edge-1/' in metrics
    assert 'path="local",port="tcp",service="echo"} 3.0' in metrics, metrics[-3000:]
    dns_figures = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
                   if line.startswith("fieldgate_dns_")}
    assert dns_figures["fieldgate_dns_queries_total"] >= 7 and dns_figures["fieldgate_dns_answered_total"] >= 5, \
        dns_figures  # the names asked above, over UDP and TCP


async def test_client_ip_affinity_pins_one_instance(start_node: Callable[..., Any]) -> None:
    settings, docs = documents(service_network(), affinity="ClientIP")
    node = await start_node(docs, settings=settings)
    await ready_instances(node, 2)
    address = (await node.api.get("/api/v1/services")).json()[0]["address"]
    answers = {(await ask(address, 7000)).split("|")[0] for _ in range(6)}
    assert len(answers) == 1, answers


async def test_a_stopped_instance_is_left_out(start_node: Callable[..., Any]) -> None:
    settings, docs = documents(service_network(), replicas=1)
    node = await start_node(docs, settings=settings)
    await ready_instances(node, 1)
    address = (await node.api.get("/api/v1/services")).json()[0]["address"]
    assert (await ask(address, 7000)).startswith("echo")
    stopped = await node.api.post("/api/v1/workloads/default/echo/stop")
    assert stopped.status_code == 202, stopped.text
    deadline = time.monotonic() + DEADLINE
    for _ in range(int(DEADLINE * 10)):
        if not (await node.workload("echo"))["ready"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    reader, writer = await asyncio.open_connection(address, 7000)
    assert await asyncio.wait_for(reader.read(10), 5) == b""  # no instance: the proxy closes at once
    writer.close()


async def test_bad_services_are_refused_by_the_api(start_node: Callable[..., Any]) -> None:
    settings, _ = documents(service_network())
    node = await start_node("", settings=settings)
    bad = await node.api.post("/api/v1/services", json={"name": "x", "ports": [{"port": 70000}], "workload": "a"})
    assert bad.status_code == 400 and "$.ports[0].port" in bad.text, bad.text
    both = await node.api.post("/api/v1/services", json={"name": "x", "ports": [{"port": 1}], "workload": "a",
                                                          "selector": {"a": "b"}})
    assert both.status_code == 400 and "give either selector or workload" in both.text, both.text
    forged = [{"node": "elsewhere", "instance": "i", "address": "127.0.0.1:1", "ready": True, "ports": {"7100": 1}}]
    made = await node.api.post("/api/v1/services", json={"name": "x", "ports": [{"port": 7100}], "workload": "a",
                                                          "endpoints": forged})
    assert made.status_code == 201, made.text
    assert made.json()["endpoints"] == []  # only the registry's endpoints count
    assert (await node.clients["viewer"].post("/api/v1/services", json={})).status_code == 403
    gone = await node.api.delete("/api/v1/services/default/x")
    assert gone.status_code == 200
    assert (await node.api.get("/api/v1/services/default/x")).status_code == 404





async def no_dns_answer(server: str, port: int, name: str) -> bool:
    """Whether nothing answers DNS there, over UDP (within a second) and TCP."""
    try:
        await asyncio.wait_for(query(server, port, name), 1.0)
    except (OSError, TimeoutError):
        pass
    else:
        return False
    try:
        await ask_tcp(server, port, name)
    except OSError:
        return True
    return False


async def test_changed_services_settings_apply_at_a_reload(start_node: Callable[..., Any],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """A reload re-binds what the changed `services` settings concern, logged, and nothing else: a new DNS port
    leaves the proxies as they were; new addresses move the proxies and the DNS responder, and connections opened
    before go on."""
    caplog.set_level(logging.INFO, logger="gateway.services")
    network = service_network()
    settings, docs = documents(network, replicas=1)
    node = await start_node(docs, settings=settings)
    await ready_instances(node, 1)
    gateway = node.gateway
    path = gateway.configuration.config_path
    assert path is not None
    mesh = gateway.services
    old_address, old_dns = mesh.address_of("default", "echo"), mesh.dns_address()
    old_port = gateway.config.gateway.services.dns_port
    assert old_address is not None and (await ask(old_address, 7000)).startswith("echo")
    reader, writer = await asyncio.open_connection(old_address, 7000)  # open across both reloads
    writer.write(b"who")
    assert (await asyncio.wait_for(reader.read(4096), 5)).startswith(b"echo")
    servers = list(mesh.services[("default", "echo")].servers)

    new_port = free_port()
    path.write_text(path.read_text().replace(f"dns_port: {old_port}", f"dns_port: {new_port}"))
    await gateway.configuration.reload_files()
    assert gateway.config.gateway.services.dns_port == new_port
    assert mesh.services[("default", "echo")].servers == servers  # the proxies did not move
    assert [str(rr.rdata) for rr in (await ask_tcp(old_dns, new_port, "echo")).rr] == [old_address]
    assert [str(rr.rdata) for rr in (await query(old_dns, new_port, "echo")).rr] == [old_address]
    assert await no_dns_answer(old_dns, old_port, "echo")

    while (moved_to := service_network()) == network:
        continue
    path.write_text(path.read_text().replace(network, moved_to))
    await gateway.configuration.reload_files()
    new_address, new_dns = mesh.address_of("default", "echo"), mesh.dns_address()
    assert new_address is not None and new_address.rsplit(".", 1)[0] == moved_to.rsplit(".", 1)[0], new_address
    assert (await ask(new_address, 7000)).startswith("echo")
    try:
        await ask(old_address, 7000)
    except OSError:
        pass
    else:
        raise AssertionError(f"the service still answers at its old address {old_address}")
    assert [str(rr.rdata) for rr in (await query(new_dns, new_port, "echo.default.svc")).rr] == [new_address]
    assert await no_dns_answer(old_dns, new_port, "echo")
    writer.write(b"who")  # the connection opened before the move goes on
    assert (await asyncio.wait_for(reader.read(4096), 5)).startswith(b"echo")
    writer.close()
    assert [e["event"] for e in mesh.events if e["service"] == "default/echo"][-1] == "moved"
    view = (await node.api.get("/api/v1/services/default/echo")).json()
    assert view["address"] == new_address and view["problems"] == []
    logged = caplog.text
    assert f"the DNS responder moves to {old_dns}:{new_port}" in logged, logged[-3000:]
    assert f"addresses {network} → {moved_to}: the proxies move" in logged
