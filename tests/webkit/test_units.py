"""Units as people write them: °C, not degC."""

from __future__ import annotations

import pytest

from gateway.webkit.units import display_unit, reading, reading_with_unit, scale_decimals, with_unit


@pytest.mark.parametrize(("written", "shown"), [
    ("degC", "°C"), ("DegC", "°C"), ("celsius", "°C"), ("degF", "°F"), ("deg", "°"), ("Pct", "%"), ("percent", "%"),
    ("1", ""), ("", ""), (None, ""), ("uS/cm", "µS/cm"), ("us", "µs"), ("m3/h", "m³/h"), ("kOhm", "kΩ"),
    ("mOhm", "mΩ"), ("MOhm", "MΩ"),
    ("V", "V"), ("kWh", "kWh"), ("%RH", "%RH"), ("Hz", "Hz"), ("VAr", "VAr"), ("min", "min"), ("ms", "ms"),
])
def test_every_unit_the_profiles_use_reads_as_people_write_it(written: str | None, shown: str) -> None:
    assert display_unit(written) == shown


def test_a_value_with_its_unit() -> None:
    assert with_unit("21.5", "degC") == "21.5 °C"
    assert with_unit("90", "deg") == "90°"
    assert with_unit("7", "1") == "7" and with_unit("7", "") == "7"
    assert with_unit("230", "V") == "230 V"


@pytest.mark.parametrize(("value", "decimals", "shown"), [
    (21, None, "21"), (-7, None, "-7"), (21.456789, None, "21.457"), (21.5, None, "21.5"), (21.0, None, "21"),
    (0.1 + 0.2, None, "0.3"), (1234567.891, None, "1234567.891"), (0.000123456, None, "0.000123"),
    (-0.0001, None, "-0.0001"), (-0.00001, None, "-0.00001"), (1e-20, None, "1e-20"), (-0.0004, 3, "0.000"),
    (0.0, None, "0"),
    (21.456789, 1, "21.5"), (21.0, 2, "21.00"), (2.5, 0, "2"), (True, None, "true"), (False, 2, "false"),
    (None, None, "\u2013"), ("on", None, "on"), (float("nan"), None, "nan"), ([1, 2], None, "[1, 2]"),
])
def test_a_reading_shows_as_its_property_declares_it(value: object, decimals: int | None, shown: str) -> None:
    assert reading(value, decimals) == shown


def test_a_reading_with_its_unit_and_the_decimals_a_scale_declares() -> None:
    assert reading_with_unit(21.456789, "degC") == "21.457 °C"
    assert reading_with_unit(21.456789, "degC", scale_decimals(0.1)) == "21.5 °C"
    assert reading_with_unit(None, "degC") == "\u2013"
    assert reading_with_unit(3, "1") == "3"
    assert [scale_decimals(s) for s in (0.1, 0.01, 0.25, 0.001, 1, 10, 0, -0.1, True, "0.1", None)] == [
        1, 2, 2, 3, None, None, None, None, None, None, None]
