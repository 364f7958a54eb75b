"""The `mqtt` sink: publishes messages to any MQTT broker, QoS 0 or 1, optionally several per message."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import urlsplit

from gateway.errors import ConfigError
from gateway.resources.endpoints import MqttProperties
from gateway.sinks.base import OutboxMessage, Sink, SinkContext, SinkError

if TYPE_CHECKING:
    import aiomqtt


class MqttSink(Sink):
    """One connection per sink, opened when needed and reopened after a failure."""

    name: ClassVar[str] = "mqtt"
    properties_type = MqttProperties
    target_resource = "topic"
    description = "any MQTT broker"

    @classmethod
    def for_route(cls, properties: MqttProperties, target_resource: Mapping[str, str],
                  context: SinkContext) -> MqttSink:
        return cls(properties.url, client_id=f"fieldgate-{context.node_name}-{context.route_name}",
                   qos=properties.qos, batch_size=properties.batch, username=properties.username,
                   password=properties.password, ca_file=properties.ca_file)

    def __init__(self, url: str, *, client_id: str, qos: int = 1, batch_size: int = 1, username: str | None = None,
                 password: str | None = None, ca_file: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigError(f"mqtt sink url {url!r}: expected mqtt://host:port or mqtts://host:port")
        self.host = parts.hostname
        self.tls = parts.scheme == "mqtts"
        self.port = parts.port or (8883 if self.tls else 1883)
        self.client_id = client_id
        self.qos = qos
        self.batch_size = batch_size
        self.username = username or parts.username
        self.password = password or parts.password
        self.ca_file = ca_file
        self._client: aiomqtt.Client | None = None

    async def _connect(self) -> aiomqtt.Client:
        import aiomqtt

        if self._client is None:
            context = ssl.create_default_context(cafile=self.ca_file) if self.tls else None
            client = aiomqtt.Client(self.host, self.port, identifier=self.client_id, username=self.username,
                                    password=self.password, tls_context=context, timeout=10,
                                    max_inflight_messages=1000, max_queued_outgoing_messages=100_000)
            await client.__aenter__()
            client.pending_calls_threshold = 1 << 30  # batches are published together on purpose
            self._client = client
        return self._client

    async def close(self) -> None:
        import aiomqtt

        client, self._client = self._client, None
        if client is not None:
            # a broker that dropped the link left its reason in the client's disconnect future; read it here, or
            # asyncio reports it as never retrieved when the client is collected
            gone = client._disconnected
            if gone.done() and not gone.cancelled():
                gone.exception()
            try:
                await client.__aexit__(None, None, None)
            except aiomqtt.MqttError:
                pass

    async def send(self, batch: list[OutboxMessage]) -> None:
        import aiomqtt

        try:
            client = await self._connect()
            if self.batch_size > 1:
                groups = [batch[i:i + self.batch_size] for i in range(0, len(batch), self.batch_size)]
                publishes = [client.publish(group[0].topic, b"[" + b",".join(m.payload for m in group) + b"]",
                                            qos=self.qos, timeout=10) for group in groups]
            else:
                publishes = [client.publish(m.topic, m.payload, qos=self.qos, timeout=10) for m in batch]
            await asyncio.gather(*publishes)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            await self.close()
            raise SinkError(f"mqtt {self.host}:{self.port}: {exc}") from exc
