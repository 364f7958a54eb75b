"""One MQTT session with a broker, shared by every device that reads from it with the same login.

The link subscribes to the topic filters of its devices, hands each message to the devices whose filters match it
(each keeps the latest value per property with its arrival time, see `Feed`) and publishes their commands. It
reconnects forever with backoff and resubscribes; it logs when it goes down and when it is back (a reminder every
few minutes in between), not every attempt: its devices share it, and each of them logs only its own change of
state. Its task is supervised by the gateway (`mqtt <client id>@<host>:<port>` in the status) when there is one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiomqtt

from fieldgate_mqtt.config import topic_matches
from fieldgate_mqtt.payload import Message
from gateway.errors import ProtocolError
from gateway.logs import Throttle

if TYPE_CHECKING:
    from fieldgate_mqtt.feed import Feed
    from gateway.api import GatewayAPI

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 15.0
STILL_DOWN_EVERY = 300.0  # seconds between the lines of a link that stays down
CALL_TIMEOUT = 10.0  # seconds a connect, subscribe or publish may take
# Seconds a filter no device reads any more stays subscribed: devices stop together (a reload, the gateway's stop),
# and a link that closes meanwhile need not unsubscribe at all. Its messages go to nobody in between.
UNSUBSCRIBE_AFTER = 2.0
INCOMING_MAX = 10_000  # messages queued unread before the client drops new ones (a flood must not eat the memory)


@dataclass(frozen=True)
class Login:
    """Everything that makes a session: devices with equal logins share one."""

    host: str
    port: int
    tls: bool
    client_id: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive: int = 30

    @property
    def broker(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def describe(self) -> str:
        """The broker and client id, for log lines and errors (never the password)."""
        return f"{self.broker} (client {self.client_id})"

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file is not None:
                context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ProtocolError(f"{self.broker}: TLS files: {exc}") from None
        return context


def default_client_id(node: str, *session: object) -> str:
    """A client id of its own for each broker, login and TLS files of a node: two sessions with one id would throw
    each other off the broker, over and over."""
    digest = hashlib.sha256(repr(session).encode()).hexdigest()[:8]
    return f"fieldgate-{node}-devices-{digest}"


def has_wildcards(topic_filter: str) -> bool:
    return "+" in topic_filter or "#" in topic_filter


class Link:
    """A shared aiomqtt session with its subscriptions, the devices it serves and its reconnect backoff."""

    def __init__(self, login: Login) -> None:
        self.login = login
        self.name = f"mqtt {login.client_id}@{login.host}:{login.port}"
        self.feeds: set[Feed] = set()
        self.client: aiomqtt.Client | None = None
        self.connected_at: float | None = None  # time.monotonic() of the current session's start
        self.reason = "not connected yet"
        self.received = 0
        self.sessions = 0  # sessions started, the first included
        self.refused: dict[str, str] = {}  # topic filter -> why the broker refused its subscription
        self._exact: dict[str, list[tuple[str, Feed]]] = {}
        self._wildcards: list[tuple[str, Feed]] = []
        self._subscribed: dict[str, int] = {}  # topic filter -> QoS, in the current session
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._gateway: GatewayAPI | None = None
        self._down_since: float | None = None
        self._failures = 0
        self._still_down = Throttle(log, STILL_DOWN_EVERY)

    @property
    def connected(self) -> bool:
        return self.client is not None

    @property
    def subscribed(self) -> frozenset[str]:
        """The topic filters of the current session that the broker granted."""
        return frozenset(f for f in self._subscribed if f not in self.refused) if self.connected else frozenset()

    # --- devices --------------------------------------------------------------------------------------------

    def add(self, feed: Feed) -> None:
        """Serve a device: subscribe to its filters (now, if connected) and hand it what matches them."""
        self.feeds.add(feed)
        self._reindex()

    def remove(self, feed: Feed) -> None:
        self.feeds.discard(feed)
        self._reindex()

    def _reindex(self) -> None:
        exact: dict[str, list[tuple[str, Feed]]] = {}
        wildcards: list[tuple[str, Feed]] = []
        for feed in self.feeds:
            for topic_filter in feed.filters:
                if has_wildcards(topic_filter):
                    wildcards.append((topic_filter, feed))
                else:
                    exact.setdefault(topic_filter, []).append((topic_filter, feed))
        self._exact, self._wildcards = exact, wildcards
        self._changed.set()

    def wanted(self) -> dict[str, int]:
        """Topic filter -> the highest QoS any device asks for it."""
        wanted: dict[str, int] = {}
        for feed in self.feeds:
            for topic_filter, qos in feed.filters.items():
                wanted[topic_filter] = max(qos, wanted.get(topic_filter, 0))
        return wanted

    def dispatch(self, topic: str, payload: bytes) -> None:
        """Hand a message to every device with a filter that matches its topic."""
        self.received += 1
        arrived = time.monotonic()
        targets = self._exact.get(topic, [])
        if self._wildcards:
            targets = targets + [(f, feed) for f, feed in self._wildcards if topic_matches(f, topic)]
        if not targets:
            return
        message = Message(payload)
        for topic_filter, feed in targets:
            feed.take(topic_filter, topic, message, arrived)

    # --- the session ------------------------------------------------------------------------------------------

    def start(self, gateway: GatewayAPI | None) -> None:
        """Run the session: as a task the gateway supervises when there is one, else as a task of its own."""
        self._gateway = gateway
        if gateway is not None:
            gateway.start_task(self.name, self.run)
        else:
            self._task = asyncio.get_running_loop().create_task(self.run(), name=self.name)

    async def stop(self) -> None:
        if self._gateway is not None:
            await self._gateway.cancel_task(self.name)
        elif self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                async with asyncio.timeout(CALL_TIMEOUT):
                    await task

    async def run(self) -> None:
        """Connect, subscribe and take messages until cancelled; reconnect with backoff after every failure."""
        backoff = BACKOFF_FIRST
        while True:
            try:
                async with aiomqtt.Client(
                    self.login.host, self.login.port, identifier=self.login.client_id,
                    username=self.login.username, password=self.login.password, tls_context=self.login.tls_context(),
                    keepalive=self.login.keepalive, timeout=CALL_TIMEOUT, max_queued_incoming_messages=INCOMING_MAX,
                ) as client:
                    self._session_started(client)
                    backoff = BACKOFF_FIRST
                    await self._serve(client)
            except (aiomqtt.MqttError, ProtocolError, OSError, TimeoutError) as exc:
                self._session_lost(exc, backoff)
            finally:
                self.client = None
                self.connected_at = None
            await asyncio.sleep(backoff * random.uniform(0.75, 1.25))
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _session_started(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.sessions += 1
        self.connected_at = time.monotonic()
        self._subscribed = {}
        self.refused = {}
        self._changed.set()
        self.reason = ""
        if self._down_since is not None:
            log.info("%s: connected again after %d failed attempts in %.0f s", self.login.describe(),
                     self._failures, time.monotonic() - self._down_since)
            self._still_down = Throttle(log, STILL_DOWN_EVERY)  # the next outage is logged at once
        else:
            log.info("%s: connected", self.login.describe())
        self._down_since, self._failures = None, 0

    def _session_lost(self, exc: BaseException, backoff: float) -> None:
        reason = str(exc) or type(exc).__name__
        self.reason = reason
        self._failures += 1
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._still_down.log(logging.WARNING, "down", "%s: %s; trying again in %.1f s, then backing off to one "
                                 "try every %g s", self.login.describe(), reason, backoff, BACKOFF_MAX)
            return
        self._still_down.log(logging.WARNING, "down", "%s: still not connected (%s) after %d attempts in %.0f s",
                             self.login.describe(), reason, self._failures, time.monotonic() - self._down_since)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Take messages and keep the subscriptions in step with the devices, until either fails."""
        tasks = [asyncio.create_task(self._keep_subscribed(client)), asyncio.create_task(self._take(client))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            raise aiomqtt.MqttError("the session ended")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _take(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self.dispatch(str(message.topic), _payload_bytes(message.payload))

    async def _keep_subscribed(self, client: aiomqtt.Client) -> None:
        """Subscribe to what the devices need now, and again whenever that changes."""
        while True:
            self._changed.clear()
            wanted = self.wanted()
            for topic_filter, qos in sorted(wanted.items()):
                if self._subscribed.get(topic_filter) == qos:
                    continue
                granted = await client.subscribe(topic_filter, qos=qos, timeout=CALL_TIMEOUT)
                self._subscribed[topic_filter] = qos
                refusal = _refusal(granted)
                if refusal is None:
                    self.refused.pop(topic_filter, None)
                else:
                    self.refused[topic_filter] = refusal
                    log.warning("%s: the broker refused the subscription to %s: %s", self.login.describe(),
                                topic_filter, refusal)
            if self._subscribed.keys() - wanted.keys():
                try:
                    async with asyncio.timeout(UNSUBSCRIBE_AFTER):
                        await self._changed.wait()
                    continue
                except TimeoutError:
                    pass
                for topic_filter in sorted(self._subscribed.keys() - self.wanted().keys()):
                    del self._subscribed[topic_filter]
                    self.refused.pop(topic_filter, None)
                    await client.unsubscribe(topic_filter, timeout=CALL_TIMEOUT)
            await self._changed.wait()

    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool, timeout: float) -> None:
        """Publish now; ProtocolError when not connected or the broker did not take it in time."""
        client = self.client
        if client is None:
            raise ProtocolError(f"{self.login.describe()}: not connected ({self.reason})")
        try:
            await client.publish(topic, payload, qos=qos, retain=retain, timeout=timeout)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            raise ProtocolError(f"{self.login.describe()}: publishing on {topic} failed: "
                                f"{str(exc) or type(exc).__name__}") from exc


def _payload_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode()


def _refusal(granted: Iterable[Any]) -> str | None:
    """Why a SUBACK refused the subscription (a code of 128 or more), or None."""
    for code in granted:
        value = getattr(code, "value", code)
        if isinstance(value, int) and value >= 128:
            return str(code.getName()) if hasattr(code, "getName") else f"code {value}"
    return None


# --- the links of the running loop -------------------------------------------------------------------------------

# Links by owner (the event loop and the gateway whose devices they serve: each gateway supervises its own) and login.
_links: dict[tuple[asyncio.AbstractEventLoop, int], dict[Login, Link]] = {}


def _owned(gateway: GatewayAPI | None) -> dict[Login, Link]:
    loop = asyncio.get_running_loop()
    for owner in [owner for owner in _links if owner[0].is_closed()]:
        del _links[owner]  # a loop that ended without closing its devices (a test that failed)
    return _links.setdefault((loop, id(gateway)), {})


def acquire(login: Login, feed: Feed, gateway: GatewayAPI | None) -> Link:
    """The link for `login` (started on first use) serving `feed`; `release` it."""
    owned = _owned(gateway)
    link = owned.get(login)
    if link is None:
        for other in owned:
            if other.client_id == login.client_id and other.host == login.host and other.port == login.port:
                raise ProtocolError(f"{login.describe()}: another connection to this broker uses the client id "
                                    f"{login.client_id!r} with another login or other TLS files; give the "
                                    "devices one client_id each, or the same settings")
        link = owned[login] = Link(login)
        link.start(gateway)
    link.add(feed)
    return link


async def release(link: Link, feed: Feed) -> None:
    """Stop serving `feed`; the last device of a link closes it."""
    link.remove(feed)
    if link.feeds:
        return
    for owned in _links.values():
        if owned.get(link.login) is link:
            del owned[link.login]
    await link.stop()


def links() -> list[Link]:
    """Every open link of the running loop."""
    loop = asyncio.get_running_loop()
    return [link for (owner, _), owned in _links.items() if owner is loop for link in owned.values()]
