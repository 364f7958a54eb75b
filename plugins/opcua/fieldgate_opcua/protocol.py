"""The `opcua` protocol: values by subscription (monitored items) or by polling, per property; writes with the
node's data type; status codes as quality.

A subscribed property costs the poller no request: the server sends changes (sampled every `sampling_interval`,
published every `publishing_interval`) and a read hands out those that came since the last one, so a change
reaches the twin at most one publishing interval plus one collect interval after the server sampled it. A read
with no change reports nothing for the property (values are reported on change); a bad status stays reported as
the property's error until a good value comes. A lost connection or subscription fails the next read, and the
poller reconnects, which subscribes again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from fieldgate_opcua.config import OpcuaConfig, OpcuaVisitor, model_types
from gateway.errors import DeviceTimeout
from gateway.protocols.base import BoundDevice, BoundProperty, Protocol, ReadResult

if TYPE_CHECKING:
    from fieldgate_opcua.session import Session


@dataclass(frozen=True)
class ReadPlan:
    """The properties of one read: those read by request and those the subscription delivers."""

    polled: tuple[str, ...]
    subscribed: tuple[str, ...]


class OpcuaProtocol(Protocol):
    """One OPC UA session per device."""

    names: ClassVar[tuple[str, ...]] = ("opcua",)
    config_type: ClassVar[type[msgspec.Struct]] = OpcuaConfig
    visitor_type: ClassVar[type[msgspec.Struct]] = OpcuaVisitor

    def __init__(self, device: BoundDevice) -> None:
        super().__init__(device)
        self._session: Session | None = None

    @classmethod
    def visitor_types(cls, visitor: Any) -> frozenset[str]:
        return model_types(visitor)

    def plan(self, properties: Sequence[BoundProperty]) -> ReadPlan:
        polled = tuple(p.name for p in properties if p.visitor.mode == "poll")
        subscribed = tuple(p.name for p in properties if p.visitor.mode != "poll")
        return ReadPlan(polled, subscribed)

    async def open(self) -> None:
        from fieldgate_opcua.session import Session  # asyncua is heavy: imported when a device first opens

        session = Session(self.device, self.data_dir)
        await session.open()
        self._session = session

    async def read(self, plan: Any) -> ReadResult:
        if not isinstance(plan, ReadPlan):
            plan = self.plan(plan)
        session = self._session
        if session is None:
            raise DeviceTimeout("not connected")
        from fieldgate_opcua.session import Changes

        session.check_alive()
        out = Changes()
        by_request = [*plan.polled, *(name for name in plan.subscribed if session.needs_read(name))]
        if by_request:
            await session.read(by_request, out)
        if plan.subscribed:
            session.take_changes([name for name in plan.subscribed if name not in out.values
                                  and name not in out.errors], out)
        return ReadResult(out.values, out.errors)

    async def write(self, prop: BoundProperty, value: Any) -> None:
        if self._session is None:
            raise DeviceTimeout("not connected")
        await self._session.write(prop, value)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
