"""The devices of the running configuration: a twin and a supervised poller each, and the one way desired values
enter a twin (the local API, the eventbus, the uplink): checked by the twin's rules, stored, published on the bus
as a TwinChange, audited, and handed to the device's poller to write."""

from __future__ import annotations

import itertools
import logging
import statistics
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.errors import NotFound
from gateway.messages import DeviceStateChange, Report, TwinChange, state_topic, telemetry_topic, twin_topic
from gateway.pipeline.bus import Bus
from gateway.pipeline.poller import DevicePoller
from gateway.pipeline.supervisor import Supervisor
from gateway.pipeline.twin import DeviceState, Twin, TwinProperty, desired_value, desired_values, make_twin
from gateway.protocols.base import BoundDevice, Protocol
from gateway.resources.loader import Config
from gateway.resources.schema import Device
from gateway.store import Store

if TYPE_CHECKING:
    from gateway.api import GatewayAPI

log = logging.getLogger(__name__)
STATUS_SAMPLES = 20_000


class Devices:
    """Owns the twins and pollers; `start` builds them from a configuration, `reconcile` moves to a new one."""

    def __init__(self, protocols: Mapping[str, type[Protocol]], bus: Bus, supervisor: Supervisor,
                 store: Store) -> None:
        self.protocols = protocols
        self.bus = bus
        self.supervisor = supervisor
        self.store = store
        self.bound: Mapping[str, BoundDevice] = {}
        self.twins: dict[str, Twin] = {}
        self.pollers: dict[str, DevicePoller] = {}
        self.gateway: GatewayAPI | None = None  # handed to every protocol (the runtime sets it once built)

    async def start(self, config: Config, previous: Mapping[tuple[str, str], Any]) -> None:
        """Twins from the store (a document's desired value wins when it changed since `previous`), then pollers."""
        self.bound = config.devices
        stored = await self.store.twins.load()
        for device_id, device in config.devices.items():
            self.twins[device_id] = make_twin(device, stored.get(device_id, {}), previous)
        for device_id in config.devices:
            self._start_poller(device_id)

    async def stop(self) -> None:
        """Stop every poller, all at once (one by one, a hundred busy ones took long)."""
        await self.supervisor.cancel_many([f"device {device_id}" for device_id in self.pollers])
        self.pollers.clear()

    async def reconcile(self, old: Config, new: Config) -> None:
        """Stop removed devices, start new ones, restart only those whose configuration changed."""
        stored = await self.store.twins.load()
        previous = {(device_id, prop.name): prop.spec.desired for device_id, device in old.devices.items()
                    for prop in device.properties.values() if prop.spec.desired is not None}
        self.bound = new.devices
        for device_id in old.devices.keys() - new.devices.keys():
            await self._stop_poller(device_id)
            self.twins.pop(device_id, None)
        for device_id, device in new.devices.items():
            before = old.devices.get(device_id)
            if before is not None and same_device(before, device):
                self.pollers[device_id].device = device
                continue
            if before is not None:
                await self._stop_poller(device_id)
            self.twins[device_id] = make_twin(device, stored.get(device_id, {}), previous)
            self._start_poller(device_id)
            log.info("%s %s", device_id, "restarted with its new configuration" if before else "added")

    def _start_poller(self, device_id: str) -> None:
        device = self.bound[device_id]
        poller = DevicePoller(device, self.protocols[device.resource.protocol.name], self.twins[device_id],
                              on_report=self._publish_report, on_state=self._publish_state, gateway=self.gateway)
        self.pollers[device_id] = poller
        self.supervisor.start(f"device {device_id}", poller.run)

    async def _stop_poller(self, device_id: str) -> None:
        await self.supervisor.cancel(f"device {device_id}")
        self.pollers.pop(device_id, None)

    def _publish_report(self, device_id: str, ts: float, values: dict[str, Any]) -> None:
        self.bus.publish(telemetry_topic(device_id), Report(device_id, ts, values))

    def _publish_state(self, twin: Twin, state: DeviceState, reason: str) -> None:
        # the one line a device's change of state gets (its poller logs nothing per failed attempt)
        level = logging.WARNING if state in ("offline", "unhealthy") else logging.INFO
        log.log(level, "%s is %s%s", twin.device_id, state, f": {reason}" if reason else "")
        self.bus.publish(state_topic(twin.device_id), DeviceStateChange(twin.device_id, state, reason, time.time()))

    # --- queries ------------------------------------------------------------------------------------------------

    def twin(self, device_id: str) -> Twin:
        twin = self.twins.get(device_id)
        if twin is None:
            raise NotFound(f"no device {device_id}")
        return twin

    def bound_device(self, device_id: str) -> BoundDevice:
        bound = self.bound.get(device_id)
        if bound is None:
            raise NotFound(f"no device {device_id}")
        return bound

    def device(self, device_id: str) -> Device:
        return self.bound_device(device_id).resource

    # --- desired values -----------------------------------------------------------------------------------------

    async def set_desired(self, device_id: str, prop: str, value: Any, *, actor: str = "system",
                          address: str = "") -> TwinProperty:
        """Check and store a desired value; the device's poller writes it and confirms it by reading back."""
        converted = desired_value(self.bound_device(device_id), prop, value)
        now = time.time()
        await self.store.twins.save_desired(device_id, prop, converted, now)
        twin_prop = self.twins[device_id].properties[prop]
        previous, previous_at = twin_prop.want(converted, now)
        self.bus.publish(twin_topic(device_id), TwinChange(device_id, prop, converted, previous, previous_at))
        await self.store.audit.record(actor, "set-desired", f"{device_id}/{prop}",
                                      msgspec.json.encode(converted).decode(), address)
        self.pollers[device_id].wake()
        return twin_prop

    def check_desired(self, device_id: str, values: Mapping[str, Any]) -> None:
        """Raise as set_desired would for the first of several values that cannot be set; set nothing."""
        desired_values(self.bound_device(device_id), values)

    def points_read(self) -> float:
        """Values read so far by every poller: its cycles times the properties a cycle reads (one schedule: exact;
        several: their mean weighted by how often each is due)."""
        total = 0.0
        for poller in self.pollers.values():
            schedules = poller.schedules
            if not schedules:
                continue
            rates = [1 / max(s.interval, 1e-3) for s in schedules]
            per_cycle = sum(len(s.props) * r for s, r in zip(schedules, rates, strict=True)) / sum(rates)
            total += poller.stats.cycles * per_cycle
        return total

    # --- status -------------------------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Device states, cycles and the lateness of the most recent cycles (at most ~20,000 in all, so a status
        call stays cheap: sorting every device's whole history blocked the loop for 0.4 s at 400 devices)."""
        states: dict[str, int] = {}
        lateness: list[float] = []
        per_device = max(STATUS_SAMPLES // max(len(self.pollers), 1), 10)
        for device_id, poller in self.pollers.items():
            state = self.twins[device_id].state
            states[state] = states.get(state, 0) + 1
            lateness.extend(itertools.islice(reversed(poller.stats.lateness), per_device))
        lateness.sort()
        return {
            "devices": {"total": len(self.pollers), **states},
            "cycles": sum(p.stats.cycles for p in self.pollers.values()),
            "missed_cycles": sum(p.stats.missed for p in self.pollers.values()),
            "lateness_ms": {
                "mean": round(statistics.fmean(lateness) * 1000, 3) if lateness else None,
                "p50": round(lateness[len(lateness) // 2] * 1000, 3) if lateness else None,
                "p99": round(lateness[min(int(len(lateness) * 0.99), len(lateness) - 1)] * 1000, 3)
                if lateness else None,
                "max": round(lateness[-1] * 1000, 3) if lateness else None,
            },
        }


def same_device(before: BoundDevice, after: BoundDevice) -> bool:
    """Nothing a poller uses changed: the document, and the model entry of every property."""
    return before.resource == after.resource and [p.model for p in before.properties.values()] == [
        p.model for p in after.properties.values()]

