"""MQTT topic router for the bus: topic filters (`+`, `#`) to route ids, in a trie updated incrementally.

`backend` says which implementation new_router() builds ("c" or "python", see gateway.native); both give
identical results.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gateway.native import selected_backend
from gateway.router.topics import validate_filter, validate_topic

backend: str = selected_backend()


class TopicRouter(Protocol):
    """What the bus relies on; both backends' routers have this shape."""

    def add(self, route_id: int, topic_filter: str) -> None: ...
    def remove(self, route_id: int) -> None: ...
    def match(self, topic: str) -> list[int]: ...
    def match_many(self, topics: Sequence[str]) -> list[tuple[int, ...]]: ...
    def __len__(self) -> int: ...


def new_router() -> TopicRouter:
    """An empty router on the selected backend."""
    if backend == "c":
        from gateway.router.native import TopicRouter as NativeRouter

        return NativeRouter()
    from gateway.router.python import TopicRouter as PythonRouter

    return PythonRouter()


__all__ = ["TopicRouter", "backend", "new_router", "validate_filter", "validate_topic"]
