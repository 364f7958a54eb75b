"""Conversion of property values to their model type, with the model's minimum, maximum and max_length.

A value is a finite number, a boolean, a string or bytes: NaN and the infinities are no value of any property type.
As input (a desired value from any side) they are refused; read from a device they are a failed reading (see
`read_value`), so they never reach a report, the history or the rollups.
"""

from __future__ import annotations

import base64
import math
from typing import Any

from gateway.errors import ValueRejected
from gateway.resources.schema import PropertyModel, value_limit

_TRUE = {"true", "1", "on", "yes"}
_FALSE = {"false", "0", "off", "no"}


def coerce(model: PropertyModel, value: Any) -> Any:
    """The value as the model's type (strings from MQTT apps included), checked against minimum/maximum."""
    kind = model.type
    if value is None:
        raise ValueRejected(f"{model.name}: a value is required")
    if kind == "boolean":
        result: Any = _to_bool(model, value)
    elif kind == "int":
        result = _to_int(model, value)
    elif kind in ("float", "double"):
        result = _to_float(model, value)
    elif kind == "string":
        if isinstance(value, dict | list):
            raise ValueRejected(f"{model.name}: expected a string, got {type(value).__name__}")
        result = value if isinstance(value, str) else _scalar_text(value)
        _check_length(model, result, "characters")
    else:  # bytes travel as base64 text
        result = _to_bytes(model, value)
        _check_length(model, result, "bytes")
    if kind in ("int", "float", "double"):
        if model.minimum is not None and result < model.minimum:
            raise ValueRejected(f"{model.name}: {result!r} is below the minimum {model.minimum:g}")
        if model.maximum is not None and result > model.maximum:
            raise ValueRejected(f"{model.name}: {result!r} is above the maximum {model.maximum:g}")
    return result


def _check_length(model: PropertyModel, value: str | bytes, unit: str) -> None:
    limit = value_limit(model)
    if len(value) > limit:
        raise ValueRejected(f"{model.name}: {len(value)} {unit}, above the max_length {limit}")


def short(value: Any, limit: int = 60) -> str:
    """A value's repr for a message, cut short: a reading or a refused value may be megabytes long."""
    if isinstance(value, str | bytes) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value)} long)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…"


def to_wire_text(value: Any) -> str:
    """A value as KubeEdge twin topics carry it: a string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return str(value)


def _scalar_text(value: Any) -> str:
    return to_wire_text(value)


def _to_bool(model: PropertyModel, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueRejected(f"{model.name}: expected a boolean, got {short(value)}")


def _to_float(model: PropertyModel, value: Any) -> float:
    if isinstance(value, bool):
        raise ValueRejected(f"{model.name}: expected a number, got {short(value)}")
    try:
        result = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError, OverflowError):
        raise ValueRejected(f"{model.name}: expected a number, got {short(value)}") from None
    if not math.isfinite(result):
        raise ValueRejected(f"{model.name}: expected a finite number, got {short(value)} (NaN and infinities are "
                            "no value)")
    return result


def _to_int(model: PropertyModel, value: Any) -> int:
    if isinstance(value, bool):
        raise ValueRejected(f"{model.name}: expected an integer, got {short(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text, 0) if text.lower().startswith(("0x", "0b", "0o")) else int(text)
        except ValueError:
            pass
        try:
            value = float(text)
        except ValueError:
            raise ValueRejected(f"{model.name}: expected an integer, got {short(value)}") from None
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise ValueRejected(f"{model.name}: expected an integer, got {short(value)}")
        return int(value)
    raise ValueRejected(f"{model.name}: expected an integer, got {short(value)}")


def _to_bytes(model: PropertyModel, value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        if len(value) > (value_limit(model) + 2) // 3 * 4:  # longer than any allowed value: not decoded at all
            raise ValueRejected(f"{model.name}: {len(value)} characters of base64, above the max_length "
                                f"{value_limit(model)} bytes")
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            raise ValueRejected(f"{model.name}: expected base64 text, got {short(value)}") from None
    raise ValueRejected(f"{model.name}: expected bytes as base64 text, got {short(value)}")


def read_value(model: PropertyModel, value: Any) -> Any:
    """A value read from a device as its model type. Minimum and maximum are not enforced here (the device says what
    it holds), but a reading that is no value (NaN, an infinity) or longer than max_length raises ValueError."""
    kind = model.type
    if kind in ("float", "double"):
        result = float(value)
        if result - result != 0.0:  # NaN or an infinity
            raise ValueError("not a finite number")
        return result
    if kind == "int":
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError("not a finite number")
            return round_half_away(value)
        return int(value)
    if kind == "boolean":
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("not a finite number")
        return bool(value)
    if kind == "string":
        text = value if isinstance(value, str) else to_wire_text(value)
        if len(text) > value_limit(model):
            raise ValueError(f"{len(text)} characters, above the max_length {value_limit(model)}")
        return text
    if isinstance(value, bytes | bytearray) and len(value) > value_limit(model):
        raise ValueError(f"{len(value)} bytes, above the max_length {value_limit(model)}")
    return value


def round_half_away(value: float) -> int:
    """Round half away from zero: 2.5 -> 3, -2.5 -> -3 (never truncate)."""
    return math.floor(abs(value) + 0.5) * (1 if value >= 0 else -1)


def same_value(a: Any, b: Any) -> bool:
    """Equal, or close enough for floats that went through a register encoding (scale, float32)."""
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, bool) or isinstance(b, bool):
            return a is b
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
        except (TypeError, ValueError):
            return False
    equal: bool = a == b
    return equal
