"""Conversion of property values to their model type, with the model's minimum and maximum."""

from __future__ import annotations

import base64
import math
from typing import Any

from gateway.errors import ValueRejected
from gateway.resources.schema import PropertyModel

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
    else:  # bytes travel as base64 text
        result = _to_bytes(model, value)
    if kind in ("int", "float", "double"):
        if model.minimum is not None and result < model.minimum:
            raise ValueRejected(f"{model.name}: {result!r} is below the minimum {model.minimum:g}")
        if model.maximum is not None and result > model.maximum:
            raise ValueRejected(f"{model.name}: {result!r} is above the maximum {model.maximum:g}")
    return result


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
    raise ValueRejected(f"{model.name}: expected a boolean, got {value!r}")


def _to_float(model: PropertyModel, value: Any) -> float:
    if isinstance(value, bool):
        raise ValueRejected(f"{model.name}: expected a number, got {value!r}")
    try:
        result = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ValueRejected(f"{model.name}: expected a number, got {value!r}") from None
    if math.isnan(result) and (model.minimum is not None or model.maximum is not None):
        raise ValueRejected(f"{model.name}: NaN is outside {model.minimum}..{model.maximum}")
    return result


def _to_int(model: PropertyModel, value: Any) -> int:
    if isinstance(value, bool):
        raise ValueRejected(f"{model.name}: expected an integer, got {value!r}")
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
            raise ValueRejected(f"{model.name}: expected an integer, got {value!r}") from None
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise ValueRejected(f"{model.name}: expected an integer, got {value!r}")
        return int(value)
    raise ValueRejected(f"{model.name}: expected an integer, got {value!r}")


def _to_bytes(model: PropertyModel, value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            raise ValueRejected(f"{model.name}: expected base64 text, got {value!r}") from None
    raise ValueRejected(f"{model.name}: expected bytes as base64 text, got {value!r}")


def read_value(model: PropertyModel, value: Any) -> Any:
    """A value read from a device as its model type; unlike `coerce`, limits are not enforced here."""
    kind = model.type
    if kind in ("float", "double"):
        return float(value)
    if kind == "int":
        if isinstance(value, float):
            return round_half_away(value) if math.isfinite(value) else value
        return int(value)
    if kind == "boolean":
        return bool(value)
    if kind == "string":
        return value if isinstance(value, str) else to_wire_text(value)
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
