"""The fieldgate plugin: Home Assistant MQTT discovery for every device property, on the gateway's eventbus.

Off until an Endpoint of type `homeassistant` turns it on (the older form, `type: eventbus` with
`properties.plugin: homeassistant`, is read the same):

    kind: Endpoint
    name: homeassistant
    type: homeassistant
    properties: {discovery_prefix: homeassistant}

Discovery is published retained when the eventbus connects or reconnects and when devices change; entities of
removed devices are deleted (an empty retained config). Each device's current state is kept retained on its
KubeEdge state topic, which the entities use for availability, so Home Assistant knows it after a restart.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Iterable
from typing import Annotated

import msgspec
from msgspec import Meta

from fieldgate_homeassistant.discovery import discovery_messages, state_update_topic
from gateway.api import GatewayAPI
from gateway.hookspecs import hookimpl
from gateway.messages import EVENTBUS_STATE, STATE_FILTER, DeviceStateChange, EventbusStateChange
from gateway.resources.endpoints import EndpointType

log = logging.getLogger(__name__)
PLUGIN = "homeassistant"
RETRY = 1.0  # seconds before a failed publication is tried again

_publishers: weakref.WeakKeyDictionary[GatewayAPI, DiscoveryPublisher] = weakref.WeakKeyDictionary()
_json = msgspec.json.Encoder()


class HomeAssistantProperties(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """Home Assistant MQTT discovery on the eventbus."""

    discovery_prefix: Annotated[str, Meta(pattern=r"^[^+#]+$", description="the topic prefix Home Assistant "
                                                                            "subscribes to for discovery")
                                ] = "homeassistant"


ENDPOINT_TYPE = EndpointType(PLUGIN, HomeAssistantProperties, older_form=True, provider=__name__,
                             description="Home Assistant MQTT discovery of every device property, on the eventbus")


def settings(gateway: GatewayAPI) -> HomeAssistantProperties | None:
    """The properties of the endpoint that turns discovery on (the first, by namespace and name), if any."""
    return next(iter(gateway.config.endpoints_of(PLUGIN).values()), None)


class DiscoveryPublisher:
    """Keeps the retained discovery messages on the eventbus broker in step with the devices."""

    def __init__(self, gateway: GatewayAPI) -> None:
        self.gateway = gateway
        self.published: dict[str, bytes] = {}
        self._wake = asyncio.Event()
        self._everything = True  # the broker may have lost the retained messages: publish them all again
        self._states: set[asyncio.Task[bool]] = set()

    def wanted(self) -> dict[str, bytes]:
        properties = settings(self.gateway)
        if properties is None:
            return {}
        prefix = properties.discovery_prefix.strip("/")
        return {topic: _json.encode(config) for topic, config in
                discovery_messages(self.gateway.config.devices, self.gateway.node_name, prefix).items()}

    def changed(self) -> None:
        """The configuration changed: publish what differs."""
        self._wake.set()

    async def run(self) -> None:
        subscriptions = [self.gateway.subscribe(STATE_FILTER, self._on_state),
                         self.gateway.subscribe(EVENTBUS_STATE, self._on_eventbus)]
        self._wake.set()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if not self.gateway.eventbus_connected():
                    continue  # the next `gateway/eventbus/state` message wakes us
                everything, self._everything = self._everything, False
                try:
                    await self.publish(everything=everything)
                except PublishFailed as exc:
                    log.warning("Home Assistant discovery not published, retrying: %s", exc)
                    self._everything = True
                    await asyncio.sleep(RETRY)
                    self._wake.set()
        finally:
            for sub_id in subscriptions:
                self.gateway.unsubscribe(sub_id)

    async def _send(self, topic: str, payload: bytes) -> None:
        if not await self.gateway.eventbus_publish(topic, payload, qos=1, retain=True):
            raise PublishFailed(f"publishing {topic} failed: the eventbus is not connected")

    async def publish(self, *, everything: bool) -> None:
        """Publish new and changed configs (all of them after a reconnect) and delete the ones now gone."""
        wanted = self.wanted()
        for topic in sorted(self.published.keys() - wanted.keys()):
            await self._send(topic, b"")
            del self.published[topic]
        for topic, payload in wanted.items():
            if everything or self.published.get(topic) != payload:
                await self._send(topic, payload)
                self.published[topic] = payload
        if wanted:
            for device_id, twin in sorted(self.gateway.twins().items()):
                await self._send(state_update_topic(device_id), self._state(twin.state, twin.state_since))
            log.info("Home Assistant discovery published: %d entities", len(wanted))

    def _state(self, state: str, ts: float) -> bytes:
        return _json.encode({"event_id": "", "timestamp": int(ts * 1000), "state": state})

    def _on_eventbus(self, topic: str, change: EventbusStateChange) -> None:
        if change.connected:
            self._everything = True
            self._wake.set()

    def _on_state(self, topic: str, change: DeviceStateChange) -> None:
        if not self.published or not self.gateway.eventbus_connected():
            return
        publish = self.gateway.eventbus_publish(state_update_topic(change.device),
                                                self._state(change.state, change.ts), qos=1, retain=True)
        task = asyncio.get_running_loop().create_task(publish)
        self._states.add(task)
        task.add_done_callback(self._states.discard)


class PublishFailed(Exception):
    """A discovery message could not be published; the whole set is published again later."""


@hookimpl
def register_endpoint_types() -> Iterable[EndpointType]:
    return [ENDPOINT_TYPE]


@hookimpl
def startup(gateway: GatewayAPI) -> None:
    if gateway.config.gateway.eventbus.url == "none":
        if settings(gateway) is not None:
            log.warning("Home Assistant discovery is configured but the eventbus is off (eventbus.url: none)")
        return
    publisher = _publishers[gateway] = DiscoveryPublisher(gateway)
    gateway.start_task(f"{PLUGIN} discovery", publisher.run)


@hookimpl
def config_changed(gateway: GatewayAPI) -> None:
    publisher = _publishers.get(gateway)
    if publisher is not None:
        publisher.changed()
