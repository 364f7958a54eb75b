"""Units as people write them: documents spell units in ASCII (`degC`, as KubeEdge and most register maps do), the
pages show `°C`. Units not listed here are shown as written (`V`, `kWh`, `%RH`)."""

from __future__ import annotations

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
