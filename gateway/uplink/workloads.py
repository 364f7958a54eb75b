"""The node's half of registry workloads (gateway.registry.workloads is the other): the status of its registry-owned
workloads, sent with the heartbeat when it changed (and every RESEND seconds), with their events not delivered yet."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.wire import (
    APP_SERIES,
    MAX_CONTAINERS,
    MAX_EVENTS,
    MAX_FIGURES,
    MAX_REASON,
    MAX_REPORTS,
    AppFigures,
    ContainerReport,
    EventReport,
    InstanceReport,
    WorkloadReport,
)
from gateway.workloads.capacity import allocatable

if TYPE_CHECKING:
    from gateway.api import GatewayAPI

MAX_EVENTS_PER_BEAT = 200  # events one heartbeat carries at most, over all workloads (~250 kB)
MIN_REPORT_INTERVAL = 1.0
RESEND = 30.0  # seconds after which a node reports its workloads again though nothing changed
ALLOCATABLE_EVERY = 60.0  # seconds between two readings of what the node offers its apps
EMPTY_EVERY = 3600.0  # seconds between two empty figures lists of a node without apps


def _report(described: dict[str, Any]) -> WorkloadReport:
    instances = [InstanceReport(id=i["id"], state=i["state"], ready=bool(i["ready"]), restarts=i["restarts"],
                                ports=dict(i.get("ports") or {}),
                                containers=[ContainerReport(name=c["name"], state=c["state"], restarts=c["restarts"],
                                                            last_exit=c["last_exit"][:300])
                                            for c in (i.get("containers") or ())[:MAX_CONTAINERS]])
                 for i in described["instances"]]
    return WorkloadReport(workload=described["id"], status=described["status"], reason=described["reason"],
                          replicas=described["replicas"], ready=described["ready"],
                          restarts=sum(i.restarts for i in instances), last_event=described.get("last_event", ""),
                          instances=instances)


class WorkloadSync:
    """The node's half: the status of its registry-owned workloads, sent when it changed, and their events not
    delivered yet (the newest MAX_EVENTS of each). An event's seq is its id in the node's store, and how far the
    registry has each workload's events is kept there too (gateway.workloads.history), so after a restart of the
    gateway the node sends exactly the events the registry has not acknowledged."""

    def __init__(self, gateway: GatewayAPI) -> None:
        self.gateway = gateway
        self._delivered = b""
        self._sending: tuple[bytes, dict[str, int]] | None = None
        self._last = -RESEND

    def _events(self, workload: str) -> list[EventReport]:
        manager = self.gateway.workloads
        runner = manager.runners.get(workload)
        if runner is None:
            return []
        after = manager.history.delivered_up_to(workload)
        return [EventReport(seq=e.seq, ts=e.ts, event=e.event[:32], instance=e.instance[:300],
                            reason=e.reason[:MAX_REASON]) for e in runner.recent if e.seq > after][-MAX_EVENTS:]

    def outgoing(self) -> dict[str, Any]:
        reports = [_report(d) for d in self.gateway.workloads.describe() if d.get("owner") == "registry"]
        reports = reports[:MAX_REPORTS]
        status = msgspec.json.encode(reports)
        room = MAX_EVENTS_PER_BEAT  # bounds the heartbeat: the older events go first, the rest with the next one
        for report in reports:
            report.events = self._events(report.workload)[:room]
            room -= len(report.events)
        now = time.monotonic()
        fresh = any(report.events for report in reports)
        if now - self._last < MIN_REPORT_INTERVAL or (status == self._delivered and not fresh
                                                      and now - self._last < RESEND):
            self._sending = None
            return {}
        cursors = {report.workload: report.events[-1].seq for report in reports if report.events}
        self._sending, self._last = (status, cursors), now
        return {"workloads": msgspec.to_builtins(reports)}

    def delivered(self) -> None:
        if self._sending is not None:
            self._delivered = self._sending[0]
            self.gateway.workloads.history.mark_delivered(self._sending[1])
            self._sending = None

    def failed(self) -> None:
        self._sending = None
        self._last = -RESEND


class FiguresSync:
    """The resources of every app instance of the node (gateway.workloads.figures), sent with the first heartbeat
    after each sample, and what the node offers its apps (`allocatable`), sent with every heartbeat."""

    def __init__(self, gateway: GatewayAPI) -> None:
        self.gateway = gateway
        self._sent = -1
        self._allocatable: dict[str, Any] = {}
        self._read_at = -ALLOCATABLE_EVERY
        self._sent_empty = -EMPTY_EVERY

    def outgoing(self) -> dict[str, Any]:
        now = time.monotonic()
        if now - self._read_at >= ALLOCATABLE_EVERY:
            self._allocatable, self._read_at = msgspec.to_builtins(allocatable()), now
        body: dict[str, Any] = {"allocatable": self._allocatable}
        figures = self.gateway.workloads.figures
        if figures.generation != self._sent:
            self._sent = figures.generation
            reports = [AppFigures(f.workload, f.instance, *(f.latest.get(name) for name in APP_SERIES))
                       for f in figures.instances.values()
                       if f.latest is not None and f.latest.get("cpu_percent") is not None][:MAX_FIGURES]
            # none: an empty list now and then all the same, with which the registry drops the day-old figures it
            # keeps of the apps this node ran
            if reports or now - self._sent_empty >= EMPTY_EVERY:
                body["figures"] = msgspec.to_builtins(reports)
                if not reports:
                    self._sent_empty = now
        return body
