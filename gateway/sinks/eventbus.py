"""The `eventbus` sink: a route's messages published on the local MQTT broker through the gateway's own session."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from gateway.api import GatewayAPI
from gateway.resources.endpoints import EventbusProperties
from gateway.sinks.base import OutboxMessage, Sink, SinkContext, SinkError


class EventbusTargetSink(Sink):
    """Publishes each message at QoS 1 on the route's (rendered) topic, in order; fails while disconnected."""

    name: ClassVar[str] = "eventbus"
    properties_type = EventbusProperties
    target_resource = "topic"
    description = "topics on the local MQTT broker"

    def __init__(self, api: GatewayAPI) -> None:
        self.api = api

    @classmethod
    def for_route(cls, properties: EventbusProperties, target_resource: Mapping[str, str],
                  context: SinkContext) -> EventbusTargetSink:
        return cls(context.api)

    async def send(self, batch: list[OutboxMessage]) -> None:
        for message in batch:
            if not await self.api.eventbus_publish(message.topic, message.payload, qos=1):
                raise SinkError("the eventbus broker is not connected (or did not take the message)")
