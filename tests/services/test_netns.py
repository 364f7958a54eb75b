"""Sockets opened inside another network namespace (gateway.services.netns), in a namespace the test makes with
`ip netns add` and removes: a TCP listener and a UDP socket there answer a client inside it and not one outside;
the caller's thread stays in its own namespace; one socket that cannot bind does not stop the others; closed, they
refuse; without CAP_SYS_ADMIN entering is refused with a PermissionError."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from gateway.services.netns import Listen, Namespace, close_sockets, entering_problem, in_thread, open_sockets
from gateway.testing import free_port, without_capability

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

# a client run inside the namespace: TCP then UDP to the address, each answer printed
CLIENT = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    with socket.create_connection((host, port), timeout=5) as tcp:
        tcp.sendall(b"ping")
        print("tcp", tcp.recv(100).decode())
except OSError as exc:
    print("tcp", type(exc).__name__)
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
    udp.settimeout(1)
    udp.connect((host, port))  # so that a port nobody listens on is said (ICMP)
    udp.send(b"ping")
    try:
        print("udp", udp.recv(100).decode())
    except OSError as exc:
        print("udp", type(exc).__name__)
"""


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"fgt{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=30)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


async def client_inside(netns: str, host: str, port: int) -> list[str]:
    process = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", netns, sys.executable, "-c", CLIENT, host, str(port), stdout=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        out, _ = await process.communicate()
    return out.decode().splitlines()


def own_namespace() -> str:
    return os.readlink("/proc/thread-self/ns/net")


async def test_sockets_opened_inside_answer_only_inside_and_close(netns: str) -> None:
    host = f"127.{random.randint(100, 250)}.{random.randint(0, 255)}.{random.randint(2, 254)}"
    port = free_port()
    namespace = Namespace(f"/run/netns/{netns}")
    before = own_namespace()
    try:
        assert not namespace.is_own()
        tcp, udp, unbindable = await namespace.open([Listen(host, port, "TCP"), Listen(host, port, "UDP"),
                                                     Listen("192.0.2.1", port, "TCP")])
        assert own_namespace() == before  # the loop's thread never moved
        assert isinstance(tcp, socket.socket) and isinstance(udp, socket.socket)
        assert isinstance(unbindable, OSError)  # no such address in there: said, the others opened all the same
        assert tcp.getsockname() == (host, port) and udp.getsockname() == (host, port)

        loop = asyncio.get_running_loop()

        async def serve_tcp() -> None:
            connection, _ = await loop.sock_accept(tcp)
            with connection:
                data = await loop.sock_recv(connection, 100)
                await loop.sock_sendall(connection, b"tcp-inside-" + data)

        async def serve_udp() -> None:
            data, peer = await loop.sock_recvfrom(udp, 100)
            await loop.sock_sendto(udp, b"udp-inside-" + data, peer)

        servers = [asyncio.create_task(serve_tcp()), asyncio.create_task(serve_udp())]
        assert await client_inside(netns, host, port) == ["tcp tcp-inside-ping", "udp udp-inside-ping"]
        await asyncio.gather(*servers)

        with pytest.raises(OSError):  # not in the gateway's own namespace
            socket.create_connection((host, port), timeout=2).close()

        tcp.close()
        udp.close()
        assert await client_inside(netns, host, port) == ["tcp ConnectionRefusedError", "udp ConnectionRefusedError"]
    finally:
        namespace.close()
    assert namespace.fd == -1


def test_a_namespace_closed_or_a_waiter_gone_while_its_thread_opens(netns: str) -> None:
    """The thread enters through a copy of the namespace's descriptor (the namespace may be closed meanwhile, and
    its number taken by another file), and what it opened for a waiter that is gone is closed, not left to leak."""
    namespace = Namespace(f"/run/netns/{netns}")
    go = threading.Event()
    kept: list[socket.socket | OSError] = []

    def slow() -> list[socket.socket | OSError]:
        go.wait(10)
        kept.extend(open_sockets([Listen("127.0.0.1", free_port(), "TCP")]))
        return kept

    discarded = threading.Event()
    opening = in_thread(namespace.fd, slow, lambda opened: (close_sockets(opened), discarded.set()))
    namespace.close()  # the number is free: the next file opened may take it
    with open("/dev/null", "rb"):
        assert opening.cancel()  # the waiter gives up
        go.set()
        assert discarded.wait(10)
    assert len(kept) == 1 and isinstance(kept[0], socket.socket) and kept[0].fileno() == -1  # closed
    namespace = Namespace(f"/run/netns/{netns}")
    inode = namespace.inode
    try:
        seen = in_thread(namespace.fd, lambda: os.stat("/proc/thread-self/ns/net").st_ino)
        namespace.close()  # before the thread may have entered: it entered all the same, and the right one
        assert seen.result(10) == inode
    finally:
        namespace.close()


def test_the_blocking_form_and_a_namespace_of_a_pid(netns: str) -> None:
    holder = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "60"])
    try:
        for _ in range(100):  # until `ip netns exec` has entered it and become the sleep
            if os.readlink(f"/proc/{holder.pid}/ns/net") != own_namespace():
                break
            threading.Event().wait(0.05)
        namespace = Namespace.of(holder.pid)
        try:
            assert os.stat(f"/run/netns/{netns}").st_ino == namespace.inode
            opened = namespace.open_blocking([Listen("127.0.0.1", free_port(), "TCP")])
            assert isinstance(opened[0], socket.socket)
            opened[0].close()
        finally:
            namespace.close()
    finally:
        holder.kill()
        holder.wait()


def test_without_the_privilege_entering_is_refused(netns: str) -> None:
    namespace = Namespace(f"/run/netns/{netns}")
    found: list[BaseException] = []
    probed: list[str] = []

    def attempt() -> None:  # a thread of its own: the capability is dropped for it (and what it starts) alone
        with without_capability():
            probed.append(entering_problem())
            try:
                namespace.open_blocking([Listen("127.0.0.1", free_port(), "TCP")])
            except BaseException as exc:
                found.append(exc)

    try:
        worker = threading.Thread(target=attempt)
        worker.start()
        worker.join(30)
    finally:
        namespace.close()
    assert len(found) == 1 and isinstance(found[0], PermissionError), found
    assert "setns into the container's network namespace: Operation not permitted" in str(found[0])
    # the probe a runtime asks before it names the responder as a container's DNS server
    assert probed == ["[Errno 1] setns into the container's network namespace: Operation not permitted"], probed
    assert entering_problem() == ""
