"""The model and device forms of both web apps read as documents: a row count is the browser's word (bounded, digits
only), numbers are finite numbers, YAML fields name themselves when they do not parse."""

from __future__ import annotations

import time

import pytest

from gateway.errors import ConfigError
from gateway.web.editing import labels_from_text as node_labels
from gateway.webkit.forms import MAX_ROWS, device_from_form, model_from_form, row_count


@pytest.mark.parametrize("claimed", ["999999999999999999", "-1", "1e9", "abc", "", "3x", "\u0663"])
def test_a_row_count_is_digits_and_bounded(claimed: str) -> None:
    count = row_count({"rows": claimed})
    assert 0 <= count <= MAX_ROWS
    assert count == (MAX_ROWS if claimed == "999999999999999999" else 0)


def test_a_huge_row_count_costs_no_more_than_the_rows_sent() -> None:
    form = {"name": "m", "rows": "9" * 18, "prop-0-name": "t", "prop-0-type": "float", "prop-7-name": "h"}
    started = time.process_time()
    model = model_from_form(form, node_labels)
    assert [p["name"] for p in model["properties"]] == ["t", "h"]
    assert time.process_time() - started < 0.5  # MAX_ROWS lookups, not 10**18


@pytest.mark.parametrize("bound", ["nan", "inf", "-Infinity", "1e999"])
def test_bounds_are_finite_numbers(bound: str) -> None:
    with pytest.raises(ConfigError, match=r"property t: minimum: expected a finite number"):
        model_from_form({"name": "m", "rows": "1", "prop-0-name": "t", "prop-0-minimum": bound}, node_labels)


def test_a_yaml_field_that_does_not_parse_is_named() -> None:
    form = {"name": "d", "model": "m", "protocol": "virtual", "rows": "1", "prop-0-name": "t",
            "prop-0-visitor": "{generator: [sine", "labels": "line=1"}
    with pytest.raises(ConfigError, match=r"property t: visitor: invalid YAML"):
        device_from_form(form, node_labels)
    form["prop-0-visitor"] = "{generator: sine}"
    device = device_from_form(form, node_labels)
    assert device["labels"] == {"line": "1"} and device["properties"] == [{"name": "t",
                                                                            "visitor": {"generator": "sine"}}]


@pytest.mark.parametrize("deep", ["[" * 3000 + "]" * 3000, "{a: " * 100 + "1" + "}" * 100])
def test_a_yaml_field_nested_too_deeply_is_refused_by_name(deep: str) -> None:
    form = {"name": "d", "model": "m", "protocol": "virtual", "protocol_config": deep}
    with pytest.raises(ConfigError, match=r"^protocol config: "):
        device_from_form(form, node_labels)
