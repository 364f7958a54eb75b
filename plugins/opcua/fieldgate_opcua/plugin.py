"""The fieldgate plugin: the `opcua` protocol and `fieldgate browse opcua`.

The protocol is declared as an entry point (`fieldgate.protocols`, see pyproject.toml), imported when a document
uses it; the browser is imported when it is asked for."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.commands import Command
from gateway.hookspecs import hookimpl


@hookimpl
def register_browsers() -> Iterable[Command]:
    return [Command("opcua", "walk an OPC UA server's address space and write a DeviceModel and a Device for the "
                    "variables chosen", "fieldgate_opcua.cli:configure", "fieldgate_opcua.cli:run")]
