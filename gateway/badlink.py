"""A bad link for tests: a small asyncio TCP proxy on loopback between a client and a server port that adds latency,
caps bandwidth, stalls, resets connections (at random, seeded, or when told), corrupts a byte at a given offset and
can refuse WebSocket upgrades. Needs nothing but the standard library; tests start it and stop it.

    link = BadLink(target_port, seed=1)
    await link.start()               # or link.start_in_thread() from a test that is not async
    link.conditions.latency = 0.05   # seconds each way; change any condition while connections run
    link.conditions.shared_bandwidth = 2e6  # bytes/s each way for all connections together
    link.reset_all()                 # every open connection reset now (RST)
    link.conditions.cut = {"down": 300_000}  # 300 kB more go down, then the connection carrying them is reset

The channel and the HTTPS API are TLS: bytes the proxy changes in flight break the TLS record they are in (the
connection fails), and it cannot see an `Upgrade:` header. For those two it terminates TLS (`tls=TlsTermination(…)`):
it answers the client with the server's certificate and dials the server with the client's own certificate, so both
ends still authenticate each other's identities while the proxy sees and changes the plaintext.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

CHUNK = 16 << 10
HEAD_LIMIT = 16 << 10
QUEUED_CHUNKS = 8  # chunks the proxy holds per direction and connection
_UPGRADE = re.compile(rb"(?im)^upgrade:[ \t]*websocket")
REFUSAL = (b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 29\r\nConnection: close\r\n\r\n"
           b"WebSocket upgrades are blocked")


@dataclass
class LinkConditions:
    """What the link does now; tests change these while it runs."""

    latency: float = 0.0  # seconds added to every chunk, each way
    bandwidth: float | None = None  # bytes per second, each way and connection (None: as fast as loopback)
    shared_bandwidth: float | None = None  # bytes per second each way for all connections together, as one narrow
    # uplink that a node's connections share (in turn, chunk by chunk)
    stalled: bool = False  # nothing is forwarded while set (the connections stay open)
    reset_rate: float = 0.0  # resets per second and connection, drawn from the seeded random generator
    refuse_upgrades: bool = False  # a request with `Upgrade: websocket` gets 403 (needs TLS termination for TLS)
    corrupt: dict[str, int] = field(default_factory=dict)  # direction "up"/"down" → offset of the byte to flip in
    # the stream that way of the first connection to get that far (then forgotten); each connection counts from its
    # own start, so connections already past the offset are left alone
    cut: dict[str, int] = field(default_factory=dict)  # direction → bytes that go through that way (on any
    # connection) before the connection carrying the next one is reset (RST), those bytes delivered (then forgotten):
    # a cut at a byte, wherever the frames and pieces of the protocol inside happen to be


@dataclass
class TlsTermination:
    """TLS on both sides of the proxy: `server` answers the client, `client` dials the target."""

    server: ssl.SSLContext
    client: ssl.SSLContext
    server_hostname: str = "127.0.0.1"


@dataclass
class LinkStats:
    connections: int = 0
    resets: int = 0
    refused_upgrades: int = 0
    corrupted: int = 0
    cuts: int = 0
    bytes_up: int = 0  # client → server
    bytes_down: int = 0


class _Connection:
    def __init__(self, link: BadLink, client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 server: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.link = link
        self.client = client
        self.server = server
        self.closed = False

    def reset(self) -> None:
        """Abort both sides with an RST (SO_LINGER 0)."""
        if self.closed:
            return
        self.closed = True
        for _, writer in (self.client, self.server):
            sock = writer.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()


class BadLink:
    """The proxy: listens on 127.0.0.1:`port` (free unless given) and forwards to 127.0.0.1:`target_port`."""

    def __init__(self, target_port: int, *, port: int = 0, seed: int = 0, tls: TlsTermination | None = None,
                 conditions: LinkConditions | None = None) -> None:
        self.target_port = target_port
        self.port = port
        self.tls = tls
        self.conditions = conditions or LinkConditions()
        self.random = random.Random(seed)
        self.stats = LinkStats()
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._free_at = {"up": 0.0, "down": 0.0}  # when the shared bandwidth takes the next chunk each way

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port,
                                                  ssl=self.tls.server if self.tls else None)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.reset()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    def reset_all(self) -> int:
        """Reset every open connection now; how many there were. Safe from any thread."""
        if self._loop is not None and self._thread is not None and threading.current_thread() is not self._thread:
            return asyncio.run_coroutine_threadsafe(self._reset_all(), self._loop).result(10)
        return self._reset_now()

    async def _reset_all(self) -> int:
        return self._reset_now()

    def _reset_now(self) -> int:
        connections = [c for c in self._connections if not c.closed]
        for connection in connections:
            connection.reset()
            self.stats.resets += 1
        return len(connections)

    @property
    def open_connections(self) -> int:
        return sum(1 for c in self._connections if not c.closed)

    # --- running in a thread of its own, for tests that are not async ----------------------------------------------

    def start_in_thread(self) -> BadLink:
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="badlink", daemon=True)
        self._thread.start()
        if not started.wait(10) or failure:
            raise RuntimeError(f"the bad link did not start: {failure}")
        return self

    def stop_thread(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    # --- one connection -------------------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        head = b""
        if self.conditions.refuse_upgrades:
            with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
                                     TimeoutError):
                async with asyncio.timeout(10):
                    head = await reader.readuntil(b"\r\n\r\n")
            if _UPGRADE.search(head[:HEAD_LIMIT]):
                self.stats.refused_upgrades += 1
                with contextlib.suppress(ConnectionError):
                    writer.write(REFUSAL)
                    await writer.drain()
                writer.close()
                return
        try:
            server = await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", self.target_port, ssl=self.tls.client if self.tls else None,
                server_hostname=self.tls.server_hostname if self.tls else None), 10)
        except (OSError, TimeoutError, ssl.SSLError):
            writer.transport.abort()
            return
        connection = _Connection(self, (reader, writer), server)
        self._connections.add(connection)
        pumps = [self._spawn(self._pump(connection, reader, server[1], "up", head)),
                 self._spawn(self._pump(connection, server[0], writer, "down", b"")),
                 self._spawn(self._random_resets(connection))]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        connection.closed = True
        for task in pumps:
            task.cancel()
        for _, each in (connection.client, connection.server):
            each.transport.abort()
        self._connections.discard(connection)

    def _spawn(self, coroutine: Any) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _random_resets(self, connection: _Connection) -> None:
        while not connection.closed:
            await asyncio.sleep(0.1)
            rate = self.conditions.reset_rate
            if rate > 0 and self.random.random() < rate * 0.1:
                connection.reset()
                self.stats.resets += 1
                return

    async def _pump(self, connection: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    direction: str, first: bytes) -> None:
        """Read chunks and deliver each after the latency, at the bandwidth, in order."""
        queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue(QUEUED_CHUNKS)  # beyond: TCP pushes back
        offset = 0

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if data is None:  # the cut: what came before it is delivered (and given a moment to arrive)
                    await asyncio.sleep(0.05)
                    connection.reset()
                    self.stats.resets += 1
                    return
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                for _ in range(30_000):  # a stall holds for 10 minutes at most
                    if not self.conditions.stalled:
                        break
                    await asyncio.sleep(0.02)
                if shared := self.conditions.shared_bandwidth:
                    now = time.monotonic()
                    turn = max(now, self._free_at[direction])
                    self._free_at[direction] = turn + len(data) / shared
                    if turn > now:
                        await asyncio.sleep(turn - now)
                writer.write(data)
                await writer.drain()
                if direction == "up":
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                if self.conditions.bandwidth:
                    await asyncio.sleep(len(data) / self.conditions.bandwidth)

        sender = asyncio.create_task(deliver())
        try:
            data = first
            while True:
                if not data:
                    chunk_size = CHUNK
                    if cap := self.conditions.bandwidth or self.conditions.shared_bandwidth:  # small chunks: the cap
                        chunk_size = max(512, min(CHUNK, int(cap / 50)))  # is smooth, not bursts of 16 KiB
                    data = await reader.read(chunk_size)
                    if not data:
                        await queue.put((time.monotonic() + self.conditions.latency, b""))
                        await sender
                        return
                corrupt_at = self.conditions.corrupt.get(direction)
                if corrupt_at is not None and offset <= corrupt_at < offset + len(data) and \
                        self.conditions.corrupt.pop(direction, None) is not None:
                    index = corrupt_at - offset
                    data = data[:index] + bytes([data[index] ^ 0xFF]) + data[index + 1:]
                    self.stats.corrupted += 1
                left = self.conditions.cut.get(direction)
                if left is not None and left >= len(data):
                    self.conditions.cut[direction] = left - len(data)
                elif left is not None and self.conditions.cut.pop(direction, None) is not None:
                    self.stats.cuts += 1
                    due = time.monotonic() + self.conditions.latency
                    if left:
                        await queue.put((due, data[:left]))
                    await queue.put((due, None))
                    await sender
                    return
                offset += len(data)
                await queue.put((time.monotonic() + self.conditions.latency, data))
                data = b""
                if sender.done():
                    sender.result()
                    return
        except (ConnectionError, OSError, ssl.SSLError, asyncio.IncompleteReadError):
            return
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError, ssl.SSLError):
                await sender


@contextlib.contextmanager
def bad_link(target_port: int, **options: Any) -> Iterator[BadLink]:
    """A BadLink running in a thread of its own for the block (tests with real processes)."""
    link = BadLink(target_port, **options).start_in_thread()
    try:
        yield link
    finally:
        link.stop_thread()
