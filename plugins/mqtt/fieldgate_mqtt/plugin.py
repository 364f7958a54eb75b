"""The fieldgate plugin: the `mqtt` protocol and `fieldgate browse mqtt`.

The protocol is declared as an entry point (`fieldgate.protocols`, see pyproject.toml), imported when a document
uses it; the browser is imported when it is asked for."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.commands import Command
from gateway.hookspecs import hookimpl


@hookimpl
def register_browsers() -> Iterable[Command]:
    return [Command("mqtt", "listen on a broker and write a DeviceModel and a Device for each topic heard",
                    "fieldgate_mqtt.browse:configure", "fieldgate_mqtt.browse:run")]
