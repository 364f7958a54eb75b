"""The fieldgate plugin: the `dmi` protocol, and the DMI server an Endpoint of type `dmi` turns on.

    kind: Endpoint
    name: dmi
    type: dmi
    properties: {socket: /etc/kubeedge/dmi.sock}

One server per gateway (the first `dmi` endpoint, by namespace and name); changing the endpoint restarts it, and
every other change of the configuration is sent to the mappers.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING

from fieldgate_dmi.config import DmiProperties
from gateway.api import GatewayAPI
from gateway.hookspecs import hookimpl
from gateway.resources.endpoints import EndpointType
from gateway.resources.loader import Config

if TYPE_CHECKING:
    from fieldgate_dmi.server import DmiServer

log = logging.getLogger(__name__)
TASK = "dmi server"

ENDPOINT_TYPE = EndpointType("dmi", DmiProperties, provider=__name__, description=(
    "KubeEdge's DMI on a unix socket: mappers register with the gateway and serve its `dmi` devices"))


def settings(config: Config) -> DmiProperties | None:
    """The properties of the endpoint that turns the DMI server on (the first, by namespace and name), if any."""
    endpoints = config.endpoints_of(ENDPOINT_TYPE.name)
    if len(endpoints) > 1:
        first = next(iter(endpoints))
        log.warning("%d endpoints of type dmi: the gateway serves one DMI socket, that of %s/%s", len(endpoints),
                    *first)
    properties: DmiProperties | None = next(iter(endpoints.values()), None)
    return properties


class DmiPlugin:
    """The DMI server of one gateway, started, restarted and stopped with its endpoint."""

    def __init__(self, gateway: GatewayAPI) -> None:
        self.gateway = gateway
        self.server: DmiServer | None = None

    async def apply(self, properties: DmiProperties | None) -> None:
        current = self.server
        if current is not None and current.properties == properties:
            current.changed()
            return
        await self.stop()
        if properties is not None:
            from fieldgate_dmi.server import DmiServer  # gRPC: imported only when a dmi endpoint turns it on

            self.server = DmiServer(self.gateway, properties)
            self.server.attach()
            self.gateway.start_task(TASK, self.server.run)

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await self.gateway.cancel_task(TASK)
            await server.detach()


_plugins: weakref.WeakKeyDictionary[GatewayAPI, DmiPlugin] = weakref.WeakKeyDictionary()


@hookimpl
def register_endpoint_types() -> Iterable[EndpointType]:
    return [ENDPOINT_TYPE]


@hookimpl
async def startup(gateway: GatewayAPI) -> None:
    plugin = _plugins[gateway] = DmiPlugin(gateway)
    await plugin.apply(settings(gateway.config))


@hookimpl
async def config_changed(gateway: GatewayAPI, old: Config, new: Config) -> None:
    plugin = _plugins.get(gateway)
    if plugin is not None:
        await plugin.apply(settings(new))


@hookimpl
async def shutdown(gateway: GatewayAPI) -> None:
    plugin = _plugins.pop(gateway, None)
    if plugin is not None:
        await plugin.stop()
