"""The change filter (decode_changes) on every backend, against a model of the rules in the issue."""

from __future__ import annotations

import math
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codec import FieldSpec
from tests.codec import reference


def model_changed(spec: FieldSpec, old: Any, new: Any) -> bool:
    """The rules, written out independently of the backends."""
    if isinstance(new, bool | str):
        return bool(new != old)
    if isinstance(new, float) and (math.isnan(new) or math.isnan(old)):
        return not (math.isnan(new) and math.isnan(old) and struct.pack("<d", new) == struct.pack("<d", old))
    if new == old:
        return False
    if math.isinf(new) or math.isinf(old):
        return True
    limit = abs(old) * spec.deadband / 100 if spec.deadband_percent else spec.deadband
    return bool(abs(new - old) > limit)


def test_first_call_reports_everything_then_only_changes(FieldTable: Any) -> None:
    specs = [
        FieldSpec(offset=0, type="int16", deadband=5.0),
        FieldSpec(offset=1, type="uint16", deadband=10.0, deadband_percent=True),
        FieldSpec(offset=2, type="bool", bit=0),
        FieldSpec(offset=3, type="string", length=1),
    ]
    table = FieldTable(specs)
    assert table.decode_changes([100, 100, 0, 0x4142]) == [(0, 100), (1, 100), (2, False), (3, "AB")]
    assert table.decode_changes([105, 110, 0, 0x4142]) == []  # within both deadbands
    assert table.decode_changes([106, 111, 1, 0x4143]) == [(0, 106), (1, 111), (2, True), (3, "AC")]
    assert table.decode_changes([101, 111, 1, 0x4143]) == []  # compared with the last *reported* value
    table.reset_changes()
    assert len(table.decode_changes([101, 111, 1, 0x4143])) == 4


def test_nan_with_identical_bits_is_unchanged(FieldTable: Any) -> None:
    table = FieldTable([FieldSpec(offset=0, type="float32")])
    nan_a, nan_b = [0x7FC0, 0x0000], [0x7FC0, 0x0001]
    assert len(table.decode_changes(nan_a)) == 1
    assert table.decode_changes(nan_a) == []
    assert len(table.decode_changes(nan_b)) == 1
    assert table.decode_changes([0x3F80, 0]) == [(0, 1.0)]
    assert table.decode_changes([0x7F80, 0]) == [(0, math.inf)]
    assert table.decode_changes([0x7F80, 0]) == []


def test_large_integers_compare_exactly(FieldTable: Any) -> None:
    table = FieldTable([FieldSpec(offset=0, type="uint64", deadband=1.0), FieldSpec(offset=0, type="int64")])
    top = [0xFFFF] * 4
    table.decode_changes(top)
    assert table.decode_changes([0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE]) == [(1, -2)]  # uint64 moved by 1: not > 1
    assert table.decode_changes([0xFFFF, 0xFFFF, 0xFFFF, 0xFFFD]) == [(0, 2**64 - 3), (1, -3)]


VALUES = st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=4)
SPECIAL = st.sampled_from([[0x7FC0, 0, 0, 0], [0x7FF8, 0, 0, 0], [0x7F80, 0, 0, 0], [0x8000, 0, 0, 0]])  # NaN, inf, -0


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(["int16", "uint32", "int64", "float32", "float64", "bool", "string"]),
    scale=st.sampled_from([1.0, 0.5]),
    deadband=st.sampled_from([0.0, 0.5, 1.0, 100.0, 1e30]),
    percent=st.booleans(),
    blocks=st.lists(
        st.one_of(VALUES, SPECIAL),
        min_size=1,
        max_size=12,
    ),
)
def test_change_filter_follows_the_rules(
    FieldTable: Any, kind: str, scale: float, deadband: float, percent: bool, blocks: list[list[int]]
) -> None:
    extra: dict[str, Any] = {"length": 2} if kind == "string" else {}
    spec = FieldSpec(offset=0, type=kind, scale=scale if kind not in ("bool", "string") else 1.0,
                     deadband=deadband, deadband_percent=percent, **extra)
    table = FieldTable([spec])
    reported: Any = None
    for number, block in enumerate(blocks):
        value = reference.decode(spec, block)
        expect = number == 0 or model_changed(spec, reported, value)
        got = table.decode_changes(block)
        if expect:
            reported = value
            assert [(i, reference.canonical(v)) for i, v in got] == [(0, reference.canonical(value))]
        else:
            assert got == []
