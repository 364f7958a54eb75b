"""The fieldgate plugin: Modbus TCP/RTU protocols and the `fieldgate sim` command.

The protocols are declared as entry points (`fieldgate.protocols`, see pyproject.toml), imported when a document
uses them; the simulator is imported when `fieldgate sim` is asked for."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.commands import Command
from gateway.hookspecs import hookimpl


@hookimpl
def register_commands() -> Iterable[Command]:
    return [Command("sim", "simulate field devices (fieldgate sim modbus …)", "fieldgate_modbus.cli:configure",
                    "fieldgate_modbus.cli:run")]
