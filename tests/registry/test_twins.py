"""The decimals a device's readings show with at the registry, as its registry documents declare them: an `int`
property none, an integer register scaled by 0.1 one, a float register or a device only its node knows up to three
(gateway.webkit.units.reading)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from gateway.resources.schema import Device, DeviceModel

MODEL = {"kind": "DeviceModel", "name": "meter", "properties": [
    {"name": "count", "type": "int"}, {"name": "voltage", "type": "float", "unit": "V"},
    {"name": "current", "type": "float", "unit": "A"}, {"name": "power", "type": "float", "unit": "kW"},
    {"name": "energy", "type": "double", "unit": "kWh"}]}
DEVICE = {"kind": "Device", "name": "meter-1", "model": "meter", "node": "gw-a",
          "protocol": {"name": "modbus-tcp", "config": {"host": "127.0.0.1", "port": 5020}},
          "properties": [{"name": "count", "visitor": {"register": "HoldingRegister", "offset": 0, "type": "uint16"}},
                         {"name": "voltage", "visitor": {"register": "InputRegister", "offset": 1, "type": "int16",
                                                         "scale": 0.1}},
                         {"name": "current", "visitor": {"register": "InputRegister", "offset": 2, "type": "uint16",
                                                         "scale": 0.01}},
                         {"name": "power", "visitor": {"register": "InputRegister", "offset": 3, "type": "float32",
                                                       "scale": 0.001}},
                         {"name": "energy", "visitor": {"register": "InputRegister", "offset": 5, "type": "uint32"}}]}


async def test_the_registry_documents_declare_the_decimals_of_a_devices_readings(tmp_path: Path) -> None:
    from gateway.registry import twins
    from gateway.registry.store import RegistryStore
    from gateway.webkit.units import reading_with_unit

    async with RegistryStore(tmp_path) as store:
        await store.documents.put([
            ("DeviceModel", "default", "meter", None, msgspec.json.encode(msgspec.convert(MODEL, DeviceModel))),
            ("Device", "default", "meter-1", "gw-a", msgspec.json.encode(msgspec.convert(DEVICE, Device)))],
            "default")
        views = [{"namespace": "default", "name": "meter-1", "applied_at_registry": True},
                 {"namespace": "default", "name": "meter-1", "applied_at_registry": True},  # on a second node
                 {"namespace": "plant", "name": "only-the-node-knows", "applied_at_registry": False}]
        await twins.declared_decimals(store, views)
        assert views[0]["decimals"] == {"count": 0, "voltage": 1, "current": 2}  # power: a float register
        assert views[1]["decimals"] == views[0]["decimals"] and views[2]["decimals"] == {}
        decimals = views[0]["decimals"]
        assert reading_with_unit(229.70000000000002, "V", decimals.get("voltage")) == "229.7 V"
        assert reading_with_unit(1.5, "A", decimals.get("current")) == "1.50 A"
        assert reading_with_unit(3.14159265, "kW", decimals.get("power")) == "3.142 kW"
        assert reading_with_unit(1234.0, "kWh", decimals.get("energy")) == "1234 kWh"
