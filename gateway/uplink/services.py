"""The node's half of service events (gateway.registry.services keeps them): the events of the node's services
(gateway.services.mesh) the registry has not got yet, the oldest first, with the heartbeat.

An event's seq grows while the gateway runs; the newest one the registry acknowledged (a heartbeat answered) is the
cursor, so an event goes once however often the link drops, and again only when a heartbeat that carried it got no
answer (the registry keeps each once). The events are kept in memory: those of a gateway that stops before a
heartbeat carried them are not sent."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from gateway.wire import MAX_REASON, MAX_SERVICE_EVENTS, ServiceEventReport

if TYPE_CHECKING:
    from gateway.api import GatewayAPI


class ServiceEventSync:
    """The events of the node's services not delivered yet, at most MAX_SERVICE_EVENTS a heartbeat."""

    def __init__(self, gateway: GatewayAPI) -> None:
        self.gateway = gateway
        self.delivered_up_to = 0
        self._sending = 0

    def outgoing(self) -> dict[str, Any]:
        mesh = getattr(self.gateway, "services", None)
        if mesh is None:
            return {}
        reports = [ServiceEventReport(seq=e["seq"], ts=e["ts"], service=e["service"][:507], event=e["event"][:32],
                                      detail=e["detail"][:MAX_REASON])
                   for e in list(mesh.events) if e["seq"] > self.delivered_up_to][:MAX_SERVICE_EVENTS]
        self._sending = reports[-1].seq if reports else 0
        return {"service_events": msgspec.to_builtins(reports)} if reports else {}

    def delivered(self) -> None:
        self.delivered_up_to = max(self.delivered_up_to, self._sending)
        self._sending = 0

    def failed(self) -> None:
        self._sending = 0
