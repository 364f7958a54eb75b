"""CSV inventory import: one device per row, validated by the loader."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.importers import csv as csv_import
from gateway.importers.cli import write
from gateway.plugins import get_plugin_manager
from gateway.protocols.base import Protocol
from gateway.protocols.registry import protocol_registry
from gateway.resources.loader import load_path


def protocols() -> Mapping[str, type[Protocol]]:
    return protocol_registry(get_plugin_manager())


def test_rows_become_devices_that_pass_validation(tmp_path: Path) -> None:
    pytest.importorskip("fieldgate_modbus")
    rows = ["name,profile,address,unit,labels"]
    rows += [f"meter-{i},eastron/sdm120,/dev/ttyUSB0,{i},line=1;hall=b" for i in range(1, 6)]
    rows += [f"inverter-{i},sunspec/inverter-103,10.0.0.{i}:502,1," for i in range(1, 1200)]
    source = tmp_path / "inventory.csv"
    source.write_text("\n".join(rows) + "\n")
    progress = io.StringIO()
    result = csv_import.import_file(source, progress=csv_import.stderr_progress(progress))
    documents = result.all_documents()
    assert len(documents) == 1204
    assert documents[0] == {
        "kind": "Device",
        "name": "meter-1",
        "labels": {"line": "1", "hall": "b"},
        "profile": "eastron/sdm120",
        "protocol": {"name": "modbus-rtu", "config": {"port": "/dev/ttyUSB0", "unit": 1}},
    }
    assert documents[5]["protocol"] == {"name": "modbus-tcp", "config": {"host": "10.0.0.1", "port": 502, "unit": 1}}
    assert "1204/1204 (100%)" in progress.getvalue()
    write(result, tmp_path / "out")
    config = load_path(tmp_path / "out", protocols())
    assert len(config.devices) == 1204
    assert "voltage" in config.devices["default/meter-3"].properties


def test_bad_rows_name_the_line_and_column(tmp_path: Path) -> None:
    source = tmp_path / "bad.csv"
    source.write_text("name,profile,address,unit\nok,eastron/sdm120,h:1,1\nbad,eastron/sdm120,h:1,one\n")
    with pytest.raises(ConfigError, match=r"bad.csv: line 3: unit: 'one' is not a number"):
        csv_import.import_file(source)
    source.write_text("name,address\nx,h:1\n")
    with pytest.raises(ConfigError, match="needs the columns"):
        csv_import.import_file(source)


@pytest.mark.parametrize("address", ["10.0.0.5:50x2", "10.0.0.5;502", "10.0.0.5", "plc-7.local:", "10.0.0.5 502",
                                     "10.0.0.5:502:1"])
def test_an_address_that_is_neither_host_port_nor_a_serial_port_is_refused(tmp_path: Path, address: str) -> None:
    source = tmp_path / "typo.csv"
    source.write_text(f"name,profile,address,unit\nok,eastron/sdm120,10.0.0.4:502,1\nplc,eastron/sdm120,{address},1\n")
    with pytest.raises(ConfigError, match=r"typo.csv: line 3: address: expected HOST:PORT for Modbus TCP "
                                          r"\(10.0.0.5:502\) or a serial port for Modbus RTU \(/dev/ttyUSB0, COM3\)"):
        csv_import.import_file(source)


def test_serial_ports_stay_rtu_and_a_protocol_column_decides(tmp_path: Path) -> None:
    source = tmp_path / "serial.csv"
    source.write_text("name,profile,address,unit,protocol\na,eastron/sdm120,/dev/serial/by-id/usb-FTDI_0-port0,1,\n"
                      "b,eastron/sdm120,COM3,2,\nc,eastron/sdm120,rfc2217-box:4001,3,modbus-rtu\n")
    ports = [(d["protocol"]["name"], d["protocol"]["config"]["port"])
             for d in csv_import.import_file(source).all_documents()]
    assert ports == [("modbus-rtu", "/dev/serial/by-id/usb-FTDI_0-port0"), ("modbus-rtu", "COM3"),
                     ("modbus-rtu", "rfc2217-box:4001")]
