"""`fieldgate import csv FILE`: many devices from one inventory row each.

Columns (named by a header row, in any order): `name`, `model` or `profile`, `address` (HOST:PORT for Modbus
TCP, a serial port for RTU; anything else is refused unless the row names its `protocol`), `unit`, `labels`
(`k=v;k=v`), and optionally `namespace`, `protocol`, `baudrate`, `parity`, `timeout`. A row with `model` copies the
properties of the `--template` device document.
"""

from __future__ import annotations

import csv as csvlib
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from gateway.errors import ConfigError
from gateway.importers import ImportResult

Progress = Callable[[int, int], None]


def import_file(
    path: Path, *, template: dict[str, Any] | None = None, progress: Progress | None = None
) -> ImportResult:
    """One Device document per row; ConfigError names the file, the row and the column of bad input."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    rows = list(csvlib.DictReader(text.splitlines()))
    if not rows:
        raise ConfigError(f"{path}: no rows (the first line names the columns)")
    columns = set(rows[0])
    if "name" not in columns or not columns & {"model", "profile"} or "address" not in columns:
        raise ConfigError(
            f"{path}: needs the columns name, model or profile, and address; got "
            f"{', '.join(sorted(c for c in columns if c))}"
        )
    result = ImportResult()
    documents = result.documents.setdefault(str(path), [])
    seen: set[tuple[str, str]] = set()
    for number, row in enumerate(rows, 2):  # line 1 is the header
        document = _device(path, number, row, template)
        key = (document.get("namespace", "default"), document["name"])
        if key in seen:
            raise ConfigError(f"{path}: line {number}: name: device {key[1]!r} appears twice")
        seen.add(key)
        documents.append(document)
        if progress is not None:
            progress(number - 1, len(rows))
    return result


def _device(path: Path, number: int, row: dict[str, Any], template: dict[str, Any] | None) -> dict[str, Any]:
    def cell(column: str) -> str:
        return str(row.get(column) or "").strip()

    def fail(column: str, message: str) -> ConfigError:
        return ConfigError(f"{path}: line {number}: {column}: {message}")

    name = cell("name")
    if not name:
        raise fail("name", "empty")
    document: dict[str, Any] = {"kind": "Device", "name": name}
    if cell("namespace"):
        document["namespace"] = cell("namespace")
    labels = _labels(cell("labels"), lambda message: fail("labels", message))
    if labels:
        document["labels"] = labels
    model, profile = cell("model"), cell("profile")
    if bool(model) == bool(profile):
        raise fail("model", "give either a model or a profile")
    address = cell("address")
    if not address:
        raise fail("address", "empty")
    protocol = cell("protocol") or _protocol_of(address, lambda message: fail("address", message))
    config: dict[str, Any] = {}
    if protocol == "modbus-tcp":
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise fail("address", f"expected HOST:PORT for modbus-tcp, got {address!r}")
        config.update(host=host, port=int(port))
    else:
        config["port"] = address
        if cell("baudrate"):
            config["baudrate"] = _number(cell("baudrate"), int, lambda m: fail("baudrate", m))
        if cell("parity"):
            config["parity"] = cell("parity").upper()[:1]
    if cell("unit"):
        config["unit"] = _number(cell("unit"), int, lambda m: fail("unit", m))
    if cell("timeout"):
        config["timeout"] = _number(cell("timeout"), float, lambda m: fail("timeout", m))
    document["protocol"] = {"name": protocol, "config": config}
    if profile:
        document["profile"] = profile
    else:
        document["model"] = model
        if template is None:
            raise fail("model", "a row with a model needs --template DEVICE.yaml to copy properties from")
        document["properties"] = template.get("properties", [])
    return document


def _protocol_of(address: str, fail: Callable[[str], ConfigError]) -> str:
    """modbus-tcp for HOST:PORT, modbus-rtu for a serial port; a typo in either (`10.0.0.5:50x2`, `10.0.0.5;502`)
    is refused, not taken for a serial port that does not exist."""
    if _is_host_port(address):
        return "modbus-tcp"
    if SERIAL_PORT.fullmatch(address):
        return "modbus-rtu"
    raise fail(f"expected HOST:PORT for Modbus TCP (10.0.0.5:502) or a serial port for Modbus RTU (/dev/ttyUSB0, "
               f"COM3), got {address!r}; a protocol column names the protocol of other addresses")


# a device file, a Windows COM port, or a URL pyserial opens (rfc2217://host:port, socket://host:port)
SERIAL_PORT = re.compile(r"/dev/\S+|COM[1-9][0-9]*|\\\\\.\\COM[1-9][0-9]*|[a-z][a-z0-9+]*://\S+", re.IGNORECASE)
HOST = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


def _is_host_port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(HOST.fullmatch(host)) and port.isdigit() and 0 < int(port) < 65536


def _labels(text: str, fail: Callable[[str], ConfigError]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise fail(f"expected key=value pairs separated by ';', got {item!r}")
        labels[key.strip()] = value.strip()
    return labels


def _number(text: str, kind: Callable[[str], Any], fail: Callable[[str], ConfigError]) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise fail(f"{text!r} is not a number") from None


def stderr_progress(stream: TextIO = sys.stderr, *, every: int = 1000) -> Progress:
    """A plain progress line on stderr for large files (nothing for small ones)."""

    def report(done: int, total: int) -> None:
        if total < every:
            return
        if done % max(total // 100, 1) == 0 or done == total:
            stream.write(f"\rimporting rows: {done}/{total} ({100 * done // total}%)")
            if done == total:
                stream.write("\n")
            stream.flush()

    return report


def iter_rows(result: ImportResult) -> Iterator[dict[str, Any]]:
    yield from result.all_documents()
