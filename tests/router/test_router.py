"""TopicRouter on every backend against a naive MQTT 3.1.1 matcher; filter and topic validation."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings, stateful
from hypothesis import strategies as st

from gateway import router
from gateway.errors import ConfigError
from gateway.router import validate_filter


def naive_match(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 section 4.7, level by level."""
    if topic.startswith("$") and topic_filter[0] in "+#":
        return False
    f_levels, t_levels = topic_filter.split("/"), topic.split("/")
    for index, level in enumerate(f_levels):
        if level == "#":
            return True
        if index >= len(t_levels):
            return False
        if level != "+" and level != t_levels[index]:
            return False
    return len(f_levels) == len(t_levels)


LEVEL = st.sampled_from(["a", "b", "", "$SYS", "long-level", "ü"])
TOPICS = st.lists(LEVEL, min_size=1, max_size=5).map("/".join).filter(bool)
FILTERS = st.lists(st.one_of(LEVEL, st.just("+")), min_size=1, max_size=5).flatmap(
    lambda levels: st.sampled_from(["/".join(levels), "/".join([*levels, "#"]), "#"])
).filter(bool)


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "a", True),
        ("#", "/", True),
        ("+", "/x", False),
        ("+/+", "/x", True),
        ("/+", "/x", True),
        ("a/+/c", "a//c", True),
        ("a/+", "a/b/c", False),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS", True),
        ("a/+/#", "a/b", True),
        ("a/b", "a/b/", False),
    ],
)
def test_mqtt_cases(TopicRouter: Any, topic_filter: str, topic: str, expected: bool) -> None:
    assert naive_match(topic_filter, topic) is expected
    r = TopicRouter()
    r.add(7, topic_filter)
    assert r.match(topic) == ([7] if expected else [])


@settings(max_examples=300, deadline=None)
@given(routes=st.lists(st.tuples(st.integers(-3, 20), FILTERS), max_size=25), topics=st.lists(TOPICS, max_size=8))
def test_matches_naive_reference(
    TopicRouter: Any, routes: list[tuple[int, str]], topics: list[str]
) -> None:
    r = TopicRouter()
    for route_id, topic_filter in routes:
        r.add(route_id, topic_filter)
    assert len(r) == len(set(routes))
    expected = [sorted({rid for rid, f in routes if naive_match(f, topic)}) for topic in topics]
    assert [r.match(topic) for topic in topics] == expected
    assert r.match_many(topics) == [tuple(ids) for ids in expected]


def test_many_ids_on_one_topic_grow_the_result_buffer(TopicRouter: Any) -> None:
    r = TopicRouter()
    for route_id in range(500, 0, -1):
        r.add(route_id, "a/#" if route_id % 2 else "+/b")
    assert r.match("a/b") == list(range(1, 501))
    assert r.match("x/b") == list(range(2, 501, 2))


class RouterMachine(stateful.RuleBasedStateMachine):
    """Adds and removes in any order keep both backends equal to a set of (id, filter) pairs."""

    def __init__(self) -> None:
        super().__init__()
        from tests.router.conftest import BACKENDS

        self.routers = [p.values[0]() for p in BACKENDS if p.values[0] is not None]
        self.pairs: set[tuple[int, str]] = set()

    @stateful.rule(route_id=st.integers(0, 6), topic_filter=FILTERS)
    def add(self, route_id: int, topic_filter: str) -> None:
        for r in self.routers:
            r.add(route_id, topic_filter)
        self.pairs.add((route_id, topic_filter))

    @stateful.rule(route_id=st.integers(0, 6))
    def remove(self, route_id: int) -> None:
        for r in self.routers:
            r.remove(route_id)
        self.pairs = {p for p in self.pairs if p[0] != route_id}

    @stateful.rule(topic=TOPICS)
    def match(self, topic: str) -> None:
        expected = sorted({rid for rid, f in self.pairs if naive_match(f, topic)})
        for r in self.routers:
            assert r.match(topic) == expected

    @stateful.invariant()
    def length(self) -> None:
        for r in self.routers:
            assert len(r) == len(self.pairs)


TestRouterMachine = RouterMachine.TestCase
TestRouterMachine.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)


@pytest.mark.parametrize(
    ("topic_filter", "reason"),
    [
        ("", "must not be empty"),
        ("a/#/b", "'#' must be alone in the last level"),
        ("a#", "'#' must be alone"),
        ("a/b+", "'\\+' must be alone in its level"),
        ("a\x00b", "NUL"),
        ("\udc80", "not valid UTF-8"),
        ("a" * 65536, "65536 bytes long"),
    ],
)
def test_invalid_filters(TopicRouter: Any, topic_filter: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        validate_filter(topic_filter)
    r = TopicRouter()
    with pytest.raises(ConfigError, match=reason):
        r.add(1, topic_filter)
    assert len(r) == 0


@pytest.mark.parametrize("topic", ["", "a/+", "a/#", "a\x00", "\udc80"])
def test_invalid_topics(TopicRouter: Any, topic: str) -> None:
    with pytest.raises(ConfigError):
        TopicRouter().match(topic)


@pytest.mark.parametrize("topic", ["", "a/+", "a/#", "a\x00", "\udc80", 7])
def test_a_batch_with_one_invalid_topic_names_it(TopicRouter: Any, topic: Any) -> None:
    r = TopicRouter()
    r.add(1, "a/#")
    assert r.match_many(["a/b", "a"]) == [(1,), (1,)]
    assert r.match_many([]) == []
    with pytest.raises(ConfigError, match="topic"):
        r.match_many(["a/b", topic, "a"])
    assert r.match_many(["a/c"]) == [(1,)]  # the router is unharmed


def test_large_batches_grow_the_packed_buffer(TopicRouter: Any) -> None:
    r = TopicRouter()
    for route_id in range(40):
        r.add(route_id * 1_000_003, "x/+")
    r.add(-5, "#")
    topics = [f"x/{i}" for i in range(3_000)]
    found = r.match_many(topics)
    assert len(found) == 3_000
    assert all(list(ids) == sorted([-5, *(i * 1_000_003 for i in range(40))]) for ids in found)


@pytest.mark.parametrize("route_id", [2**63, -(2**63) - 1, "1", True])
def test_route_ids_are_int64(TopicRouter: Any, route_id: Any) -> None:
    with pytest.raises(ConfigError, match="64-bit"):
        TopicRouter().add(route_id, "a")


def test_extreme_ids_and_deep_topics(TopicRouter: Any) -> None:
    r = TopicRouter()
    r.add(2**63 - 1, "#")
    r.add(-(2**63), "/".join(["+"] * 1000))
    assert r.match("/" * 999) == [-(2**63), 2**63 - 1]
    assert r.match("/" * 5000) == [2**63 - 1]


def test_remove_prunes_and_is_incremental(TopicRouter: Any) -> None:
    r = TopicRouter()
    r.add(1, "a/b/c")
    r.add(1, "a/+")
    r.add(2, "a/b/c")
    r.remove(1)
    r.remove(99)
    assert len(r) == 1
    assert r.match("a/b/c") == [2]
    assert r.match("a/x") == []
    r.remove(2)
    assert len(r) == 0 and r.match("a/b/c") == []


def test_module_api() -> None:
    assert router.backend in ("c", "python")
    r = router.new_router()
    r.add(3, "x/+")
    assert r.match("x/y") == [3]
