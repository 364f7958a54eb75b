"""The uplink plugin: once the node has joined a registry (<data-dir>/registry/registry.json) it starts the
channel (gateway.uplink.channel) and the HTTPS heartbeat and message tasks of gateway.uplink.client that stand in
while it is down, and its file tasks; a node that never joined loads none of that code."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.hookspecs import hookimpl

if TYPE_CHECKING:
    from gateway.api import GatewayAPI
    from gateway.resources.schema import Workload
    from gateway.uplink.failover import OfflineFailover

_failovers: dict[int, OfflineFailover] = {}  # by id(gateway): made with the fence, started with the gateway


@hookimpl
def workload_fence(gateway: GatewayAPI) -> Callable[[Workload], str | None] | None:
    """Offline failover, for a joined node whose Gateway document has `consensus:` (gateway.uplink.failover)."""
    settings = gateway.config.gateway.consensus
    if settings is None or not (gateway.data_dir / "registry" / "registry.json").exists():
        return None
    from gateway.uplink.failover import OfflineFailover

    failover = _failovers[id(gateway)] = OfflineFailover(gateway, settings)
    return failover.fenced


@hookimpl
def startup(gateway: GatewayAPI) -> None:
    if not (gateway.data_dir / "registry" / "registry.json").exists():
        return
    from gateway.uplink.join import load_settings

    settings = load_settings(gateway.data_dir)
    if settings is not None:
        from gateway.uplink.client import Uplink

        uplink = Uplink(gateway, settings)
        failover = _failovers.pop(id(gateway), None)
        if failover is not None:
            uplink.failover = failover
            gateway.start_task("offline failover", failover.run)
            gateway.add_status("consensus", failover.describe)
        gateway.start_task("uplink", uplink.run)
        gateway.start_task("uplink messages", uplink.run_messages)
        gateway.start_task("uplink channel", uplink.channel.run)
        gateway.add_status("uplink", uplink.status)
        gateway.start_task("uplink files in", uplink.run_files_in)
        gateway.start_task("uplink files out", uplink.run_files_out)
        gateway.start_task("file outbox folder", uplink.run_file_folder)
