"""The node's half of device twins at the registry (gateway.registry.twins is the other): which twins changed since
the last delivered report, sent with the heartbeat (coalesced, at most one report per MIN_REPORT_INTERVAL, kept until
a heartbeat gets through), and the registry's desired values put through the gateway's desired path and
acknowledged with the next heartbeat, with the reason for any refused."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.errors import FieldgateError
from gateway.wire import (
    MAX_REPORT_DEVICES,
    MIN_REPORT_INTERVAL,
    DesiredAck,
    DesiredError,
    DesiredValue,
    DeviceReport,
    PropertyReport,
)

if TYPE_CHECKING:
    from gateway.api import GatewayAPI

log = logging.getLogger(__name__)


class TwinSync:
    """The node's half: which twins changed since the last delivered report, and the desired values it took."""

    def __init__(self, gateway: GatewayAPI, state_path: Path) -> None:
        self.gateway = gateway
        self.state_path = state_path
        self.dirty: set[str] = set()
        self.complete = True  # the next report carries every device, so the registry forgets removed ones
        self._sending: set[str] = set()
        self._sending_complete = False
        self._sending_ack: DesiredAck | None = None
        self._last_report = -MIN_REPORT_INTERVAL
        self.ack: DesiredAck | None = None
        self.desired_version = self._load_version()
        for pattern in ("devices/+/+/telemetry", "devices/+/+/state", "devices/+/+/twin"):
            gateway.subscribe(pattern, self._changed)

    def _load_version(self) -> int:
        try:
            return int(json.loads(self.state_path.read_text())["desired_version"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def _changed(self, topic: str, message: Any) -> None:
        self.dirty.add(topic.split("/", 1)[1].rsplit("/", 1)[0])

    def outgoing(self) -> dict[str, Any]:
        """The twin part of the next heartbeat: the version of desired values taken, an acknowledgement and the
        devices that changed (at most one report per MIN_REPORT_INTERVAL)."""
        body: dict[str, Any] = {"desired_version": self.desired_version}
        self._sending_ack = self.ack
        if self.ack is not None:
            body["desired_ack"] = msgspec.to_builtins(self.ack)
        now = time.monotonic()
        twins = self.gateway.twins()
        if not (self.dirty or self.complete) or now - self._last_report < MIN_REPORT_INTERVAL:
            self._sending, self._sending_complete = set(), False
            return body
        devices = sorted(twins) if self.complete else sorted(self.dirty & twins.keys())
        chosen = devices[:MAX_REPORT_DEVICES]
        self._sending = set(chosen)
        self._sending_complete = self.complete and len(chosen) == len(devices)
        self.dirty -= self._sending
        self.dirty &= twins.keys()
        self._last_report = now
        body["twins"] = [msgspec.to_builtins(self._report(device_id)) for device_id in chosen]
        body["twins_complete"] = self._sending_complete
        return body

    def _report(self, device_id: str) -> DeviceReport:
        twin = self.gateway.twin(device_id)
        return DeviceReport(device=device_id, state=twin.state, reason=twin.state_reason, properties={
            name: PropertyReport(reported=prop.reported, reported_at=prop.reported_at, quality=prop.quality,
                                 desired=prop.desired, error=prop.error)
            for name, prop in twin.properties.items()})

    def delivered(self) -> None:
        """The heartbeat got through."""
        if self._sending_complete:
            self.complete = False
        if self.ack is self._sending_ack:
            self.ack = None
        self._sending, self._sending_complete, self._sending_ack = set(), False, None

    def failed(self) -> None:
        """The heartbeat did not get through: what it carried goes with the next one."""
        self.dirty |= self._sending
        self._sending, self._sending_complete, self._sending_ack = set(), False, None

    async def apply_desired(self, values: list[DesiredValue]) -> None:
        """Put the registry's desired values through the gateway's desired path; refusals go back with the ack."""
        errors = list(self.ack.errors) if self.ack else []
        for value in values:
            try:
                await self.gateway.set_desired(value.device, value.property, value.value, actor="registry")
            except FieldgateError as exc:
                log.warning("desired value from the registry for %s %s refused: %s", value.device, value.property,
                            exc)
                errors.append(DesiredError(device=value.device, property=value.property, version=value.version,
                                           error=str(exc)))
            self.dirty.add(value.device)
        self.desired_version = max([self.desired_version, *(value.version for value in values)])
        self.ack = DesiredAck(version=self.desired_version, errors=errors)
        self.state_path.write_text(json.dumps({"desired_version": self.desired_version}))
