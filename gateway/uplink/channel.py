"""The node's side of the channel: one WebSocket over mutual TLS (the node certificate) to the registry, the normal
path of everything between them; HTTPS heartbeats and message polls (gateway.uplink.client) only while it is down.

It dials the address the registry announces (join and heartbeat answers: `[:PORT]PATH` on the registry's host;
`channel_url` in registry.json overrides it), says what it has (Hello), then heartbeats over it every interval and
applies the registry's pushes as they come: documents by resource version, desired values by version (each applied
once, however often a flapping link brings it), messages by id, requests answered with an Answer frame. A push is
acknowledged once applied (messages: once durable in the routes' outboxes). Byte streams: `open_stream(kind, meta)`
and `handlers[kind]` for the streams the registry opens (gateway.channel).

A dropped connection is dialled again after a backoff (RECONNECT_MIN doubling to RECONNECT_MAX, with jitter; a
connection that lasted STABLE_AFTER or carried USEFUL_BYTES starts it over); while it is down the HTTPS loops run.
An upgrade answered with an HTTP status (a proxy that refuses WebSockets: 403, 400) puts the node on HTTPS polling
(`fallback`), trying the channel again every `channel_retry` s (registry.json, default 60); a registry that refuses
the node's certificate (Refused frame) is tried again after RECONNECT_MAX.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

import httpx
import msgspec

from gateway.channel import (
    PROBE_KIND,
    ChannelError,
    Multiplexer,
    Stream,
    StreamHandler,
    decode_frame,
    discard,
    encode_frame,
)
from gateway.wire import (
    CHANNEL_OFF,
    CHANNEL_PATH,
    LOGS_NAMESPACE,
    MAX_CHANNEL_FRAME,
    Ack,
    Answer,
    Heartbeat,
    HeartbeatAnswer,
    HeartbeatRequest,
    HeartbeatResponse,
    Hello,
    Push,
    Refused,
    Welcome,
)

if TYPE_CHECKING:
    from gateway.uplink.client import Uplink

log = logging.getLogger(__name__)
TIMEOUT = 10.0
RECONNECT_MIN = 0.25
RECONNECT_MAX = 30.0
STABLE_AFTER = 10.0  # a connection that lasted this long starts the backoff over
USEFUL_BYTES = 1 << 20  # as does one that carried this many stream bytes (a transfer cut by a bad link, not a
# link that drops whatever goes over it)
WRITE_LIMIT = 32 << 10  # bytes the WebSocket buffers before a send waits: a bulk stream never queues much


class ChannelRefused(ChannelError):
    """The registry refused the node on the channel (Refused frame)."""


class UpgradeRefused(ChannelError):
    """The WebSocket upgrade was answered with an HTTP status (a proxy that blocks WebSockets, a registry without
    the channel)."""


def channel_url(registry_url: str, address: str) -> str:
    """The wss:// URL of the channel from the registry's https:// URL and its announced `[:PORT]PATH`."""
    if address.startswith("wss://"):
        return address
    parsed = urllib.parse.urlsplit(registry_url)
    port, path = (address[1:].split("/", 1) if address.startswith(":") else ("", address.lstrip("/")))
    host = parsed.hostname or "localhost"
    host = f"[{host}]" if ":" in host else host
    port = port or (str(parsed.port) if parsed.port else "")
    return f"wss://{host}{':' + port if port else ''}/{path}"





