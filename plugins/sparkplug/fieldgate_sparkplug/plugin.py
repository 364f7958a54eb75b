"""The fieldgate plugin: the `sparkplug` endpoint type, a Sparkplug B 3.0 edge node per such Endpoint.

    kind: Endpoint
    name: scada
    type: sparkplug
    properties: {url: "mqtt://broker:1883", group_id: plant-1}

Optional properties (settings.SparkplugProperties, checked at load): `edge_node_id` (default: the gateway's name),
`qos` (0 or 1 for births, data and deaths; the specification asks for 0), `client_id`, `username`, `password`,
`ca_file`, `cert_file`, `key_file` (with an mqtts:// url), `primary_host_id` (publish births only while that host's
STATE says online), `keepalive`. The older form, `type: mqtt` with `properties.plugin: sparkplug`, is read the same.
The endpoint is not a route target: the plugin runs its own session and follows configuration changes through the
`config_changed` hook.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Iterable

from fieldgate_sparkplug.node import EdgeNode
from fieldgate_sparkplug.settings import NodeSettings, SparkplugProperties
from gateway.api import GatewayAPI
from gateway.errors import ConfigError
from gateway.hookspecs import hookimpl
from gateway.resources.endpoints import EndpointType

log = logging.getLogger(__name__)
PLUGIN = "sparkplug"

_nodes: weakref.WeakKeyDictionary[GatewayAPI, EdgeNodes] = weakref.WeakKeyDictionary()


ENDPOINT_TYPE = EndpointType(PLUGIN, SparkplugProperties, older_form=True, provider=__name__,
                             description="a Sparkplug B 3.0 edge node publishing the gateway's devices")


def sparkplug_endpoints(gateway: GatewayAPI) -> dict[str, tuple[str, SparkplugProperties]]:
    """The `sparkplug` endpoints of the running configuration: (endpoint, properties) by task name."""
    return {f"{PLUGIN} {ns}/{name}": (f"{ns}/{name}", properties)
            for (ns, name), properties in gateway.config.endpoints_of(PLUGIN).items()}


def edge_nodes(gateway: GatewayAPI) -> list[EdgeNode]:
    """The running edge nodes of a gateway (each `describe()`s its session and counters)."""
    nodes = _nodes.get(gateway)
    return [node for _, node in nodes.running.values()] if nodes is not None else []


class EdgeNodes:
    """The running edge nodes of one gateway, kept in step with its Endpoint documents and devices."""

    def __init__(self, gateway: GatewayAPI) -> None:
        self.gateway = gateway
        self.running: dict[str, tuple[SparkplugProperties, EdgeNode]] = {}

    async def sync(self) -> None:
        wanted = sparkplug_endpoints(self.gateway)
        for task, (properties, _) in list(self.running.items()):
            if task not in wanted or wanted[task][1] != properties:
                await self._stop(task)
        for task, (endpoint, properties) in wanted.items():
            if task not in self.running:
                self._start(task, endpoint, properties)
        for _, node in self.running.values():
            node.config_changed()

    def _start(self, task: str, endpoint: str, properties: SparkplugProperties) -> None:
        try:
            settings = NodeSettings.from_properties(properties, self.gateway.node_name)
        except ConfigError as exc:
            log.error("Endpoint %s (sparkplug): %s; no Sparkplug edge node for it", endpoint, exc)
            return
        taken = {node.settings.label for _, node in self.running.values()}
        if settings.label in taken:
            log.error("Endpoint %s (sparkplug): edge node %s is already served by another endpoint", endpoint,
                      settings.label)
            return
        node = EdgeNode(self.gateway, settings)
        node.attach()
        self.gateway.start_task(task, node.run)
        self.running[task] = (properties, node)
        log.info("Sparkplug B edge node %s publishing to %s:%d", settings.label, settings.host, settings.port)

    async def _stop(self, task: str) -> None:
        _, node = self.running.pop(task)
        node.detach()
        await node.close()
        await self.gateway.cancel_task(task)

    async def stop(self) -> None:
        for task in list(self.running):
            await self._stop(task)


@hookimpl
def register_endpoint_types() -> Iterable[EndpointType]:
    return [ENDPOINT_TYPE]


@hookimpl
def startup(gateway: GatewayAPI) -> Awaitable[None]:
    nodes = _nodes[gateway] = EdgeNodes(gateway)
    return nodes.sync()


@hookimpl
def config_changed(gateway: GatewayAPI) -> Awaitable[None] | None:
    """Follow configuration changes (the REST API, the registry, reloaded files)."""
    nodes = _nodes.get(gateway)
    return nodes.sync() if nodes is not None else None


@hookimpl
def shutdown(gateway: GatewayAPI) -> Awaitable[None] | None:
    nodes = _nodes.pop(gateway, None)
    return nodes.stop() if nodes is not None else None
