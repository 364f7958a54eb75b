"""One transport (a TCP connection or a serial bus) shared by every device on it.

Devices on the same serial port, or behind the same TCP address, share one client, its request slots and, on a
serial line, the silence between frames. A link has one slot unless a Modbus TCP device on it asks for more
(`max_inflight`): then it keeps that many requests outstanding on its one connection (`pipeline`), matched by
transaction id, and hands the slots out in the order they were asked for, so no device starves another.

A request never waits longer than its timeout for an answer; a link that cannot connect backs off exponentially
(with jitter) and fails fast in between: a dead device costs the others at most one timeout. It logs when it goes
down and when it is back (a reminder every few minutes in between), not every attempt: its devices share it, and
each of them logs only its own change of state.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from fieldgate_modbus.config import RtuConfig, TcpConfig
from fieldgate_modbus.frames import register_answers
from fieldgate_modbus.pipeline import PipelinedTcpClient
from gateway.errors import DeviceTimeout, ProtocolError
from gateway.logs import Throttle

log = logging.getLogger(__name__)


BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
STILL_DOWN_EVERY = 300.0  # seconds between the lines of a link that stays down
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


class ExceptionAnswer(ProtocolError):
    """The device answered with a Modbus exception code (`code`)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class NotConnected(ProtocolError):
    """The link could not connect, or waits out its backoff; retrying at once would not help."""


Client = AsyncModbusTcpClient | AsyncModbusSerialClient | PipelinedTcpClient


