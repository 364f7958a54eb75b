"""The fieldgate plugin: Modbus TCP/RTU protocols and the `fieldgate sim` command."""

from __future__ import annotations

from collections.abc import Iterable

from fieldgate_modbus import cli
from fieldgate_modbus.protocol import ModbusRtu, ModbusTcp
from gateway.commands import Command
from gateway.hookspecs import hookimpl
from gateway.protocols.base import Protocol


@hookimpl
def register_protocols() -> Iterable[type[Protocol]]:
    return [ModbusTcp, ModbusRtu]


@hookimpl
def register_commands() -> Iterable[Command]:
    return [Command("sim", "simulate field devices (fieldgate sim modbus …)", cli.configure, cli.run)]
