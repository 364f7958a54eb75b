"""Units as people write them: °C, not degC."""

from __future__ import annotations

import pytest

from gateway.webkit.units import display_unit, with_unit


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
