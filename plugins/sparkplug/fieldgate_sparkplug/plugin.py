"""The fieldgate plugin: a Sparkplug B 3.0 edge node per Endpoint document that names it.

    kind: Endpoint
    name: scada
    type: mqtt
    properties: {plugin: sparkplug, url: "mqtt://broker:1883", group_id: plant-1}

Optional properties: `edge_node_id` (default: the gateway's name), `qos` (0 or 1 for births, data and deaths;
the specification asks for 0), `client_id`, `username`, `password`, `ca_file`, `cert_file`, `key_file` (with an
mqtts:// url), `primary_host_id` (publish births only while that host's STATE says online), `keepalive`.
Routes ignore these endpoints; the plugin runs its own session and follows configuration changes through the
`config_changed` hook.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable

from fieldgate_sparkplug.node import EdgeNode
from fieldgate_sparkplug.settings import NodeSettings
from gateway.api import GatewayAPI
from gateway.errors import ConfigError
from gateway.hookspecs import hookimpl
from gateway.resources.schema import Endpoint

log = logging.getLogger(__name__)
PLUGIN = "sparkplug"

_nodes: weakref.WeakKeyDictionary[GatewayAPI, EdgeNodes] = weakref.WeakKeyDictionary()


def sparkplug_endpoints(gateway: GatewayAPI) -> dict[str, Endpoint]:
    """The Endpoint documents that configure an edge node, by task name."""
    return {f"{PLUGIN} {ns}/{name}": endpoint for (ns, name), endpoint in sorted(gateway.config.endpoints.items())
            if endpoint.properties.get("plugin") == PLUGIN}


def edge_nodes(gateway: GatewayAPI) -> list[EdgeNode]:
    """The running edge nodes of a gateway (each `describe()`s its session and counters)."""
    nodes = _nodes.get(gateway)
    return [node for _, node in nodes.running.values()] if nodes is not None else []


class EdgeNodes:
    """The running edge nodes of one gateway, kept in step with its Endpoint documents and devices."""

    def __init__(self, gateway: GatewayAPI) -> None:
        self.gateway = gateway
        self.running: dict[str, tuple[Endpoint, EdgeNode]] = {}

    async def sync(self) -> None:
        wanted = sparkplug_endpoints(self.gateway)
        for task, (endpoint, _) in list(self.running.items()):
            if wanted.get(task) != endpoint:
                await self._stop(task)
        for task, endpoint in wanted.items():
            if task not in self.running:
                self._start(task, endpoint)
        for _, node in self.running.values():
            node.config_changed()

    def _start(self, task: str, endpoint: Endpoint) -> None:
        try:
            settings = NodeSettings.from_properties(endpoint.properties, self.gateway.node_name)
        except ConfigError as exc:
            log.error("Endpoint %s/%s (plugin: sparkplug): %s; no Sparkplug edge node for it", endpoint.namespace,
                      endpoint.name, exc)
            return
        taken = {node.settings.label for _, node in self.running.values()}
        if settings.label in taken:
            log.error("Endpoint %s/%s (plugin: sparkplug): edge node %s is already served by another endpoint",
                      endpoint.namespace, endpoint.name, settings.label)
            return
        node = EdgeNode(self.gateway, settings)
        node.attach()
        self.gateway.start_task(task, node.run)
        self.running[task] = (endpoint, node)
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
