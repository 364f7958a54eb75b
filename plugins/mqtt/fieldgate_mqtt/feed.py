"""What one device takes from the messages of its link: the latest value (or the reason there is none) of each
property since the last read, with its arrival time, and when the device was last heard from."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from fieldgate_mqtt.config import MqttVisitor, fill
from fieldgate_mqtt.payload import BadMessage, Message, Selector
from gateway.logs import Throttle
from gateway.protocols.base import BoundDevice
from gateway.resources.values import short

log = logging.getLogger(__name__)
_bad_messages = Throttle(log, 60.0)  # one line a minute per device and property, with how many were left out


@dataclass(slots=True)
class Reading:
    value: Any
    error: str | None
    arrived: float  # time.monotonic()


class Feed:
    """The messages of one device: `take` is called by the link for every message on one of its filters."""

    def __init__(self, device: BoundDevice, max_message: int) -> None:
        self.device_id = device.id
        self.max_message = max_message
        self.filters: dict[str, int] = {}  # topic filter -> QoS of the subscription
        self._readers: dict[str, list[tuple[str, Selector]]] = {}
        names = {"device": device.resource.name, "namespace": device.resource.namespace}
        for name, prop in device.properties.items():
            visitor: MqttVisitor = prop.visitor
            topic_filter = fill(visitor.topic, **names)
            self.filters[topic_filter] = max(visitor.qos, self.filters.get(topic_filter, 0))
            self._readers.setdefault(topic_filter, []).append((name, Selector(visitor, prop.model)))
        self.fresh: dict[str, Reading] = {}
        self.listening_since = time.monotonic()
        self.last_message: float | None = None
        self.messages = 0
        self.bad = 0  # readings a message did not give (not JSON, no such member, wrong type, too large)
        self.too_large = 0

    def properties_of(self, topic_filter: str) -> list[str]:
        return [name for name, _ in self._readers.get(topic_filter, [])]

    def take(self, topic_filter: str, topic: str, message: Message, arrived: float) -> None:
        """Keep what a message gives each property reading `topic_filter`; a bad one never raises."""
        self.last_message = arrived  # a device that sends garbage is there: its state is its properties' quality
        self.messages += 1
        readers = self._readers.get(topic_filter, [])
        size = len(message.payload)
        if size > self.max_message:
            self.too_large += 1
            for name, _ in readers:
                self._bad(name, topic, f"the message has {size} bytes, more than max_message {self.max_message}",
                          arrived)
            return
        for name, selector in readers:
            try:
                value = selector.value(message)
            except BadMessage as exc:
                self._bad(name, topic, str(exc), arrived)
                continue
            except Exception as exc:  # a bug of ours must cost one reading, never the link that serves everyone
                self._bad(name, topic, f"internal error: {type(exc).__name__}: {short(str(exc))}", arrived)
                continue
            self.fresh[name] = Reading(value, None, arrived)

    def _bad(self, name: str, topic: str, reason: str, arrived: float) -> None:
        self.bad += 1
        error = f"{reason} (on {topic})"
        self.fresh[name] = Reading(None, error, arrived)
        _bad_messages.log(logging.WARNING, f"{self.device_id} {name}", "%s: %s: a message gave no value: %s",
                          self.device_id, name, error)

    def take_fresh(self, names: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
        """(values, errors) of these properties that arrived since they were last taken."""
        values: dict[str, Any] = {}
        errors: dict[str, str] = {}
        fresh = self.fresh
        for name in names:
            reading = fresh.pop(name, None)
            if reading is None:
                continue
            if reading.error is None:
                values[name] = reading.value
            else:
                errors[name] = reading.error
        return values, errors
