"""S7 configs and visitors are checked when a file loads: a bad one is refused with its file, document and field."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from fieldgate_s7.config import S7Config

from gateway.errors import ResourceError
from gateway.plugins import get_plugin_manager
from gateway.protocols.registry import protocol_registry
from gateway.resources.loader import load_path

PROTOCOLS = protocol_registry(get_plugin_manager())
MODEL = """\
kind: DeviceModel
name: press
properties:
  - {name: temperature, type: double}
  - {name: count, type: int}
  - {name: running, type: boolean}
  - {name: recipe, type: string}
---
"""


def device(properties: str, config: str = "{host: 127.0.0.1, rack: 0, slot: 1}") -> str:
    return MODEL + f"kind: Device\nname: press-1\nmodel: press\nprotocol: {{name: s7, config: {config}}}\n" \
        f"properties:\n{properties}"


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "plant.yaml"
    path.write_text(text)
    with pytest.raises(ResourceError) as info:
        load_path(path, PROTOCOLS)
    return info.value.problems


def test_a_good_device_loads(tmp_path: Path) -> None:
    path = tmp_path / "plant.yaml"
    path.write_text(device(
        "  - {name: temperature, visitor: {db: 1, offset: 0, type: REAL}}\n"
        "  - {name: count, visitor: {area: M, offset: 10, type: DINT}}\n"
        "  - {name: running, visitor: {area: Q, offset: 0, bit: 3, type: BOOL}}\n"
        "  - {name: recipe, visitor: {db: 2, offset: 0, type: STRING, length: 32}}\n"))
    bound = load_path(path, PROTOCOLS).devices["default/press-1"]
    assert bound.config.tsaps() == (0x0100, 0x0101)
    assert bound.properties["recipe"].visitor.address() == "DB2.DBB0 (STRING[32])"
    assert bound.properties["running"].visitor.address() == "Q0.3"


@pytest.mark.parametrize(("visitor", "message"), [
    ("{offset: 0, type: REAL}", "$.properties[0].visitor: area DB needs db"),
    ("{area: M, db: 1, offset: 0, type: REAL}", "$.properties[0].visitor: db applies to area DB, not M"),
    ("{db: 1, offset: 0, type: BOOL}", "type BOOL needs bit (0-7)"),
    ("{db: 1, offset: 0, bit: 1, type: REAL}", "bit applies to BOOL, not REAL"),
    ("{db: 1, offset: 0, bit: 8, type: BOOL}", "$.properties[0].visitor.bit: Expected int <= 7, got 8"),
    ("{db: 1, offset: 0, type: REAL, length: 4}", "length applies to STRING, not REAL"),
    ("{db: 1, offset: 65534, type: REAL}", "offset 65534 + 4 bytes of REAL passes byte 65535"),
    ("{db: 1, offset: -1, type: REAL}", "$.properties[0].visitor.offset: Expected int >= 0, got -1"),
    ("{db: 1, offset: 0, type: FLOAT}", "$.properties[0].visitor.type: Invalid enum value 'FLOAT'"),
    ("{db: 1, offset: 0, type: REAL, scale: 2}", "$.properties[0].visitor: Object contains unknown field scale"),
])
def test_a_bad_visitor_is_refused_with_its_path(tmp_path: Path, visitor: str, message: str) -> None:
    found = problems(tmp_path, device(f"  - {{name: temperature, visitor: {visitor}}}\n"))
    assert len(found) == 1 and "document 2 (Device press-1)" in found[0] and message in found[0], found


@pytest.mark.parametrize(("prop", "visitor", "gives"), [
    ("count", "{db: 1, offset: 0, type: REAL}", "double/float"),
    ("temperature", "{db: 1, offset: 0, type: STRING}", "string"),
    ("recipe", "{db: 1, offset: 0, type: DINT}", "double/float/int"),
    ("running", "{db: 1, offset: 0, type: DTL}", "string"),
])
def test_a_visitor_of_the_wrong_type_for_the_model_is_refused(tmp_path: Path, prop: str, visitor: str,
                                                               gives: str) -> None:
    found = problems(tmp_path, device(f"  - {{name: {prop}, visitor: {visitor}}}\n"))
    assert len(found) == 1 and f"the visitor gives {gives}, which does not fit the model type" in found[0], found


@pytest.mark.parametrize(("config", "message"), [
    ("{rack: 0, slot: 1}", "$.protocol.config: Object missing required field host"),
    ("{host: 127.0.0.1, rack: 8}", "$.protocol.config.rack: Expected int <= 7, got 8"),
    ("{host: 127.0.0.1, rack: 0, remote_tsap: '03.01'}", "give rack/slot or remote_tsap, not both"),
    ("{host: 127.0.0.1, local_tsap: '10.00'}", "local_tsap needs remote_tsap"),
    ("{host: 127.0.0.1, remote_tsap: '3.1.0'}",
     "$.protocol.config: TSAP '3.1.0': expected two hex bytes as PLC tools show them, e.g. \"03.01\""),
    ("{host: 127.0.0.1, pdu_size: 100}", "$.protocol.config.pdu_size: Expected int >= 240, got 100"),
])
def test_a_bad_config_is_refused_with_its_path(tmp_path: Path, config: str, message: str) -> None:
    found = problems(tmp_path, device("  - {name: count, visitor: {db: 1, offset: 0, type: INT}}\n", config))
    assert len(found) == 1 and message in found[0], found


def test_tsaps_by_rack_and_slot_or_given() -> None:
    def tsaps(**config: object) -> tuple[int, int]:
        return msgspec.convert({"host": "plc", **config}, S7Config).tsaps()

    assert tsaps() == (0x0100, 0x0101)
    assert tsaps(rack=0, slot=2) == (0x0100, 0x0102)  # an S7-300 CPU
    assert tsaps(rack=1, slot=3, connection_type="OP") == (0x0100, 0x0223)
    assert tsaps(local_tsap="10.00", remote_tsap="20.00") == (0x1000, 0x2000)  # a LOGO!
    assert tsaps(remote_tsap=0x0301) == (0x0100, 0x0301)
