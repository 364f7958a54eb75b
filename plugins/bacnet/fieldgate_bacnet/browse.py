"""`fieldgate browse bacnet`: Who-Is on a chosen interface (or to one address), then each answering device's
objects (object-list, names, units) as a DeviceModel and a Device document that `fieldgate check` accepts."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from bacpypes3.app import Application
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import ObjectIdentifier

from fieldgate_bacnet.config import ANALOG, BINARY, COMMANDABLE, MAX_INSTANCE, MULTI_STATE, parse_address
from fieldgate_bacnet.endpoint import DeviceAnswered, Endpoint
from fieldgate_bacnet.values import plain
from gateway.errors import ConfigError, FieldgateError, ProtocolError

# Object types whose present-value becomes a property, and the model type it has
STRING_VALUES = frozenset({"characterstring-value"})
INTEGER_VALUES = frozenset({"integer-value", "positive-integer-value"})
BROWSED = ANALOG | BINARY | MULTI_STATE | STRING_VALUES | INTEGER_VALUES
_SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interface", default="0.0.0.0:47808", metavar="ADDR",
                        help="the gateway's own BACnet/IP address for the search, IP/PREFIX[:PORT]: Who-Is is "
                             "broadcast on that network (default 0.0.0.0:47808, which needs --address)")
    parser.add_argument("--address", metavar="IP[:PORT]", help="ask this address only (a unicast Who-Is)")
    parser.add_argument("--device", type=int, metavar="INSTANCE", help="only the device with this instance")
    parser.add_argument("--wait", type=float, default=3.0, metavar="SECONDS", help="how long I-Am answers are "
                        "collected (default 3)")
    parser.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS",
                        help="seconds to wait for one answer while reading a device (default 2)")
    parser.add_argument("--instance", type=int, default=4194001, metavar="INSTANCE",
                        help="the device instance the gateway answers as during the search (default 4194001)")
    parser.add_argument("--namespace", default="default", help="namespace of the documents (default: default)")
    parser.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the documents here (default: "
                        "standard output)")


@dataclass
class Found:
    """One device that answered, with what was read of it."""

    instance: int
    address: str
    name: str = ""
    objects: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def run(args: argparse.Namespace) -> int:
    try:
        ip, port, prefix = parse_address(args.interface, prefix=True)
        target = parse_address(args.address) if args.address else None
    except ValueError as exc:
        raise ConfigError(f"--interface/--address: {exc}") from None
    if target is None and prefix is None:
        raise ConfigError(f"--interface {args.interface}: a broadcast needs the network's prefix (IP/PREFIX[:PORT], "
                          "e.g. 192.168.1.10/24), or give the device's --address")
    if args.device is not None and not 0 <= args.device <= MAX_INSTANCE:
        raise ConfigError(f"--device {args.device}: a device instance is 0 to {MAX_INSTANCE}")
    if not 0 <= args.instance <= MAX_INSTANCE:
        raise ConfigError(f"--instance {args.instance}: a device instance is 0 to {MAX_INSTANCE}")
    if not 0 < args.wait <= 60 or not 0 < args.timeout <= 60:
        raise ConfigError("--wait and --timeout take 0 to 60 seconds")
    interface = f"{ip}/{prefix}:{port}" if prefix is not None else f"{ip}:{port}"
    found = asyncio.run(browse(interface, target, args.device, args.instance, args.wait, args.timeout))
    if not found:
        where = f"at {args.address}" if args.address else f"on {args.interface}"
        print(f"fieldgate browse bacnet: no device answered {where} within {args.wait:g}s", file=sys.stderr)
        return 1
    documents: list[dict[str, Any]] = []
    for device in found:
        documents.extend(device_documents(device, args.namespace, f"{ip}:{port}"))
        print(f"{device.address}: device {device.instance} ({device.name or 'no name'}), {len(device.objects)} "
              f"objects" + "".join(f"; {problem}" for problem in device.problems), file=sys.stderr)
    text = yaml.dump_all(documents, Dumper=_SafeDumper, sort_keys=False, default_flow_style=False,
                         allow_unicode=True)
    if args.output is None:
        sys.stdout.write(text)
    else:
        try:
            args.output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise FieldgateError(f"{args.output}: cannot write: {exc}") from exc
    return 0


async def browse(interface: str, target: tuple[str, int, int | None] | None, device: int | None, instance: int,
                 wait: float, timeout: float) -> list[Found]:
    """Who-Is, then every answering device read; one device that fails to answer is reported, not fatal."""
    ip, port, _ = parse_address(interface, prefix=True)
    endpoint = Endpoint((ip, port), instance, timeout)
    app = await endpoint.start(broadcast=interface if target is None else None)
    try:
        address = Address(f"{target[0]}:{target[1]}") if target is not None else None
        low, high = (device, device) if device is not None else (None, None)
        answers = await asyncio.wait_for(app.who_is(low, high, address, timeout=wait), wait + 5)
        found: list[Found] = []
        for answer in sorted(answers, key=lambda a: a.iAmDeviceIdentifier[1]):
            one = Found(int(answer.iAmDeviceIdentifier[1]), _address_text(answer.pduSource))
            try:
                await _read_device(endpoint, answer.pduSource, one, timeout)
            except ProtocolError as exc:
                one.problems.append(str(exc))
            found.append(one)
        return found
    finally:
        endpoint.close()


def _address_text(address: Any) -> str:
    ip, port = address.addrTuple
    return f"{ip}:{port}"


async def _read(endpoint: Endpoint, address: Any, object_id: str, prop: str, timeout: float,
                index: int | None = None) -> Any:
    def ask(app: Application) -> Any:
        return app.read_property(address, ObjectIdentifier(object_id), prop, index)

    what = f"{_address_text(address)}: reading {object_id} {prop}"
    return await endpoint.call(what, ask, timeout=timeout, retries=1)


async def _optional(endpoint: Endpoint, address: Any, object_id: str, prop: str, timeout: float) -> Any:
    try:
        return await _read(endpoint, address, object_id, prop, timeout)
    except DeviceAnswered:
        return None


async def _read_device(endpoint: Endpoint, address: Any, found: Found, timeout: float) -> None:
    device = f"device,{found.instance}"
    found.name = str(plain(await _optional(endpoint, address, device, "object-name", timeout)) or "")
    try:
        object_list = list(await _read(endpoint, address, device, "object-list", timeout))
    except DeviceAnswered:
        # too long for one answer of a device that cannot segment: element by element
        count = int(await _read(endpoint, address, device, "object-list", timeout, index=0))
        object_list = [await _read(endpoint, address, device, "object-list", timeout, index=i)
                       for i in range(1, count + 1)]
    for object_id in object_list:
        object_type, object_instance = str(object_id[0]), int(object_id[1])
        if object_type not in BROWSED:
            continue
        text = f"{object_type},{object_instance}"
        name = await _optional(endpoint, address, text, "object-name", timeout)
        units = await _optional(endpoint, address, text, "units", timeout) if object_type in ANALOG else None
        description = await _optional(endpoint, address, text, "description", timeout)
        found.objects.append({"type": object_type, "instance": object_instance, "name": plain(name) or "",
                              "units": "" if units is None else str(units),
                              "description": plain(description) or ""})


def device_documents(found: Found, namespace: str, local_address: str) -> list[dict[str, Any]]:
    """A DeviceModel and a Device for one device found."""
    name = document_name(found.name, f"bacnet-{found.instance}")
    names: set[str] = set()
    model_properties: list[dict[str, Any]] = []
    device_properties: list[dict[str, Any]] = []
    for obj in found.objects:
        prop = property_name(obj["name"], f"{obj['type']}_{obj['instance']}", names)
        entry: dict[str, Any] = {"name": prop, "type": model_type(obj["type"]),
                                 "access": "ReadWrite" if obj["type"] in COMMANDABLE else "ReadOnly"}
        if obj["units"] and obj["units"] != "no-units":
            entry["unit"] = obj["units"]
        model_properties.append(entry)
        device_properties.append({"name": prop, "visitor": {"object_type": obj["type"], "instance": obj["instance"]}})
    model: dict[str, Any] = {"kind": "DeviceModel", "name": name, "namespace": namespace, "protocol": "bacnet-ip",
                             "properties": model_properties}
    device: dict[str, Any] = {
        "kind": "Device", "name": name, "namespace": namespace, "model": name,
        "description": f"BACnet device {found.instance}" + (f" ({found.name})" if found.name else ""),
        "protocol": {"name": "bacnet-ip", "config": {"address": found.address, "device_instance": found.instance,
                                                     "local_address": local_address}},
        "properties": device_properties,
    }
    return [model, device]


def model_type(object_type: str) -> str:
    if object_type in BINARY:
        return "boolean"
    if object_type in MULTI_STATE or object_type in INTEGER_VALUES:
        return "int"
    if object_type in STRING_VALUES:
        return "string"
    return "double"


def document_name(text: str, fallback: str) -> str:
    """A document name from a device's name: lowercase letters, digits, '-' and '.'."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:200].strip("-")
    return name or fallback


def property_name(text: str, fallback: str, taken: set[str]) -> str:
    """A property name from an object's name, unique within the device."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:100] or fallback.replace("-", "_")
    if not re.match(r"[A-Za-z_]", name):
        name = f"_{name}"
    unique, n = name, 2
    while unique in taken:
        unique, n = f"{name}_{n}", n + 1
    taken.add(unique)
    return unique
