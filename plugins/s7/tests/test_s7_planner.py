"""Read planning: ranges packed into the fewest requests the negotiated PDU allows, never cutting a value."""

from __future__ import annotations

import itertools
import math

import msgspec
import pytest
from fieldgate_s7.config import S7Visitor
from fieldgate_s7.planner import MAX_ITEMS, ReadPlan, item_cost
from layout import used_bytes, variables


def plan_of(raw: dict[str, dict[str, object]], pdu: int, max_gap: int = 8) -> ReadPlan:
    return ReadPlan(tuple((name, msgspec.convert(v, S7Visitor)) for name, v in raw.items()), pdu, max_gap)


def check_requests(plan: ReadPlan, pdu: int) -> None:
    """Every request within the limits, and no value read in two pieces unless it is larger than an answer."""
    for items in plan.requests:
        assert len(items) <= MAX_ITEMS
        assert 12 + 2 + 12 * len(items) <= pdu
        assert 12 + 2 + sum(item_cost(i.size) for i in items) <= pdu
    covered: dict[int, list[tuple[int, int]]] = {}
    for items in plan.requests:
        for item in items:
            covered.setdefault(item.index, []).append((item.at, item.at + item.size))
    for index, span in enumerate(plan.ranges):
        pieces = sorted(covered[index])
        assert pieces[0][0] == 0 and pieces[-1][1] == span.size
        assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))
        for cut in (end for _, end in pieces[:-1]):
            for _, visitor, at in span.fields:
                assert not at < cut < at + visitor.size or visitor.size > pdu - 18, (visitor, cut)


@pytest.mark.parametrize("pdu", [240, 480, 960])
def test_200_variables_across_3_dbs_take_the_fewest_requests_the_pdu_allows(pdu: int) -> None:
    layout = variables(200)
    plan = plan_of({v.name: v.visitor() for v in layout}, pdu)
    assert len(plan.ranges) == 3  # one range per DB: the variables are contiguous
    # an answer carries at most pdu - 14 bytes of items, each with a 4-byte header: none can do with fewer
    fewest = math.ceil((used_bytes(layout) + 4 * len(plan.ranges)) / (pdu - 14))
    assert len(plan.requests) == fewest
    check_requests(plan, pdu)


def test_scattered_variables_take_at_most_20_a_request() -> None:
    raw = {f"v{i}": {"area": "M", "offset": i * 40, "type": "INT"} for i in range(45)}
    plan = plan_of(raw, 480)
    assert len(plan.ranges) == 45
    assert [len(items) for items in plan.requests] == [20, 20, 5]
    check_requests(plan, 480)


def test_gaps_up_to_max_gap_are_read_through_and_areas_never_mix() -> None:
    raw = {
        "a": {"db": 1, "offset": 0, "type": "INT"},
        "b": {"db": 1, "offset": 10, "type": "INT"},  # 8 bytes after a: read through
        "c": {"db": 1, "offset": 21, "type": "INT"},  # 9 bytes after b: a range of its own
        "d": {"db": 2, "offset": 2, "type": "INT"},
        "e": {"area": "M", "offset": 4, "type": "INT"},
        "f": {"area": "Q", "offset": 0, "type": "BOOL", "bit": 3},
        "g": {"area": "Q", "offset": 0, "type": "BOOL", "bit": 5},
    }
    plan = plan_of(raw, 480)
    assert [span.names for span in plan.ranges] == [("f", "g"), ("e",), ("a", "b"), ("c",), ("d",)]
    assert len(plan.requests) == 1


def test_a_string_larger_than_an_answer_is_read_in_pieces() -> None:
    raw = {"text": {"db": 1, "offset": 0, "type": "STRING"}, "after": {"db": 1, "offset": 256, "type": "REAL"}}
    plan = plan_of(raw, 240)
    assert sum(item.size for items in plan.requests for item in items) == 260
    check_requests(plan, 240)


def test_isolated_properties_get_ranges_of_their_own() -> None:
    raw = {f"v{i}": {"db": 1, "offset": 2 * i, "type": "INT"} for i in range(5)}
    plan = plan_of(raw, 480)
    assert len(plan.ranges) == 1
    plan.isolate({"v2"})
    assert [span.names for span in plan.ranges] == [("v0", "v1"), ("v2",), ("v3", "v4")]
