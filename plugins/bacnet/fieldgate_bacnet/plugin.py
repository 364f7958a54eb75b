"""The fieldgate plugin: the `bacnet-ip` protocol and the `fieldgate browse bacnet` browser.

The protocol is declared as an entry point (`fieldgate.protocols`, see pyproject.toml) and the browser by module
path, so the BACnet stack is imported only by a configuration with a `bacnet-ip` device or by the browser."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.commands import Command
from gateway.hookspecs import hookimpl


@hookimpl
def register_browsers() -> Iterable[Command]:
    return [Command("bacnet", "find BACnet/IP devices by Who-Is and write their objects as documents",
                    "fieldgate_bacnet.browse:configure", "fieldgate_bacnet.browse:run")]
