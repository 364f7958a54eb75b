"""The fieldgate plugin: Home Assistant MQTT discovery for every device property, on the gateway's eventbus.

Off until an Endpoint document names it (the same convention as fieldgate-influxdb):

    kind: Endpoint
    name: homeassistant
    type: eventbus
    properties: {plugin: homeassistant, discovery_prefix: homeassistant}

Discovery is published retained when the eventbus connects or reconnects and when devices change; entities of
removed devices are deleted (an empty retained config). Each device's current state is kept retained on its
KubeEdge state topic, which the entities use for availability, so Home Assistant knows it after a restart.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

import aiomqtt
import msgspec

from fieldgate_homeassistant.discovery import discovery_messages, state_update_topic
from gateway.hookspecs import hookimpl
from gateway.resources.schema import Endpoint
from gateway.runtime import Gateway

log = logging.getLogger(__name__)
PLUGIN = "homeassistant"
WATCH_EVERY = 0.25  # seconds between looks at the eventbus connection and the configuration

_publishers: weakref.WeakKeyDictionary[Gateway, DiscoveryPublisher] = weakref.WeakKeyDictionary()
_json = msgspec.json.Encoder()


def settings(gateway: Gateway) -> Endpoint | None:
    """The Endpoint document that turns discovery on (the first, by namespace and name), if any."""
    return next((endpoint for _, endpoint in sorted(gateway.config.endpoints.items())
                 if endpoint.properties.get("plugin") == PLUGIN), None)


class DiscoveryPublisher:
    """Keeps the retained discovery messages on the eventbus broker in step with the devices."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.published: dict[str, bytes] = {}
        self._client: aiomqtt.Client | None = None
        self._config: Any = None
        self._subscription: int | None = None

    def wanted(self) -> dict[str, bytes]:
        endpoint = settings(self.gateway)
        if endpoint is None:
            return {}
        prefix = endpoint.properties.get("discovery_prefix", "homeassistant").strip("/")
        return {topic: _json.encode(config) for topic, config in
                discovery_messages(self.gateway.config.devices, self.gateway.node_name, prefix).items()}

    async def run(self) -> None:
        self._subscription = self.gateway.bus.subscribe("devices/+/+/state", self._on_state)
        try:
            while True:
                link = self.gateway.eventbus
                client = link.client if link is not None else None
                if client is not None and (client is not self._client or self.gateway.config is not self._config):
                    reconnected = client is not self._client
                    self._client, self._config = client, self.gateway.config
                    try:
                        await self.publish(client, everything=reconnected)
                    except (aiomqtt.MqttError, TimeoutError) as exc:
                        log.warning("Home Assistant discovery not published, retrying: %s", exc)
                        self._client = None
                await asyncio.sleep(WATCH_EVERY)
        finally:
            self.gateway.bus.unsubscribe(self._subscription)

    async def publish(self, client: aiomqtt.Client, *, everything: bool) -> None:
        """Publish new and changed configs (all of them after a reconnect) and delete the ones now gone."""
        wanted = self.wanted()
        for topic in sorted(self.published.keys() - wanted.keys()):
            await client.publish(topic, b"", qos=1, retain=True, timeout=10)
            del self.published[topic]
        for topic, payload in wanted.items():
            if everything or self.published.get(topic) != payload:
                await client.publish(topic, payload, qos=1, retain=True, timeout=10)
                self.published[topic] = payload
        if wanted:
            for device_id, twin in sorted(self.gateway.twins.items()):
                await client.publish(state_update_topic(device_id), self._state(twin.state, twin.state_since),
                                     qos=1, retain=True, timeout=10)
            log.info("Home Assistant discovery published: %d entities", len(wanted))

    def _state(self, state: str, ts: float) -> bytes:
        return _json.encode({"event_id": "", "timestamp": int(ts * 1000), "state": state})

    def _on_state(self, topic: str, change: Any) -> None:
        client = self._client
        if client is None or not self.published:
            return
        publish = client.publish(state_update_topic(change.device), self._state(change.state, change.ts), qos=1,
                                 retain=True, timeout=10)
        task = asyncio.get_running_loop().create_task(publish)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())


@hookimpl
def startup(gateway: Gateway) -> None:
    if gateway.eventbus is None:
        if settings(gateway) is not None:
            log.warning("Home Assistant discovery is configured but the eventbus is off (eventbus.url: none)")
        return
    publisher = _publishers[gateway] = DiscoveryPublisher(gateway)
    gateway.supervisor.start(f"{PLUGIN} discovery", publisher.run)
