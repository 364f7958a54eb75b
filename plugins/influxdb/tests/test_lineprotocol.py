"""Line protocol encoding, checked by parsing it back with an independent parser."""

from __future__ import annotations

import math
from typing import Any

import pytest
from fieldgate_influxdb.lineprotocol import field_value, line


def _split(text: str, separators: str) -> list[str]:
    """Split on unescaped separators outside double quotes, keeping escapes in place."""
    parts, current, quoted, i = [], "", False, 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            current += text[i:i + 2]
            i += 2
            continue
        if char == '"':
            quoted = not quoted
        if char in separators and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
        i += 1
    parts.append(current)
    return parts


def _unescape(text: str) -> str:
    out, i = "", 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out += text[i + 1]
            i += 2
        else:
            out += text[i]
            i += 1
    return out


def _value(text: str) -> Any:
    if text.startswith('"'):
        return _unescape(text[1:-1])
    if text in ("true", "false", "t", "f", "T", "F", "TRUE", "FALSE", "True", "False"):
        return text.lower() in ("true", "t")
    if text.endswith("i"):
        return int(text[:-1])
    return float(text)


def parse_line(text: str) -> tuple[str, dict[str, str], dict[str, Any], int]:
    """(measurement, tags, fields, timestamp) of one line of InfluxDB line protocol."""
    head, fields_text, ts = _split(text, " ")
    measurement, *tags = _split(head, ",")
    tag_pairs = dict(_split(tag, "=") for tag in tags)
    field_pairs = [_split(f, "=") for f in _split(fields_text, ",")]
    return (_unescape(measurement), {_unescape(k): _unescape(v) for k, v in tag_pairs.items()},
            {_unescape(k): _value(v) for k, v in field_pairs}, int(ts))


def test_types_and_escaping_round_trip() -> None:
    fields = {"count": 7, "level": 12.5, "on": True, "off": False, "label": 'say "hi" \\ bye',
              "with space,comma=eq": 1.0}
    tags = {"device": "default/pump 1,a=b", "node": "gw-1"}
    text = line("plant telemetry,x", tags, fields, 1_700_000_000_123_000_000)
    assert text is not None and "\n" not in text
    assert parse_line(text) == ("plant telemetry,x", tags, fields, 1_700_000_000_123_000_000)
    assert "count=7i" in text and "on=true" in text and "level=12.5" in text


@pytest.mark.parametrize(("value", "encoded"), [(3, "3i"), (-2, "-2i"), (1.5, "1.5"), (True, "true"),
                                                (False, "false"), ("a\"b", '"a\\"b"'), (None, None),
                                                (math.nan, None), (math.inf, None), (b"\x01\xff", '"01ff"')])
def test_field_values(value: Any, encoded: str | None) -> None:
    assert field_value(value) == encoded


def test_a_report_without_any_encodable_value_is_no_line() -> None:
    assert line("t", {"device": "d"}, {"a": None, "b": math.nan}, 1) is None
    assert line("t", {"device": "d", "empty": ""}, {"a": 1}, 5) == "t,device=d a=1i 5"
