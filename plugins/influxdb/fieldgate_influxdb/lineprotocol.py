"""Device reports as InfluxDB line protocol (https://docs.influxdata.com/influxdb/v2/reference/syntax/line-protocol/)."""

from __future__ import annotations

import math
from typing import Any

_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n"})
_KEY = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n"})


def escape_measurement(name: str) -> str:
    return name.replace("\\", "\\\\").translate(_MEASUREMENT)


def escape_key(text: str) -> str:
    """Escape a tag key, a tag value or a field key: commas, equals signs and spaces."""
    return text.replace("\\", "\\\\").translate(_KEY)


def field_value(value: Any) -> str | None:
    """A field value in line-protocol form; None for a value line protocol cannot carry (null, NaN, ±inf)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.hex()
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def line(measurement: str, tags: dict[str, str], fields: dict[str, Any], ts_ns: int) -> str | None:
    """One point; None when no field has a value line protocol can carry."""
    encoded = [f"{escape_key(k)}={v}" for k, raw in sorted(fields.items()) if (v := field_value(raw)) is not None]
    if not encoded:
        return None
    tag_text = "".join(f",{escape_key(k)}={escape_key(v)}" for k, v in sorted(tags.items()) if v)
    return f"{escape_measurement(measurement)}{tag_text} {','.join(encoded)} {ts_ns}"
