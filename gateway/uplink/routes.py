"""The node's half of registry routes (gateway.registry.routes is the other): the counters of its registry-owned
routes, sent with the heartbeat when they changed (at most every MIN_REPORT_INTERVAL, and every RESEND seconds)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.api import REGISTRY
from gateway.wire import MAX_REASON, MAX_ROUTE_REPORTS, RouteReport

if TYPE_CHECKING:
    from gateway.api import GatewayAPI

MIN_REPORT_INTERVAL = 1.0
RESEND = 30.0  # seconds after which a node reports its routes again though nothing changed


def _report(described: dict[str, Any]) -> RouteReport:
    return RouteReport(route=f"{described['namespace']}/{described['name']}", accepted=described["accepted"],
                       delivered=described["successes"], failed=described["failures"], dropped=described["dropped"],
                       queued=described["outbox_depth"], state=str(described["state"])[:32],
                       last_error=str(described.get("last_error") or "")[:MAX_REASON])


class RouteSync:
    """The counters of the node's registry-owned routes, sent when they changed since the last delivered report."""

    def __init__(self, gateway: GatewayAPI) -> None:
        self.gateway = gateway
        self._delivered = b""
        self._sending: bytes | None = None
        self._last = -RESEND

    def reports(self) -> list[RouteReport]:
        owner = self.gateway.resources.resource_owner
        return [_report(d) for d in self.gateway.routes.describe()
                if owner("Route", d["namespace"], d["name"]) == REGISTRY][:MAX_ROUTE_REPORTS]

    def outgoing(self) -> dict[str, Any]:
        reports = self.reports()
        encoded = msgspec.json.encode(reports)
        now = time.monotonic()
        if now - self._last < MIN_REPORT_INTERVAL or (encoded == self._delivered and now - self._last < RESEND):
            self._sending = None
            return {}
        self._sending, self._last = encoded, now
        return {"routes": msgspec.to_builtins(reports)}

    def delivered(self) -> None:
        if self._sending is not None:
            self._delivered = self._sending
            self._sending = None

    def failed(self) -> None:
        self._sending = None
        self._last = -RESEND