class Link:
    """A shared client with its request slots, frame gap, reconnect backoff and user count."""

    def __init__(self, key: str, config: TcpConfig | RtuConfig) -> None:
        self.key = key
        self.config = config
        self.slots = asyncio.Semaphore(1)  # requests on the wire at once; waiters are served first come first
        self.width = 1
        self._connecting = asyncio.Lock()
        self.gap = config.frame_gap() if isinstance(config, RtuConfig) else 0.0
        self.users = 0
        self._client: Client | None = None
        self._last_frame = 0.0
        self._failures = 0  # connect attempts that failed in a row
        self._next_attempt = 0.0
        self._down_since: float | None = None  # when the first of those failed (time.monotonic())
        self._reason = ""
        self._still_down = Throttle(log, STILL_DOWN_EVERY)

    @property
    def down(self) -> bool:
        """The last connect attempt failed: the link waits out its backoff and fails its requests at once."""
        return self._down_since is not None

    @property
    def pipelined(self) -> bool:
        """More than one request may be outstanding: the connection is a PipelinedTcpClient's."""
        return self.width > 1

    def widen(self, width: int) -> None:
        """Let `width` requests be outstanding at once (a device asking for more than the link allows so far).

        A link never narrows while it has users: a device that leaves keeps its slots open for the others."""
        if isinstance(self.config, RtuConfig):
            return  # a serial bus carries one request at a time
        while self.width < width:
            self.width += 1
            self.slots.release()
        if isinstance(self._client, PipelinedTcpClient):
            self._client.max_outstanding = self.width

    def _new_client(self) -> Client:
        # pymodbus' own retries and reconnects are off: this class owns both, with bounded waits
        c = self.config
        client: AsyncModbusTcpClient | AsyncModbusSerialClient
        if isinstance(c, TcpConfig) and self.pipelined:
            return PipelinedTcpClient(c.host, port=c.port, timeout=c.timeout, max_outstanding=self.width)
        if isinstance(c, TcpConfig):
            client = AsyncModbusTcpClient(c.host, port=c.port, timeout=c.timeout, retries=0, reconnect_delay=0)
            register_answers(client)
            return client
        client = AsyncModbusSerialClient(
            c.port,
            baudrate=c.baudrate,
            bytesize=c.bytesize,
            parity=c.parity,
            stopbits=c.stopbits,
            timeout=c.timeout,
            retries=0,
            reconnect_delay=0,
        )
        register_answers(client)
        return client

    @property
    def connected(self) -> bool:
        client = self._client
        # a link widened after it connected one request at a time reconnects to pipeline
        return client is not None and client.connected and isinstance(client, PipelinedTcpClient) == self.pipelined

    async def connect(self, timeout: float) -> None:
        """Connect unless connected; within the backoff window after a failure, fail at once.

        The devices of a link start together: one of them connects, the others wait for that attempt and share
        its outcome (a serial port opens only once, so a second try at the same time would fail on its lock).
        """
        if self.connected:
            return
        cancels = _cancels()
        async with self._connecting:
            if not self.connected:
                await self._connect(timeout)
        _raise_lost_cancel(cancels, f"{self.key}: connecting")

    async def _connect(self, timeout: float) -> None:
        now = time.monotonic()
        if now < self._next_attempt:
            raise NotConnected(
                f"{self.key}: not connected ({self._reason}); next attempt in {self._next_attempt - now:.1f}s"
            )
        self.drop()
        client = self._new_client()
        try:
            async with asyncio.timeout(timeout):
                ok = await client.connect()
        except (TimeoutError, OSError, ModbusException) as exc:
            ok = False
            reason = str(exc) or type(exc).__name__
        else:
            reason = "refused or unreachable"
        if not ok:
            client.close()
            self._failures += 1
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (self._failures - 1)) * random.uniform(0.5, 1.0)
            self._next_attempt = time.monotonic() + delay
            self._reason = f"cannot connect: {reason}"
            self._log_down(reason, delay)
            raise NotConnected(f"{self.key}: cannot connect ({reason}); next attempt in {delay:.1f}s")
        if self._down_since is not None:
            log.info("%s: connected again after %d failed attempts in %.0f s", self.key, self._failures,
                     time.monotonic() - self._down_since)
            self._still_down = Throttle(log, STILL_DOWN_EVERY)  # the next outage is logged at once
        self._client, self._failures, self._next_attempt, self._down_since = client, 0, 0.0, None

    def _log_down(self, reason: str, delay: float) -> None:
        """One line when the link goes down, then one every STILL_DOWN_EVERY while it stays down: its devices
        share it, so this line speaks for all of them (each logs only its own change of state)."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            message = "%s: cannot connect (%s); next attempt in %.1f s, then backing off to one every %g s"
            self._still_down.log(logging.WARNING, "down", message, self.key, reason, delay, BACKOFF_MAX)
            return
        down_for = time.monotonic() - self._down_since
        log.debug("%s: connect attempt %d failed (%s); next attempt in %.1f s", self.key, self._failures, reason,
                  delay)
        self._still_down.log(logging.WARNING, "down", "%s: still cannot connect (%s) after %d attempts in %.0f s; "
                             "next attempt in %.1f s", self.key, reason, self._failures, down_for, delay)

    def drop(self, client: Client | None = None) -> None:
        """Forget the connection (after garbage or a hang-up) so the next request starts clean.

        With `client`, only if that is still the connection: of several requests failed by one lost connection,
        the later ones must not hang up the connection the first one has made since."""
        if self._client is not None and (client is None or client is self._client):
            current, self._client = self._client, None
            current.close()

    async def request(
        self, what: str, call: Callable[[Any], Awaitable[Any]], *, timeout: float, retries: int
    ) -> Any:
        """Run `call(client)` in one of the link's slots; garbled answers and hang-ups are retried `retries`
        times, a timeout is not (the poller asks again next cycle)."""
        cancels = _cancels()
        if self.slots.locked():  # other requests fill the link: wait for one of them, within bounds
            try:
                async with asyncio.timeout(timeout * (retries + 1) * 4 + 1):
                    await self.slots.acquire()
            except TimeoutError:
                raise DeviceTimeout(f"{what}: the bus {self.key} stayed busy") from None
        else:
            await self.slots.acquire()  # free: taken at once, without a timer
        try:
            attempt = 0
            while True:
                try:
                    response = await self._once(what, call, timeout)
                    _raise_lost_cancel(cancels, what)
                    return response
                except (DeviceTimeout, ExceptionAnswer, NotConnected):
                    raise
                except ProtocolError:
                    attempt += 1
                    if attempt > retries:
                        raise
        finally:
            self.slots.release()

    async def _once(self, what: str, call: Callable[[Any], Awaitable[Any]], timeout: float) -> Any:
        await self.connect(timeout)
        client = self._client
        asked = time.monotonic()
        if self.gap:
            pause = self._last_frame + self.gap - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
        try:
            # pymodbus times out by itself after `timeout`; the outer bound guards against a stuck transport
            async with asyncio.timeout(timeout + 0.5):
                response = await call(client)
        except TimeoutError:
            if not isinstance(client, PipelinedTcpClient):
                self.drop(client)  # one at a time, a late answer would be taken for the next request's
            elif not client.heard_since(asked):
                # a pipelined connection matches answers by transaction id and drops a late one, so while others'
                # answers come it stays; silent since this request was sent, it is dead or hung: it is made
                # again, and the requests still outstanding on it end as timeouts too (not retried, as one at a
                # time: a silent device is asked again at the next poll)
                client.close(TimeoutError(f"{self.key}: the connection is silent"))
                self.drop(client)
            raise DeviceTimeout(f"{what}: no answer within {timeout:g}s") from None
        except ConnectionException as exc:
            self.drop(client)
            raise ProtocolError(f"{what}: connection lost ({exc})") from exc
        except ModbusIOException as exc:
            text = str(exc).lower()
            timed_out = "no response" in text or "timeout" in text  # pymodbus 3.16 on a serial line: "No response"
            if isinstance(client, PipelinedTcpClient):
                pass  # a whole frame with this request's transaction id: the stream is in step, only it failed
            elif isinstance(self.config, TcpConfig) or not timed_out:
                # over TCP a late answer would be taken for the next one's; on a serial line the frame gap and
                # the unit id keep them apart, and reopening the port for every silent unit would stall its bus
                self.drop(client)
            if timed_out:
                raise DeviceTimeout(f"{what}: no answer within {timeout:g}s") from exc
            raise ProtocolError(f"{what}: {exc}") from exc
        except ModbusException as exc:
            self.drop(client)
            raise ProtocolError(f"{what}: bad answer ({exc})") from exc
        except (OSError, ValueError, IndexError, TypeError, KeyError) as exc:
            self.drop(client)
            raise ProtocolError(f"{what}: bad answer ({type(exc).__name__}: {exc})") from exc
        finally:
            self._last_frame = time.monotonic()
        if response is None:
            self.drop(client)
            raise ProtocolError(f"{what}: no usable answer")
        if response.isError():
            code = int(getattr(response, "exception_code", 0) or 0)
            name = EXCEPTION_NAMES.get(code, "unknown exception")
            raise ExceptionAnswer(f"{what}: device answered exception {code} ({name})", code)
        return response

    def close(self) -> None:
        self.drop()


def _cancels() -> int:
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def _raise_lost_cancel(cancels: int, what: str) -> None:
    """Raise the cancel that pymodbus dropped, if it did: more cancels were asked for than `cancels` before.

    pymodbus waits with asyncio.wait_for, which on Python 3.11 returns the answer (or the connection) and drops a
    cancel that arrives with it (CPython gh-86296). Under load that is common, and the device task would go on
    polling: a gateway that stops would wait for it for good. A cancel that was delivered never gets here, and a
    timeout of ours that fired and was dropped has taken its request back (`uncancel`) when its block ended.
    """
    if _cancels() > cancels:
        raise asyncio.CancelledError(f"{what}: cancelled as the answer came")


_links: dict[str, tuple[asyncio.AbstractEventLoop, Link]] = {}


def acquire(key: str, config: TcpConfig | RtuConfig) -> Link:
    """The link for `key` in the running loop, created on first use; release it with `release`."""
    loop = asyncio.get_running_loop()
    entry = _links.get(key)
    if entry is None or entry[0] is not loop or entry[0].is_closed():
        entry = (loop, Link(key, config))
        _links[key] = entry
    link = entry[1]
    if isinstance(config, RtuConfig) and isinstance(link.config, RtuConfig):
        mine = (config.baudrate, config.bytesize, config.parity, config.stopbits)
        theirs = (link.config.baudrate, link.config.bytesize, link.config.parity, link.config.stopbits)
        if mine != theirs:
            if link.users:
                raise ProtocolError(
                    f"{key}: devices on one serial port disagree on its settings: {mine} vs {theirs}"
                )
            link = Link(key, config)  # a link kept while down, for settings nobody uses any more
            _links[key] = (loop, link)
    link.users += 1
    if isinstance(config, TcpConfig):
        link.widen(config.max_inflight)
    return link


def release(link: Link) -> None:
    link.users -= 1
    if link.users <= 0:
        link.close()
        entry = _links.get(link.key)
        # A link that is down stays known: its devices let go of it between their attempts, and a new link for
        # the same address would start its backoff (and its log line) over again on every attempt.
        if entry is not None and entry[1] is link and not link.down:
            del _links[link.key]
