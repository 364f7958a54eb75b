"""Read planning: answers that fit the device's APDU, objects kept together."""

from __future__ import annotations

import msgspec
from fieldgate_bacnet.config import BacnetVisitor
from fieldgate_bacnet.planner import ACK_HEADER, answer_size, plan_reads, split


def visitor(object_type: str, instance: int, prop: str = "present-value", **extra: object) -> BacnetVisitor:
    return msgspec.convert({"object_type": object_type, "instance": instance, "property": prop, **extra},
                           BacnetVisitor)


def test_requests_stay_within_the_budget_and_keep_objects_together() -> None:
    props = [(f"{prop}-{i}", visitor("analog-input", i, prop)) for i in range(50)
             for prop in ("present-value", "status-flags", "object-name")]
    plan = plan_reads(props, budget=206)
    assert len(plan.requests) > 1
    assert sorted(plan.names) == sorted(name for name, _ in props)
    for request in plan.requests:
        assert request.size <= 206
        assert request.size == ACK_HEADER + sum(answer_size(v) for v in request.visitors) + 7 * len(
            {v.object_id for v in request.visitors})
    # the properties of one object follow each other
    order = [v.object_id for r in plan.requests for v in r.visitors]
    assert order == sorted(order, key=order.index)


def test_one_request_when_it_fits_and_a_lone_large_property_still_asked() -> None:
    small = plan_reads([("a", visitor("analog-value", 1)), ("b", visitor("binary-value", 1))], budget=480)
    assert [r.names for r in small.requests] == [("a", "b")]
    large = plan_reads([("list", visitor("device", 1, "object-list")), ("pa", visitor("analog-value", 1,
                                                                                       "priority-array"))], 50)
    assert [r.names for r in large.requests] == [("list",), ("pa",)]
    first, second = split(small.requests[0])
    assert (first.names, second.names) == (("a",), ("b",))
