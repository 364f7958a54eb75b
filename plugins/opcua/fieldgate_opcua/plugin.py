"""The fieldgate plugin: the `opcua` protocol and `fieldgate browse opcua`."""

from __future__ import annotations

from collections.abc import Iterable

from fieldgate_opcua import cli
from fieldgate_opcua.protocol import OpcuaProtocol
from gateway.commands import Command
from gateway.hookspecs import hookimpl
from gateway.protocols.base import Protocol


@hookimpl
def register_protocols() -> Iterable[type[Protocol]]:
    return [OpcuaProtocol]


@hookimpl
def register_browsers() -> Iterable[Command]:
    return [Command("opcua", "walk an OPC UA server's address space and write a DeviceModel and a Device for the "
                    "variables chosen", cli.configure, cli.run)]
