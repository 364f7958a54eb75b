"""The fieldgate plugin: the `bacnet-ip` protocol and the `fieldgate browse bacnet` browser."""

from __future__ import annotations

from collections.abc import Iterable

from fieldgate_bacnet.browse import configure, run
from fieldgate_bacnet.protocol import BacnetIp
from gateway.commands import Command
from gateway.hookspecs import hookimpl
from gateway.protocols.base import Protocol


@hookimpl
def register_protocols() -> Iterable[type[Protocol]]:
    return [BacnetIp]


@hookimpl
def register_browsers() -> Iterable[Command]:
    return [Command("bacnet", "find BACnet/IP devices by Who-Is and write their objects as documents",
                    configure, run)]
