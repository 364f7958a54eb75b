"""Units and readings as people write them: documents spell units in ASCII (`degC`, as KubeEdge and most register
maps do), the pages show `°C`; units not listed here are shown as written (`V`, `kWh`, `%RH`). A reading shows as
its property declares it: an integer as an integer, a number with a declared precision rounded to it, any other
number with up to three decimals and no trailing zeros (`21.5 °C`, not `21.5000 degC`)."""

from __future__ import annotations

import json
import math
from decimal import Decimal, InvalidOperation
from typing import Any

MAX_DECIMALS = 3  # a reading without a declared precision: enough for a sensor, not the float's noise
MAX_DECLARED_DECIMALS = 9

# Words, whatever their case: every spelling the bundled profiles and the KubeEdge examples use, and relatives.
WORDS = {
    "degc": "°C", "celsius": "°C", "degf": "°F", "fahrenheit": "°F", "degk": "K", "kelvin": "K",
    "deg": "°", "degree": "°", "degrees": "°", "pct": "%", "percent": "%", "ohm": "Ω", "ohms": "Ω",
}
# Symbols, exactly as written: their case matters (mOhm is not MOhm, uS is not us).
SYMBOLS = {
    "1": "",  # a count or a ratio: no unit
    "kOhm": "kΩ", "kohm": "kΩ", "MOhm": "MΩ", "mOhm": "mΩ",
    "us": "µs", "uS": "µS", "uS/cm": "µS/cm", "uV": "µV", "uA": "µA", "um": "µm", "ug/m3": "µg/m³",
    "m2": "m²", "m3": "m³", "m3/h": "m³/h", "Nm3/h": "Nm³/h", "m/s2": "m/s²",
}


def display_unit(unit: str | None) -> str:
    """`degC` → `°C`, `Pct` → `%`, `m3/h` → `m³/h`; any other unit as it is written; '' for none."""
    if not unit:
        return ""
    unit = unit.strip()
    shown = SYMBOLS.get(unit)
    return shown if shown is not None else WORDS.get(unit.lower(), unit)


def with_unit(text: str, unit: str | None) -> str:
    """A formatted value followed by its display unit (`21.5 °C`, `40 %`), or the value alone."""
    shown = display_unit(unit)
    if not shown:
        return text
    return f"{text}{shown}" if shown == "°" else f"{text} {shown}"


def reading(value: Any, decimals: int | None = None) -> str:
    """A reported value for a page: `21` (an integer), `21.457` (three decimals at most, no trailing zeros; three
    significant digits below 0.001), `21.5` with `decimals=1` (the property's declared precision), `true`; an en
    dash when there is none."""
    if value is None:
        return "\u2013"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if decimals is not None:
            text = f"{value:.{max(0, min(decimals, MAX_DECLARED_DECIMALS))}f}"
        elif value and abs(value) < 10**-MAX_DECIMALS:  # three significant digits, without an exponent
            places = 2 - math.floor(math.log10(abs(value)))
            if places > 12:
                return f"{value:.3g}"
            text = f"{value:.{places}f}".rstrip("0")
        else:
            text = f"{value:.{MAX_DECIMALS}f}".rstrip("0").rstrip(".")
        return text.removeprefix("-") if float(text) == 0 else text  # -0.0001 rounds to 0, not -0
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def reading_with_unit(value: Any, unit: str | None, decimals: int | None = None) -> str:
    """A reading followed by its display unit (`21.5 °C`); the en dash alone when there is no value."""
    text = reading(value, decimals)
    return text if value is None else with_unit(text, unit)


def scale_decimals(scale: Any) -> int | None:
    """The decimals a scale factor declares for readings of an integer register (0.1 → 1, 0.25 → 2); None for a
    factor of 1 or more, or one that is not a number."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < 1:
        return None
    try:
        exponent = Decimal(repr(float(scale))).normalize().as_tuple().exponent
    except InvalidOperation:
        return None
    return min(-int(exponent), MAX_DECLARED_DECIMALS) if isinstance(exponent, int) else None
