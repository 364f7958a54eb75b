"""Every firmware profile, served by the simulator, reads back with exact values; writes go through."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from fieldgate_modbus.config import ModbusVisitor, model_types
from fieldgate_modbus.protocol import ModbusTcp
from fieldgate_modbus.sim import units_from_profiles
from modbus_helpers import bind

from gateway.resources.profiles import list_profiles, load_profile

PROFILES = list_profiles()


def test_the_six_required_profiles_exist() -> None:
    for ref in (
        "eastron/sdm630",
        "eastron/sdm120",
        "sunspec/common",
        "sunspec/inverter-103",
        "generic/xy-md02",
        "schneider/atv320",
    ):
        assert ref in PROFILES


@pytest.mark.parametrize("ref", PROFILES)
def test_profile_visitors_fit_the_model(ref: str) -> None:
    profile = load_profile(ref)
    assert profile.protocol in ("modbus-tcp", "modbus-rtu") and profile.source
    for prop in profile.model.properties:
        visitor = msgspec.convert(profile.visitors[prop.name], ModbusVisitor)
        assert prop.type in model_types(visitor), prop.name


@pytest.mark.parametrize("ref", PROFILES)
async def test_profile_is_served_and_read_back_exactly(tcp_sim: Any, ref: str) -> None:
    (unit,) = units_from_profiles([(ref, 3)], animate=False)
    sim = await tcp_sim([unit])
    profile = load_profile(ref)
    protocol = bind(ModbusTcp, {"host": "127.0.0.1", "port": sim.port, "unit": 3}, profile.visitors)
    try:
        result = await protocol.read(protocol.plan(list(protocol.device.properties.values())))
        assert result.errors == {}
        expected = {p.name: sim.value(3, p.name) for p in unit.points}
        assert result.values == expected
        assert len(sim.requests) < len(expected)  # merged
        writable = [p for p in profile.model.properties if p.access == "ReadWrite"]
        assert writable, "every profile has a setting to write"
        target = writable[0]
        value = target.maximum if target.maximum is not None else 5
        if target.type == "int":
            value = int(value)
        await protocol.write(protocol.device.properties[target.name], value)
        again = await protocol.read(protocol.plan([protocol.device.properties[target.name]]))
        assert again.values[target.name] == pytest.approx(value)
    finally:
        await protocol.close()


async def test_animated_values_move(tcp_sim: Any) -> None:
    (unit,) = units_from_profiles([("eastron/sdm120", 1)], animate=True)
    sim = await tcp_sim([unit])
    first = sim.value(1, "import_active_energy")
    import asyncio

    await asyncio.sleep(0.2)
    assert sim.value(1, "import_active_energy") > first