class ChannelLink:
    """The node's channel to the registry; `state` is connecting, connected, unreachable, refused, fallback or off;
    `polling` is set while the HTTPS loops should run."""

    def __init__(self, uplink: Uplink) -> None:
        self.uplink = uplink
        settings = uplink.settings
        self.address = settings.channel or CHANNEL_PATH
        self.retry = settings.channel_retry
        self.state = "connecting"
        self.reason = ""
        self.since = time.time()
        self.polling = asyncio.Event()
        self.up = False
        self.connects = 0
        self.handlers: dict[str, StreamHandler] = {PROBE_KIND: discard}
        self.mux: Multiplexer | None = None
        self.moved = 0  # bytes the last connection carried
        self._changed = asyncio.Event()  # the announced address changed: dial it now
        self._up_event = asyncio.Event()
        self._answers: dict[int, asyncio.Future[HeartbeatResponse]] = {}
        self._seq = 0

    @property
    def url(self) -> str:
        return self.uplink.settings.channel_url or channel_url(self.uplink.settings.url, self.address)

    def describe(self) -> dict[str, Any]:
        return {"state": self.state, "reason": self.reason, "since": self.since, "url": self.url,
                "connects": self.connects}

    def announced(self, address: str) -> None:
        """The registry said where its channel is (a heartbeat or join answer); "" from registries before it."""
        if address and address != self.address:
            log.info("the registry's channel is at %s now (was %s)", address, self.address)
            self.address = address
            self._changed.set()

    async def sleep_unless_up(self, seconds: float) -> None:
        """Sleep, or less when the channel comes up (the HTTPS loop then waits for `polling`)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up_event.wait(), seconds)

    async def open_stream(self, kind: str, meta: dict[str, Any] | None = None) -> Stream:
        """A byte stream to the registry's handler for `kind`; ChannelError while the channel is down."""
        if self.mux is None or not self.up:
            raise ChannelError(f"the channel to the registry is {self.state}")
        return await self.mux.open_stream(kind, meta)

    def _set(self, state: str, reason: str) -> None:
        if state != self.state:
            level = logging.INFO if state in ("connected", "connecting") else logging.WARNING
            log.log(level, "registry channel %s: %s (%s)", self.url, state, reason)
            self.since = time.time()
        self.state, self.reason = state, reason

    async def run(self) -> None:
        """Keep the channel up: dial, run, back off and dial again, for as long as the gateway runs."""
        from gateway.uplink.join import client_ssl_context, expired_certificate

        context = client_ssl_context(self.uplink.gateway.data_dir)
        attempt = 0
        async with httpx.AsyncClient(base_url=self.uplink.settings.url, verify=context, timeout=TIMEOUT) as client:
            while True:
                if self.address == CHANNEL_OFF and not self.uplink.settings.channel_url:
                    self._set("off", "the registry has no channel: HTTPS polling")
                    self.polling.set()
                    self._changed.clear()
                    await self._changed.wait()
                    continue
                started = time.monotonic()
                self.moved = 0
                wait = 0.0
                try:
                    await self._session(client, context)
                except UpgradeRefused as exc:
                    self._set("fallback", f"{exc}: HTTPS polling, the channel is tried again every {self.retry:g} s")
                    wait = self.retry
                except ChannelRefused as exc:
                    self._set("refused", str(exc))
                    wait = RECONNECT_MAX
                except (OSError, TimeoutError, ChannelError, msgspec.DecodeError) as exc:
                    if expired := expired_certificate(self.uplink.gateway.data_dir):
                        self._set("refused", expired)
                        wait = RECONNECT_MAX
                    else:
                        self._set("unreachable", f"{type(exc).__name__}: {exc}")
                except Exception as exc:
                    from websockets.exceptions import WebSocketException

                    if not isinstance(exc, WebSocketException):
                        raise
                    if expired := expired_certificate(self.uplink.gateway.data_dir):
                        self._set("refused", expired)
                        wait = RECONNECT_MAX
                    else:
                        self._set("unreachable", f"{type(exc).__name__}: {exc}")
                finally:
                    self.up = False
                    self._up_event.clear()
                    self.polling.set()
                if not wait:
                    useful = time.monotonic() - started > STABLE_AFTER or self.moved >= USEFUL_BYTES
                    attempt = 0 if useful else attempt + 1
                    wait = min(RECONNECT_MAX, RECONNECT_MIN * 2 ** min(attempt, 10)) * random.uniform(0.5, 1.0)
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), wait)

    async def _session(self, client: httpx.AsyncClient, context: Any) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidStatus

        try:
            socket = await connect(self.url, ssl=context, open_timeout=TIMEOUT, max_size=MAX_CHANNEL_FRAME,
                                   write_limit=WRITE_LIMIT, compression=None, ping_interval=20, ping_timeout=20,
                                   close_timeout=2)
        except InvalidStatus as exc:
            raise UpgradeRefused(f"WebSocket upgrade refused: HTTP {exc.response.status_code}") from None
        async with socket:
            twins = self.uplink.twins
            await socket.send(encode_frame(Hello(resource_version=self.uplink.resource_version,
                                                 desired_version=twins.desired_version)))
            async with asyncio.timeout(TIMEOUT):
                first = decode_frame(await _receive(socket))
            if isinstance(first, Refused):
                raise ChannelRefused(f"the registry refused the channel: {first.reason}")
            if not isinstance(first, Welcome):
                raise ChannelError(f"expected Welcome, got {type(first).__name__}")
            mux = Multiplexer(socket.send, odd=True, handlers=self.handlers)
            pushes: asyncio.Queue[Push] = asyncio.Queue()
            self.mux = mux
            self.up = True
            self.connects += 1
            self._up_event.set()
            self.polling.clear()
            self.uplink.interval = first.heartbeat_interval or self.uplink.interval
            self._set("connected", f"as node {first.node}")
            tasks = [asyncio.create_task(mux.run_writer(), name="channel writer"),
                     asyncio.create_task(self._heartbeats(client, mux), name="channel heartbeats"),
                     asyncio.create_task(self._apply_pushes(client, mux, pushes), name="channel pushes")]
            reader = asyncio.create_task(self._read(socket, mux, pushes), name="channel reader")
            try:
                done, _ = await asyncio.wait([reader, *tasks], return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # its exception ends the session
                raise ChannelError("the channel closed")
            except ConnectionClosed as exc:
                raise ChannelError(f"closed: {exc}") from None
            finally:
                for task in [reader, *tasks]:
                    task.cancel()
                await asyncio.gather(reader, *tasks, return_exceptions=True)
                for future in self._answers.values():
                    future.cancel()
                self._answers.clear()
                self.mux = None
                self.moved = mux.bytes_in + mux.bytes_out
                await mux.close("channel closed")

    async def _read(self, socket: Any, mux: Multiplexer, pushes: asyncio.Queue[Push]) -> None:
        while True:
            frame = decode_frame(await _receive(socket))
            if frame is None or mux.dispatch(frame):
                continue
            if isinstance(frame, Push):
                pushes.put_nowait(frame)
            elif isinstance(frame, HeartbeatAnswer):
                future = self._answers.pop(frame.seq, None)
                if future is not None and not future.done():
                    if frame.body is None:
                        future.set_exception(HeartbeatRefused(f"{frame.status} {frame.refused or 'refused'}"))
                    else:
                        future.set_result(frame.body)
            elif isinstance(frame, Refused):
                raise ChannelRefused(f"the registry refused the channel: {frame.reason}")
            # Ack (of an Answer) and Welcome need nothing more

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def _heartbeats(self, client: httpx.AsyncClient, mux: Multiplexer) -> None:
        uplink = self.uplink
        while True:
            async with uplink.beating:
                started = time.monotonic()
                body = msgspec.convert(uplink.heartbeat_body(), HeartbeatRequest)
                seq = self._next_seq()
                future: asyncio.Future[HeartbeatResponse] = asyncio.get_running_loop().create_future()
                self._answers[seq] = future
                mux.send_control(Heartbeat(seq=seq, body=body))
                try:
                    async with asyncio.timeout(TIMEOUT):
                        answer = await future
                except TimeoutError:
                    uplink.beat_failed()
                    raise ChannelError(f"no answer to a heartbeat within {TIMEOUT:g} s") from None
                except asyncio.CancelledError:
                    uplink.beat_failed()
                    raise
                except HeartbeatRefused as exc:  # as over HTTPS: what it carried goes with the next one
                    uplink.beat_refused(str(exc))
                else:
                    await uplink.beat_answered(client, answer, started)
            await asyncio.sleep(uplink.interval)

    async def _apply_pushes(self, client: httpx.AsyncClient, mux: Multiplexer, pushes: asyncio.Queue[Push]) -> None:
        """Apply the registry's pushes in order, each acknowledged once applied."""
        import base64

        from gateway.uplink.requests import request_answer

        uplink = self.uplink
        while True:
            push = await pushes.get()
            if push.documents is not None and push.resource_version is not None \
                    and push.resource_version != uplink.resource_version:
                await uplink.apply(push.resource_version, push.documents)
            if push.desired:
                await uplink.twins.apply_desired(push.desired)
            taken: list[str] = []
            for message in push.messages or []:
                taken.append(message.id)
                if not uplink.first_time(message.id):
                    continue
                payload = base64.b64decode(message.payload)
                if message.namespace == LOGS_NAMESPACE:
                    body = await request_answer(payload, message.path, uplink.gateway)
                    mux.send_control(Answer(seq=self._next_seq(), request=message.id, path=message.path, body=body))
                    continue
                uplink.deliver(message.namespace, message.path, payload)
            if taken:
                await uplink.gateway.flush()  # durable in the outboxes before the registry forgets them
            mux.send_control(Ack(seq=push.seq, desired_ack=uplink.twins.ack if push.desired else None,
                                 messages=taken))


class HeartbeatRefused(Exception):
    """The registry refused a heartbeat frame (status and reason), as it would have over HTTPS."""


async def _receive(socket: Any) -> bytes:
    data = await socket.recv()
    if isinstance(data, str):
        raise ChannelError("a text frame on the channel")
    return bytes(data)
