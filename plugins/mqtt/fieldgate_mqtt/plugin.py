"""The fieldgate plugin: the `mqtt` protocol and `fieldgate browse mqtt`."""

from __future__ import annotations

from collections.abc import Iterable

from fieldgate_mqtt import browse
from fieldgate_mqtt.protocol import MqttDevice
from gateway.commands import Command
from gateway.hookspecs import hookimpl
from gateway.protocols.base import Protocol


@hookimpl
def register_protocols() -> Iterable[type[Protocol]]:
    return [MqttDevice]


@hookimpl
def register_browsers() -> Iterable[Command]:
    return [Command("mqtt", "listen on a broker and write a DeviceModel and a Device for each topic heard",
                    browse.configure, browse.run)]
