"""The `mqtt` protocol: a device whose values arrive as MQTT messages and whose desired values are published as
commands. The poller reads it every collect interval like any device: a read gives what arrived since the last
one, and raises DeviceSilent when the device sent nothing for longer than its `timeout`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from fieldgate_mqtt import link as links
from fieldgate_mqtt.config import MqttConfig, MqttVisitor, check_visitor, fill
from fieldgate_mqtt.feed import Feed
from fieldgate_mqtt.link import CALL_TIMEOUT, Link, Login, default_client_id
from fieldgate_mqtt.payload import CommandTemplate
from gateway.errors import DeviceSilent, ProtocolError
from gateway.protocols.base import BoundDevice, BoundProperty, Protocol, ReadResult
from gateway.resources.schema import PropertyModel

MODEL_TYPES = frozenset({"int", "float", "double", "string", "boolean", "bytes"})
LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # a broker listening on every address


class MqttDevice(Protocol):
    """Values from the messages a device publishes; desired values published on a command topic."""

    names: ClassVar[tuple[str, ...]] = ("mqtt",)
    config_type = MqttConfig
    visitor_type = MqttVisitor

    def __init__(self, device: BoundDevice) -> None:
        super().__init__(device)
        self.config: MqttConfig = device.config
        self.silence = float(device.resource.timeout)
        self._link: Link | None = None
        self._feed: Feed | None = None
        self._templates: dict[str, CommandTemplate] = {}

    @classmethod
    def visitor_types(cls, visitor: Any) -> frozenset[str]:
        return MODEL_TYPES  # text and JSON convert to every type, by the rules values from outside follow

    @classmethod
    def check_visitor(cls, visitor: Any, model: PropertyModel) -> None:
        check_visitor(visitor, model)

    def plan(self, properties: Sequence[BoundProperty]) -> list[str]:
        return [prop.name for prop in properties]

    # --- the connection -----------------------------------------------------------------------------------------

    def login(self) -> Login:
        """The session this device needs: the broker of its url or the gateway's eventbus, and its login."""
        c = self.config
        gateway = self.gateway
        username, password = c.username, c.password
        if c.password_file is not None:
            password = _read_password(c.password_file)
        if c.eventbus:
            eventbus = gateway.eventbus_login() if gateway is not None else None
            if eventbus is None:
                raise ProtocolError("eventbus: true, but the gateway's eventbus is off (eventbus.url: none): give the "
                                    "device the broker's url instead")
            host, port, tls = LOOPBACK.get(eventbus.host, eventbus.host), eventbus.port, eventbus.tls
            ca_file, cert_file, key_file = eventbus.ca_file, eventbus.cert_file, eventbus.key_file
            if username is None:  # the gateway's own login, which the embedded broker's rules allow everything
                username, password = eventbus.username, eventbus.password
        else:
            assert c.url is not None  # one of url and eventbus, checked at load
            from urllib.parse import urlsplit

            parts = urlsplit(c.url)
            tls = parts.scheme == "mqtts"
            host = parts.hostname or ""
            port = parts.port or (8883 if tls else 1883)
            ca_file, cert_file, key_file = c.ca_file, c.cert_file, c.key_file
        node = gateway.node_name if gateway is not None else "gateway"
        client_id = c.client_id or default_client_id(node, host, port, tls, username, ca_file, cert_file, key_file)
        return Login(host, port, tls, client_id, username, password, ca_file, cert_file, key_file, c.keepalive)

    async def open(self) -> None:
        if self._link is not None:
            return
        login = self.login()
        login.tls_context()  # unreadable TLS files fail the device now, with their reason, not every reconnect
        feed = Feed(self.device, self.config.max_message)
        self._link = links.acquire(login, feed, self.gateway)
        self._feed = feed

    async def close(self) -> None:
        link, feed = self._link, self._feed
        self._link = self._feed = None
        if link is not None and feed is not None:
            await links.release(link, feed)

    # --- values and commands ------------------------------------------------------------------------------------

    async def read(self, plan: Any) -> ReadResult:
        link, feed = self._link, self._feed
        if link is None or feed is None:
            raise ProtocolError(f"{self.device.id}: not open")
        names = plan if isinstance(plan, list) else self.plan(plan)
        values, errors = feed.take_fresh(names)
        if not values and not errors:
            self._check_heard(link, feed)
        for topic_filter, reason in link.refused.items():
            for name in feed.properties_of(topic_filter):
                if name in names:
                    errors.setdefault(name, f"the broker refused the subscription to {topic_filter}: {reason}")
        return ReadResult(values, errors)

    def _check_heard(self, link: Link, feed: Feed) -> None:
        """Raise DeviceSilent when nothing arrived for longer than the device's timeout."""
        now = time.monotonic()
        quiet = now - (feed.last_message if feed.last_message is not None else feed.listening_since)
        if quiet <= self.silence:
            return
        topics = sorted(feed.filters)
        shown = ", ".join(topics[:3]) + (f" and {len(topics) - 3} more" if len(topics) > 3 else "")
        if feed.last_message is None:
            reason = f"no message on {shown} in the {quiet:.0f} s since the device started listening"
        else:
            reason = f"no message on {shown} for {quiet:.0f} s (timeout {self.silence:g} s)"
        if not link.connected:
            reason += f"; {link.login.describe()} is not connected: {link.reason}"
        refused = [f for f in topics if f in link.refused]
        if refused:
            reason += f"; the broker refused the subscription to {refused[0]}: {link.refused[refused[0]]}"
        raise DeviceSilent(reason)

    async def write(self, prop: BoundProperty, value: Any) -> None:
        visitor: MqttVisitor = prop.visitor
        if visitor.command_topic is None:
            raise ProtocolError(f"{prop.name}: no command_topic to publish desired values on")
        if self._link is None:
            raise ProtocolError(f"{self.device.id}: not open")
        resource = self.device.resource
        template = self._templates.get(prop.name)
        if template is None:
            template = self._templates[prop.name] = CommandTemplate(visitor.command_template)
        topic = fill(visitor.command_topic, device=resource.name, namespace=resource.namespace, property=prop.name)
        payload = template.render(value, prop=prop.name, device=resource.name, namespace=resource.namespace)
        await self._link.publish(topic, payload, qos=visitor.command_qos, retain=visitor.command_retain,
                                 timeout=min(CALL_TIMEOUT, self.silence))


def _read_password(path: str) -> str:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"password_file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not lines or not lines[0]:
        raise ProtocolError(f"password_file {path}: the first line is empty")
    return lines[0]
