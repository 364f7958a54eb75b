"""The in-process bus: topics, subscriptions selected by MQTT topic filters, synchronous fan-out."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

from gateway import router

log = logging.getLogger(__name__)

Handler = Callable[[str, Any], None]


class Bus:
    """Handlers are plain callables that must not block: sinks queue the work and do I/O in their own tasks."""

    def __init__(self) -> None:
        self._router = router.new_router()
        self._handlers: dict[int, Handler] = {}
        self._failing: set[int] = set()
        self._ids = itertools.count(1)
        self.published = 0
        self.handler_errors = 0

    def subscribe(self, topic_filter: str, handler: Handler) -> int:
        """Deliver every message whose topic matches `topic_filter` to `handler`; returns the subscription id."""
        sub_id = next(self._ids)
        self._router.add(sub_id, topic_filter)
        self._handlers[sub_id] = handler
        return sub_id

    def unsubscribe(self, sub_id: int) -> None:
        self._router.remove(sub_id)
        self._handlers.pop(sub_id, None)
        self._failing.discard(sub_id)

    def publish(self, topic: str, message: Any) -> int:
        """Hand a message to every matching handler now; returns how many took it. Never raises."""
        self.published += 1
        delivered = 0
        for sub_id in self._router.match(topic):
            handler = self._handlers.get(sub_id)
            if handler is None:
                continue
            try:
                handler(topic, message)
            except Exception:
                self.handler_errors += 1
                if sub_id not in self._failing:  # log once until the handler recovers
                    self._failing.add(sub_id)
                    log.exception("bus subscriber %d failed on %s", sub_id, topic)
                continue
            if sub_id in self._failing:
                self._failing.discard(sub_id)
                log.info("bus subscriber %d recovered", sub_id)
            delivered += 1
        return delivered
