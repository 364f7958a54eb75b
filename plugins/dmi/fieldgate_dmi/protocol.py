"""The `dmi` protocol: devices that a KubeEdge mapper polls. The gateway's poller reads the latest values the mapper
reported (on the properties' collect intervals, and reports them on their report intervals, as it does for a device
it polls itself) and hands desired values to the mapper; the device is offline while the mapper says so or stays
silent beyond the device's limit (see `server.silence_limit`)."""

from __future__ import annotations

import time
from typing import Any, ClassVar

import msgspec

from fieldgate_dmi.config import DmiConfig, DmiVisitor
from fieldgate_dmi.server import PROTOCOL, UNHEALTHY_STATES, DmiServer, server_for, silence_limit
from gateway.errors import ProtocolError
from gateway.protocols.base import BoundDevice, BoundProperty, Protocol, ReadResult

ALL_TYPES = frozenset({"int", "float", "double", "string", "boolean", "bytes"})


class DmiProtocol(Protocol):
    """Devices a KubeEdge mapper polls: the gateway reads what the mapper reports and sends it desired values."""

    names: ClassVar[tuple[str, ...]] = (PROTOCOL,)
    config_type: ClassVar[type[msgspec.Struct]] = DmiConfig
    visitor_type: ClassVar[type[msgspec.Struct]] = DmiVisitor
    max_backoff: ClassVar[float] = 1.0  # asking again is a look-up: a device is online within a second of reporting

    @classmethod
    def visitor_types(cls, visitor: Any) -> frozenset[str]:
        return ALL_TYPES  # the mapper converts; its reports are checked against the model when they come

    def __init__(self, device: BoundDevice) -> None:
        super().__init__(device)
        self._opened = time.monotonic()

    def _server(self) -> DmiServer | None:
        """The gateway's DMI server; None for a while after the start (the plugin starts it after the pollers),
        ProtocolError once the device has waited beyond its limit for one."""
        try:
            return server_for(self.device.id)
        except ProtocolError:
            if time.monotonic() - self._opened > silence_limit(self.device):
                raise
            return None

    async def open(self) -> None:
        self._opened = time.monotonic()

    async def read(self, plan: Any) -> ReadResult:
        server = self._server()
        if server is None:
            return ReadResult()
        reports = server.live(self.device)
        names = [bound.name for bound in plan]
        if reports.state in UNHEALTHY_STATES:
            return ReadResult(errors={name: f"the mapper reports the device {reports.state}" for name in names})
        return ReadResult({name: reports.values[name] for name in names if name in reports.values})

    async def write(self, prop: BoundProperty, value: Any) -> None:
        server = self._server()
        if server is not None:  # else the desired value waits in the twin and goes with the device to its mapper
            await server.deliver(self.device.id)

    async def close(self) -> None:
        return None
