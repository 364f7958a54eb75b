"""The pure-Python router backend: the twin of the C trie in native/router.c."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.errors import ConfigError
from gateway.router.topics import validate_filter, validate_topic

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class _Node:
    __slots__ = ("children", "ids", "name", "parent")

    def __init__(self, parent: _Node | None, name: str) -> None:
        self.parent = parent
        self.name = name
        self.children: dict[str, _Node] = {}  # literal levels, plus "+" and "#" (never a topic level)
        self.ids: list[int] = []


def _route_id(route_id: int) -> int:
    if not isinstance(route_id, int) or isinstance(route_id, bool) or not INT64_MIN <= route_id <= INT64_MAX:
        raise ConfigError(f"route id must be a 64-bit signed integer, got {route_id!r}")
    return route_id


class TopicRouter:
    """MQTT topic router over a trie of filter levels; every add and remove updates the trie in place."""

    def __init__(self) -> None:
        self._root = _Node(None, "")
        self._routes: dict[int, list[_Node]] = {}
        self._entries = 0

    def add(self, route_id: int, topic_filter: str) -> None:
        """Route `route_id` for topics matching `topic_filter`; adding the same pair twice is a no-op."""
        validate_filter(topic_filter)
        route_id = _route_id(route_id)
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node(node, level)
            node = child
        nodes = self._routes.setdefault(route_id, [])
        if any(known is node for known in nodes):
            return
        nodes.append(node)
        node.ids.append(route_id)
        self._entries += 1

    def remove(self, route_id: int) -> None:
        """Remove every filter of `route_id` (nothing happens for an unknown id)."""
        nodes = self._routes.pop(_route_id(route_id), [])
        for node in nodes:
            node.ids.remove(route_id)
            self._prune(node)
        self._entries -= len(nodes)

    def _prune(self, node: _Node) -> None:
        while node.parent is not None and not node.ids and not node.children:
            del node.parent.children[node.name]
            node = node.parent

    def match(self, topic: str) -> list[int]:
        """Ids of the routes whose filters match `topic`, ascending, each once."""
        validate_topic(topic)
        levels = topic.split("/")
        depth = len(levels)
        dollar = topic[0] == "$"
        found: list[int] = []
        stack = [(self._root, 0)]
        while stack:
            node, index = stack.pop()
            children = node.children
            wildcards = not (dollar and index == 0)
            if wildcards and "#" in children:
                found += children["#"].ids
            if index == depth:
                found += node.ids
                continue
            if wildcards and "+" in children:
                stack.append((children["+"], index + 1))
            child = children.get(levels[index])
            if child is not None:
                stack.append((child, index + 1))
        return sorted(set(found))

    def match_many(self, topics: Sequence[str]) -> list[tuple[int, ...]]:
        """The ids of every topic's routes (sorted, each once, as match() gives them)."""
        return [tuple(self.match(topic)) for topic in topics]

    def __len__(self) -> int:
        return self._entries
