"""Device twins: per property the desired value, the reported value, when it was reported and its quality."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.pipeline.values import same_value as same_value  # its home is pipeline.values; imported from here too

Quality = Literal["good", "bad", "unknown"]
DeviceState = Literal["unknown", "online", "unhealthy", "offline"]


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
    """The twin of one device; owned by the runtime, updated by the device's poller."""

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
        return {name: p.desired for name, p in self.properties.items() if p.desired is not None and not p.in_sync()}
