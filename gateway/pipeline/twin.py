"""Device twins and their rules, in one place: per property the desired value, the reported value, when it was
reported and its quality; what a desired value may be, when it is a delta to write, how a reading updates the
twin and when a write counts as confirmed.

The poller applies readings and confirms writes through these functions, and the local API, the eventbus, the
uplink and the registry's desired values all set desired values through `desired_value` and
`TwinProperty.want`, so every way into a twin follows the same rules.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.errors import NotFound, ValueRejected
from gateway.protocols.base import BoundDevice
from gateway.resources.schema import PropertyModel
from gateway.resources.values import coerce, read_value, short
from gateway.resources.values import same_value as same_value  # its home is resources.values; imported here too

log = logging.getLogger(__name__)

Quality = Literal["good", "bad", "unknown"]
DeviceState = Literal["unknown", "online", "unhealthy", "offline"]
FLOAT_TYPES = frozenset(("float", "double"))


@dataclass(slots=True)
class TwinProperty:
    desired: Any = None
    desired_at: float | None = None
    reported: Any = None
    reported_at: float | None = None
    quality: Quality = "unknown"
    error: str | None = None
    # A desired value waits to be written while this is set (new desired value, a failed write, a reconnect).
    pending: bool = False

    def in_sync(self) -> bool:
        return self.desired is None or same_value(self.desired, self.reported)

    def want(self, value: Any, at: float) -> tuple[Any, float | None]:
        """Take a checked desired value (see `desired_value`); it waits to be written. Returns the previous one
        and its time."""
        previous = (self.desired, self.desired_at)
        self.desired, self.desired_at, self.pending = value, at, True
        return previous

    def as_dict(self) -> dict[str, Any]:
        return {
            "desired": self.desired,
            "reported": self.reported,
            "reported_at": self.reported_at,
            "quality": self.quality,
            **({"error": self.error} if self.error else {}),
        }


@dataclass
class Twin:
    """The twin of one device; updated by the device's poller and by desired values from any side."""

    device_id: str
    properties: dict[str, TwinProperty]
    state: DeviceState = "unknown"
    state_reason: str = ""
    state_since: float = field(default_factory=time.time)

    def set_state(self, state: DeviceState, reason: str = "") -> bool:
        """Record a state; True when it changed (callers log and publish changes only)."""
        if state == self.state and reason == self.state_reason:
            return False
        changed = state != self.state
        self.state, self.state_reason = state, reason
        if changed:
            self.state_since = time.time()
        return changed

    def deltas(self) -> dict[str, Any]:
        """The desired values the device does not report yet, by property."""
        return {name: p.desired for name, p in self.properties.items() if p.desired is not None and not p.in_sync()}


# --- desired values ------------------------------------------------------------------------------------------------


def desired_value(device: BoundDevice, prop: str, value: Any) -> Any:
    """A value as it may be desired for a property: the property exists and is ReadWrite, the value converts to
    the model's type and lies within minimum/maximum. Raises NotFound or ValueRejected with the reason."""
    bound = device.properties.get(prop)
    if bound is None:
        raise NotFound(f"device {device.id} has no property {prop!r}")
    if not bound.writable:
        raise ValueRejected(f"{prop}: the property is {bound.model.access}")
    return coerce(bound.model, value)


def desired_values(device: BoundDevice, values: Mapping[str, Any]) -> dict[str, Any]:
    """Several desired values checked together: the first that cannot be set raises, and then none is set."""
    return {prop: desired_value(device, prop, value) for prop, value in values.items()}


def make_twin(device: BoundDevice, rows: Mapping[str, Mapping[str, Any]],
              previous: Mapping[tuple[str, str], Any]) -> Twin:
    """A device's twin from its stored rows; a document's desired value wins when it changed since last time."""
    twin = Twin(device.id, {})
    for name, prop in device.properties.items():
        row = rows.get(name, {})
        twin_prop = TwinProperty(reported=row.get("reported"), reported_at=row.get("reported_at"))
        doc_desired = prop.spec.desired
        stored_desired = row.get("desired")
        # A value set through the API survives restarts unless the document's own desired value changed.
        if doc_desired is not None and (stored_desired is None or previous.get((device.id, name)) != doc_desired):
            twin_prop.desired = coerce(prop.model, doc_desired)
        elif stored_desired is not None and prop.writable:
            try:  # checked again: the model may have changed since, and a store may hold what older versions took
                twin_prop.desired = coerce(prop.model, stored_desired)
            except ValueRejected as exc:
                log.warning("%s: the stored desired value of %s is dropped, it no longer fits the model: %s",
                            device.id, name, exc)
                twin_prop.desired = coerce(prop.model, doc_desired) if doc_desired is not None else None
        twin_prop.desired_at = row.get("desired_at")
        twin_prop.pending = twin_prop.desired is not None and prop.writable
        twin.properties[name] = twin_prop
    return twin


# --- readings and writes -------------------------------------------------------------------------------------------


def apply_readings(twin: Twin, models: Mapping[str, PropertyModel], values: Mapping[str, Any],
                   errors: dict[str, str], ts: float) -> dict[str, Any]:
    """Record what one read brought: each value converted to its model's type becomes the reported value with good
    quality; a value that does not convert (NaN, an infinity, a string over max_length included) and each property
    the read failed for get bad quality and the reason (added to `errors`), and keep their last good reported value.
    Returns the values read well, by property, in the order read (the device's report: what the history, the
    rollups and the sinks get, so a bad reading reaches none of them)."""
    twin_props = twin.properties
    fresh: dict[str, Any] = {}
    for name, raw in values.items():
        model = models.get(name)
        if model is None:
            continue
        if type(raw) is float and model.type in FLOAT_TYPES and raw - raw == 0.0:
            value = raw  # the common case: a finite float read into a float property, nothing to convert
        else:
            try:
                value = read_value(model, raw)
            except (TypeError, ValueError, OverflowError) as exc:
                errors[name] = f"cannot convert {short(raw)}: {exc}"
                continue
        prop = twin_props.get(name)
        if prop is None:
            continue
        prop.reported = value
        prop.reported_at = ts
        prop.quality = "good"
        prop.error = None
        fresh[name] = value
    for name, error in errors.items():
        prop = twin_props.get(name)
        if prop is not None:
            prop.quality = "bad"
            prop.error = error
            fresh.pop(name, None)
    return fresh


def mark_unreachable(twin: Twin) -> None:
    """The device cannot be read: what the twin reports is no longer current."""
    for prop in twin.properties.values():
        prop.quality = "bad"


def rewrite_on_reconnect(twin: Twin, writable: Iterable[str]) -> None:
    """A device that comes back gets its desired values written again."""
    props = twin.properties
    for name in writable:
        prop = props.get(name)
        if prop is not None and prop.desired is not None:
            prop.pending = True


def write_failed(prop: TwinProperty, reason: str) -> None:
    """A write was refused: the value stays pending (retried later) and the reason shows on the twin."""
    prop.error = f"write failed: {reason}"


def write_done(prop: TwinProperty, written: Any) -> None:
    """A write of `written` went through; it is confirmed by the read-back that follows (apply_readings). A desired
    value changed while the write was under way stays pending."""
    if prop.desired == written:
        prop.pending = False
