"""The node's half of device twins at the registry (gateway.registry.twins is the other): which twins changed since
the last delivered report, sent with the heartbeat (coalesced, at most one report per MIN_REPORT_INTERVAL, kept until
a heartbeat gets through), and the registry's desired values put through the gateway's desired path and
acknowledged with the next heartbeat, with the reason for any refused."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.errors import FieldgateError
from gateway.wire import (
    MAX_DESCRIBED_PROPERTIES,
    MAX_REPORT_DEVICES,
    MAX_UNIT,
    MIN_REPORT_INTERVAL,
    REPORT_VALUE_MAX,
    TWINS_BUDGET,
    DesiredAck,
    DesiredError,
    DesiredValue,
    DeviceDescription,
    DeviceReport,
    PropertyReport,
)

if TYPE_CHECKING:
    from gateway.api import GatewayAPI

log = logging.getLogger(__name__)
_json = msgspec.json.Encoder()


def fit_reports(reports: Iterable[DeviceReport], budget: int) -> list[dict[str, Any]]:
    """As many reports as fit `budget` bytes of JSON, in order (at least one); the others wait for the next
    heartbeats. A report alone larger than the budget goes without its long values (see `_shortened`)."""
    fitted: list[dict[str, Any]] = []
    used = 0
    for report in reports:
        size = len(_json.encode(report))
        if size > budget:
            report = _shortened(report, budget)
            size = len(_json.encode(report))
        if fitted and used + size > budget:
            break
        fitted.append(msgspec.to_builtins(report))
        used += size
    return fitted


def _shortened(report: DeviceReport, budget: int) -> DeviceReport:
    """A report that fits a heartbeat: values longer than REPORT_VALUE_MAX stay on the node (said in the property's
    error), and the properties that still do not fit are left out (said in the device's reason)."""
    properties: dict[str, PropertyReport] = {}
    used = 0
    for name, prop in report.properties.items():
        long = [field for field in ("reported", "desired") if isinstance(getattr(prop, field), str | bytes)
                and len(getattr(prop, field)) > REPORT_VALUE_MAX]
        if long:
            prop = msgspec.structs.replace(prop, **dict.fromkeys(long, None), error=f"{' and '.join(long)} value "
                                           f"longer than {REPORT_VALUE_MAX} characters: kept on the node")
        size = len(_json.encode(prop)) + len(name) + 4
        if used + size > budget // 2:
            left_out = len(report.properties) - len(properties)
            return msgspec.structs.replace(report, properties=properties, reason=f"{report.reason} ({left_out} "
                                           "properties not reported: too many for a heartbeat)".lstrip())
        properties[name] = prop
        used += size
    return msgspec.structs.replace(report, properties=properties)


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
        self._reported_at: dict[str, float] = {}  # device -> when a heartbeat last carried its report
        self._described: dict[str, DeviceDescription] = {}  # what the registry took of each device's description
        self._sending_described: list[DeviceDescription] = []
        self.ack: DesiredAck | None = None
        self.desired_version = self._load_version()
        self._desired_lock = asyncio.Lock()
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
            self._sending, self._sending_complete, self._sending_described = set(), False, []
            return body
        if self.complete and len(twins) > MAX_REPORT_DEVICES:  # no heartbeat names them all: report as changed
            self.dirty |= twins.keys()
            self.complete = False
        # the devices reported longest ago first: when not all fit, none waits behind the others for good
        devices = sorted(twins if self.complete else self.dirty & twins.keys(),
                         key=lambda device_id: (self._reported_at.get(device_id, 0.0), device_id))
        reports = fit_reports((self._report(device_id) for device_id in devices[:MAX_REPORT_DEVICES]), TWINS_BUDGET)
        chosen = [report["device"] for report in reports]
        self._sending = set(chosen)
        self._sending_complete = self.complete
        self._reported_at.update(dict.fromkeys(chosen, now))
        self.dirty -= self._sending
        self.dirty &= twins.keys()
        if self.complete and len(chosen) < len(devices):
            # the whole set does not fit one heartbeat: the others go by name and state, which the registry takes
            # without touching their properties, and with all of theirs in the next heartbeats
            later = devices[len(chosen):]
            reports += [msgspec.to_builtins(self._report(device_id, properties=False)) for device_id in later]
            self.dirty.update(later)
        self._last_report = now
        body["twins"] = reports
        body["twins_complete"] = self._sending_complete
        if self.complete:  # the registry may have forgotten what it took: describe every device again
            self._described.clear()
        self._sending_described = [description for description in map(self._description, chosen)
                                   if self._described.get(description.device) != description]
        if self._sending_described:
            body["described"] = [msgspec.to_builtins(description) for description in self._sending_described]
        return body

    def _description(self, device_id: str) -> DeviceDescription:
        bound = self.gateway.config.devices.get(device_id)
        if bound is None:
            return DeviceDescription(device=device_id)
        units = [(name, prop.model.unit[:MAX_UNIT]) for name, prop in bound.properties.items() if prop.model.unit]
        return DeviceDescription(device=device_id, model=(bound.resource.model or bound.resource.profile or "")[:253],
                                 units=dict(units[:MAX_DESCRIBED_PROPERTIES]))

    def _report(self, device_id: str, *, properties: bool = True) -> DeviceReport:
        twin = self.gateway.twin(device_id)
        return DeviceReport(device=device_id, state=twin.state, reason=twin.state_reason, properties={
            name: PropertyReport(reported=prop.reported, reported_at=prop.reported_at, quality=prop.quality,
                                 desired=prop.desired, error=prop.error)
            for name, prop in twin.properties.items()} if properties else {})

    def delivered(self) -> None:
        """The heartbeat got through."""
        if self._sending_complete:
            self.complete = False
        if self.ack is self._sending_ack:
            self.ack = None
        self._described.update((description.device, description) for description in self._sending_described)
        self._sending, self._sending_complete, self._sending_ack = set(), False, None
        self._sending_described = []

    def failed(self) -> None:
        """The heartbeat did not get through: what it carried goes with the next one."""
        self.dirty |= self._sending
        self._sending, self._sending_complete, self._sending_ack = set(), False, None
        self._sending_described = []

    async def apply_desired(self, values: list[DesiredValue]) -> None:
        """Put the registry's desired values through the gateway's desired path; refusals go back with the ack."""
        async with self._desired_lock:  # the channel and an HTTPS heartbeat may bring the same values at once
            await self._apply_desired([value for value in values if value.version > self.desired_version])

    async def _apply_desired(self, values: list[DesiredValue]) -> None:
        if not values:  # taken before (a push repeated after a dropped link): applied once only
            return
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
