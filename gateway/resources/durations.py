"""Durations in resource documents: `250ms`, `1s`, `5m`, `2h`, `1d` or a plain number of seconds."""

from __future__ import annotations

import functools
import re
from typing import Any

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PATTERN = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")


class Duration(float):
    """Seconds, parsed from a number or a string with a unit."""

    @classmethod
    def parse(cls, raw: Any) -> Duration:
        if cls is Duration and type(raw) is str and len(raw) <= 32:
            return _parse_text(raw)  # one object a text: a configuration repeats a few intervals many times
        return cls._parse(raw)

    @classmethod
    def _parse(cls, raw: Any) -> Duration:
        if isinstance(raw, bool):
            raise ValueError(f"Expected a duration like '250ms', '1s', '5m' or a number of seconds, got {raw!r}")
        if isinstance(raw, int | float):
            seconds = float(raw)
        elif isinstance(raw, str) and (match := _PATTERN.fullmatch(raw)):
            seconds = float(match[1]) * _UNITS[match[2] or "s"]
        else:
            raise ValueError(f"Expected a duration like '250ms', '1s', '5m' or a number of seconds, got {raw!r}")
        if seconds < 0 or seconds != seconds or seconds == float("inf"):
            raise ValueError(f"Expected a finite duration >= 0, got {raw!r}")
        return cls(seconds)

    def __repr__(self) -> str:
        return format_duration(self)


@functools.lru_cache(maxsize=256)
def _parse_text(raw: str) -> Duration:
    return Duration._parse(raw)


def format_duration(seconds: float) -> str:
    """The shortest unit string for a duration, as documents write it."""
    if seconds and seconds < 1:
        return f"{round(seconds * 1000, 3):g}ms"
    for unit in ("d", "h", "m"):
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{int(seconds // _UNITS[unit])}{unit}"
    return f"{seconds:g}s"
