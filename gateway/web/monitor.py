"""What the pages show besides the twins: recent warnings and errors from the log, recent device state changes."""

from __future__ import annotations

import logging
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any

from gateway.api import GatewayAPI
from gateway.messages import DeviceStateChange

RING_SIZE = 500
STATES_PER_DEVICE = 20


@dataclass(frozen=True)
class LogRecordSummary:
    ts: float
    level: str
    logger: str
    message: str


class RecentErrors(logging.Handler):
    """A ring buffer of warning-and-above log records (installed once on the root logger)."""

    def __init__(self, size: int = RING_SIZE) -> None:
        super().__init__(logging.WARNING)
        self.records: deque[LogRecordSummary] = deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string in someone's log call must not break logging
            message = str(record.msg)
        self.records.append(LogRecordSummary(record.created, record.levelname, record.name, message[:500]))

    def since(self, seconds: float) -> list[LogRecordSummary]:
        cutoff = time.time() - seconds
        return [r for r in self.records if r.ts >= cutoff]

    def mentioning(self, text: str, limit: int = 10) -> list[LogRecordSummary]:
        found = [r for r in reversed(self.records) if text in r.message]
        return found[:limit]


_errors: RecentErrors | None = None


def recent_errors() -> RecentErrors:
    """The process's handler, installed on the root logger the first time a web app is created."""
    global _errors
    if _errors is None:
        _errors = RecentErrors()
        logging.getLogger().addHandler(_errors)
    return _errors


class StateHistory:
    """The last state changes of every device, fed by the bus."""

    def __init__(self, gateway: GatewayAPI) -> None:
        self.changes: dict[str, deque[DeviceStateChange]] = {}
        gateway.subscribe("devices/+/+/state", self._on_state)

    def _on_state(self, topic: str, change: Any) -> None:
        if isinstance(change, DeviceStateChange):
            self.changes.setdefault(change.device, deque(maxlen=STATES_PER_DEVICE)).append(change)

    def of(self, device_id: str) -> list[DeviceStateChange]:
        return list(reversed(self.changes.get(device_id, ())))


_state_histories: weakref.WeakKeyDictionary[GatewayAPI, StateHistory] = weakref.WeakKeyDictionary()


def state_history(gateway: GatewayAPI) -> StateHistory:
    """One subscription per gateway however many apps are created for it."""
    history = _state_histories.get(gateway)
    if history is None:
        history = _state_histories[gateway] = StateHistory(gateway)
    return history
